#!/usr/bin/env python
"""Training and inference throughput of the seed U-Net on CPU, per speed setting.

    python benchmarks/bench_train.py --json runs/bench_train.json [--quick]

Every variant trains the same model (base 32, depth 4, 96x96, seeded init) on the same pre-generated
batch stream; warm-up steps are excluded and repeats of the variants are interleaved (rotating order)
so that drift and other load on the machine hit all of them alike; the median repeat is reported.
Variants that need a differently configured process (glibc malloc told to keep freed memory) live
in a second worker process; the two workers take turns, never run at once.

Also measured in the same run: FLOPs per image (torch.utils.flop_counter), the machine's peak
(large torch.mm and a large channels_last 3x3 conv, fp32 and bf16; % of peak uses the larger),
inference images/s at batch 64 under torch.inference_mode, and (not with --quick) a short
fp32-vs-bf16 training run on a learnable synthetic task to check that bf16 does not hurt numerics.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from brats2d.device import cpu_supports_bf16

from common import finish
from train_variants import BASE, BY_NAME, DEPTH, INFER, SIZE, VARIANTS, Worker, interleaved


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test (< 60 s; rough numbers): one short repeat, no compile, no numerics")
    ap.add_argument("--only", help="comma-separated training variants to run (naive and brats2d are always run)")
    ap.add_argument("--no-numerics", action="store_true", help="skip the fp32-vs-bf16 training check")
    a = ap.parse_args(argv)
    repeats, block_s, warmup = (1, 0.3, 1) if a.quick else (3, 1.2, 3)
    t_start = time.perf_counter()
    workers = {m: Worker(m) for m in (False, True)}
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    res: dict[str, Any] = {"machine": {"cpu": cpu, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
                                       "torch": torch.__version__, "cpu_supports_bf16": cpu_supports_bf16(),
                                       "python": platform.python_version()},
                           "settings": {"size": SIZE, "base": BASE, "depth": DEPTH, "repeats": repeats,
                                        "block_s": block_s, "warmup_steps": warmup, "quick": a.quick},
                           "variants": {v.name: asdict(v) for v in VARIANTS}, "skipped": [], "rows": [],
                           "inference": []}
    res["machine"]["keep_freed_memory_applied"] = workers[True].call("allocator_tuned")
    res["peak_gflops"] = peak = workers[False].call("peak", a.quick)
    res["flops_per_image"] = flops = workers[False].call("flops", BASE, DEPTH, SIZE)
    keep = set(a.only.split(",")) | {"naive", "brats2d"} if a.only else None
    names = [v.name for v in VARIANTS if keep is None or v.name in keep]
    if res["machine"]["threads"] == os.cpu_count() and "threads" in names:
        names.remove("threads")
        res["skipped"].append({"name": "threads",
                               "reason": f"torch's default is already os.cpu_count() = {os.cpu_count()}"})
    if a.quick and "compile" in names:
        names.remove("compile")
        res["skipped"].append({"name": "compile", "reason": "--quick"})
    for batch in (4, 16):
        info: dict[str, Any] = {}
        for m in (False, True):
            info.update(workers[m].call("setup", [n for n in names if BY_NAME[n].malloc == m], batch, BASE, DEPTH,
                                        SIZE, warmup))
        ok = [n for n in names if "error" not in info[n]]
        jobs = {n: (BY_NAME[n].malloc, "run", max(1 if a.quick else 2, math.ceil(block_s / info[n]["step_s"])))
                for n in ok}
        secs = interleaved(workers, jobs, repeats)
        for n in names:
            row: dict[str, Any] = {"name": n, "batch": batch}
            if n in ok:
                rates = [jobs[n][2] * batch / s for s in secs[n]]
                ips = statistics.median(rates)
                gf = ips * flops["train"] / 1e9
                row.update(images_per_s=ips, gflops=gf, pct_peak=100 * gf / peak[BY_NAME[n].dtype],
                           steps_per_repeat=jobs[n][2], repeats_images_per_s=rates, dtype=BY_NAME[n].dtype,
                           timed_s=sum(secs[n]))
            else:
                row.update(images_per_s=None, gflops=None, pct_peak=None, error=info[n]["error"])
            if n == "compile" and n in ok:
                row["compile_and_warmup_s"] = info[n]["warmup_s"]
            res["rows"].append(row)
        for w in workers.values():
            w.call("free")
    ib = 64
    for m in (False, True):
        workers[m].call("infer_setup", [v.name for v in INFER if v.malloc == m], ib, BASE, DEPTH, SIZE)
    ijobs = {v.name: (v.malloc, "infer_run", 1 if a.quick else 3) for v in INFER}
    secs = interleaved(workers, ijobs, repeats)
    for v in INFER:
        ips = statistics.median(ijobs[v.name][2] * ib / s for s in secs[v.name])
        gf = ips * flops["inference"] / 1e9
        res["inference"].append({"name": v.name, "batch": ib, "images_per_s": ips, "gflops": gf,
                                 "pct_peak": 100 * gf / peak[v.dtype], "dtype": v.dtype})
    for w in workers.values():
        w.call("free")
    rate = {(r["name"], r["batch"]): r["images_per_s"] for r in res["rows"]}
    res["speedup_vs_naive"] = {str(b): rate[("brats2d", b)] / rate[("naive", b)] for b in (4, 16)}
    if not (a.quick or a.no_numerics):
        res["numerics"] = workers[True].call("numerics", 150, 8, 64)
    for w in workers.values():
        w.close()
    return finish(res, t_start, report, a.json)


def report(res: dict[str, Any]) -> None:
    """One table of training rows, then inference rows, peaks and the numerics check."""
    from rich.console import Console
    from rich.table import Table

    p, naive = res["peak_gflops"], {r["batch"]: r["images_per_s"] for r in res["rows"] if r["name"] == "naive"}
    t = Table(title=f"U-Net base {BASE} depth {DEPTH}, {SIZE}x{SIZE} -- {res['machine']['cpu']}, "
                    f"{res['machine']['threads']} threads, torch {res['machine']['torch']}")
    for c in ("mode", "variant", "batch", "images/s", "x naive", "GFLOP/s", "% peak"):
        t.add_column(c, justify="left" if c in ("mode", "variant") else "right")
    for r in res["rows"]:
        if r["images_per_s"] is None:
            t.add_row("train", r["name"], str(r["batch"]), "error", "", "", r["error"][:40])
            continue
        t.add_row("train", r["name"], str(r["batch"]), f"{r['images_per_s']:.1f}",
                  f"{r['images_per_s'] / naive[r['batch']]:.2f}",
                  f"{r['gflops']:.0f}", f"{r['pct_peak']:.0f}% {r['dtype']}")
    for r in res["inference"]:
        t.add_row("infer", r["name"], str(r["batch"]), f"{r['images_per_s']:.1f}", "", f"{r['gflops']:.0f}",
                  f"{r['pct_peak']:.0f}% {r['dtype']}")
    con = Console(width=max(100, Console().width))
    con.print(t)
    con.print(f"peak GFLOP/s: fp32 {p['fp32']:.0f} (mm {p['mm_fp32']:.0f}, conv {p['conv_fp32']:.0f}), "
              f"bf16 {p['bf16']:.0f} (mm {p['mm_bf16']:.0f}, conv {p['conv_bf16']:.0f}); "
              f"train {res['flops_per_image']['train'] / 1e9:.2f} GFLOP/image")
    con.print("brats2d vs naive: " + ", ".join(f"batch {b}: {x:.2f}x" for b, x in res["speedup_vs_naive"].items()))
    for s in res["skipped"]:
        con.print(f"skipped {s['name']}: {s['reason']}")
    for r in res.get("numerics", {}).get("runs", []):
        con.print(f"numerics {r['precision']} seed {r['seed']}: train loss {r['final_train_loss']:.4f}, "
                  f"val loss {r['val_loss']:.4f}, val Dice {r['val_dice']:.4f}")
    con.print(f"total {res['total_s']:.0f} s")


if __name__ == "__main__":
    main()
