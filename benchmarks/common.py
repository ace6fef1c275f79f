"""What every benchmark script shares: torch's thread count for a block, the machine (CPU name, matmul
peak), FLOPs per image of a model, and the end (total time, the printed table, the JSON file)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """torch.set_num_threads(n) inside the block (n = 0: leave torch's setting), restored afterwards."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def finish(res: dict[str, Any], t_start: float, report: Callable[[dict[str, Any]], None],
           json_path: Path | None) -> dict[str, Any]:
    """Record total_s, print the report, write `json_path` (atomically, parents created) when given."""
    from brats2d.files import write_json

    res["total_s"] = time.perf_counter() - t_start
    report(res)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(json_path, res)
    return res


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                        platform.processor())
    except OSError:
        return platform.processor()


def best_gflops(fn: Callable[[], object], flops: float, min_s: float) -> float:
    """GFLOP/s of the fastest call of `fn` (one warm-up call, then repeats for `min_s` seconds, at least 2)."""
    fn()
    best, reps, t_end = 0.0, 0, time.perf_counter() + min_s
    while reps < 2 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        best, reps = max(best, flops / (time.perf_counter() - t0) / 1e9), reps + 1
    return best


def matmul_peak(n: int = 2048, min_s: float = 1.0) -> dict[str, float | None]:
    """The machine's peak GFLOP/s, all torch threads: an n x n torch.mm in fp32, and in bf16 only where the
    CPU computes bf16 natively (brats2d.device.cpu_supports_bf16, which also decides `precision auto`);
    elsewhere bf16 is None (emulated bf16 is slower than fp32 and no peak)."""
    from brats2d.device import cpu_supports_bf16

    out: dict[str, float | None] = {"n": float(n)}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if dt is torch.bfloat16 and not cpu_supports_bf16():
            out[name] = None
            continue
        a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
        out[name] = best_gflops(lambda: torch.mm(a, b), 2.0 * n ** 3, min_s)
    return out


def flops_per_image(model: torch.nn.Module, shape: tuple[int, int, int], train: bool) -> float:
    """FLOPs (torch.utils.flop_counter: 2 per multiply-add of convolutions and matmuls) of one image of
    shape (C, H, W) through `model`: forward + backward of a summed output in training mode (`train`),
    else a forward pass in eval mode. The model's mode is restored."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    x = torch.randn(1, *shape)
    try:
        if train:
            model.train()
            with FlopCounterMode(display=False) as fc:
                model(x).float().sum().backward()
            model.zero_grad(set_to_none=True)
        else:
            model.eval()
            with FlopCounterMode(display=False) as fc, torch.inference_mode():
                model(x)
    finally:
        model.train(was)
    return float(fc.get_total_flops())
