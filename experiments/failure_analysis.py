#!/usr/bin/env python
"""Where a cross-validated model misses: per held-out patient, which tumour labels and how bright.

    python experiments/failure_analysis.py runs/cv-zscore [--raw DIR] [--below 0.70] [--json F]

For every finished fold of a `brats2d crossval` output folder, each held-out patient is predicted again
with that fold's run and the plan's own predict settings (checkpoint, TTA, post-processing, threshold:
the per-patient Dice equals the fold's metrics.json), and for the whole tumour it reports

* volume ratio: predicted / true voxels (< 1 under-, > 1 over-segmented);
* Dice with holes filled: the prediction's enclosed holes filled slice by slice in each of the three
  planes (scipy's binary_fill_holes), which says whether the misses are a core inside a found rim;
* missed share of each BraTS label: the fraction of the necrotic / non-enhancing core (1), the oedema
  (2) and the enhancing tumour (4, or 3 since 2023) voxels that the prediction does not cover;
* contrast of the first input modality (FLAIR by default): median brain z-score ((v - mean) / sd over
  brain voxels, whatever the run's normalization) of the tumour found, the tumour missed and the normal
  brain, and the normal brain's 90th percentile: a miss whose z-score sits inside the normal brain's
  range is tissue that looks normal in that modality;
* left-right symmetry (the reflection of `--mirror`, brats2d/slicing.py): the share of the tumour whose
  mirror voxel is tumour too (a tumour across the midline or on both sides), and the median asymmetry
  (z minus the mirror voxel's z) of the tumour missed against the normal brain's 90th percentile: a miss
  no brighter than its contralateral twin has no symmetry cue either.

The summary pools the labels' missed shares over the patients below `--below` and over the rest, which
says whether failures are a label (say, the core that FLAIR shows dark) or a contrast problem. It is an
accuracy diagnostic, not a speed benchmark: no timings. Needs the raw folder the crossval ran on.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from brats2d import metrics as M
from brats2d.cv.folds import held_out_patients, predict_as_planned
from brats2d.cv.summary import paired
from brats2d.slicing import with_mirror

from common import crossval_args, crossval_plan, finish

LABELS = ("core", "oedema", "enhancing")


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """mask (X, Y, Z) bool with every hole enclosed within an axial, coronal or sagittal slice filled."""
    from scipy import ndimage

    out = mask.copy()
    for axis in (2, 1, 0):
        out = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(out, axis, 0)], axis=axis)
    return out


def analyse(image: np.ndarray, seg: np.ndarray, pred: np.ndarray, et_label: int) -> dict[str, Any]:
    """One patient: image (X, Y, Z) float32 (raw intensities, 0 outside the brain), seg (X, Y, Z) labels,
    pred (X, Y, Z) bool whole-tumour prediction -> {dice, dice_filled, volume_ratio, missed{label},
    z{found, missed, normal, normal_p90}, both_sides, asym{missed, normal_p90}}; a label the patient does not
    have is missed None, as is an empty set's z."""
    truth = seg > 0
    dice = float(M.dice(M.confusion(pred, truth)))
    dice_filled = float(M.dice(M.confusion(fill_holes(pred), truth)))
    missed = {}
    for name, lab in zip(LABELS, (1, 2, et_label)):
        m = seg == lab
        missed[name] = float((m & ~pred).sum() / m.sum()) if m.any() else None
    brain = image != 0
    vals = image[brain].astype(np.float64)
    z = (image - vals.mean()) / (vals.std() or 1.0)

    def med(mask: np.ndarray) -> float | None:
        return float(np.median(z[mask])) if mask.any() else None

    normal = brain & ~truth
    # Reflected about the brain's extent, as --mirror does: z is zeroed outside the brain and truth lies inside it.
    mirrored = with_mirror(np.stack([brain, np.where(brain, z, 0.0), truth]).astype(np.float32), brain)[3:]
    paired_side = brain & (mirrored[0] > 0.5)  # the twin voxel is brain too
    z_m, truth_m = mirrored[1], mirrored[2]
    asym = z - z_m

    def p90(a: np.ndarray, mask: np.ndarray) -> float | None:
        return float(np.percentile(a[mask], 90)) if mask.any() else None

    return {"dice": dice, "dice_filled": dice_filled, "volume_ratio": float(pred.sum() / truth.sum()) if truth.any() else None,
            "missed": missed, "z": {"found": med(truth & pred), "missed": med(truth & ~pred), "normal": med(normal),
                                    "normal_p90": p90(z, normal)},
            "both_sides": float((truth & (truth_m > 0.5)).sum() / truth.sum()) if truth.any() else None,
            "asym": {"missed": float(np.median(asym[m])) if (m := truth & ~pred & paired_side).any() else None,
                     "normal_p90": p90(asym, normal & paired_side)}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = crossval_args(__doc__.split("\n")[0])
    ap.add_argument("--below", type=float, default=0.70, help="Dice under which a patient counts as a failure")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    plan, raw = crossval_plan(a)
    own = plan["predict"]
    rows: list[dict[str, Any]] = []
    for i, pred, patient, image, seg in held_out_patients(a.cv, plan, raw, a.device):
        mask = predict_as_planned(pred, image, own)[1]
        rows.append({"patient": patient.case, "fold": i, **analyse(image[0], seg, mask, patient.et_label)})
    groups = {f"dice < {a.below:g}": [r for r in rows if r["dice"] < a.below],
              f"dice >= {a.below:g}": [r for r in rows if r["dice"] >= a.below]}
    summary = {}
    for g, rs in groups.items():
        summary[g] = {"patients": len(rs), **{
            lab: float(np.mean(v)) if (v := [r["missed"][lab] for r in rs if r["missed"][lab] is not None]) else None
            for lab in LABELS}}
    holes = {"patients": len(rows), **(paired(np.array([r["dice_filled"] - r["dice"] for r in rows])) if rows else {})}
    res = {"settings": {"cv": str(a.cv), "raw": str(raw), "below": a.below, "modality": plan["preprocess"]["modalities"][0],
                        "predict": own}, "patients": sorted(rows, key=lambda r: r["dice"]), "summary": summary,
           "holes_filled": holes}
    return finish(res, t_start, report, a.json)


def report(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    f = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
    t = Table(title=f"Whole-tumour misses per held-out patient ({res['settings']['cv']}; z: "
                    f"{res['settings']['modality']} brain z-scores)")
    for c in ("patient", "fold", "Dice", "holes filled", "pred/true", "missed core", "missed oedema", "missed enh.",
              "z found", "z missed", "z normal", "normal p90", "both sides", "asym missed", "asym p90"):
        t.add_column(c, justify="left" if c == "patient" else "right", no_wrap=True)
    for r in res["patients"]:
        t.add_row(r["patient"], str(r["fold"]), f"{r['dice']:.3f}", f"{r['dice_filled']:.3f}", f(r["volume_ratio"]),
                  *(f(r["missed"][lab]) for lab in LABELS), *(f(r["z"][k]) for k in ("found", "missed", "normal", "normal_p90")),
                  f(r["both_sides"]), f(r["asym"]["missed"]), f(r["asym"]["normal_p90"]))
    s = Table(title="Mean missed share of each label")
    for c in ("patients", "n", *LABELS):
        s.add_column(c, justify="left" if c == "patients" else "right")
    for g, v in res["summary"].items():
        s.add_row(g, str(v["patients"]), *(f(v[lab]) for lab in LABELS))
    con = Console(width=max(170, Console().width))
    con.print(t)
    con.print(s)
    h = res["holes_filled"]
    if h["patients"] > 1:
        con.print(f"holes filled in every plane: Dice {h['mean']:+.4f} ± {h['se']:.4f} per patient "
                  f"(better {h['better']}, worse {h['worse']} of {h['patients']})")
    con.print(f"total {res['total_s']:.0f} s")


if __name__ == "__main__":
    main()
