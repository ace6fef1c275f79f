"""`brats2d predict`: masks in the source space of each input scan, with metrics when a seg is present."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as M
from .inference import Predictor
from .nifti import InputError, Patient, discover, load_patient, patient_from_folder
from .preprocess import region_masks


def remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 3D connected components (26-connectivity) smaller than `min_size` voxels from a bool mask."""
    if min_size <= 0 or not mask.any():
        return mask
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    return keep[lab]


def label_map(masks: np.ndarray, et_label: int) -> np.ndarray:
    """Region masks (3, X, Y, Z) bool [wt, tc, et] -> BraTS labels uint8 (2 oedema, 1 core, et_label)."""
    out = np.zeros(masks.shape[1:], np.uint8)
    out[masks[0]] = 2
    out[masks[1]] = 1
    out[masks[2]] = et_label
    return out


def _save_nifti(arr: np.ndarray, ref_path: Path, path: Path) -> None:
    """Write `arr` with the geometry (affine, qform/sform, zooms) of the reference NIfTI, atomically."""
    import nibabel as nib

    ref = nib.load(str(ref_path))
    hdr = ref.header.copy()
    hdr.set_data_dtype(arr.dtype)
    img = nib.Nifti1Image(arr, ref.affine, header=hdr)
    img.header.set_slope_inter(1, 0)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.nii.gz")
    nib.save(img, str(tmp))
    os.replace(tmp, path)


def predict_case(pred: Predictor, folder: str | Path, out: str | Path | None, *, threshold: float = 0.5,
                 probabilities: bool = False, tta: bool = False, mc_dropout: int = 0,
                 min_size: int = 0) -> dict[str, Any]:
    """Predict one patient folder; write OUT/<case>_pred.nii.gz (and extras) when `out` is given.

    Returns {patient, seconds, regions: {region: {dice, hd95, tumour_voxels, pred_voxels}}}; the
    metric entries appear only when the folder has a seg.
    """
    t0 = time.perf_counter()
    patient = patient_from_folder(Path(folder))
    if patient is None:
        raise InputError(f"{folder}: not a BraTS patient folder (no <case>_flair / <case>-t2f NIfTI)")
    has_seg = "seg" in patient.files
    image, seg, _, spacing = load_patient(patient, pred.prep_cfg.modalities, need_seg=has_seg)
    prob, var = pred.volume(image, tta=tta, mc_dropout=mc_dropout)  # (K, X, Y, Z)
    masks = np.stack([remove_small(p > threshold, min_size) for p in prob])
    row: dict[str, Any] = {"patient": patient.case, "regions": {}}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        ref = patient.files[pred.prep_cfg.modalities[0]]
        lab = label_map(masks, patient.et_label) if len(masks) == 3 else masks[0].astype(np.uint8)
        _save_nifti(lab, ref, out / f"{patient.case}_pred.nii.gz")
        if probabilities:
            _save_nifti(np.moveaxis(prob, 0, -1).squeeze(-1) if len(prob) == 1 else np.moveaxis(prob, 0, -1),
                        ref, out / f"{patient.case}_prob.nii.gz")
        if var is not None:
            _save_nifti(np.moveaxis(var, 0, -1).squeeze(-1).astype(np.float32) if len(var) == 1
                        else np.moveaxis(var, 0, -1).astype(np.float32), ref, out / f"{patient.case}_uncertainty.nii.gz")
    for k, region in enumerate(pred.regions):
        r = {"pred_voxels": int(masks[k].sum())}
        if has_seg:
            assert seg is not None
            truth = region_masks(seg, region, patient.et_label)[0]
            c = M.confusion(masks[k], truth)
            r.update(dice=float(M.dice(c)), hd95=M.hd95(masks[k], truth, spacing), tumour_voxels=int(truth.sum()))
        row["regions"][region] = r
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def collect_inputs(inputs: list[str | Path]) -> list[Patient]:
    """Patient folders from a mix of patient folders and folders of them (InputError if none)."""
    found: list[Patient] = []
    for i in inputs:
        found.extend(discover(i))
    return found


def predict(pred: Predictor, inputs: list[str | Path], out: str | Path, **kw: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Predict every patient under `inputs`; write OUT/metrics.csv when any has a seg.

    Returns (rows, errors): one bad patient is reported and skipped, the others still run.
    """
    out = Path(out)
    rows, errors = [], []
    for p in collect_inputs(inputs):
        try:
            rows.append(predict_case(pred, p.folder, out, **kw))
        except InputError as e:
            errors.append(str(e))
    scored = [r for r in rows if any("dice" in v for v in r["regions"].values())]
    if scored:
        tmp = out / ".metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["patient", "region", "dice", "hd95_mm", "tumour_voxels", "pred_voxels", "seconds"])
            for r in scored:
                for region, v in r["regions"].items():
                    w.writerow([r["patient"], region, f"{v['dice']:.4f}", f"{v['hd95']:.2f}", v["tumour_voxels"],
                                v["pred_voxels"], r["seconds"]])
        os.replace(tmp, out / "metrics.csv")
    return rows, errors
