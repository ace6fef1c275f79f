"""`brats2d eval`: the seed's pooled metrics on cached slices, and per-patient 3D metrics.

Two views of one model:

* **cache** (the seed's protocol): the split's cached slices (tumour slices unless --empty-slices),
  metrics pooled over all pixels, plus per-slice means and per-patient 3D Dice/HD95 on the stacked
  cached slices at the cache's resolution.
* **volume** (what a user gets, `--raw RAW`): every axial slice of each patient of the split predicted
  from the raw NIfTI through the predict path, per-patient 3D Dice and HD95 at native resolution.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as M
from .config import BRATS_REGIONS
from .dataset import SliceCache
from .files import write_json
from .inference import Predictor, load_predictor


def describe(values: list[float]) -> dict[str, float]:
    """{mean, sd (ddof 1; 0 for one value), median, min, max} of the finite values (NaN ones if none):
    how per-patient scores are summarized everywhere (inf HD95s, an empty prediction, are left out)."""
    a = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if a.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "median": float(np.median(a)), "min": float(a.min()), "max": float(a.max())}


def _region_report(pred: np.ndarray, target: np.ndarray, patients: np.ndarray, slices: np.ndarray,
                   spacing: dict[str, tuple[float, float, float]]) -> dict[str, Any]:
    """pred/target (N, S, S) bool of one region -> pooled, per-slice and per-patient metrics."""
    counts = M.confusion(pred, target)
    per_slice = M.per_slice(pred, target)
    rows = []
    for case in sorted(set(patients.tolist())):
        sel = np.flatnonzero(patients == case)
        sel = sel[np.argsort(slices[sel])]
        p3, t3 = np.moveaxis(pred[sel], 0, -1), np.moveaxis(target[sel], 0, -1)  # (S, S, n)
        c = M.confusion(p3, t3)
        rows.append({"patient": case, "dice": float(M.dice(c)), "hd95": M.hd95(p3, t3, spacing[case]),
                     "tumour_voxels": int(t3.sum()), "slices": int(len(sel))})
    return {"counts": {k: int(getattr(counts, k)) for k in ("tp", "fp", "fn", "tn")},
            "pooled": M.summarize(counts, "pooled"), "per_slice_mean": M.summarize(per_slice, "mean"),
            "per_patient": rows, "per_patient_dice": describe([r["dice"] for r in rows]),
            "per_patient_hd95": describe([r["hd95"] for r in rows])}


def evaluate_cache(pred: Predictor, cache_path: str, split: str, threshold: float, batch_size: int = 64,
                   tta: bool = False) -> dict[str, Any]:
    """Metrics of `pred` on the cached slices of `split` (see module docstring)."""
    data = SliceCache(cache_path, split)
    images, masks = data.arrays()
    patients, slices = data.index()
    probs = np.concatenate([pred.slices(np.asarray(images[i:i + 512]), batch_size, tta=tta)[0]
                            for i in range(0, len(data), 512)] or [np.zeros((0,) + masks.shape[1:], np.float32)])
    spacing = {c: tuple(v["spacing"]) for c, v in data.meta.patients.items()}
    out = {}
    for k, region in enumerate(pred.regions):
        out[region] = _region_report(probs[:, k] > threshold, np.asarray(masks[:, k]) > 0, patients, slices, spacing)
    return out


def evaluate_volumes(pred: Predictor, raw: str | Path, cases: list[str], threshold: float,
                     tta: bool = False, min_size: int = 0, keep_largest: bool = False,
                     largest_regions: tuple[str, ...] = BRATS_REGIONS) -> dict[str, Any]:
    """Per-patient 3D metrics predicting every axial slice of each raw patient volume."""
    setting = {"tta": tta, "min_size": min_size, "keep_largest": keep_largest, "largest_regions": largest_regions}
    return evaluate_variants(pred, raw, cases, threshold, {"only": setting})["only"]


def evaluate_variants(pred: Predictor, raw: str | Path, cases: list[str], threshold: float,
                      variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """evaluate_volumes for several predict settings {name: {tta, min_size, keep_largest[, largest_regions]}} at once:
    {name: {region: {per_patient, per_patient_dice, per_patient_hd95}}}."""
    from .predict import score_variants

    rows = [score_variants(pred, Path(raw) / c, threshold, variants) for c in cases]
    out: dict[str, dict[str, Any]] = {}
    for name in variants:
        out[name] = {}
        for region in pred.regions:
            per = [{"patient": r[name]["patient"], **r[name]["regions"][region]} for r in rows]
            out[name][region] = {"per_patient": per, "per_patient_dice": describe([r["dice"] for r in per]),
                                 "per_patient_hd95": describe([r["hd95"] for r in per])}
    return out


# Settings that change what the model sees; split, seed, empty_slices and dtype may differ (e.g. an eval-only cache).
MUST_MATCH = ("modalities", "size", "region", "norm", "percentile", "context", "crop", "mirror")


def check_cache_matches(pred: Predictor, data: SliceCache) -> None:
    """CacheError naming the file when the cache was built with other input settings than the run's."""
    from .cache import CacheError
    from .config import to_dict

    cache_path = data.path
    have, want = data.meta.config, to_dict(pred.prep_cfg)
    diff = [f"{k}: run {want.get(k)!r}, cache {have.get(k)!r}" for k in MUST_MATCH
            if json.dumps(have.get(k)) != json.dumps(want.get(k))]
    if diff:
        raise CacheError(f"{cache_path}: built with other settings than run {pred.run_dir}: " + "; ".join(diff))


def evaluate(run_dir: str | Path, split: str = "test", which: str = "best", threshold: float = 0.5,
             cache_path: str | None = None, raw: str | Path | None = None, device: str = "auto",
             tta: bool = False, json_path: str | Path | None = None, min_size: int = 0,
             keep_largest: bool = False, largest_regions: tuple[str, ...] = BRATS_REGIONS) -> dict[str, Any]:
    """Evaluate a run; writes run_dir/metrics_<split>.json (and `json_path` if given) and returns it.

    `min_size` (voxels) and `keep_largest` (in `largest_regions`) apply to the whole-volume scores only (3D
    components need the whole scan).
    """
    pred = load_predictor(run_dir, which, device)
    cache_path = cache_path or pred.cache_path
    data = SliceCache(cache_path, split)
    check_cache_matches(pred, data)
    result: dict[str, Any] = {
        "run_dir": str(run_dir), "split": split, "checkpoint": which, "threshold": threshold, "tta": tta,
        "min_size": min_size, "keep_largest": keep_largest, "largest_regions": list(largest_regions),
        "cache": str(cache_path),
        "regions": evaluate_cache(pred, cache_path, split, threshold, tta=tta)}
    if raw is not None:
        result["volume"] = evaluate_volumes(pred, raw, data.meta.splits[split], threshold, tta=tta,
                                            min_size=min_size, keep_largest=keep_largest,
                                            largest_regions=largest_regions)
    for p in [Path(run_dir) / f"metrics_{split}.json"] + ([Path(json_path)] if json_path else []):
        write_json(p, result)
    return result
