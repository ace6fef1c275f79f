"""The run folder: lock, config.json, checkpoints, history.csv, train.log, curves.png.

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
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from . import checkpoint
from .config import ConfigError, PredictConfig, PreprocessConfig, TrainConfig, diff, from_dict, to_dict, with_defaults

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
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive use of the folder; a second trainer is refused with the holder's pid."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                raise RunError(f"{self.path}: run folder in use by another brats2d process (pid {holder})") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def log(self, msg: str) -> None:
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        with open(self.path / "train.log", "a") as f:
            f.write(f"{stamp} {msg}\n")

    def start(self, ident: dict[str, Any], s: dict[str, Any], *, restart: bool,
              log: Callable[[str], None]) -> dict[str, Any]:
        """Fresh state, or the state restored from latest_checkpoint.pth after checking its identity."""
        latest = self.path / LATEST
        fresh = {"epoch": 0, "step": 0, "loss_sum": torch.zeros((), dtype=torch.float64), "seen": 0,
                 "history": [], "best": None}
        if restart or not latest.exists():
            for name in (LATEST, BEST, "history.csv"):
                (self.path / name).unlink(missing_ok=True)
            self._write_json("config.json", ident)
            self._emit(log, f"starting run {self.path} ({'--restart' if restart else 'new'})")
            return fresh
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
        # The cache may move; its content (checksums) and settings are what must match.
        changes = diff(_flatten({**old, "cache_path": None}), _flatten({**ident, "cache_path": None}))
        if changes:
            raise RunError(f"{latest}: was trained with other settings or another cache; use --restart or "
                           f"another --run-dir. Differences (checkpoint -> now):\n  " + "\n  ".join(changes))
        s["model"].load_state_dict(ck["model"])
        s["opt"].load_state_dict(ck["optimizer"])
        s["sched"].load_state_dict(ck["scheduler"])
        s["scaler"].load_state_dict(ck["scaler"])
        checkpoint.set_rng_state(ck["rng"])
        st = {"epoch": ck["epoch"], "step": ck["step"], "loss_sum": ck["loss_sum"], "seen": ck["seen"],
              "history": json.loads(ck["history"]), "best": ck["best"], "rng_ranks": ck.get("rng_ranks")}
        if st["epoch"] < ident["train"]["epochs"]:
            self._emit(log, f"resuming {self.path} from epoch {st['epoch'] + 1}, step {st['step']}")
        return st

    def save_latest(self, s: dict[str, Any], cfg: TrainConfig, ident: dict[str, Any], st: dict[str, Any],
                    epoch: int, extra: dict[str, Any] | None = None) -> None:
        """Write latest_checkpoint.pth; `extra` adds entries (under torchrun: rng_ranks, ranks 1.. RNG states)."""
        checkpoint.save({**(extra or {}),
            "model": s["model"].state_dict(), "optimizer": s["opt"].state_dict(),
            "scheduler": s["sched"].state_dict(), "scaler": s["scaler"].state_dict(), "rng": checkpoint.rng_state(),
            "epoch": epoch, "step": st["step"], "loss_sum": st["loss_sum"], "seen": st["seen"],
            "history": json.dumps(st["history"]), "best": st["best"], "identity": json.dumps(ident),
            "config": json.dumps(ident["train"])}, self.path / LATEST)

    def check_finite(self, st: dict[str, Any], epoch: int) -> None:
        """Refuse to go on (or to checkpoint) once the loss is NaN/inf: the last good checkpoint stays."""
        if not torch.isfinite(st["loss_sum"]):
            raise NumericalError(f"non-finite training loss in epoch {epoch + 1} before step {st['step']}; "
                                 f"stopped. The last good checkpoint is {self.path / LATEST} (if any): lower "
                                 f"--lr or use --precision fp32, then run again with --restart")

    def end_epoch(self, s: dict[str, Any], cfg: TrainConfig, ident: dict[str, Any], st: dict[str, Any],
                  row: dict[str, Any], log: Callable[[str], None], extra: dict[str, Any] | None = None) -> None:
        """Record the epoch, keep the best model, then checkpoint the start of the next epoch."""
        st["history"].append(row)
        no_val = row["val_dice"] is None  # no validation patients: the latest epoch is the model to keep
        score = None if no_val else float(row["val_dice"] if cfg.select_by == "dice" else -row["val_loss"])
        is_best = no_val or st["best"] is None or score > st["best"]
        if is_best:
            st["best"] = score
            checkpoint.save({"model": s["model"].state_dict(), "epoch": row["epoch"], "metrics": json.dumps(row),
                             "identity": json.dumps(ident), "config": json.dumps(ident["train"])}, self.path / BEST)
        val = ("no validation" if no_val else
               "val_loss {val_loss:.4f}  val_dice {val_dice:.4f}".format(**row))
        self._emit(log, f"epoch {row['epoch']}/{cfg.epochs}  train_loss {row['train_loss']:.4f}  {val}  "
                   f"{row['images_per_s']:.1f} img/s  {row['seconds']:.0f}s" + ("  * best" if is_best else ""))
        st.update(epoch=row["epoch"], step=0, seen=0, loss_sum=torch.zeros((), dtype=torch.float64))
        self.save_latest(s, cfg, ident, st, row["epoch"], extra)
        self._write_history(st["history"])
        from .report import plot_curves

        plot_curves(st["history"], self.path / "curves.png")

    def _emit(self, log: Callable[[str], None], msg: str) -> None:
        log(msg)
        self.log(msg)

    def _write_json(self, name: str, data: dict[str, Any]) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path / name)

    def _write_history(self, history: list[dict[str, Any]]) -> None:
        tmp = self.path / ".history.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(history)
        os.replace(tmp, self.path / "history.csv")


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
    path = Path(run_dir) / PREDICT_RECORD
    tmp = path.with_name(f".{PREDICT_RECORD}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(to_dict(cfg), indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a full disk must not leave half a temp file
