"""The patients of a finished cross-validation's folds, predicted the way its plan predicts them.

For analyses of a `brats2d crossval` folder that need more than its metrics (experiments/): each
patient is read for, and predicted by, the run of the fold that held it out (or trained on it), with
the plan's predict settings, so a mask's Dice equals the one in the fold's metrics.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .plan import finished_fold


def fold_patients(out: Path, plan: dict[str, Any], raw: Path, splits: tuple[str, ...],
                  device: str = "cpu") -> Iterator[tuple[int, Any, str, Any, np.ndarray, np.ndarray]]:
    """Each patient of the given splits ("train", "val", "test") of every finished fold of the crossval
    folder `out` (its plan from `load_plan`): (fold, the fold run's Predictor with the plan's checkpoint,
    split, Patient, image (C, X, Y, Z) float32, seg (X, Y, Z) labels), split by split in the order given,
    patients in the fold cache's order. `raw` is the raw BraTS folder the crossval ran on."""
    from ..cache import read_meta
    from ..inference import load_predictor
    from ..nifti import load_patient, patient_from_folder

    for i in range(plan["folds"]):
        if finished_fold(out, plan, i) is None:
            continue
        d = out / f"fold{i}"
        pred = load_predictor(d / "run", plan["predict"]["checkpoint"], device)
        cases = read_meta(d / "cache.h5").splits
        for split in splits:
            for case in cases.get(split, []):
                patient = patient_from_folder(raw / case)
                image, seg, _, _ = load_patient(patient, pred.prep_cfg.modalities, left_right=pred.prep_cfg.mirror)
                yield i, pred, split, patient, image, seg


def held_out_patients(out: Path, plan: dict[str, Any], raw: Path,
                      device: str = "cpu") -> Iterator[tuple[int, Any, Any, np.ndarray, np.ndarray]]:
    """`fold_patients` of the held-out ("test") split only, without the split: (fold, Predictor, Patient,
    image (C, X, Y, Z) float32, seg (X, Y, Z) labels)."""
    for i, pred, _, patient, image, seg in fold_patients(out, plan, raw, ("test",), device):
        yield i, pred, patient, image, seg


def predict_as_planned(pred: Any, image: np.ndarray, own: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """One patient predicted the way a plan's predict settings `own` (tta, min_size, keep_largest) do it,
    with the fold run's Predictor `pred` on image (C, X, Y, Z) float32: (whole-tumour probability
    (X, Y, Z) float32, mask (X, Y, Z) bool from `mask_as_planned`)."""
    prob = pred.volume(image, tta=bool(own["tta"]))[0][0]
    return prob, mask_as_planned(prob, pred, own)


def mask_as_planned(prob: np.ndarray, pred: Any, own: dict[str, Any]) -> np.ndarray:
    """prob (X, Y, Z) float32 -> bool mask: the run's threshold, then the plan's post-processing."""
    from ..predict import post_settings, postprocess_regions

    return postprocess_regions(prob[None], pred.regions[:1], pred.train_cfg.threshold, **post_settings(own))[0]
