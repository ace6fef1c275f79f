#!/usr/bin/env python
"""What a cheaper prediction costs in accuracy on a finished cross-validation, without retraining.

    python experiments/prediction_cost.py runs/cv-narrow16 [--raw DIR] [--json F] [--tta]

Every held-out patient of every finished fold is predicted by each of its run's two checkpoints (best
validation epoch, last epoch) along each plane the run was trained on, once; each prediction setting is
then the mean of a subset of those probability volumes, which is what `brats2d predict` computes for it
(models of best+latest averaged, planes fused by averaging: brats2d.inference.Predictor), followed by the
plan's threshold and post-processing. Per setting: the forward passes per patient (models x planes,
relative to the plan's own setting), the per-patient whole-tumour 3D Dice, and its paired difference to
the plan's setting (view_ablation.py fuses planes with the plan's checkpoint only; this adds the
checkpoint choice and the cost). With `--tta` the grid is the plan's checkpoint(s) x planes x subsets of
test-time augmentation's views (each slice transformed by a flip or turn of brats2d.augment, predicted, and
transformed back), from one prediction per model, plane and view. An accuracy screen, not a speed benchmark (benchmarks/bench_time_to_accuracy.py times
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
from brats2d.inference import TTA_CODES, load_predictor
from brats2d.nifti import load_patient, patient_from_folder
from brats2d.slicing import prepare

from common import crossval_args, crossval_plan, finish, paired_cells, show

CHECKPOINTS = {"best": ("best",), "latest": ("latest",), "best+latest": ("best", "latest")}
# Subsets of TTA's views as transform codes of brats2d.augment (0: as is; 4, 8: a flip of the slice's first,
# last axis; 2: a half turn); "tta 8" is what `--tta` averages.
TTA_SETS = {"no tta": (0,), "flip 1st axis": (0, 4), "flip 2nd axis": (0, 8), "half turn": (0, 2),
            "tta 4": (0, 2, 4, 8), "tta 8": TTA_CODES}
Setting = tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]


def settings(views: tuple[str, ...], checkpoints: tuple[str, ...], tta_sets: tuple[str, ...]) -> dict[str, Setting]:
    """{name: (checkpoints, planes, TTA codes)}: each checkpoint choice x every non-empty set of planes with
    axial x each TTA subset."""
    planes = [c for n in range(1, len(views) + 1) for c in itertools.combinations(views, n) if "axial" in c]
    return {", ".join([ck, "+".join(p)] + ([t] if len(tta_sets) > 1 else [])): (CHECKPOINTS[ck], p, TTA_SETS[t])
            for ck in checkpoints for p in planes for t in tta_sets}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = crossval_args(__doc__.split("\n")[0])
    ap.add_argument("--tta", action="store_true", help="the plan's checkpoint(s) x planes x subsets of TTA's views")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    plan, raw = crossval_plan(a)
    own = plan["predict"]
    views = tuple(plan["preprocess"]["views"])
    tta_sets = tuple(TTA_SETS) if a.tta else ("tta 8" if own["tta"] else "no tta",)
    grid = settings(views, (own["checkpoint"],) if a.tta else tuple(CHECKPOINTS), tta_sets)
    mine = ", ".join([own["checkpoint"], "+".join(views)] + (["tta 8" if own["tta"] else "no tta"] if a.tta else []))
    codes = sorted({c for _, _, cs in grid.values() for c in cs})
    rows: list[dict[str, Any]] = []
    for i in range(plan["folds"]):
        if finished_fold(a.cv, plan, i) is None:
            continue
        run = a.cv / f"fold{i}" / "run"
        preds = {ck: load_predictor(run, ck, a.device) for ck in {c for cks, _, _ in grid.values() for c in cks}}
        first = next(iter(preds.values()))
        for case in read_meta(a.cv / f"fold{i}" / "cache.h5").splits["test"]:
            patient = patient_from_folder(raw / case)
            image, seg, _, _ = load_patient(patient, first.prep_cfg.modalities, left_right=first.prep_cfg.mirror)
            prep = prepare(image, first.prep_cfg)  # normalized once; every model, plane and view reads it
            prob = {(ck, v, c): p.volume_prepared(prep, views=(v,), codes=(c,))[0][0]
                    for ck, p in preds.items() for v in views for c in codes}
            truth, dice = seg > 0, {}
            for name, (cks, planes, cs) in grid.items():
                mean = np.mean([prob[(ck, v, c)] for ck in cks for v in planes for c in cs], axis=0)
                dice[name] = float(M.dice(M.confusion(mask_as_planned(mean, first, own), truth)))
            rows.append({"patient": case, "fold": i, "dice": dice})
    base = np.array([r["dice"][mine] for r in rows])
    n_own = len(CHECKPOINTS[own["checkpoint"]]) * len(views) * (len(TTA_CODES) if own["tta"] else 1)
    variants = {}
    for name, (cks, planes, cs) in grid.items():
        d = np.array([r["dice"][name] for r in rows])
        variants[name] = {"passes": len(cks) * len(planes) * len(cs) / n_own, **describe(list(d)),
                          **({"paired": paired(d - base)} if name != mine and len(d) > 1 else {})}
    res = {"settings": {"cv": str(a.cv), "raw": str(raw), "predict": own, "own": mine, "tta": a.tta},
           "patients": rows, "variants": variants}
    return finish(res, t_start, report, a.json)


def report(res: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"Prediction settings on the same runs ({res['settings']['cv']}, {len(res['patients'])} held-out "
                    f"patients; paired against {res['settings']['own']})")
    first = "checkpoints, planes" + (", TTA" if res["settings"].get("tta") else "")
    for c in (first, "forward passes", "3D Dice mean ± sd", "median", "worst", "paired", "better / worse"):
        t.add_column(c, justify="left" if c.startswith("checkpoints") else "right")
    for name, v in sorted(res["variants"].items(), key=lambda kv: kv[1]["passes"]):
        p = v.get("paired")
        t.add_row(name, f"{v['passes']:.2f}x", f"{v['mean']:.4f} ± {v['sd']:.3f}", f"{v['median']:.3f}", f"{v['min']:.3f}",
                  *paired_cells(p))
    show(t, res['total_s'])


if __name__ == "__main__":
    main()
