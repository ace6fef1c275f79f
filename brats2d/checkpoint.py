"""Checkpoints that are atomic on disk and safe to load from strangers.

Everything in a checkpoint is a tensor, a number, a string, or a list/dict of those, so it loads with
``torch.load(weights_only=True)``: no pickle code runs. Configs are stored as JSON text and every RNG
state as tensors. Files are written to a temp name, fsynced, and renamed: a crash or a full disk leaves
the previous checkpoint untouched.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(Exception):
    """A checkpoint cannot be written, or is unsafe, truncated or corrupt; the message names the file."""


def save(obj: dict[str, Any], path: str | Path) -> None:
    """Write `obj` atomically to `path` (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        no_space = isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left" in str(e)
        what = "disk full" if no_space else str(e)
        raise CheckpointError(f"{path}: could not write checkpoint ({what}); the previous one is untouched") from None


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True; refuse pickled objects, name truncation or corruption."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: refused: the file carries pickled Python objects that a weights-only "
                              f"load will not execute ({first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None


def rng_state() -> dict[str, torch.Tensor]:
    """torch, numpy (global) and python `random` states as tensors."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor(np_state[4], dtype=torch.float64),
        "python": torch.tensor([py_version, *py_internal], dtype=torch.int64),
        "python_gauss": torch.tensor(float("nan") if py_gauss is None else py_gauss, dtype=torch.float64),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return out


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    meta = state["numpy_meta"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), meta[0], meta[1],
                         float(state["numpy_gauss"])))
    py = state["python"].tolist()
    gauss = float(state["python_gauss"])
    random.setstate((py[0], tuple(py[1:]), None if np.isnan(gauss) else gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
