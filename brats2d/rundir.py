"""The run folder: lock, config.json, checkpoints, history.csv, train.log (curves.png: brats2d.report).

    runs/NAME/
      config.json            every setting + the cache's identity (JSON)
      predict.json           the predict settings of the run's recipe (PredictConfig), used by eval/predict
      latest_checkpoint.pth  full training state, for resume (weights-only loadable)
      best_model.pth         weights of the epoch with the best validation score + config
      history.csv            one row per epoch
      train.log              what the run printed
      curves.png             training curves
      .lock                  held (flock) while a process trains here; released by the OS if it dies

Under torchrun only rank 0 uses this class (lock, writes); the other ranks receive its state.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from . import checkpoint
from .config import ConfigError, PredictConfig, PreprocessConfig, TrainConfig, diff, from_dict, to_dict, with_defaults
from .files import LockBusy, atomic_write, file_lock, write_json, write_text

LATEST, BEST, PREDICT_RECORD = "latest_checkpoint.pth", "best_model.pth", "predict.json"
HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds", "images_per_s"]


class RunError(Exception):
    """The run folder cannot be used as asked (in use, or its checkpoint is for other settings)."""


class TrainingStopped(Exception):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint."""


class NumericalError(Exception):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class RunDir:
    """The run folder: its lock, log, config.json, checkpoints and history.csv (what goes in them is the
    trainer's: brats2d.trainstate)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive use of the folder; a second trainer is refused with the holder's pid."""
        self.path.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(file_lock(self.path / ".lock"))
            except LockBusy as e:
                raise RunError(f"{self.path}: run folder in use by another brats2d process (pid {e.holder})") from None
            yield

    def log(self, msg: str) -> None:
        """Append a time-stamped line to train.log."""
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        with open(self.path / "train.log", "a") as f:
            f.write(f"{stamp} {msg}\n")

    def start(self, ident: dict[str, Any], *, restart: bool, log: Callable[[str], None]) -> dict[str, Any] | None:
        """None for a fresh run (the folder's old run removed, config.json written), else the content of
        latest_checkpoint.pth after checking that it was trained with the settings and cache of `ident`."""
        latest = self.path / LATEST
        if restart or not latest.exists():
            for name in (LATEST, BEST, "history.csv"):
                (self.path / name).unlink(missing_ok=True)
            write_text(self.path / "config.json", json.dumps(ident, indent=1, sort_keys=True) + "\n")
            self.emit(log, f"starting run {self.path} ({'--restart' if restart else 'new'})")
            return None
        ck = checkpoint.load(latest)
        old = json.loads(ck["identity"])
        # Settings added after a checkpoint was written (e.g. sync_bn) take their default, which is what it used.
        old["train"] = with_defaults(TrainConfig, old.get("train", {}))
        if isinstance(old.get("cache", {}).get("config"), dict):
            old["cache"]["config"] = with_defaults(PreprocessConfig, old["cache"]["config"])
        was, now = old.get("world_size", 1), ident.get("world_size", 1)
        if was != now:
            # The data shards, the per-process batch and the optimizer path all depend on the world size.
            raise RunError(f"{latest}: was trained by {was} process(es) (torchrun world size) but this run has "
                           f"{now}; resume with the same number of processes (--nnodes x --nproc_per_node), "
                           f"or use --restart or another --run-dir")
        # The cache may move; its content (checksums) and settings are what must match. The input profile
        # is derived from that content (and absent from checkpoints written before it existed).
        changes = diff(_flatten({**old, "cache_path": None, "inputs": None}),
                       _flatten({**ident, "cache_path": None, "inputs": None}))
        if changes:
            raise RunError(f"{latest}: was trained with other settings or another cache; use --restart or "
                           f"another --run-dir. Differences (checkpoint -> now):\n  " + "\n  ".join(changes))
        if ck["epoch"] < ident["train"]["epochs"]:
            self.emit(log, f"resuming {self.path} from epoch {ck['epoch'] + 1}, step {ck['step']}")
        return ck

    def save_latest(self, content: dict[str, Any]) -> None:
        """Write latest_checkpoint.pth (atomically; the previous one survives a failure)."""
        checkpoint.save(content, self.path / LATEST)

    def save_best(self, content: dict[str, Any]) -> None:
        """Write best_model.pth (atomically)."""
        checkpoint.save(content, self.path / BEST)

    def check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
        """Refuse to go on (or to checkpoint) once the loss is NaN/inf: the last good checkpoint stays."""
        if not torch.isfinite(loss_sum):
            raise NumericalError(f"non-finite training loss in epoch {epoch + 1} before step {step}; "
                                 f"stopped. The last good checkpoint is {self.path / LATEST} (if any): lower "
                                 f"--lr or use --precision fp32, then run again with --restart")

    def emit(self, log: Callable[[str], None], msg: str) -> None:
        """`msg` to the console (`log`) and to train.log."""
        log(msg)
        self.log(msg)

    def write_history(self, history: list[dict[str, Any]]) -> None:
        """history.csv: one row per epoch (HISTORY_FIELDS), replaced atomically."""
        with atomic_write(self.path / "history.csv") as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(history)


def read_predict_record(run_dir: str | Path) -> PredictConfig | None:
    """The predict settings `run_dir` recorded (predict.json), or None for a run trained before runs
    recorded them. A record from before a setting existed takes that setting's default."""
    path = Path(run_dir) / PREDICT_RECORD
    if not path.exists():
        return None
    try:
        return from_dict(PredictConfig, with_defaults(PredictConfig, json.loads(path.read_text())))
    except (json.JSONDecodeError, TypeError, ConfigError) as e:
        raise RunError(f"{path}: not a readable predict settings record ({e}); fix or delete it (without it "
                       "eval/predict use the seed's settings)") from None


def write_predict_record(run_dir: str | Path, cfg: PredictConfig) -> None:
    """Write `run_dir`/predict.json (atomically: a reader sees the old or the new record, never half)."""
    write_json(Path(run_dir) / PREDICT_RECORD, to_dict(cfg))
