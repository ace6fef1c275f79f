#!/usr/bin/env python
"""Preprocessing throughput: raw BraTS NIfTI folders -> the HDF5 slice cache, patients/s per setting.

    python benchmarks/bench_preprocess.py --json runs/bench_preprocess.json [--quick] [--real DIR]

Data sets: `synthetic` (brats2d.synth.write_cohort, full-size 240x240x155 int16 phantoms, 8 patients
by default) and, when a real BraTS folder is available (--real, default /work/shared/data/brats-real
if it exists), `real`: its first --real-limit patient folders, linked into a temp folder. Rows per set:

  nibabel-decode    only reading what preprocess reads with the default PreprocessConfig (FLAIR + seg):
                    nibabel load + full decode of each file, one process. The floor for one worker.
  brats2d-1worker   brats2d.preprocess.preprocess(workers=1): everything in this process, one patient
                    at a time (load, normalize, select tumour slices, resize to 96x96, write the cache).
  brats2d-Nworkers  the same with workers=N (default: all cores, as the CLI does): a spawned process
                    pool, so its time includes starting N Python processes that import torch -- a
                    one-off cost that weighs heavily with few patients and vanishes over a full cohort.

For the brats2d rows the time at which each patient is done (preprocess' on_patient callback) splits
the run into: first_s (to the first patient done: pool start-up + one patient), steady s/patient
((last done - first done) / (patients - workers): the first wave of N patients finishes together) and
finish_s (after the last patient: HDF5 copy + sha256 + fsync, and for N workers the pool shut-down).

Every file is read once before timing, so all rows see a warm OS page cache (a first run from a cold
disk reads the compressed files, ~2-5 MB per volume, once more). Repeats of the rows take turns in
rotating order; the median repeat is reported. The BraTS 2021 extrapolation (1,251 patients) is an
ESTIMATE on this machine for the default config (FLAIR only; more modalities cost more decode time):
first_s + 1250 x steady s/patient + finish_s, where the 1-worker finish_s (the file write) is scaled by
1251 / patients as if it all grew with the slice count (an upper bound: part of it is fixed). Needs
patients > workers; with few patients (--quick) the steady rate rests on one or two intervals.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from brats2d.config import PreprocessConfig
from brats2d.nifti import discover
from brats2d.preprocess import default_workers, preprocess
from brats2d.synth import write_cohort

from common import finish

BRATS2021 = 1251
REAL_DEFAULT = Path("/work/shared/data/brats-real")


def decode_all(raw: Path, cfg: PreprocessConfig) -> None:
    """nibabel load + full decode of every file preprocess reads (cfg.modalities and seg), one process."""
    import nibabel as nib
    import numpy as np

    for p in discover(raw):
        for m in (*cfg.modalities, "seg"):
            np.asanyarray(nib.load(str(p.files[m])).dataobj).sum()  # sum: make sure it is decoded


def run_preprocess(raw: Path, out: Path, cfg: PreprocessConfig, workers: int) -> dict[str, Any]:
    threads, done = torch.get_num_threads(), []
    t0 = time.perf_counter()
    try:
        s = preprocess(raw, out, cfg, workers=workers, force=True,
                       on_patient=lambda c: done.append(time.perf_counter()))
    finally:
        torch.set_num_threads(threads)  # preprocess(workers=1) leaves this process at 1 torch thread
    t1 = time.perf_counter()
    out.unlink(missing_ok=True)
    n, w = len(done), min(workers, len(done))
    return {"slices": sum(v["slices"] for v in s.per_split.values()), "skipped": len(s.skipped),
            "first_s": done[0] - t0, "finish_s": t1 - done[-1],
            "steady_s_per_patient": (done[-1] - done[0]) / (n - w) if n > w else None}


def linked_subset(src: Path, dst: Path, limit: int) -> Path:
    """dst/<case> -> src/<case> symlinks for the first `limit` patients of src (sorted by case)."""
    dst.mkdir(parents=True)
    for p in discover(src)[:limit]:
        (dst / p.folder.name).symlink_to(p.folder.resolve(), target_is_directory=True)
    return dst


def bench_set(name: str, raw: Path, work: Path, cfg: PreprocessConfig, workers: int,
              repeats: int) -> list[dict[str, Any]]:
    """Rows of one data set: interleaved repeats, median seconds."""
    pats = discover(raw)
    nbytes = sum(f.stat().st_size for p in pats for f in p.files.values())
    for p in pats:  # warm the page cache
        for f in p.files.values():
            f.read_bytes()
    jobs: dict[str, tuple[int, Callable[[], dict[str, Any]]]] = {
        "nibabel-decode": (1, lambda: decode_all(raw, cfg) or {}),
        "brats2d-1worker": (1, lambda: run_preprocess(raw, work / f"{name}-1.h5", cfg, 1)),
    }
    if workers > 1:
        jobs[f"brats2d-{workers}workers"] = (workers, lambda: run_preprocess(raw, work / f"{name}-n.h5", cfg, workers))
    names, secs, info = list(jobs), {n: [] for n in jobs}, {n: [] for n in jobs}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            info[n].append(jobs[n][1]())
            secs[n].append(time.perf_counter() - t0)
    rows = []
    for n in names:
        s = statistics.median(secs[n])
        rows.append({"dataset": name, "name": n, "workers": jobs[n][0], "patients": len(pats),
                     "input_mb": nbytes / 1e6, "seconds": s, "repeats_s": secs[n], "s_per_patient": s / len(pats),
                     "patients_per_s": len(pats) / s,
                     **{k: None if info[n][0][k] is None else statistics.median(i[k] for i in info[n])
                        for k in info[n][0]}})
    dec, one = rows[0]["seconds"], rows[1]["seconds"]
    for row in rows:
        row["x_decode_time"] = row["seconds"] / dec
        row["speedup_vs_1worker"] = one / row["seconds"] if row["name"].startswith("brats2d-") else None
    return rows


def estimates(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Minutes for BraTS 2021 (1,251 patients) per brats2d row of one data set (an estimate)."""
    by = {r["name"]: r for r in rows}
    write = by["brats2d-1worker"]["finish_s"]  # the 1-worker run has no pool: its finish is the file write
    out = []
    for r in rows:
        if not r["name"].startswith("brats2d-"):
            continue
        e: dict[str, Any] = {"dataset": r["dataset"], "patients": BRATS2021, "workers": r["workers"],
                             "label": "estimate", "minutes": None}
        if r["steady_s_per_patient"] is None:
            e["basis"] = f"not measurable: {r['patients']} patients <= {r['workers']} workers ({r['name']})"
        else:
            w = write * BRATS2021 / r["patients"]
            sec = r["first_s"] + (BRATS2021 - 1) * r["steady_s_per_patient"] + w + max(r["finish_s"] - write, 0.0)
            e.update(minutes=sec / 60, basis=f"{r['first_s']:.1f} s to the first patient + 1250 x "
                     f"{r['steady_s_per_patient']:.3f} s/patient + <= {w:.0f} s file write + "
                     f"{max(r['finish_s'] - write, 0.0):.1f} s pool shut-down ({r['name']}, {r['patients']} patients)")
        out.append(e)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="smoke test (< 60 s, rough numbers): 2 patients, 1 repeat")
    ap.add_argument("--patients", type=int, help="synthetic patients (default 8; --quick 2)")
    ap.add_argument("--shape", default="240,240,155", help="synthetic volume shape X,Y,Z (default BraTS' 240,240,155)")
    ap.add_argument("--workers", type=int, default=0, help="N of the N-workers row (default: all cores)")
    ap.add_argument("--repeats", type=int, help="interleaved repeats (default 3; --quick 1)")
    ap.add_argument("--real", type=Path, help=f"a real BraTS folder (default {REAL_DEFAULT} if it exists)")
    ap.add_argument("--real-limit", type=int, help="real patients used (default 8; --quick 2)")
    ap.add_argument("--no-real", action="store_true", help="synthetic data only")
    ap.add_argument("--workdir", type=Path, help="where temp data goes (default: a temp folder, removed afterwards)")
    a = ap.parse_args(argv)
    n_pat = a.patients or (2 if a.quick else 8)
    repeats = a.repeats or (1 if a.quick else 3)
    real_limit = a.real_limit or (2 if a.quick else 8)
    workers = a.workers or default_workers()
    shape = tuple(int(v) for v in a.shape.split(","))
    real = None if a.no_real else (a.real or (REAL_DEFAULT if REAL_DEFAULT.is_dir() else None))
    cfg = PreprocessConfig()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    res: dict[str, Any] = {
        "machine": {"cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(), "loadavg_start": os.getloadavg()},
        "settings": {"patients": n_pat, "shape": list(shape), "workers": workers, "repeats": repeats,
                     "real": str(real) if real else None, "real_limit": real_limit, "quick": a.quick,
                     "config": {"modalities": list(cfg.modalities), "size": cfg.size, "dtype": cfg.dtype}},
        "rows": [], "estimate_brats2021": []}
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_preprocess.", dir=a.workdir))
    try:
        t0 = time.perf_counter()
        write_cohort(work / "synthetic", n_pat, seed=0, shape=shape)
        res["settings"]["synth_write_s"] = time.perf_counter() - t0
        sets = [("synthetic", work / "synthetic")]
        if real is not None:
            sets.append(("real", linked_subset(real, work / "real", real_limit)))
        for name, raw in sets:
            rows = bench_set(name, raw, work, cfg, workers, repeats)
            res["rows"] += rows
            res["estimate_brats2021"] += estimates(rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["machine"]["loadavg_end"] = os.getloadavg()
    return finish(res, t_start, report, a.json)


def report(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    m, s = res["machine"], res["settings"]
    t = Table(title=f"Preprocess (FLAIR + seg -> {s['config']['size']}x{s['config']['size']} cache) -- "
                    f"{m['cpu']}, {m['cpu_count']} cores, torch {m['torch']}")
    for c in ("data", "row", "patients", "s", "s/patient", "x decode", "x 1 worker", "first s", "steady s/pt"):
        t.add_column(c, justify="left" if c in ("data", "row") else "right", no_wrap=True)
    for r in res["rows"]:
        pp = r["name"].startswith("brats2d-")
        t.add_row(r["dataset"], r["name"], str(r["patients"]), f"{r['seconds']:.2f}", f"{r['s_per_patient']:.3f}",
                  f"{r['x_decode_time']:.2f}", f"{r['speedup_vs_1worker']:.2f}" if pp else "",
                  f"{r['first_s']:.2f}" if pp else "",
                  f"{r['steady_s_per_patient']:.3f}" if pp and r["steady_s_per_patient"] is not None else "")
    con = Console(width=max(120, Console().width))
    con.print(t)
    for e in res["estimate_brats2021"]:
        mins = "n/a" if e["minutes"] is None else f"{e['minutes']:.1f} min on this machine ="
        con.print(f"ESTIMATE, BraTS 2021 ({e['patients']:,} patients), {e['dataset']}-based, {e['workers']} "
                  f"worker(s): {mins} {e['basis']}")
    con.print(f"total {res['total_s']:.0f} s; load average (1 min) {m['loadavg_start'][0]:.1f} at start, "
              f"{m['loadavg_end'][0]:.1f} at end on {m['cpu_count']} cores")


if __name__ == "__main__":
    main()
