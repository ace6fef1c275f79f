#!/usr/bin/env python
"""How well a cross-validated recipe fits the patients it trained on: the ceiling its held-out score sits under.

    python experiments/fit_ceiling.py runs/cv-recipe-s1 [--raw DIR] [--below 0.70] [--json F]

Every patient of a `brats2d crossval` folder is held out by one fold and trained on (or used for model
selection) by the others. Each finished fold's run predicts all its patients, training, validation and
held-out, from the raw scans with the plan's own predict settings (checkpoint, TTA, post-processing,
threshold; the held-out Dice equals the fold's metrics.json), and per patient this reports the whole-tumour
3D Dice

* held out: by the one fold that tested it (the cross-validation score);
* trained on: the mean over the folds that trained on it (its own labels were in the loss);
* validated on: the mean over the folds that selected their checkpoint on it.

The "trained on" column is a fit ceiling for this recipe. A patient it misses even with that patient's own
labels in the loss is one that more patients of the same kind are unlikely to fix: at the recipe's
capacity and training length the model does not separate its tumour from normal brain in the input it
gets. A patient it fits but misses when held out is a generalisation miss, which more training patients
may close (docs/experiments.md, Step 20). The summary compares the three columns over the
same patients (paired: trained on minus held out). An accuracy diagnostic, not a speed benchmark.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from brats2d import metrics as M
from brats2d.cv.folds import fold_patients, predict_as_planned
from brats2d.cv.summary import paired
from brats2d.evaluate import describe as describe_scores

from common import crossval_args, crossval_plan, finish

SPLIT_LABELS = {"test": "held out", "train": "trained on", "val": "validated on"}


def per_patient(scores: list[tuple[str, str, int, float]]) -> list[dict[str, Any]]:
    """scores: (patient, split, fold, dice) rows -> per patient {patient, held out fold, and for each split
    name of SPLIT_LABELS the mean Dice over its folds (None when no fold used the patient that way) and the count},
    sorted by held-out Dice (patients never held out last)."""
    rows: dict[str, dict[str, Any]] = {}
    for case, split, fold, dice in scores:
        r = rows.setdefault(case, {"patient": case, "fold": None, **{f"{s}_dices": [] for s in SPLIT_LABELS}})
        r[f"{split}_dices"].append(dice)
        if split == "test":
            r["fold"] = fold
    out = []
    for r in rows.values():
        d = {"patient": r["patient"], "fold": r["fold"]}
        for s in SPLIT_LABELS:
            v = r.pop(f"{s}_dices")
            d[s] = float(np.mean(v)) if v else None
            d[f"{s}_folds"] = len(v)
        out.append(d)
    return sorted(out, key=lambda d: (d["test"] is None, d["test"] if d["test"] is not None else 0.0))


def describe(values: list[float], below: float) -> dict[str, Any]:
    """mean, sd, median, worst (evaluate's per-patient summary) and how many are below `below` of Dice scores."""
    d = describe_scores(values)
    return {"patients": len(values), "mean": d["mean"], "sd": d["sd"], "median": d["median"], "worst": d["min"],
            "below": sum(v < below for v in values)}


def summarise(rows: list[dict[str, Any]], below: float) -> dict[str, Any]:
    """Each column described over the patients that have both it and a held-out score, and paired minus held out."""
    out: dict[str, Any] = {}
    for s in SPLIT_LABELS:
        both = [r for r in rows if r[s] is not None and r["test"] is not None]
        if not both:
            continue
        out[s] = describe([r[s] for r in both], below)
        if s != "test":
            out[s]["held_out_mean"] = float(np.mean([r["test"] for r in both]))
            out[s]["minus_held_out"] = paired(np.array([r[s] - r["test"] for r in both]))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = crossval_args(__doc__.split("\n")[0])
    ap.add_argument("--below", type=float, default=0.70, help="Dice under which a patient counts as a failure")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    plan, raw = crossval_plan(a)
    own = plan["predict"]
    scores: list[tuple[str, str, int, float]] = []
    for i, pred, split, patient, image, seg in fold_patients(a.cv, plan, raw, tuple(SPLIT_LABELS), a.device):
        if not scores or scores[-1][2] != i:  # ≈ 3 min per fold of 29 real patients on 2 cores: say where it is
            print(f"fold {i}: predicting its training, validation and held-out patients "
                  f"({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)
        mask = predict_as_planned(pred, image, own)[1]
        scores.append((patient.case, split, i, float(M.dice(M.confusion(mask, seg > 0)))))
    rows = per_patient(scores)
    res = {"settings": {"cv": str(a.cv), "raw": str(raw), "below": a.below, "predict": own},
           "patients": rows, "summary": summarise(rows, a.below)}
    return finish(res, t_start, report, a.json)


def report(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    f = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    t = Table(title=f"Whole-tumour 3D Dice per patient, held out against trained on ({res['settings']['cv']})")
    for c in ("patient", "held out by fold", *(f"{n} ({'folds' if s != 'test' else 'Dice'})" for s, n in SPLIT_LABELS.items())):
        t.add_column(c, justify="left" if c == "patient" else "right", no_wrap=True)
    for r in res["patients"]:
        t.add_row(r["patient"], "—" if r["fold"] is None else str(r["fold"]), f(r["test"]),
                  *(f"{f(r[s])} ({r[f'{s}_folds']})" for s in SPLIT_LABELS if s != "test"))
    s = Table(title=f"Summary over the patients with a held-out score (below = Dice < {res['settings']['below']:g})")
    for c in ("column", "patients", "mean ± sd", "median", "worst", "below", "minus held out", "better / worse"):
        s.add_column(c, justify="left" if c == "column" else "right")
    for k, v in res["summary"].items():
        p = v.get("minus_held_out")
        s.add_row(SPLIT_LABELS[k], str(v["patients"]), f"{v['mean']:.3f} ± {v['sd']:.3f}", f"{v['median']:.3f}",
                  f"{v['worst']:.3f}", str(v["below"]), "—" if p is None else f"{p['mean']:+.3f} ± {p['se']:.3f}",
                  "—" if p is None else f"{p['better']} / {p['worse']}")
    con = Console(width=max(150, Console().width))
    con.print(t)
    con.print(s)
    con.print(f"total {res['total_s']:.0f} s")


if __name__ == "__main__":
    main()
