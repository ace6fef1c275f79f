#!/usr/bin/env python
"""What inference-time changes would do to a finished cross-validation, without retraining.

    python experiments/inference_screen.py runs/crossval-brats2d [--raw DIR] [--json F]

Every held-out patient of every finished fold is predicted with its fold's run and the plan's predict
settings ("recipe": its Dice equals the fold's metrics.json), then scored under variants the crossval
post-processing grid does not hold, each paired per patient against the recipe:

* close r (r = 1, 2, 3 voxels): the recipe's mask closed with a ball of radius r (dilate, then erode),
  joined with the mask: bridges small gaps between found tumour and missed tumour next to it;
* dilate 1: the mask grown by one voxel (a boundary drawn too tight);
* hysteresis t (t = 0.2, 0.3): every connected component of probability > t that touches the recipe's
  mask is added, so tumour scored just under 0.5 next to found tumour joins it;
* adabn: the BatchNorm running statistics re-estimated on the patient's own slices (AdaBN, Li et al.
  2016: a forward pass over every plane's slices in training mode with a cumulative average), then
  predicted and post-processed like the recipe: whether the training patients' statistics suit a new
  scan. The weights are restored afterwards. Only for BatchNorm runs (--norm-layer batch).

An accuracy screen, not a speed benchmark: no timings. Needs the raw folder the crossval ran on.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from brats2d import metrics as M
from brats2d.cv.folds import held_out_patients, predict_as_planned
from brats2d.cv.summary import paired

from common import crossval_args, crossval_plan, finish, paired_cells, show

CLOSE_RADII = (1, 2, 3)
HYSTERESIS = (0.2, 0.3)


def ball(r: int) -> np.ndarray:
    """(2r+1,)*3 bool structuring element: voxels within Euclidean distance r of the centre."""
    g = np.indices((2 * r + 1,) * 3) - r
    return (g ** 2).sum(0) <= r * r


def morphology_variants(prob: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """prob (X, Y, Z) float probabilities, mask (X, Y, Z) bool the recipe's post-processed prediction ->
    {variant name: (X, Y, Z) bool}; every variant contains the mask."""
    from scipy import ndimage

    out = {f"close {r}": ndimage.binary_closing(mask, ball(r)) | mask for r in CLOSE_RADII}
    out["dilate 1"] = ndimage.binary_dilation(mask, ball(1))
    for t in HYSTERESIS:
        lab, _ = ndimage.label(prob > t)
        touching = np.unique(lab[mask])
        out[f"hysteresis {t:g}"] = np.isin(lab, touching[touching > 0]) | mask
    return out


@contextmanager
def adapted_batchnorm(pred: Any, image: np.ndarray) -> Iterator[None]:
    """Within the block, every BatchNorm of pred's models holds statistics estimated on `image` (C, X, Y, Z)
    alone: running statistics reset, one prediction pass in training mode with momentum None (a cumulative
    average over its batches), then evaluation mode. The models' state is restored on exit."""
    import torch

    bns = [m for net in pred.models for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if not bns:
        raise ValueError("adabn: the run has no BatchNorm layers (trained with --norm-layer instance or group)")
    saved = [{k: v.clone() for k, v in net.state_dict().items()} for net in pred.models]
    momenta = [m.momentum for m in bns]
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        pred.train_mode = True  # the pass that gathers the statistics
        pred.volume(image)
        pred.train_mode = False
        for net in pred.models:
            net.eval()
        yield
    finally:
        pred.train_mode = False
        for net, state in zip(pred.models, saved):
            net.load_state_dict(state)
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        for net in pred.models:
            net.eval()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = crossval_args(__doc__.split("\n")[0])
    ap.add_argument("--no-adabn", action="store_true", help="skip the AdaBN variant (2 more passes per patient)")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    plan, raw = crossval_plan(a)
    own = plan["predict"]
    rows: list[dict[str, Any]] = []
    for i, pred, patient, image, seg in held_out_patients(a.cv, plan, raw, a.device):
        truth = seg > 0
        prob, mask = predict_as_planned(pred, image, own)
        masks = {"recipe": mask, **morphology_variants(prob, mask)}
        if not a.no_adabn:
            with adapted_batchnorm(pred, image):
                masks["adabn"] = predict_as_planned(pred, image, own)[1]
        rows.append({"patient": patient.case, "fold": i,
                     "dice": {k: float(M.dice(M.confusion(m, truth))) for k, m in masks.items()}})
    variants: dict[str, Any] = {}
    base = np.array([r["dice"]["recipe"] for r in rows])
    for name in (rows[0]["dice"] if rows else {}):
        d = np.array([r["dice"][name] for r in rows])
        variants[name] = {"mean": float(d.mean()), "sd": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                          "median": float(np.median(d)), "worst": float(d.min()), "below_0.70": int((d < 0.70).sum()),
                          **({"paired": paired(d - base)} if name != "recipe" and len(d) > 1 else {})}
    res = {"settings": {"cv": str(a.cv), "raw": str(raw), "predict": own}, "patients": rows, "variants": variants}
    return finish(res, t_start, report, a.json)


def report(res: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"Inference-time variants, paired per patient against the recipe ({res['settings']['cv']}, "
                    f"{len(res['patients'])} held-out patients)")
    for c in ("variant", "3D Dice mean ± sd", "median", "worst", "< 0.70", "paired vs recipe", "better / worse"):
        t.add_column(c, justify="left" if c == "variant" else "right")
    for name, v in res["variants"].items():
        p = v.get("paired")
        t.add_row(name, f"{v['mean']:.4f} ± {v['sd']:.3f}", f"{v['median']:.3f}", f"{v['worst']:.3f}", str(v["below_0.70"]),
                  *paired_cells(p))
    show(t, res['total_s'])


if __name__ == "__main__":
    main()
