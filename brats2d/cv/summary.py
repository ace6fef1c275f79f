"""A cross-validation folder's results: the finished folds collected into ``OUT/cv_summary.json``
(per fold, per patient and overall whole-volume metrics, and the post-processing grid's paired
comparisons), and the paired per-patient statistic every ablation in docs/experiments.md is judged by."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..evaluate import describe
from ..files import write_json
from .plan import SUMMARY, finished_fold, load_plan


def paired(delta: np.ndarray) -> dict[str, Any]:
    """Mean and standard error of per-patient differences, and how many patients each way."""
    return {"mean": float(delta.mean()), "se": float(delta.std(ddof=1) / np.sqrt(len(delta))) if len(delta) > 1 else 0.0,
            "better": int((delta > 1e-9).sum()), "worse": int((delta < -1e-9).sum())}


def summarize(out: str | Path) -> dict[str, Any]:
    """Collect the finished folds of `out` into cv_summary.json (written atomically) and return it."""
    out = Path(out)
    plan = load_plan(out)
    fold_metrics, missing = [], []
    for i in range(plan["folds"]):
        m = finished_fold(out, plan, i)
        if m is not None:
            fold_metrics.append(m)
        else:
            missing.append(i)
    regions: dict[str, Any] = {}
    for m in fold_metrics:
        for region, v in m["volume"].items():
            r = regions.setdefault(region, {"per_fold": [], "per_patient": []})
            rows = [{"patient": p["patient"], "fold": m["fold"], "dice": p["dice"], "hd95": p["hd95"]}
                    for p in v["per_patient"]]
            r["per_patient"] += rows
            d = v["per_patient_dice"]
            r["per_fold"].append({
                "fold": m["fold"], "patients": len(rows), "dice_mean": d["mean"], "dice_median": d["median"],
                "dice_min": d["min"], "hd95_median": v["per_patient_hd95"]["median"],
                "pooled_slice_dice": m["slices"][region]["pooled"]["dice"], "train_minutes": m["train_minutes"]})
    for r in regions.values():
        pp = r["per_patient"]
        r["dice"] = describe([p["dice"] for p in pp])
        r["hd95"] = {**describe([p["hd95"] for p in pp]), "infinite": sum(not np.isfinite(p["hd95"]) for p in pp)}
        r["fold_dice"] = describe([f["dice_mean"] for f in r["per_fold"]])
        r["pooled_slice_dice"] = describe([f["pooled_slice_dice"] for f in r["per_fold"]])
        r["worst"] = min(pp, key=lambda p: p["dice"]) if pp else None
    summary = {"out": str(out), "recipe": plan["recipe"], "folds": plan["folds"], "include_test": plan["include_test"],
               "excluded": plan["excluded"], "finished": [m["fold"] for m in fold_metrics], "missing": missing,
               "complete": not missing, "train_minutes": sum(m["train_minutes"] for m in fold_metrics),
               "regions": regions}
    if fold_metrics and all("postprocessing" in m for m in fold_metrics):
        summary["postprocessing"] = _postprocessing_summary(fold_metrics)
    write_json(out / SUMMARY, summary)
    return summary


def _postprocessing_summary(fold_metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Per grid variant and region: per-patient Dice described, and paired against the recipe's setting.

    "paired" = mean and standard error of (variant - recipe) per patient, with how many patients
    each way: a variant is worth adopting only when its mean gain is clearly beyond its standard error.
    """
    out: dict[str, Any] = {}
    for name in fold_metrics[0]["postprocessing"]:
        out[name] = {"settings": fold_metrics[0]["postprocessing"][name]["settings"], "regions": {}}
        for region in fold_metrics[0]["volume"]:
            own = {p["patient"]: p["dice"] for m in fold_metrics for p in m["volume"][region]["per_patient"]}
            var = {p["patient"]: p["dice"] for m in fold_metrics
                   for p in m["postprocessing"][name]["regions"][region]}
            delta = np.array([var[c] - own[c] for c in sorted(own)])
            out[name]["regions"][region] = {
                "dice": describe(list(var.values())), "hd95_median": float(np.median(
                    [p["hd95"] for m in fold_metrics for p in m["postprocessing"][name]["regions"][region]])),
                "paired": paired(delta)}
    return out
