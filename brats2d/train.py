"""`brats2d train`: the training loop, resumable bit-exactly from any checkpoint.

State that decides the result -- weights, optimizer, scheduler, grad scaler, RNGs, (epoch, step) -- is
in every checkpoint; the data order and augmentation are a pure function of (seed, epoch), so a run
killed at any step and resumed replays exactly the same computation.

Under torchrun every process runs `train`: the model is wrapped in DistributedDataParallel (gloo on CPU,
nccl on CUDA), each rank trains on a strided shard of the same epoch plan with `batch_size` images per
process (global batch = batch_size x world size; the learning rate is not rescaled), and rank 0 alone
locks and writes the run folder. Checkpoints also hold ranks 1.. RNG states, so resuming with the same
world size is exact too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import cache, checkpoint, config as cfgmod, distributed
from .config import ConfigError, PredictConfig, TrainConfig
from .dataset import EpochPlan, SliceCache, iterate
from .losses import make_loss
from .model import build_model
from .ood import recorded_profile
from .report import plot_curves
from .rundir import RunDir, TrainingStopped, read_predict_record, write_predict_record
from .trainstate import Trainer, TrainState, best_checkpoint, latest_checkpoint, restore, select_best
from .device import autocast_context, keep_freed_memory, resolve_device, resolve_precision


def setup(cache_path: str | Path, cfg: TrainConfig, device: str | torch.device = "auto",
          world_size: int = 1) -> Trainer:
    """Model, optimizer, scheduler, scaler, loss and data for a run (fresh state, seeded).

    Every rank seeds identically, so every rank builds the same initial weights. `world_size` > 1 sizes
    the LR schedule for one rank's shard of each epoch and, with cfg.sync_bn, uses SyncBatchNorm.
    """
    meta = cache.read_meta(cache_path)
    if cfg.intensity_p > 0 and meta.config.get("norm") == "zscore":
        raise ConfigError(f"intensity_p: the gamma/brightness augmentation needs images in [0, 1], but {cache_path} "
                          "holds z-scores (norm zscore); use --intensity-p 0 or a minmax/percentile cache")
    dev = resolve_device(str(device))
    if dev.type == "cpu":
        keep_freed_memory()
    torch.manual_seed(cfg.seed)
    C, K = meta.image_shape[0], meta.mask_channels
    model = build_model(C, K, cfg.base_channels, cfg.depth, cfg.dropout, cfg.norm_layer).to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and world_size > 1:
        # Same parameters and state_dict keys: checkpoints load into a plain model unchanged.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_data = SliceCache(cache_path, "train")
    if len(train_data) == 0:
        raise cache.CacheError(f"{cache_path}: the train split holds no slices (nothing to train on)")
    plan = EpochPlan.make(len(train_data), cfg.batch_size, cfg.seed, 0, augment=False).shard(0, world_size)
    steps = cfg.epochs * len(plan)  # every rank runs len(plan) steps per epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))) if cfg.schedule == "cosine"
        else (lambda s: 1.0))
    precision = resolve_precision(dev, cfg.precision)
    scaler = torch.amp.GradScaler(dev.type, enabled=(precision == "fp16"))
    loss_fn = make_loss(cfg.loss, smooth=cfg.dice_smooth, gamma=cfg.focal_gamma,
                        alpha=None if cfg.focal_alpha < 0 else cfg.focal_alpha, dice_batch=cfg.dice_batch)
    return Trainer(meta=meta, device=dev, model=model, opt=opt, sched=sched, scaler=scaler, precision=precision,
                   loss_fn=loss_fn, train=train_data, val=SliceCache(cache_path, "val"))


def run_identity(tr: Trainer, cfg: TrainConfig, world_size: int = 1) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: every setting and the exact cache."""
    m = tr.meta
    return {"train": cfgmod.to_dict(cfg), "cache": {"config": m.config, "counts": m.counts,
            "checksums": m.checksums}, "model": {"in_channels": m.image_shape[0], "out_channels": m.mask_channels},
            "world_size": world_size, "cache_path": str(Path(m.path).resolve()), "inputs": recorded_profile(m.patients, m.splits.get("train", []))}


def train_step(tr: Trainer, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimizer step on images x (B, C, S, S) and masks y (B, K, S, S); returns the loss as a
    detached tensor (no host sync)."""
    model, opt, scaler = tr.model, tr.opt, tr.scaler
    x = x.to(tr.device, non_blocking=True)
    y = y.to(tr.device, non_blocking=True)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast_context(tr.device, tr.precision):
        logits = tr.net(x)
    loss = tr.loss_fn(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.grad_clip > 0:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(opt)
    scaler.update()
    tr.sched.step()
    return loss.detach()


@torch.inference_mode()
def validate(tr: Trainer, cfg: TrainConfig, batch_size: int = 64,
             d: distributed.Dist | None = None) -> dict[str, float | None]:
    """Validation loss and pooled Dice (the seed's way: over all pixels of the split) at cfg.threshold;
    both None when the cache has no validation slices (then the last epoch counts as the best).

    Under torchrun each rank scores a disjoint shard (no padding) and the five sums are all-reduced, so
    every rank gets the same numbers (and agrees on the best epoch). Call `distributed.broadcast_buffers`
    first so all ranks evaluate rank 0's BatchNorm statistics.
    """
    model, data = tr.model, tr.val
    if len(data) == 0:
        return {"val_loss": None, "val_dice": None}
    model.eval()
    tot, n, inter, psum, tsum = 0.0, 0, 0.0, 0.0, 0.0
    plan = EpochPlan.make(len(data), batch_size, 0, 0, shuffle=False, augment=False)
    if d is not None:
        plan = plan.shard(d.rank, d.world, pad=False)
    for x, y in iterate(data, plan):
        x, y = x.to(tr.device), y.to(tr.device)
        with autocast_context(tr.device, tr.precision):
            logits = model(x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x)
        logits = logits.float()
        tot += float(tr.loss_fn(logits, y)) * len(x)
        n += len(x)
        pred = (torch.sigmoid(logits) > cfg.threshold).float()
        inter += float((pred * y).sum())
        psum += float(pred.sum())
        tsum += float(y.sum())
    model.train()
    if d is not None and d.enabled:
        tot, n_, inter, psum, tsum = distributed.all_sum(d, [tot, n, inter, psum, tsum]).tolist()
        n = int(n_)
    dice = 2 * inter / (psum + tsum) if psum + tsum > 0 else 1.0
    return {"val_loss": tot / n if n else float("nan"), "val_dice": dice}


def _set_threads(cfg: TrainConfig, d: distributed.Dist, dev: torch.device) -> None:
    if cfg.threads:
        n = cfg.threads
    elif d.enabled and dev.type == "cpu":
        # torchrun sets OMP_NUM_THREADS=1 per process; share this node's cores among its processes instead.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        n = max(1, cores // d.local_world)
    else:
        n = torch.get_num_threads()
    torch.set_num_threads(n)


def _share_start(d: distributed.Dist, tr: Trainer, cfg: TrainConfig, st: TrainState | None) -> TrainState:
    """Give every rank rank 0's starting state (fresh or resumed); returns this rank's state.

    Only rank 0 reads the run folder, so the run folder need not be on a shared filesystem. Partial
    epoch sums (loss_sum, seen) stay with rank 0, the others start them at zero: their all-reduce is
    still the epoch's total.
    """
    sent = distributed.to_cpu({"st": dataclasses.asdict(st), **tr.state_dicts()}) if d.is_rank0 else None
    sent = distributed.broadcast_object(d, sent)
    if d.is_rank0:
        assert st is not None
        return st
    tr.load_state_dicts(sent)
    st = TrainState(**{**sent["st"], "loss_sum": torch.zeros((), dtype=torch.float64), "seen": 0})
    rngs = st.rng_ranks or []
    if len(rngs) >= d.rank:
        checkpoint.set_rng_state(rngs[d.rank - 1])
    else:  # fresh run (or a checkpoint without them): distinct but reproducible dropout per rank
        torch.manual_seed(distributed.rank_seed(cfg.seed, d.rank, st.epoch, st.step))
    return st


def _save_point(d: distributed.Dist, run: RunDir, tr: Trainer, ident: dict[str, Any], st: TrainState,
                epoch: int) -> None:
    """Mid-epoch checkpoint (on every rank at the same step; rank 0 writes it)."""
    if not d.enabled:
        run.check_finite(st.loss_sum, epoch, st.step)
        run.save_latest(latest_checkpoint(tr, st, ident, epoch))
        return
    # Fold the partial sums into rank 0, so the checkpoint holds the whole job's; all ranks check them.
    tot = distributed.all_sum(d, [st.loss_sum, st.seen])
    run.check_finite(tot[0], epoch, st.step)
    zero = torch.zeros((), dtype=torch.float64)
    st.loss_sum = (tot[0] if d.is_rank0 else zero).to(st.loss_sum.device)
    st.seen = int(tot[1]) if d.is_rank0 else 0
    rngs = distributed.gather_objects(d, checkpoint.rng_state())
    if d.is_rank0:
        assert rngs is not None
        run.save_latest(latest_checkpoint(tr, st, ident, epoch, {"rng_ranks": rngs[1:]}))


def _end_epoch(run: RunDir, tr: Trainer, cfg: TrainConfig, ident: dict[str, Any], st: TrainState,
               row: dict[str, Any], log: Callable[[str], None], extra: dict[str, Any] | None) -> None:
    """Rank 0: keep the model if it is the best so far, log the epoch, checkpoint the start of the next
    epoch, write history.csv and curves.png."""
    is_best, score = select_best(cfg, row, st.best)
    if is_best:
        st.best = score
        run.save_best(best_checkpoint(tr, row, ident))
    val = ("no validation" if row["val_dice"] is None else
           "val_loss {val_loss:.4f}  val_dice {val_dice:.4f}".format(**row))
    run.emit(log, f"epoch {row['epoch']}/{cfg.epochs}  train_loss {row['train_loss']:.4f}  {val}  "
             f"{row['images_per_s']:.1f} img/s  {row['seconds']:.0f}s" + ("  * best" if is_best else ""))
    st.finish_epoch(row)
    run.save_latest(latest_checkpoint(tr, st, ident, row["epoch"], extra))
    run.write_history(st.history)
    plot_curves(st.history, run.path / "curves.png")


def _record_predict(run_dir: Path, predict: PredictConfig | None) -> None:
    if predict is not None or read_predict_record(run_dir) is None:
        write_predict_record(run_dir, predict or PredictConfig())


def train(cache_path: str | Path, run_dir: str | Path, cfg: TrainConfig, *, predict: PredictConfig | None = None,
          device: str = "auto", num_workers: int = 0, restart: bool = False, log: Callable[[str], None] = print,
          progress: Any = None) -> list[dict[str, Any]]:
    """Train (or resume) a run; returns the per-epoch history. See docs/pipeline.md, "Training".

    `predict` (the predict settings of the run's recipe) is recorded in RUN/predict.json once the run
    starts or resumes, for eval and predict; None records the seed's where the run has no record yet.

    Under torchrun (RANK, WORLD_SIZE, ... set) every process calls this and gets the same history;
    `log` and `progress` are used on rank 0 only.
    """
    d, dev = distributed.init(device)
    try:
        if d.enabled and cfg.sync_bn and dev.type != "cuda":
            raise ConfigError("sync_bn: torch's SyncBatchNorm runs on CUDA only; use --no-sync-bn with --device cpu")
        if not d.is_rank0:
            log, progress = (lambda m: None), None
        return _train(d, dev, cache_path, run_dir, cfg, predict, num_workers, restart, log, progress)
    finally:
        distributed.cleanup(d)


def _train(d: distributed.Dist, dev: torch.device, cache_path: str | Path, run_dir: str | Path, cfg: TrainConfig,
           predict: PredictConfig | None, num_workers: int, restart: bool, log: Callable[[str], None],
           progress: Any) -> list[dict[str, Any]]:
    run = RunDir(run_dir)
    with contextlib.ExitStack() as held:
        distributed.on_rank0(d, lambda: held.enter_context(run.lock()))
        _set_threads(cfg, d, dev)
        tr = setup(cache_path, cfg, dev, d.world)
        ident = run_identity(tr, cfg, d.world)
        # Rank 0: a fresh state, or the run folder's latest checkpoint loaded into `tr`.
        st = distributed.on_rank0(d, lambda: restore(tr, run.start(ident, restart=restart, log=log)))
        distributed.on_rank0(d, lambda: _record_predict(run.path, predict))
        if d.enabled:
            st = _share_start(d, tr, cfg, st)
            tr.ddp = torch.nn.parallel.DistributedDataParallel(
                tr.model, device_ids=[dev.index] if dev.type == "cuda" else None, gradient_as_bucket_view=True)
        assert st is not None
        st.rng_ranks = None
        if st.epoch >= cfg.epochs:
            log(f"run {run.path} already finished ({cfg.epochs} epochs); nothing to do")
            return st.history
        stop: list[int] = []  # the signal received, if any
        handlers = {sig: signal.signal(sig, lambda n, f: stop.append(n)) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for epoch in range(st.epoch, cfg.epochs):
                plan = EpochPlan.make(len(tr.train), cfg.batch_size, cfg.seed, epoch, augment=cfg.augment,
                                      intensity=(cfg.intensity_p, cfg.intensity_gamma, cfg.intensity_scale),
                                      spatial=(cfg.spatial_p, cfg.spatial_scale, cfg.spatial_rotate),
                                      blank=(cfg.modality_dropout, len(tr.train.meta.config["modalities"])),
                                      ).shard(d.rank, d.world)
                t0, seen0 = time.perf_counter(), st.seen
                for step, (x, y) in enumerate(iterate(tr.train, plan, st.step, num_workers, tr.device.type == "cuda"),
                                              start=st.step):
                    loss = train_step(tr, cfg, x, y)
                    st.loss_sum = st.loss_sum + loss.double() * len(x)
                    st.seen += len(x)
                    st.step = step + 1
                    # All ranks must stop at the same step (a tiny CPU all-reduce per step under torchrun).
                    stopping = distributed.any_true(d, bool(stop))
                    if st.step % cfg.checkpoint_every == 0 or stopping:
                        _save_point(d, run, tr, ident, st, epoch)
                    if stopping:
                        raise TrainingStopped(f"stopped by signal {stop[0] if stop else 'on another rank'} at epoch "
                                              f"{epoch + 1}, step {st.step}; checkpoint saved, run the same "
                                              f"command to resume")
                    if progress is not None and st.step % 10 == 0:
                        progress(epoch, st.step, len(plan), float(st.loss_sum) / max(st.seen, 1),
                                 cfg.batch_size * d.world)
                secs = time.perf_counter() - t0
                loss_sum, seen, done = st.loss_sum, st.seen, st.seen - seen0
                if d.enabled:
                    loss_sum, seen, done = distributed.all_sum(d, [loss_sum, seen, done]).tolist()
                    distributed.broadcast_buffers(d, tr.model)
                run.check_finite(torch.as_tensor(loss_sum), epoch, st.step)
                row = {"epoch": epoch + 1, "train_loss": float(loss_sum) / max(seen, 1),
                       **validate(tr, cfg, d=d), "lr": tr.opt.param_groups[0]["lr"], "seconds": round(secs, 2),
                       "images_per_s": round(done / max(secs, 1e-9), 2)}
                rngs = distributed.gather_objects(d, checkpoint.rng_state()) if d.enabled else None
                if d.is_rank0:
                    _end_epoch(run, tr, cfg, ident, st, row, log, {"rng_ranks": rngs[1:]} if rngs else None)
                else:
                    st.finish_epoch(row)
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
        distributed.barrier(d)  # return only once rank 0 has written the last epoch's files
        return st.history
