#!/usr/bin/env python
"""Which planes a multi-view model's accuracy comes from: each plane alone and every fused subset.

    python experiments/view_ablation.py runs/cv-views [--raw DIR] [--json F]

For every finished fold of a `brats2d crossval` output folder trained with `--views` (two or more
planes), each held-out patient is predicted once along each trained plane with that fold's run and the
plan's predict settings (checkpoint, TTA, post-processing, threshold), and every non-empty subset of
the planes is scored by thresholding the mean of its planes' probabilities: per-patient whole-tumour
3D Dice, mean / median / worst, and the paired difference of the full fusion against the axial plane
alone (the same trained models, so it separates what fusing at prediction time adds from what the
extra training slices add). The full set's Dice equals the fold's metrics.json. An accuracy
diagnostic, not a speed benchmark: no timings. Needs the raw folder the crossval ran on.
"""

from __future__ import annotations

import time
from itertools import combinations
from typing import Any

import numpy as np

from brats2d import metrics as M
from brats2d.cv.folds import held_out_patients, mask_as_planned
from brats2d.cv.summary import paired
from brats2d.slicing import region_masks

from common import crossval_args, crossval_plan, finish


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = crossval_args(__doc__.split("\n")[0])
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    plan, raw = crossval_plan(a)
    views = tuple(plan["preprocess"]["views"])
    if len(views) < 2:
        ap.error(f"{a.cv}: trained on {views[0]} slices only (crossval --views axial,coronal,sagittal makes a multi-view run)")
    own = plan["predict"]
    subsets = ["+".join(s) for r in range(1, len(views) + 1) for s in combinations(views, r)]
    rows: list[dict[str, Any]] = []
    for i, pred, patient, image, seg in held_out_patients(a.cv, plan, raw, a.device):
        truth = region_masks(seg, "wt", patient.et_label)[0]
        prob = {v: pred.volume(image, views=(v,), tta=bool(own["tta"]))[0][0] for v in views}
        dice = {}
        for name in subsets:
            p = np.mean([prob[v] for v in name.split("+")], axis=0)
            mask = mask_as_planned(p, pred, own)
            dice[name] = float(M.dice(M.confusion(mask, truth)))
        rows.append({"patient": patient.case, "fold": i, "dice": dice})
    summary = {}
    for name in subsets:
        x = np.array([r["dice"][name] for r in rows])
        summary[name] = {"mean": float(x.mean()), "sd": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
                         "median": float(np.median(x)), "worst": float(x.min()), "below_0.70": int((x < 0.70).sum())}
    full, alone = "+".join(views), views[0]
    delta = np.array([r["dice"][full] - r["dice"][alone] for r in rows])
    res = {"settings": {"cv": str(a.cv), "raw": str(raw), "views": list(views), "predict": own},
           "patients": rows, "summary": summary, "fused_minus_first": {"first": alone, **paired(delta)}}
    return finish(res, t_start, report, a.json)


def report(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Per-patient whole-tumour 3D Dice by planes fused ({res['settings']['cv']}, "
                    f"{len(res['patients'])} held-out patients)")
    for c in ("planes", "mean ± sd", "median", "worst", "< 0.70"):
        t.add_column(c, justify="left" if c == "planes" else "right")
    for name, s in res["summary"].items():
        t.add_row(name, f"{s['mean']:.4f} ± {s['sd']:.4f}", f"{s['median']:.3f}", f"{s['worst']:.3f}", str(s["below_0.70"]))
    con = Console(width=max(120, Console().width))
    con.print(t)
    f = res["fused_minus_first"]
    con.print(f"all planes fused minus {f['first']} alone (same models): {f['mean']:+.4f} ± {f['se']:.4f}, "
              f"better {f['better']} / worse {f['worse']}")
    con.print(f"total {res['total_s']:.0f} s")


if __name__ == "__main__":
    main()
