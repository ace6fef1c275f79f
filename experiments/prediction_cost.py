#!/usr/bin/env python
"""What a cheaper prediction costs in accuracy on a finished cross-validation, without retraining.

    python experiments/prediction_cost.py runs/cv-narrow16 [--raw DIR] [--json F]

Every held-out patient of every finished fold is predicted by each of its run's two checkpoints (best
validation epoch, last epoch) along each plane the run was trained on, once; each prediction setting is
then the mean of a subset of those probability volumes, which is what `brats2d predict` computes for it
(models of best+latest averaged, planes fused by averaging: brats2d.inference.Predictor), followed by the
plan's threshold and post-processing. Per setting: the forward passes per patient (models x planes,
relative to the plan's own setting), the per-patient whole-tumour 3D Dice, and its paired difference to
the plan's setting (view_ablation.py fuses planes with the plan's checkpoint only; this adds the
checkpoint choice and the cost). An accuracy screen, not a speed benchmark (benchmarks/bench_time_to_accuracy.py times
prediction). Not for clinical use.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np

from brats2d import metrics as M
from brats2d.cache import read_meta
from brats2d.cv.folds import mask_as_planned
from brats2d.cv.plan import finished_fold
from brats2d.cv.summary import paired
from brats2d.evaluate import describe
from brats2d.inference import load_predictor
from brats2d.nifti import load_patient, patient_from_folder

from common import crossval_args, crossval_plan, finish, paired_cells, show

CHECKPOINTS = {"best": ("best",), "latest": ("latest",), "best+latest": ("best", "latest")}


def settings(views: tuple[str, ...]) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """{name: (checkpoints, planes)}: every checkpoint choice x every non-empty set of planes with axial."""
    planes = [c for n in range(1, len(views) + 1) for c in itertools.combinations(views, n) if "axial" in c]
    return {f"{ck}, {'+'.join(p)}": (CHECKPOINTS[ck], p) for ck in CHECKPOINTS for p in planes}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = crossval_args(__doc__.split("\n")[0]).parse_args(argv)
    t_start = time.perf_counter()
    plan, raw = crossval_plan(a)
    own = plan["predict"]
    views = tuple(plan["preprocess"]["views"])
    grid = settings(views)
    mine = f"{own['checkpoint']}, {'+'.join(views)}"
    rows: list[dict[str, Any]] = []
    for i in range(plan["folds"]):
        if finished_fold(a.cv, plan, i) is None:
            continue
        run = a.cv / f"fold{i}" / "run"
        preds = {ck: load_predictor(run, ck, a.device) for ck in ("best", "latest")}
        for case in read_meta(a.cv / f"fold{i}" / "cache.h5").splits["test"]:
            patient = patient_from_folder(raw / case)
            image, seg, _, _ = load_patient(patient, preds["best"].prep_cfg.modalities,
                                            left_right=preds["best"].prep_cfg.mirror)
            prob = {(ck, v): p.volume(image, views=(v,), tta=bool(own["tta"]))[0][0]
                    for ck, p in preds.items() for v in views}
            truth, dice = seg > 0, {}
            for name, (cks, planes) in grid.items():
                mean = np.mean([prob[(ck, v)] for ck in cks for v in planes], axis=0)
                dice[name] = float(M.dice(M.confusion(mask_as_planned(mean, preds["best"], own), truth)))
            rows.append({"patient": case, "fold": i, "dice": dice})
    base = np.array([r["dice"][mine] for r in rows])
    n_own = len(CHECKPOINTS[own["checkpoint"]]) * len(views)
    variants = {}
    for name, (cks, planes) in grid.items():
        d = np.array([r["dice"][name] for r in rows])
        variants[name] = {"passes": len(cks) * len(planes) / n_own, **describe(list(d)),
                          **({"paired": paired(d - base)} if name != mine and len(d) > 1 else {})}
    res = {"settings": {"cv": str(a.cv), "raw": str(raw), "predict": own, "own": mine}, "patients": rows,
           "variants": variants}
    return finish(res, t_start, report, a.json)


def report(res: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"Prediction settings on the same runs ({res['settings']['cv']}, {len(res['patients'])} held-out "
                    f"patients; paired against {res['settings']['own']})")
    for c in ("checkpoints, planes", "forward passes", "3D Dice mean ± sd", "median", "worst", "paired", "better / worse"):
        t.add_column(c, justify="left" if c.startswith("checkpoints") else "right")
    for name, v in sorted(res["variants"].items(), key=lambda kv: kv[1]["passes"]):
        p = v.get("paired")
        t.add_row(name, f"{v['passes']:.2f}x", f"{v['mean']:.4f} ± {v['sd']:.3f}", f"{v['median']:.3f}", f"{v['min']:.3f}",
                  *paired_cells(p))
    show(t, res['total_s'])


if __name__ == "__main__":
    main()
