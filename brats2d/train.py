"""`brats2d train`: the training loop, resumable bit-exactly from any checkpoint.

State that decides the result -- weights, optimizer, scheduler, grad scaler, RNGs, (epoch, step) -- is
in every checkpoint; the data order and augmentation are a pure function of (seed, epoch), so a run
killed at any step and resumed replays exactly the same computation.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import cache, checkpoint, config as cfgmod
from .config import TrainConfig
from .dataset import EpochPlan, SliceCache, iterate
from .losses import make_loss
from .model import build_model
from .rundir import RunDir, TrainingStopped
from .device import autocast_context, keep_freed_memory, resolve_device, resolve_precision


def setup(cache_path: str | Path, cfg: TrainConfig, device: str = "auto") -> dict[str, Any]:
    """Model, optimizer, scheduler, scaler, loss and data for a run (fresh state, seeded)."""
    meta = cache.read_meta(cache_path)
    dev = resolve_device(device)
    if dev.type == "cpu":
        keep_freed_memory()
    torch.manual_seed(cfg.seed)
    C, K = meta.image_shape[0], meta.mask_channels
    model = build_model(C, K, cfg.base_channels, cfg.depth, cfg.dropout).to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_data = SliceCache(cache_path, "train")
    steps = cfg.epochs * len(EpochPlan.make(len(train_data), cfg.batch_size, cfg.seed, 0, augment=False))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))) if cfg.schedule == "cosine"
        else (lambda s: 1.0))
    precision = resolve_precision(dev, cfg.precision)
    scaler = torch.amp.GradScaler(dev.type, enabled=(precision == "fp16"))
    loss_fn = make_loss(cfg.loss, smooth=cfg.dice_smooth, gamma=cfg.focal_gamma,
                        alpha=None if cfg.focal_alpha < 0 else cfg.focal_alpha)
    return {"meta": meta, "device": dev, "model": model, "opt": opt, "sched": sched, "scaler": scaler,
            "precision": precision, "loss_fn": loss_fn, "train": train_data, "val": SliceCache(cache_path, "val")}


def run_identity(s: dict[str, Any], cfg: TrainConfig, world_size: int = 1) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: every setting and the exact cache."""
    m = s["meta"]
    return {"train": cfgmod.to_dict(cfg), "cache": {"config": m.config, "counts": m.counts,
            "checksums": m.checksums}, "model": {"in_channels": m.image_shape[0], "out_channels": m.mask_channels},
            "world_size": world_size, "cache_path": str(Path(m.path).resolve())}


def train_step(s: dict[str, Any], cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimizer step; returns the loss as a detached tensor (no host sync)."""
    model, opt, scaler = s["model"], s["opt"], s["scaler"]
    x = x.to(s["device"], non_blocking=True)
    y = y.to(s["device"], non_blocking=True)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast_context(s["device"], s["precision"]):
        logits = model(x)
    loss = s["loss_fn"](logits.float(), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.grad_clip > 0:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(opt)
    scaler.update()
    s["sched"].step()
    return loss.detach()


@torch.inference_mode()
def validate(s: dict[str, Any], cfg: TrainConfig, batch_size: int = 64) -> dict[str, float]:
    """Validation loss and pooled Dice (the seed's way: over all pixels of the split) at cfg.threshold."""
    model, data = s["model"], s["val"]
    model.eval()
    tot, n, inter, psum, tsum = 0.0, 0, 0.0, 0.0, 0.0
    plan = EpochPlan.make(len(data), batch_size, 0, 0, shuffle=False, augment=False)
    for x, y in iterate(data, plan):
        x, y = x.to(s["device"]), y.to(s["device"])
        with autocast_context(s["device"], s["precision"]):
            logits = model(x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x)
        logits = logits.float()
        tot += float(s["loss_fn"](logits, y)) * len(x)
        n += len(x)
        pred = (torch.sigmoid(logits) > cfg.threshold).float()
        inter += float((pred * y).sum())
        psum += float(pred.sum())
        tsum += float(y.sum())
    model.train()
    dice = 2 * inter / (psum + tsum) if psum + tsum > 0 else 1.0
    return {"val_loss": tot / n if n else float("nan"), "val_dice": dice}


def train(cache_path: str | Path, run_dir: str | Path, cfg: TrainConfig, *, device: str = "auto",
          num_workers: int = 0, restart: bool = False, log: Callable[[str], None] = print,
          progress: Any = None) -> list[dict[str, Any]]:
    """Train (or resume) a run; returns the per-epoch history. See README "Training"."""
    run = RunDir(run_dir)
    with run.lock():
        torch.set_num_threads(cfg.threads or torch.get_num_threads())
        s = setup(cache_path, cfg, device)
        ident = run_identity(s, cfg)
        st = run.start(ident, s, restart=restart, log=log)
        if st["epoch"] >= cfg.epochs:
            log(f"run {run.path} already finished ({cfg.epochs} epochs); nothing to do")
            return st["history"]
        stop = {"signal": None}
        handlers = {sig: signal.signal(sig, lambda n, f: stop.update(signal=n)) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for epoch in range(st["epoch"], cfg.epochs):
                plan = EpochPlan.make(len(s["train"]), cfg.batch_size, cfg.seed, epoch, augment=cfg.augment)
                t0, seen0 = time.perf_counter(), st["seen"]
                for step, (x, y) in enumerate(iterate(s["train"], plan, st["step"], num_workers,
                                                      s["device"].type == "cuda"), start=st["step"]):
                    loss = train_step(s, cfg, x, y)
                    st["loss_sum"] = st["loss_sum"] + loss.double() * len(x)
                    st["seen"] += len(x)
                    st["step"] = step + 1
                    if st["step"] % cfg.checkpoint_every == 0 or stop["signal"] is not None:
                        run.check_finite(st, epoch)
                        run.save_latest(s, cfg, ident, st, epoch)
                    if stop["signal"] is not None:
                        raise TrainingStopped(f"stopped by signal {stop['signal']} at epoch {epoch + 1}, step "
                                              f"{st['step']}; checkpoint saved, run the same command to resume")
                    if progress is not None and st["step"] % 10 == 0:
                        progress(epoch, st["step"], len(plan), float(st["loss_sum"]) / max(st["seen"], 1), cfg.batch_size)
                run.check_finite(st, epoch)
                secs = time.perf_counter() - t0
                row = {"epoch": epoch + 1, "train_loss": float(st["loss_sum"]) / max(st["seen"], 1),
                       **validate(s, cfg), "lr": s["opt"].param_groups[0]["lr"], "seconds": round(secs, 2),
                       "images_per_s": round((st["seen"] - seen0) / max(secs, 1e-9), 2)}
                run.end_epoch(s, cfg, ident, st, row, log)
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
        return st["history"]
