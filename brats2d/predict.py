"""`brats2d predict`: masks in the source space of each input scan, with metrics when a seg is present."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import metrics as M
from .config import BRATS_REGIONS
from .files import atomic_write
from .inference import Predictor
from .nifti import InputError, Patient, discover, load_patient, patient_from_folder
from .ood import check
from .slicing import prepare, region_masks


def postprocess(mask: np.ndarray, min_size: int = 0, keep_largest: bool = False) -> np.ndarray:
    """A bool mask (X, Y, Z) without 3D components (26-connectivity) under `min_size` voxels and, with
    `keep_largest`, without every component but the largest (nnU-Net's single-lesion rule)."""
    if (min_size <= 0 and not keep_largest) or not mask.any():
        return mask
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    keep = sizes >= max(min_size, 1)
    if keep_largest:
        keep &= np.arange(n + 1) == int(np.argmax(sizes))
    return keep[lab]


def postprocess_regions(prob: np.ndarray, regions: Sequence[str], threshold: float, min_size: int = 0,
                        keep_largest: bool = False, largest_regions: Sequence[str] = BRATS_REGIONS) -> np.ndarray:
    """Probabilities (K, X, Y, Z) float32 of `regions` -> masks (K, X, Y, Z) bool: `threshold`, then
    `postprocess` of each region, with `keep_largest` only in `largest_regions`."""
    return np.stack([postprocess(p > threshold, min_size, keep_largest and r in largest_regions)
                     for p, r in zip(prob, regions)])


def post_settings(own: Mapping[str, Any]) -> dict[str, Any]:
    """The post-processing keywords of `postprocess_regions` from a dict of predict settings (a crossval
    plan's, a grid cell); one written before largest_regions existed applies keep_largest everywhere."""
    return {"min_size": int(own["min_size"]), "keep_largest": bool(own["keep_largest"]),
            "largest_regions": tuple(own.get("largest_regions", BRATS_REGIONS))}


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
    with atomic_write(path, suffix=".tmp.nii.gz") as tmp:
        nib.save(img, str(tmp))


def predict_case(pred: Predictor, folder: str | Path, out: str | Path | None, *, threshold: float = 0.5,
                 probabilities: bool = False, tta: bool = False, mc_dropout: int = 0,
                 min_size: int = 0, keep_largest: bool = False,
                 largest_regions: Sequence[str] = BRATS_REGIONS) -> dict[str, Any]:
    """Predict one patient folder; write OUT/<case>_pred.nii.gz (and extras) when `out` is given.

    Returns {patient, seconds, ood, regions: {region: {dice, hd95, tumour_voxels, pred_voxels}}}; the
    metric entries appear only when the folder has a seg; `ood` lists the scan's properties that lie far
    outside the run's training scans (brats2d.ood.check; empty when none, or for runs without a profile).
    """
    t0 = time.perf_counter()
    patient, image, seg, spacing = load_case(pred, folder)
    mods, blank = pred.prep_cfg.modalities, blank_channels(pred, patient)
    prep = prepare(image, pred.prep_cfg, spacing, [str(patient.files.get(m, m)) for m in mods], blank)
    prob, var = pred.volume_prepared(prep, tta=tta, mc_dropout=mc_dropout)  # (K, X, Y, Z)
    masks = postprocess_regions(prob, pred.regions, threshold, min_size, keep_largest, largest_regions)
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
    row = {"patient": patient.case, "ood": check(prep.stats, pred.profile), "blank": [mods[c] for c in blank],
           "regions": score_masks(pred, patient, masks, seg, spacing)}
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def explain_case(pred: Predictor, folder: str | Path, out: str | Path, threshold: float) -> Path:
    """Write OUT/<case>_explain.nii.gz: Integrated-Gradients evidence maps in [0, 1] (brats2d/explain.py), laid out as
    <case>_prob.nii.gz (X, Y, Z) for one region, (X, Y, Z, K) for several. Returns the path."""
    from .explain import explain_volume

    patient, image, _, _ = load_case(pred, folder)
    maps = explain_volume(pred, image, threshold, blank=blank_channels(pred, patient))
    path = Path(out) / f"{patient.case}_explain.nii.gz"
    _save_nifti(maps[0] if len(maps) == 1 else np.moveaxis(maps, 0, -1), patient.files[pred.prep_cfg.modalities[0]], path)
    return path


def score_variants(pred: Predictor, folder: str | Path, threshold: float,
                   variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One patient (with a seg) scored under several predict settings {name: {tta, min_size, keep_largest
    [, largest_regions, threshold]}}; a variant without its own threshold uses `threshold`.

    The volume is read and predicted once per `tta` value, so a post-processing ablation costs one
    or two forward passes per patient. Returns {name: predict_case's row without files}.
    """
    patient, image, seg, spacing = load_case(pred, folder)
    if seg is None:
        raise InputError(f"{folder}: no seg file to score against")
    blank = blank_channels(pred, patient)
    probs = {tta: pred.volume(image, tta=tta, blank=blank)[0] for tta in sorted({bool(v["tta"]) for v in variants.values()})}
    out = {}
    for name, v in variants.items():
        th = float(v.get("threshold", threshold))
        masks = postprocess_regions(probs[bool(v["tta"])], pred.regions, th, **post_settings(v))
        out[name] = {"patient": patient.case, "regions": score_masks(pred, patient, masks, seg, spacing)}
    return out


def load_case(pred: Predictor, folder: str | Path) -> tuple[Patient, np.ndarray, np.ndarray | None, tuple[float, ...]]:
    """A patient folder read for `pred`: (Patient, image (C, X, Y, Z) float32 with the run's modalities,
    seg (X, Y, Z) labels or None when the folder has none, voxel spacing (mm)).

    A run trained with modality dropout accepts a scan without any modality but the first: its channel
    is zeros here, and `blank_channels` names it for `prepare`. Any other missing file is an InputError."""
    patient = patient_from_folder(Path(folder))
    if patient is None:
        raise InputError(f"{folder}: not a BraTS patient folder (no <case>_flair / <case>-t2f NIfTI)")
    mods = pred.prep_cfg.modalities
    image, seg, _, spacing = load_patient(patient, mods, need_seg="seg" in patient.files,
                                          left_right=pred.prep_cfg.mirror,
                                          optional=mods[1:] if pred.train_cfg.modality_dropout > 0 else ())
    return patient, image, seg, spacing


def blank_channels(pred: Predictor, patient: Patient) -> tuple[int, ...]:
    """Indices in the run's modalities of those the patient lacks (only a modality-dropout run accepts any)."""
    return tuple(c for c, m in enumerate(pred.prep_cfg.modalities) if m not in patient.files)


def score_masks(pred: Predictor, patient: Patient, masks: np.ndarray, seg: np.ndarray | None,
                spacing: tuple[float, ...]) -> dict[str, dict[str, Any]]:
    """{region: {pred_voxels[, dice, hd95 (mm), tumour_voxels]}} for masks (K, X, Y, Z) bool."""
    out: dict[str, dict[str, Any]] = {}
    for k, region in enumerate(pred.regions):
        r: dict[str, Any] = {"pred_voxels": int(masks[k].sum())}
        if seg is not None:
            truth = region_masks(seg, region, patient.et_label)[0]
            c = M.confusion(masks[k], truth)
            r.update(dice=float(M.dice(c)), hd95=M.hd95(masks[k], truth, spacing, empty="brats"), tumour_voxels=int(truth.sum()))
        out[region] = r
    return out


def collect_inputs(inputs: list[str | Path]) -> list[Patient]:
    """Patient folders from a mix of patient folders and folders of them (InputError if none)."""
    found: list[Patient] = []
    for i in inputs:
        found.extend(discover(i))
    return found


def predict(pred: Predictor, inputs: list[str | Path], out: str | Path, explain: bool = False,
            **kw: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Predict every patient under `inputs`; write OUT/metrics.csv when any has a seg.

    `explain`: also write OUT/<case>_explain.nii.gz (see `explain_case`).

    Returns (rows, errors): one bad patient is reported and skipped, the others still run.
    """
    out = Path(out)
    rows, errors = [], []
    for p in collect_inputs(inputs):
        try:
            rows.append(predict_case(pred, p.folder, out, **kw))
            if explain:
                explain_case(pred, p.folder, out, kw.get("threshold", 0.5))
        except InputError as e:
            errors.append(str(e))
    scored = [r for r in rows if any("dice" in v for v in r["regions"].values())]
    if scored:
        with atomic_write(out / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["patient", "region", "dice", "hd95_mm", "tumour_voxels", "pred_voxels", "seconds", "ood", "blank"])
            for r in scored:
                for region, v in r["regions"].items():
                    w.writerow([r["patient"], region, f"{v['dice']:.4f}", f"{v['hd95']:.2f}", v["tumour_voxels"],
                                v["pred_voxels"], r["seconds"], "; ".join(r.get("ood", [])),
                                " ".join(r.get("blank", []))])
    return rows, errors
