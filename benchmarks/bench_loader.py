#!/usr/bin/env python
"""How fast training data arrives: slices/s of augmented 96x96 float32 batches, per loader.

    python benchmarks/bench_loader.py --json runs/bench_loader.json [--quick] [--slices 20000] [--big-gb 2]

Every row yields what the training loop consumes: (B, 1, 96, 96) float32 images and masks, each sample
under a random dihedral transform (flips + quarter-turns), at batch 4 and 16. The cache is written once
through brats2d.cache.CacheWriter (float16 images, uint8 masks: the product's format) from seeded random
pixels; it was just written, so every row reads it from a warm OS page cache (a cold disk is not measured).
In-process rows run with --threads torch threads (default 1: loading is serial work) except one. Rows:

  numpy-bound       brats2d's gather (fancy index + augmentation + float32) on a copy of the arrays in RAM:
                    the upper bound for any loader of this cache.
  brats2d           SliceCache + iterate(num_workers=0): the product path (memmap, one gather per batch).
  brats2d-torchthreads  the same at torch's default thread count, as `brats2d train` runs it: the float32
                    conversion of a batch (> 32768 elements) is then an OpenMP parallel region, which stalls
                    whenever a thread of its team is descheduled (other processes on the cores).
  brats2d-2workers  iterate(num_workers=2): DataLoader workers (1 torch thread each), same batches; the first
                    batch (worker start-up, paid every epoch) is left out of the rate: first_batch_s.
  h5py-per-slice    the naive HDF5 loader: h5py dataset indexing per slice (image and mask), then the same
                    augmentation. The baseline of the `x h5py` ratios.
  nifti-decode      no cache: per slice, nibabel decodes the patient's full FLAIR and seg, min-max normalizes,
                    takes slice z and resizes it to 96x96 (brats2d.preprocess.resize_slices); full-size
                    (240x240x155) synthetic patients.
  monai-cache       MONAI CacheDataset (cache_rate 1) + DataLoader (main process, same visiting order) with
                    RandFlipd x2, RandRotate90d and EnsureTyped(float32) on numpy dict items: the peer loader.

Rows of one batch size take turns (rotating order) over `repeats` epochs, repeat r using EpochPlan epoch r;
each row is warmed up first and timed until its epoch ends or budget_s passes; the median is reported.
A seed U-Net step (brats2d.train.setup + train_step: base 32, depth 4, channels_last, torch's default
threads; fp32, and bf16 where the CPU has it natively) is timed in a spawned process to give the loader's
cost as a % of a step. --big-gb writes a second cache of that size (one random block repeated) and, in a
fresh spawned process, iterates one full brats2d epoch, sampling VmRSS and its RssAnon / RssFile split in
/proc/self/status: mapped cache pages count as RssFile (page cache, shared, reclaimable by the kernel);
RssAnon is the memory the loader really holds.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brats2d.dataset import EpochPlan, SliceCache, iterate
from brats2d.device import cpu_supports_bf16, resolve_precision

from common import finish, num_threads
from loaders import (ROWS, SIZE, h5py_loader, in_subprocess, monai_loader, nifti_loader, numpy_loader,
                     rss_epoch, step_ms, timed, write_cache)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="smoke test (< 60 s, rough numbers): 1000 slices, no big cache")
    ap.add_argument("--cache", type=Path, help="benchmark this brats2d cache's train split instead of a "
                    "synthetic one (e.g. the output of brats2d preprocess)")
    ap.add_argument("--slices", type=int, help="slices in the benchmark cache (default 20000; --quick 1000)")
    ap.add_argument("--big-gb", type=float, help="size of the RSS-check cache in GB, 0 = skip (default 2; --quick 0)")
    ap.add_argument("--step-ms", type=float, help="batch-4 train step in ms: skip measuring the step")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the in-process loader rows (default 1)")
    ap.add_argument("--workdir", type=Path, help="where caches go (default: a temp folder, removed afterwards)")
    a = ap.parse_args(argv)
    n = a.slices or (1000 if a.quick else 20000)
    big_gb = a.big_gb if a.big_gb is not None else (0.0 if a.quick else 2.0)
    repeats, budget, patients = (1, 0.3, 1) if a.quick else (3, 2.0, 3)
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_loader.", dir=a.workdir))
    try:
        res = run(a, work, n, big_gb, repeats, budget, patients)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["machine"]["loadavg_end"] = os.getloadavg()
    return finish(res, t_start, report, a.json)


def run(a: argparse.Namespace, work: Path, n: int, big_gb: float, repeats: int, budget: float,
        patients: int) -> dict[str, Any]:
    from brats2d.synth import write_cohort

    path, t0 = (Path(a.cache) if a.cache else work / "bench.h5"), time.perf_counter()
    write_s = 0.0 if a.cache else write_cache(path, n)
    if a.cache:  # a product cache (brats2d preprocess): its train split is the benchmark's slices
        n = len(SliceCache(path, "train"))
    write_cohort(work / "raw", patients, seed=0)
    cohort_s = time.perf_counter() - t0 - write_s
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    default_prec = resolve_precision(torch.device("cpu"), "auto")
    default_threads = torch.get_num_threads()
    res: dict[str, Any] = {
        "machine": {"cpu": cpu, "cpu_count": os.cpu_count(), "threads": default_threads,
                    "torch": torch.__version__, "python": platform.python_version(),
                    "cpu_supports_bf16": cpu_supports_bf16(), "loadavg_start": os.getloadavg()},
        "settings": {"size": SIZE, "slices": n, "cache_dtype": "float16", "repeats": repeats, "budget_s": budget,
                     "loader_threads": a.threads, "torch_default_threads": default_threads, "nifti_patients": patients,
                     "nifti_shape": [240, 240, 155], "big_gb": big_gb, "quick": a.quick},
        "cache": {"path_bytes": path.stat().st_size, "write_s": write_s, "cohort_write_s": cohort_s},
        "rows": [], "step": [], "skipped": [], "loader_vs_step": [], "speedup_vs_h5py": {}, "rss": None}
    data = SliceCache(path, "train")
    images, masks = (np.array(m) for m in data.arrays())  # in-RAM copies: numpy-bound and MONAI's items
    gens = {"numpy-bound": numpy_loader(images, masks), "brats2d": lambda p: iterate(data, p),
            "brats2d-torchthreads": lambda p: iterate(data, p),  # the same, at other torch threads
            "brats2d-2workers": lambda p: iterate(data, p, num_workers=2),
            "h5py-per-slice": h5py_loader(path), "nifti-decode": nifti_loader(work / "raw")}
    threads = {r: default_threads if r == "brats2d-torchthreads" else a.threads for r in ROWS}
    for batch in (4, 16):
        gens["monai-cache"] = monai_loader(images, masks, batch)
        for name, g in gens.items():  # warm-up: open files, build caches, first-call costs (one batch)
            with num_threads(threads[name]):
                timed(g(EpochPlan.make(n, 1 if name == "nifti-decode" else batch, 0, 10**6)), 0.0, False)
        secs: dict[str, list[dict[str, float]]] = {r: [] for r in ROWS}
        for r in range(repeats):
            plan = EpochPlan.make(n, batch, 0, r)
            for name in ROWS[r % len(ROWS):] + ROWS[:r % len(ROWS)]:
                with num_threads(threads[name]):
                    secs[name].append(timed(gens[name](plan), budget, name == "brats2d-2workers"))
        h5 = statistics.median(m["images_per_s"] for m in secs["h5py-per-slice"])
        for name in ROWS:
            rates = [m["images_per_s"] for m in secs[name]]
            ips = statistics.median(rates)
            row = {"name": name, "batch": batch, "threads": threads[name], "images_per_s": ips,
                   "ms_per_batch": 1000 * batch / ips, "x_h5py": ips / h5, "repeats_images_per_s": rates,
                   "items": sum(m["items"] for m in secs[name]), "timed_s": sum(m["seconds"] for m in secs[name])}
            if name == "brats2d-2workers":
                row["first_batch_s"] = statistics.median(m["first_batch_s"] for m in secs[name])
            res["rows"].append(row)
        res["speedup_vs_h5py"][str(batch)] = {r["name"]: r["x_h5py"] for r in res["rows"] if r["batch"] == batch}
    del images, masks, gens
    warmup, steps = (1, 2) if a.quick else (1, 3)
    precs = ["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"]  # emulated bf16 is never the default
    if not cpu_supports_bf16():
        res["skipped"].append({"name": "step bf16", "reason": "no native bf16 on this CPU (auto precision = fp32)"})
    if a.step_ms:
        res["step"].append({"batch": 4, "precision": "given", "step_ms": a.step_ms, "source": "--step-ms"})
    else:
        for batch in ((4,) if a.quick else (4, 16)):
            for prec in ((default_prec,) if a.quick else precs):
                res["step"].append({"batch": batch, "precision": prec, "source": f"train_step, {steps} timed",
                                    "step_ms": in_subprocess(step_ms, str(path), batch, prec, warmup, steps)})
    ms = {(r["name"], r["batch"]): r["ms_per_batch"] for r in res["rows"]}
    for st in res["step"]:
        lo, lt = ms["brats2d", st["batch"]], ms["brats2d-torchthreads", st["batch"]]
        res["loader_vs_step"].append({
            "batch": st["batch"], "precision": st["precision"], "step_ms": st["step_ms"], "loader_ms": lo,
            "loader_pct_of_step": 100 * lo / st["step_ms"], "loader_ms_torchthreads": lt,
            "torchthreads_pct_of_step": 100 * lt / st["step_ms"]})
    if big_gb > 0:
        big = work / "big.h5"
        nb = math.ceil(big_gb * 1e9 / (SIZE * SIZE * 3))  # float16 image + uint8 mask per slice
        t0 = time.perf_counter()
        write_cache(big, nb, seed=1, repeat_block=True)
        res["rss"] = {"cache_bytes": big.stat().st_size, "write_s": time.perf_counter() - t0,
                      **in_subprocess(rss_epoch, str(big), 16, a.threads)}
        big.unlink()
    return res


def report(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    m, s = res["machine"], res["settings"]
    t = Table(title=f"Loader slices/s, {s['slices']} x 1x{SIZE}x{SIZE} {s['cache_dtype']} slices, augmented -- "
                    f"{m['cpu']}, {m['cpu_count']} cores, torch {m['torch']}")
    for c in ("loader", "batch", "threads", "images/s", "ms/batch", "x h5py", "note"):
        t.add_column(c, justify="left" if c in ("loader", "note") else "right", no_wrap=True)
    for r in res["rows"]:
        note = f"first batch {r['first_batch_s'] * 1000:.0f} ms" if "first_batch_s" in r else ""
        threads = "1/worker" if r["name"] == "brats2d-2workers" else str(r["threads"])
        t.add_row(r["name"], str(r["batch"]), threads, f"{r['images_per_s']:,.0f}", f"{r['ms_per_batch']:.3f}",
                  f"{r['x_h5py']:.2f}", note)
    con = Console(width=max(110, Console().width))
    con.print(t)
    for v in res["loader_vs_step"]:
        con.print(f"brats2d loader at batch {v['batch']}: {v['loader_ms']:.3f} ms/batch = "
                  f"{v['loader_pct_of_step']:.3g} % of a {v['precision']} train step ({v['step_ms']:.0f} ms; torch "
                  f"default threads); at torch's threads {v['loader_ms_torchthreads']:.3f} ms = "
                  f"{v['torchthreads_pct_of_step']:.3g} %")
    if res["rss"]:
        r, g = res["rss"], res["rss"]["max_growth_mb"]
        con.print(f"RSS over one epoch of a {r['cache_bytes'] / 1e9:.2f} GB cache ({r['slices']} slices, batch "
                  f"{r['batch']}, {r['images_per_s']:,.0f} slices/s): max growth VmRSS {g['VmRSS']:.0f} MB = "
                  f"RssFile {g['RssFile']:.0f} MB (page cache, reclaimable) + RssAnon {g['RssAnon']:.0f} MB; "
                  f"after release VmRSS {r['after_release_mb']['VmRSS'] - r['baseline_mb']['VmRSS']:+.0f} MB; "
                  f"opening it (SliceCache) took {r['open_s']:.1f} s")
    for sk in res["skipped"]:
        con.print(f"skipped {sk['name']}: {sk['reason']}")
    con.print(f"total {res['total_s']:.0f} s; load average (1 min) {m['loadavg_start'][0]:.1f} at start, "
              f"{m['loadavg_end'][0]:.1f} at end on {m['cpu_count']} cores")


if __name__ == "__main__":
    main()
