"""What a training run holds, in typed objects, and how it maps to and from its checkpoints.

`Trainer` is what `train.setup` builds (model, optimizer, schedule, data); `TrainState` is where the
run is (epoch, step, partial loss sums, history, best score). A latest_checkpoint.pth holds both:

    model, optimizer, scheduler, scaler   state dicts
    rng                                   torch/numpy/python RNG states (checkpoint.rng_state)
    epoch, step, seen                     ints: the next step to run is `step` of epoch `epoch` (0-based)
    loss_sum                              float64 tensor: the sum of loss x batch size so far this epoch
    history                               JSON text: one dict per finished epoch (rundir.HISTORY_FIELDS)
    best                                  float or None: the best validation score so far
    identity, config                      JSON text: train.run_identity, and its "train" part
    rng_ranks                             (torchrun only) ranks 1.. RNG states

best_model.pth holds model, epoch, metrics (JSON of the epoch's history row), identity and config.
The format is unchanged since the first checkpoints, which therefore still load and resume.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import checkpoint
from .cache import CacheMeta
from .config import TrainConfig
from .dataset import SliceCache


def _zero() -> torch.Tensor:
    return torch.zeros((), dtype=torch.float64)


@dataclass
class Trainer:
    """Everything a training step needs, as `train.setup` builds it (every rank identically)."""

    meta: CacheMeta
    device: torch.device
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    precision: str  # "fp32" | "bf16" | "fp16", resolved for the device
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    train: SliceCache
    val: SliceCache
    ddp: torch.nn.Module | None = None  # under torchrun: the DistributedDataParallel wrapper of `model`

    @property
    def net(self) -> torch.nn.Module:
        """The module to run a training forward through (DDP all-reduces the gradients in backward)."""
        return self.ddp if self.ddp is not None else self.model

    def state_dicts(self) -> dict[str, Any]:
        """The weights, optimizer, schedule and scaler states, under their checkpoint names."""
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dicts(self, sd: dict[str, Any]) -> None:
        """Restore what `state_dicts` returned (from a checkpoint or from rank 0)."""
        self.model.load_state_dict(sd["model"])
        self.opt.load_state_dict(sd["optimizer"])
        self.sched.load_state_dict(sd["scheduler"])
        self.scaler.load_state_dict(sd["scaler"])


@dataclass
class TrainState:
    """Where a run is: the next step is `step` of epoch `epoch` (0-based); `loss_sum` (float64 tensor,
    on the training device) and `seen` (images) are this epoch's partial sums; `history` has one row
    per finished epoch; `best` is the best validation score so far (None: none yet, or no validation)."""

    epoch: int = 0
    step: int = 0
    loss_sum: torch.Tensor = field(default_factory=_zero)
    seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None
    rng_ranks: list[dict[str, torch.Tensor]] | None = None  # ranks 1.. RNG states, from a torchrun checkpoint

    def finish_epoch(self, row: dict[str, Any]) -> None:
        """Record the finished epoch's history row and start the next epoch's sums."""
        self.history.append(row)
        self.epoch, self.step, self.seen, self.loss_sum = row["epoch"], 0, 0, _zero()


def latest_checkpoint(tr: Trainer, st: TrainState, ident: dict[str, Any], epoch: int,
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The latest_checkpoint.pth content for state `st` in epoch `epoch` (`extra`: e.g. rng_ranks)."""
    return {**(extra or {}), **tr.state_dicts(), "rng": checkpoint.rng_state(),
            "epoch": epoch, "step": st.step, "loss_sum": st.loss_sum, "seen": st.seen,
            "history": json.dumps(st.history), "best": st.best, "identity": json.dumps(ident),
            "config": json.dumps(ident["train"])}


def best_checkpoint(tr: Trainer, row: dict[str, Any], ident: dict[str, Any]) -> dict[str, Any]:
    """The best_model.pth content: this epoch's weights and history row."""
    return {"model": tr.model.state_dict(), "epoch": row["epoch"], "metrics": json.dumps(row),
            "identity": json.dumps(ident), "config": json.dumps(ident["train"])}


def restore(tr: Trainer, ck: dict[str, Any] | None) -> TrainState:
    """Load a latest checkpoint into `tr` (weights, optimizer, ..., this process's RNGs) and return its
    state; a fresh state (and `tr` untouched) for None."""
    if ck is None:
        return TrainState()
    tr.load_state_dicts(ck)
    checkpoint.set_rng_state(ck["rng"])
    return TrainState(epoch=ck["epoch"], step=ck["step"], loss_sum=ck["loss_sum"], seen=ck["seen"],
                      history=json.loads(ck["history"]), best=ck["best"], rng_ranks=ck.get("rng_ranks"))


def select_best(cfg: TrainConfig, row: dict[str, Any], best: float | None) -> tuple[bool, float | None]:
    """(is this epoch the best so far, its score): the score is val Dice (cfg.select_by "dice") or minus
    val loss; higher is better. Without validation patients every epoch is the best (the last one is kept)."""
    if row["val_dice"] is None:
        return True, None
    score = float(row["val_dice"] if cfg.select_by == "dice" else -row["val_loss"])
    return best is None or score > best, score
