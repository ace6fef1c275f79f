"""Kill anywhere: SIGKILL at any point leaves the previous file or a complete new one, never a partial one."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
import torch

from brats2d import cache, checkpoint
from brats2d.config import PreprocessConfig, TrainConfig
from brats2d.preprocess import config_path, preprocess, splits_path
from brats2d.splits import load_splits, split_patients
from brats2d.train import train

from ..conftest import TINY
from .conftest import TINY_CLI, copy_cache, file_digest, leftovers, run_cli, spawn_cli

KILLED = -signal.SIGKILL

# (where, faults, what must be at the output path afterwards: the previous cache or the complete new one)
KILL_POINTS = [
    ("streaming-patients", [{"target": "brats2d.cache:CacheWriter.add", "nth": 3, "do": "kill"}], "old"),
    ("writing-hdf5", [{"target": "brats2d.cache:CacheWriter._write_split", "nth": 2, "do": "kill"}], "old"),
    ("before-fsync", [{"target": "os:fsync", "do": "kill"}], "old"),
    ("before-rename", [{"target": "os:replace", "match": "cache.h5", "do": "kill"}], "old"),
    ("after-rename", [{"target": "os:replace", "match": "cache.h5", "when": "after", "do": "kill"}], "new"),
    ("between-sidecars", [{"target": "brats2d.preprocess:write_text", "match": "config.json", "do": "kill"}], "new"),
    ("sidecar-temp-written", [{"target": "os:replace", "match": "config.json", "do": "kill"}], "new"),
]


def _check_after_kill(out: Path, before: str | None) -> str:
    """Whatever is at `out` loads and verifies; returns 'none', 'old' (byte-identical) or 'new'."""
    if not out.exists():
        assert before is None, "a kill removed the previous cache"
        return "none"
    cache.verify(out)  # checksums of every dataset: a partial file would fail here
    meta = cache.read_meta(out)
    for split in cache.SPLITS:
        images, masks = cache.open_arrays(out, split)
        assert len(images) == len(masks) == meta.counts[split]
    if before is not None and file_digest(out) == before:
        return "old"
    assert cache.read_meta(out).config["size"] == 24
    return "new"


def _check_clean_and_consistent(out: Path) -> None:
    """After a successful run: no temp or lock files, and the sidecars describe the cache that is there."""
    assert leftovers(out.parent) == []
    meta = cache.read_meta(out)
    cache.verify(out)
    import json

    assert json.loads(config_path(out).read_text()) == meta.config
    cfg = PreprocessConfig(**{**meta.config, "modalities": tuple(meta.config["modalities"])})
    assert load_splits(splits_path(out)) == split_patients(sorted(meta.source), cfg.split, cfg.seed)


@pytest.mark.slow
@pytest.mark.parametrize("where,faults,expect", KILL_POINTS, ids=[k[0] for k in KILL_POINTS])
def test_preprocess_killed_at_each_write_point(raw_dir: Path, tiny_cache: Path, tmp_path: Path, where: str,
                                               faults: list, expect: str) -> None:
    out = copy_cache(tiny_cache, tmp_path / "out" / "c.h5")  # a previous cache (size 32) with its sidecars
    before = {p.name: file_digest(p) for p in out.parent.iterdir()}
    proc = run_cli(["preprocess", raw_dir, "--out", out, "--workers", "1", "--size", "24"], faults)
    assert proc.returncode == KILLED, proc.stderr
    assert _check_after_kill(out, before["c.h5"]) == expect
    if expect == "old":  # the previous cache's sidecars are untouched too
        assert {p.name: file_digest(p) for p in out.parent.iterdir() if not p.name.startswith(".")} == before
    # The next successful run removes the dead run's temp files and leaves consistent sidecars.
    s = preprocess(raw_dir, out, PreprocessConfig(size=24), workers=1)
    assert s.up_to_date == (expect == "new")
    _check_clean_and_consistent(out)


@pytest.mark.slow
def test_preprocess_sigkill_at_random_moments(raw_dir: Path, tmp_path: Path) -> None:
    args = ["--workers", "1", "--size", "24", "--force"]
    t0 = time.perf_counter()
    proc = run_cli(["preprocess", raw_dir, "--out", tmp_path / "timing" / "c.h5", *args])
    assert proc.returncode == 0, proc.stderr
    full = time.perf_counter() - t0
    out = tmp_path / "out" / "c.h5"
    rng = random.Random(20240611)
    for _ in range(4):
        before = file_digest(out) if out.exists() else None
        p = spawn_cli(["preprocess", raw_dir, "--out", out, *args])
        time.sleep(rng.uniform(0.3, 1.1) * full)
        p.kill()
        p.communicate(timeout=60)
        assert p.returncode in (0, KILLED), p.returncode
        _check_after_kill(out, before)
    preprocess(raw_dir, out, PreprocessConfig(size=24), workers=1)
    _check_clean_and_consistent(out)


def _tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor leaf of a checkpoint, by path."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}/{i}"))
    return out


# numpy's and python's global RNG states are recorded but never used by training (the data order and
# augmentation come from default_rng([seed, epoch])), and a reference run in this pytest process starts
# them from elsewhere, so they are not compared. The torch RNG (dropout, init) is.
UNUSED = ("/rng/numpy", "/rng/python")


def assert_bit_exact(a: Path, b: Path) -> None:
    for name in ("latest_checkpoint.pth", "best_model.pth"):
        ta, tb = ({k: v for k, v in _tensors(checkpoint.load(r / name)).items() if not k.startswith(UNUSED)}
                  for r in (a, b))
        assert "/model/" + next(iter(checkpoint.load(a / name)["model"])) in ta
        assert ta.keys() == tb.keys(), name
        different = [k for k in ta if not torch.equal(ta[k], tb[k])]
        assert not different, f"{name}: {different[:5]}"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [3, 11, 2024])
def test_train_killed_twice_at_random_points_resumes_bit_exact(tiny_cache: Path, tmp_path: Path, seed: int) -> None:
    """Kill 1: before a random optimizer step. Kill 2: halfway through writing a random checkpoint.
    The resumed run ends with every tensor of latest_checkpoint.pth and best_model.pth equal to an
    uninterrupted run's."""
    cfg = TrainConfig(**{**TINY, "seed": seed})
    ref = tmp_path / "ref"
    train(tiny_cache, ref, cfg, log=lambda m: None)
    steps = cfg.epochs * -(-cache.read_meta(tiny_cache).counts["train"] // cfg.batch_size)
    rng = random.Random(seed)
    run = tmp_path / "run"
    args = ["train", "--cache", tiny_cache, "--run-dir", run, *TINY_CLI, "--epochs", cfg.epochs, "--seed", seed]
    k = rng.randint(1, steps)
    p = run_cli(args, [{"target": "brats2d.train:train_step", "nth": k, "do": "kill"}])
    assert p.returncode == KILLED, p.stderr
    # Whatever is resumed from still ends with (at least) best + latest saves: the 1st or 2nd is hit.
    j = rng.randint(1, 2)
    p = run_cli(args, [{"target": "torch:save", "nth": j, "do": "kill_midwrite"}])
    assert p.returncode == KILLED, p.stderr
    assert list(run.glob(".*.pth.*.tmp")), "the kill should have left a half-written temp checkpoint"
    train(tiny_cache, run, cfg, log=lambda m: None)
    assert_bit_exact(ref, run)
    assert set(leftovers(run)) <= {".lock"}  # the dead writer's half checkpoint was removed
