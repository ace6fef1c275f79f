#!/usr/bin/env python
"""How a multimodal cross-validation's models do on scans that lack modalities, without retraining.

    python experiments/missing_modalities.py runs/cv-mm [--raw DIR] [--json F]

Every held-out patient of every finished fold is predicted by its fold's run with the plan's predict
settings, once with every modality and once per subset that keeps the first (FLAIR), the others left
blank exactly as `brats2d predict` leaves a modality a scan lacks (brats2d.slicing.prepare, blank). Per
subset and region (WT, TC, ET): per-patient 3D Dice (BraTS empty-mask rule) and its paired difference to
the complete scan. A run trained with `--modality-dropout` saw blank inputs in training; one trained
without never did, and its rows show why predict refuses it such scans. Not for clinical use.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np

from brats2d import metrics as M
from brats2d.cv.folds import held_out_patients
from brats2d.cv.summary import paired
from brats2d.evaluate import describe
from brats2d.predict import post_settings, postprocess_regions
from brats2d.slicing import region_masks

from common import crossval_args, crossval_plan, finish, paired_cells, show


def subsets(modalities: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """{'flair+t1ce+t2': (), 'flair+t1ce': (2,), ...}: each subset keeping the first modality, by the
    channels it leaves blank; the complete scan first."""
    rest = range(1, len(modalities))
    out = {}
    for n in range(len(modalities) - 1, -1, -1):
        for keep in itertools.combinations(rest, n):
            out["+".join(modalities[c] for c in (0, *keep))] = tuple(c for c in rest if c not in keep)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = crossval_args(__doc__.split("\n")[0]).parse_args(argv)
    t_start = time.perf_counter()
    plan, raw = crossval_plan(a)
    own = plan["predict"]
    mods = tuple(plan["preprocess"]["modalities"])
    if len(mods) < 2:
        raise SystemExit(f"{a.cv}: trained on {mods[0]} alone; nothing to leave out")
    sets = subsets(mods)
    rows: list[dict[str, Any]] = []
    for i, pred, patient, image, seg in held_out_patients(a.cv, plan, raw, a.device):
        dice: dict[str, dict[str, float]] = {}
        for name, blank in sets.items():
            prob = pred.volume(image, tta=bool(own["tta"]), blank=blank)[0]
            masks = postprocess_regions(prob, pred.regions, pred.train_cfg.threshold, **post_settings(own))
            dice[name] = {region: float(M.dice(M.confusion(masks[k], region_masks(seg, region, patient.et_label)[0])))
                          for k, region in enumerate(pred.regions)}
        rows.append({"patient": patient.case, "fold": i, "dice": dice})
    complete = next(iter(sets))
    summary: dict[str, dict[str, Any]] = {}
    for name in sets:
        summary[name] = {}
        for region in (rows[0]["dice"][name] if rows else {}):
            d = np.array([r["dice"][name][region] for r in rows])
            base = np.array([r["dice"][complete][region] for r in rows])
            summary[name][region] = {**describe(list(d)),
                                     **({"paired": paired(d - base)} if name != complete and len(d) > 1 else {})}
    res = {"settings": {"cv": str(a.cv), "raw": str(raw), "modalities": list(mods), "predict": own,
                        "modality_dropout": plan["train"].get("modality_dropout", 0.0)},
           "patients": rows, "summary": summary}
    return finish(res, t_start, report, a.json)


def report(res: dict[str, Any]) -> None:
    from rich.table import Table

    s = res["settings"]
    t = Table(title=f"Scans with modalities left blank ({s['cv']}, modality dropout {s['modality_dropout']}, "
                    f"{len(res['patients'])} held-out patients; paired against the complete scan)")
    for c in ("modalities given", "region", "3D Dice mean ± sd", "median", "worst", "paired", "better / worse"):
        t.add_column(c, justify="left" if c in ("modalities given", "region") else "right")
    for name, regions in res["summary"].items():
        for region, v in regions.items():
            p = v.get("paired")
            t.add_row(name, region.upper(), f"{v['mean']:.4f} ± {v['sd']:.3f}", f"{v['median']:.3f}", f"{v['min']:.3f}",
                      *paired_cells(p),
                      end_section=region == list(regions)[-1])
    show(t, res['total_s'])


if __name__ == "__main__":
    main()
