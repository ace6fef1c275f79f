#!/usr/bin/env python
"""Accuracy ceiling of the slice size: the 3D Dice a *perfect* model would score at each input size.

    python experiments/resolution_ceiling.py --json runs/resolution_ceiling.json [--quick] [--real DIR] [--region et]

A 2D model at S x S never sees the native 240 x 240 grid: it is trained on the mask resized the way
`preprocess` resizes it (antialiased bilinear, cut at 0.5) and its output is resized back the way
`predict` does (bilinear, cut at 0.5). A model that reproduced its training target exactly would still
lose what that round trip loses, so this is the best per-patient whole-tumour 3D Dice any model of the
pipeline can reach at size S (for --region: wt, the default, tc or et); a model far below it is limited by something other than resolution.
Rows: full-frame slices at each --sizes, and the same round trip on a square crop around the brain
(the bounding box of non-zero FLAIR over the volume, centred, as nnU-Net crops to non-zero), which
`--crop brain` does (brats2d/crop.py): it tells what cropping can buy at most. Not a speed benchmark: no timings.

Data: a real BraTS folder (--real, default /work/shared/data/brats-real if it exists) or, without one,
synthetic phantoms from brats2d.synth (--patients, default 8; --quick: 2 small ones).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from brats2d import metrics as M
from brats2d.crop import brain_box
from brats2d.head import find_head
from brats2d.inference import resize_up
from brats2d.nifti import discover, load_patient
from brats2d.slicing import region_masks, resize_slices
from brats2d.synth import write_cohort

from common import finish

REAL_DEFAULT = Path("/work/shared/data/brats-real")


def round_trip(mask: np.ndarray, size: int, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """mask (X, Y, Z) bool -> every slice (or its `box` = x0, x1, y0, y1) resized to size x size as the
    cache stores it, then back as predict does; (X, Y, Z) bool."""
    x0, x1, y0, y1 = box or (0, mask.shape[0], 0, mask.shape[1])
    sub = np.moveaxis(mask[x0:x1, y0:y1], -1, 0)[:, None]  # (Z, 1, h, w)
    small = resize_slices(sub, size, binary=True).astype(np.float32)
    back = resize_up(small, sub.shape[-2:])[:, 0] >= 0.5
    out = np.zeros_like(mask)
    out[x0:x1, y0:y1] = np.moveaxis(back, 0, -1)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 small synthetic patients")
    ap.add_argument("--sizes", default="64,96,128,160", help="slice sizes, comma-separated (default 64,96,128,160)")
    ap.add_argument("--crop-size", type=int, default=96, help="size of the brain-crop row (default 96, the seed's)")
    ap.add_argument("--patients", type=int, help="synthetic patients (default 8; --quick 2)")
    ap.add_argument("--real", type=Path, help=f"a real BraTS folder (default {REAL_DEFAULT} if it exists)")
    ap.add_argument("--no-real", action="store_true", help="synthetic data only")
    ap.add_argument("--region", default="wt", choices=("wt", "tc", "et"), help="the BraTS region scored (default wt)")
    ap.add_argument("--workdir", type=Path, help="where temp data goes (default: a temp folder, removed afterwards)")
    a = ap.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    real = None if a.no_real or a.quick else (a.real or (REAL_DEFAULT if REAL_DEFAULT.is_dir() else None))
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_ceiling.", dir=a.workdir))
    try:
        if real is None:
            shape = (240, 240, 16) if a.quick else (240, 240, 155)
            write_cohort(work / "synthetic", a.patients or (2 if a.quick else 8), seed=0, shape=shape)
        raw = real or work / "synthetic"
        names = [f"{s}x{s}" for s in sizes] + [f"{a.crop_size}x{a.crop_size}, brain crop"]
        per: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for patient in discover(raw):
            image, seg, _, _ = load_patient(patient, ("flair",))
            truth = region_masks(seg, a.region, patient.et_label)[0]
            if not truth.any():
                continue
            box = brain_box(find_head(image).mask)
            for n, (size, crop) in zip(names, [(s, None) for s in sizes] + [(a.crop_size, box)]):
                dice = float(M.dice(M.confusion(round_trip(truth, size, crop), truth)))
                per[n].append({"patient": patient.case, "dice": dice, "crop_side": int(box[1] - box[0])})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for n, ps in per.items():
        d = np.array([p["dice"] for p in ps])
        rows.append({"name": n, "patients": len(d), "dice_mean": float(d.mean()), "dice_median": float(np.median(d)),
                     "dice_min": float(d.min()), "per_patient": ps})
    res = {"settings": {"data": str(raw) if real else "synthetic", "sizes": sizes, "crop_size": a.crop_size,
                        "region": a.region, "quick": a.quick}, "rows": rows}
    return finish(res, t_start, report, a.json)


def report(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    region = {"wt": "Whole-tumour", "tc": "Tumour-core", "et": "Enhancing-tumour"}[res["settings"].get("region", "wt")]
    t = Table(title=f"{region} 3D Dice of a perfect model after the size round trip ({res['settings']['data']})")
    for c in ("slices", "patients", "mean", "median", "worst"):
        t.add_column(c, justify="left" if c == "slices" else "right", no_wrap=True)
    for r in res["rows"]:
        t.add_row(r["name"], str(r["patients"]), f"{r['dice_mean']:.4f}", f"{r['dice_median']:.4f}", f"{r['dice_min']:.4f}")
    con = Console(width=max(100, Console().width))
    con.print(t)
    con.print(f"total {res['total_s']:.0f} s")


if __name__ == "__main__":
    main()
