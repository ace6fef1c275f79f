"""Checkpoints that are atomic on disk and safe to load from strangers.

Everything in a checkpoint is a tensor, a number, a string, or a list/dict of those, so it loads with
``torch.load(weights_only=True)``: no pickle code runs. Configs are stored as JSON text and every RNG
state as tensors. Files are written to a temp name, fsynced, and renamed: a crash or a full disk leaves
the previous checkpoint untouched. Loading first checks the CRC-32 of every record of the zip (torch
does not), so a flipped byte is an error naming the file rather than silently different weights.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import atomic_write, error_reason, remove_stale_temps


class CheckpointError(Exception):
    """A checkpoint cannot be written, or is unsafe, truncated or corrupt; the message names the file."""


class _Writer:
    """A file wrapper that keeps the OSError of a failed write: torch.save given a plain file reports
    a full disk as an unrelated "unexpected pos" RuntimeError."""

    def __init__(self, f: Any):
        self.f, self.error = f, None

    def write(self, b: Any) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save(obj: dict[str, Any], path: str | Path) -> None:
    """Write `obj` atomically to `path` (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    w = None
    try:
        remove_stale_temps(path)
        with atomic_write(path, fsync=True) as tmp, open(tmp, "wb") as f:
            w = _Writer(f)
            torch.save(obj, w)
            f.flush()
    except (OSError, RuntimeError) as e:
        what = error_reason(w.error if w is not None and w.error is not None else e)
        raise CheckpointError(f"{path}: could not write checkpoint ({what}); the previous one is untouched") from None


def _check_zip(path: Path) -> None:
    """torch's zip reader does not check the CRC-32 of each record; a flipped byte would load silently."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {error_reason(e)})") from None
    if bad is not None:
        raise CheckpointError(f"{path}: corrupt checkpoint (CRC mismatch in {bad})")


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True; refuse pickled objects, name truncation or corruption."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint")
    if zipfile.is_zipfile(path):
        _check_zip(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "GLOBAL" not in msg and "global" not in msg:  # garbage bytes, not a forbidden object
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint (not a torch checkpoint)") from None
        lines = [ln.strip() for ln in msg.splitlines() if "GLOBAL" in ln or "global" in ln]
        raise CheckpointError(f"{path}: refused: the file carries pickled Python objects that a weights-only "
                              f"load will not execute ({lines[0] if lines else type(e).__name__})") from None
    except Exception as e:  # noqa: BLE001  (an untrusted file can make the unpickler fail in any way)
        first = str(e).splitlines()[0].split(". This is an internal")[0] if str(e) else ""
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {first})") from None


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
