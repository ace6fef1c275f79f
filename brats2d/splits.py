"""Patient-level splits: seeded, reproducible, and never mixing one patient's slices across splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .files import write_text

SPLITS = ("train", "val", "test")


def split_patients(cases: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, list[str]]:
    """Shuffle the sorted case names with `seed` and cut them into train/val/test by `fractions`.

    Sizes are rounded (val and test get round(f*n), train the rest), so 34 patients at 0.7/0.15/0.15
    give 24/5/5. The result depends only on the set of names and the seed, not on their order.
    """
    if seed < 0:
        raise ValueError(f"seed: must be >= 0, got {seed}")
    names = sorted(cases)
    order = np.random.default_rng(seed).permutation(len(names))
    n = len(names)
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    n_train = n - n_val - n_test
    shuffled = [names[i] for i in order]
    return {"train": sorted(shuffled[:n_train]), "val": sorted(shuffled[n_train:n_train + n_val]),
            "test": sorted(shuffled[n_train + n_val:])}


def kfold(cases: list[str], folds: int, seed: int) -> list[list[str]]:
    """Cut the seeded shuffle of `cases` into `folds` groups of near-equal size (sorted within)."""
    if not 2 <= folds <= len(cases):
        raise ValueError(f"folds: need 2 <= folds <= {len(cases)} patients, got {folds}")
    names = sorted(cases)
    order = np.random.default_rng(seed).permutation(len(names))
    return [sorted(names[i] for i in part) for part in np.array_split(order, folds)]


def load_splits(path: str | Path) -> dict[str, list[str]]:
    """Read a splits.json ({"train": [...], "val": [...], "test": [...]}), checking it is a partition."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read splits file ({e})") from None
    if not isinstance(data, dict) or not set(data) >= set(SPLITS):
        raise ValueError(f"{path}: a splits file needs the keys {', '.join(SPLITS)}")
    seen: set[str] = set()
    for s in SPLITS:
        dup = seen & set(data[s])
        if dup:
            raise ValueError(f"{path}: patient(s) in more than one split: {', '.join(sorted(dup))}")
        seen |= set(data[s])
    return {s: sorted(data[s]) for s in SPLITS}


def save_splits(splits: dict[str, list[str]], path: str | Path) -> None:
    """Write splits atomically (temp file + rename)."""
    path = Path(path)
    try:
        write_text(path, json.dumps({s: splits[s] for s in SPLITS}, indent=1) + "\n")
    except OSError as e:
        raise ValueError(f"{path}: could not write splits file ({e.strerror or e})") from None
