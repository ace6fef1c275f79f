"""The training-loop variants bench_train.py times, and the worker processes that time them.

Each Variant is one way of running the seed U-Net's training step (channels_last, bf16, compile, ...);
a Bench (in a spawned Worker process) builds them on a shared batch stream and times blocks of steps."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from brats2d.model import build_model
from brats2d.config import TrainConfig
from brats2d.device import keep_freed_memory, resolve_precision

from common import num_threads


SIZE, BASE, DEPTH = 96, 32, 4


@dataclass(frozen=True)
class Variant:
    """One way of running the training loop (the seed's loop is all defaults)."""

    name: str
    channels_last: bool = False
    bf16: bool = False  # autocast(bfloat16) around the forward; the loss in fp32 from the logits
    compile: bool = False  # torch.compile(model)
    threads: int = 0  # torch.set_num_threads(threads) while timing; 0 = leave torch's default
    sync: bool = True  # loss.item() every step (else one sync per timed block)
    set_to_none: bool = False  # optimizer.zero_grad(set_to_none=...)
    logits_loss: bool = False  # BCEWithLogits on float32 logits (else BCELoss on sigmoid outputs)
    malloc: bool = False  # brats2d.device.keep_freed_memory() in the worker process
    fused_adam: bool = False  # torch.optim.Adam(fused=True)

    @property
    def dtype(self) -> str:
        return "bf16" if self.bf16 else "fp32"


_FAST = dict(sync=False, set_to_none=True, logits_loss=True)
# The product's defaults as they resolve on this machine: `--precision auto` is bf16 only on CPUs with
# native bf16 (emulated bf16 measured ~3x slower than fp32 on an AVX-512 CPU without it).
_D = TrainConfig()
_PRODUCT = dict(channels_last=_D.channels_last, bf16=resolve_precision(torch.device("cpu"), _D.precision) == "bf16",
                malloc=True)
VARIANTS = [
    Variant("naive"),
    Variant("channels_last", channels_last=True),
    Variant("bf16", bf16=True, logits_loss=True),
    Variant("channels_last+bf16", channels_last=True, bf16=True, logits_loss=True),
    Variant("compile", compile=True),
    Variant("threads", threads=os.cpu_count() or 1),
    Variant("no-sync", **_FAST),
    Variant("malloc", malloc=True),
    Variant("channels_last+bf16+no-sync", channels_last=True, bf16=True, **_FAST),
    Variant("brats2d", **_PRODUCT, **_FAST),  # the product default
    Variant("brats2d+fused-adam", **_PRODUCT, fused_adam=True, **_FAST),
]
BY_NAME = {v.name: v for v in VARIANTS}
INFER = [Variant("fp32"), Variant("fp32+channels_last", channels_last=True), Variant("bf16", bf16=True),
         Variant("bf16+channels_last", channels_last=True, bf16=True),
         Variant("brats2d", **_PRODUCT)]


def make_batches(n: int, batch: int, size: int = SIZE, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """n pre-generated batches: images (B, 1, S, S) float32 uniform in [0, 1), masks 0/1 float32."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 1, size, size)
    return [(torch.rand(shape, generator=g), (torch.rand(shape, generator=g) > 0.5).float()) for _ in range(n)]


class Trainer:
    """Model + Adam(1e-3) + clip_grad_norm_(1.0) stepping over a fixed batch stream, as `v` says."""

    def __init__(self, v: Variant, batches: list[tuple[Tensor, Tensor]], base: int = BASE, depth: int = DEPTH,
                 seed: int = 0, lr: float = 1e-3, cosine_steps: int = 0) -> None:
        if v.bf16 and not v.logits_loss:
            raise ValueError("bf16 variants take the loss from float32 logits")
        torch.manual_seed(seed)
        self.v, self.i, self.losses = v, 0, []
        self.model = build_model(batches[0][0].shape[1], batches[0][1].shape[1], base, depth, 0.0)
        fmt = torch.channels_last if v.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=fmt).train()
        self.batches = [(x.contiguous(memory_format=fmt), y) for x, y in batches]
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr, fused=v.fused_adam or None)
        self.fwd = torch.compile(self.model) if v.compile else self.model
        self.sched = torch.optim.lr_scheduler.LambdaLR(  # cosine decay to 0 over cosine_steps, else constant
            self.opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cosine_steps) / cosine_steps))
            if cosine_steps else 1.0)

    def step(self) -> Tensor:
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.v.bf16):
            out = self.fwd(x)
        if self.v.logits_loss:
            loss = F.binary_cross_entropy_with_logits(out.float(), y)
        else:
            loss = F.binary_cross_entropy(torch.sigmoid(out), y)
        self.opt.zero_grad(set_to_none=self.v.set_to_none)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        if self.v.sync:
            self.losses.append(loss.item())
        return loss.detach()

    def run(self, steps: int) -> float:
        """Seconds for `steps` steps, including the final host sync."""
        with num_threads(self.v.threads):
            t0 = time.perf_counter()
            for _ in range(steps):
                loss = self.step()
            loss.item()
            return time.perf_counter() - t0


def measure_variant(variant: str | Variant, batch: int = 4, steps: int = 3, base: int = BASE, depth: int = DEPTH,
                    size: int = SIZE, warmup: int = 1) -> dict[str, Any]:
    """Train one variant in this process (no allocator change) and return its images/s row."""
    v = BY_NAME[variant] if isinstance(variant, str) else variant
    tr = Trainer(v, make_batches(4, batch, size), base, depth)
    if warmup:
        tr.run(warmup)
    dt = tr.run(steps)
    return {"name": v.name, "batch": batch, "steps": steps, "seconds": dt, "images_per_s": steps * batch / dt}


def _best_rate(fn, flops: float, min_s: float) -> float:
    fn()
    best, t_end = 0.0, time.perf_counter() + min_s
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        best = max(best, flops / (time.perf_counter() - t0) / 1e9)
    return best


class Bench:
    """Everything a worker process does; methods are called by name from the parent."""

    def __init__(self, malloc: bool = False) -> None:
        self.malloc = keep_freed_memory() if malloc else False
        self.trainers: dict[str, Trainer] = {}
        self.infer: dict[str, tuple[torch.nn.Module, Tensor, Variant]] = {}

    def allocator_tuned(self) -> bool:
        return self.malloc

    def peak(self, quick: bool) -> dict[str, float]:
        """GFLOP/s of a large torch.mm and a large channels_last conv3x3, fp32 and bf16 (best repeat)."""
        n, min_s, out = (1024 if quick else 2048), (0.3 if quick else 1.5), {}
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
            out[f"mm_{name}"] = _best_rate(lambda: torch.mm(a, b), 2 * n ** 3, min_s)
            x = torch.randn(16, 128, 48, 48, dtype=dt).contiguous(memory_format=torch.channels_last)
            w = torch.randn(128, 128, 3, 3, dtype=dt).contiguous(memory_format=torch.channels_last)
            out[f"conv_{name}"] = _best_rate(lambda: F.conv2d(x, w, padding=1), 2 * 16 * 48 * 48 * 128 * 128 * 9, min_s)
            out[name] = max(out[f"mm_{name}"], out[f"conv_{name}"])
        return out

    def flops(self, base: int, depth: int, size: int) -> dict[str, float]:
        """FLOPs per image: forward+backward (training) and forward only (inference)."""
        torch.manual_seed(0)
        model = build_model(1, 1, base, depth, 0.0)
        x, y = make_batches(1, 2, size)[0]
        with FlopCounterMode(display=False) as fc:
            F.binary_cross_entropy_with_logits(model(x), y).backward()
        train = fc.get_total_flops() / 2
        with FlopCounterMode(display=False) as fc, torch.inference_mode():
            model.eval()(x)
        return {"train": train, "inference": fc.get_total_flops() / 2}

    def setup(self, names: list[str], batch: int, base: int, depth: int, size: int, warmup: int) -> dict[str, Any]:
        """Build and warm up trainers; per variant the last warm-up step's seconds or the error."""
        self.trainers, info, stream = {}, {}, make_batches(8, batch, size)
        for name in names:
            t0 = time.perf_counter()
            try:
                tr = Trainer(BY_NAME[name], stream, base, depth)
                for _ in range(warmup - 1):
                    tr.run(1)
                info[name] = {"step_s": tr.run(1), "warmup_s": time.perf_counter() - t0}
                self.trainers[name] = tr
            except Exception as e:  # noqa: BLE001 -- e.g. torch.compile without a C++ compiler
                first = (str(e).strip().splitlines() or [""])[0][:300]
                info[name] = {"error": f"{type(e).__name__}: {first}"}
        return info

    def run(self, name: str, steps: int) -> float:
        return self.trainers[name].run(steps)

    def free(self) -> None:
        self.trainers, self.infer = {}, {}

    def infer_setup(self, names: list[str], batch: int, base: int, depth: int, size: int) -> None:
        x = make_batches(1, batch, size)[0][0]
        for v in (next(i for i in INFER if i.name == n) for n in names):
            torch.manual_seed(0)
            fmt = torch.channels_last if v.channels_last else torch.contiguous_format
            model = build_model(1, 1, base, depth, 0.0).to(memory_format=fmt).eval()
            self.infer[v.name] = (model, x.contiguous(memory_format=fmt), v)
            self.infer_run(v.name, 2)  # warm-up

    def infer_run(self, name: str, steps: int) -> float:
        model, x, v = self.infer[name]
        t0 = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=v.bf16):
            for _ in range(steps):
                p = torch.sigmoid(model(x).float())
        p.sum().item()
        return time.perf_counter() - t0

    def numerics(self, steps: int, batch: int, size: int, seeds: tuple[int, ...] = (0, 1)) -> dict[str, Any]:
        """fp32 vs bf16 (else the brats2d settings) on a learnable task: final loss and held-out Dice."""
        x, y = synthetic_task(steps * batch + 64, size, seed=123)
        train = [(x[i:i + batch], y[i:i + batch]) for i in range(0, steps * batch, batch)]
        xv, yv = x[-64:].contiguous(memory_format=torch.channels_last), y[-64:]
        res: dict[str, Any] = {"task": f"mask = blurred noise image > its median; {steps} steps, batch {batch}, "
                               f"{size}x{size}, base {BASE}, depth {DEPTH}, Adam 1e-3 cosine; channels_last",
                               "runs": []}
        for prec in ("fp32", "bf16"):
            v = Variant(prec, channels_last=True, bf16=prec == "bf16", sync=True, set_to_none=True, logits_loss=True)
            for seed in seeds:
                tr = Trainer(v, train[seed:] + train[:seed], BASE, DEPTH, seed=seed, cosine_steps=steps)
                t0 = time.perf_counter()
                tr.run(steps)
                tr.model.eval()
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=v.bf16):
                    logits = tr.model(xv).float()
                pred = (logits > 0).float()
                dice = float(2 * (pred * yv).sum() / (pred.sum() + yv.sum()))
                res["runs"].append({"precision": prec, "seed": seed,
                                    "final_train_loss": statistics.mean(tr.losses[-10:]),
                                    "val_loss": float(F.binary_cross_entropy_with_logits(logits, yv)),
                                    "val_dice": dice, "seconds": time.perf_counter() - t0})
        dice = {(r["precision"], r["seed"]): r["val_dice"] for r in res["runs"]}
        res["bf16_minus_fp32_dice"] = [dice["bf16", s] - dice["fp32", s] for s in seeds]  # same seed
        res["fp32_seed_spread_dice"] = max(dice["fp32", s] for s in seeds) - min(dice["fp32", s] for s in seeds)
        return res


def synthetic_task(n: int, size: int, seed: int = 0, sigma: float = 3.0) -> tuple[Tensor, Tensor]:
    """Images: uniform noise (n, 1, S, S); masks: the Gaussian-blurred image above its median (n, 1, S, S) 0/1."""
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(n, 1, size, size, generator=g)
    r = int(3 * sigma)
    k1 = torch.exp(-torch.arange(-r, r + 1.0) ** 2 / (2 * sigma ** 2))
    k = (k1[:, None] * k1[None, :] / k1.sum() ** 2)[None, None]
    blur = F.conv2d(F.pad(img, (r, r, r, r), mode="reflect"), k)
    return img, (blur > blur.flatten(1).median(dim=1).values[:, None, None, None]).float()


def _worker_main(conn: Any, malloc: bool) -> None:
    bench = Bench(malloc)
    while (msg := conn.recv()) is not None:
        method, args = msg
        try:
            conn.send(("ok", getattr(bench, method)(*args)))
        except Exception as e:  # noqa: BLE001
            conn.send(("err", f"{type(e).__name__}: {e}"))


class Worker:
    """A spawned process holding a Bench; `call` runs one of its methods and waits for the result."""

    def __init__(self, malloc: bool) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, malloc), daemon=True)
        self.proc.start()

    def call(self, method: str, *args: Any) -> Any:
        self.conn.send((method, args))
        status, value = self.conn.recv()
        if status == "err":
            raise RuntimeError(value)
        return value

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(timeout=30)


def interleaved(workers: dict[bool, Worker], jobs: dict[str, tuple[bool, str, int]],
                repeats: int) -> dict[str, list[float]]:
    """Seconds per block for each job name -> (worker key, method, steps), in rotating order."""
    names, out = list(jobs), {n: [] for n in jobs}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            malloc, method, steps = jobs[name]
            out[name].append(workers[malloc].call(method, name, steps))
    return out
