"""What every benchmark script does at the end: total time, the printed table, the JSON file."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator


def finish(res: dict[str, Any], t_start: float, report: Callable[[dict[str, Any]], None],
           json_path: Path | None) -> dict[str, Any]:
    """Record total_s, print the report, write `json_path` (parents created) when given; returns `res`."""
    res["total_s"] = time.perf_counter() - t_start
    report(res)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(res, indent=2))
    return res


def crossval_args(description: str) -> argparse.ArgumentParser:
    """The arguments every script over a finished `brats2d crossval` folder takes: cv, --raw, --device, --json."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("cv", type=Path, help="a brats2d crossval output folder")
    ap.add_argument("--raw", type=Path, help="the raw BraTS folder it ran on (default: the one its plan names)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="write the results here")
    return ap


def crossval_plan(a: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """(the folder's plan read with crossval.with_defaults, the raw folder: --raw or the plan's)."""
    from brats2d.crossval import PLAN, with_defaults

    plan = with_defaults(json.loads((a.cv / PLAN).read_text()))
    return plan, a.raw or Path(plan["raw"])


def held_out(cv: Path, plan: dict[str, Any], raw: Path, device: str = "cpu") -> Iterator[tuple[int, Any, Any, Any, Any]]:
    """Each held-out patient of every finished fold of the crossval folder `cv` (its plan, read with
    crossval.with_defaults): (fold, fold run's Predictor with the plan's checkpoint, Patient,
    image (C, X, Y, Z) float32, seg (X, Y, Z) labels), patients in the fold cache's test order."""
    for i, pred, _, patient, image, seg in fold_patients(cv, plan, raw, ("test",), device):
        yield i, pred, patient, image, seg


def fold_patients(cv: Path, plan: dict[str, Any], raw: Path, splits: tuple[str, ...],
                  device: str = "cpu") -> Iterator[tuple[int, Any, str, Any, Any, Any]]:
    """Each patient of the given splits ("train", "val", "test") of every finished fold of the crossval
    folder `cv`: (fold, fold run's Predictor with the plan's checkpoint, split, Patient, image (C, X, Y, Z)
    float32, seg (X, Y, Z) labels), split by split in the order given, patients in the fold cache's order."""
    from brats2d.cache import read_meta
    from brats2d.crossval import finished_fold
    from brats2d.inference import load_predictor
    from brats2d.nifti import load_patient, patient_from_folder

    for i in range(plan["folds"]):
        if finished_fold(cv, plan, i) is None:
            continue
        d = cv / f"fold{i}"
        pred = load_predictor(d / "run", plan["predict"]["checkpoint"], device)
        cases = read_meta(d / "cache.h5").splits
        for split in splits:
            for case in cases.get(split, []):
                patient = patient_from_folder(raw / case)
                image, seg, _, _ = load_patient(patient, pred.prep_cfg.modalities, left_right=pred.prep_cfg.mirror)
                yield i, pred, split, patient, image, seg


def plan_prediction(pred: Any, image: Any, own: dict[str, Any]) -> tuple[Any, Any]:
    """One patient predicted the way a crossval plan's predict settings `own` (tta, min_size, keep_largest)
    do it, with the fold run's Predictor `pred` on image (C, X, Y, Z) float32: (whole-tumour probability
    (X, Y, Z) float32, mask (X, Y, Z) bool, thresholded at the run's threshold and post-processed). The
    mask's Dice is the one the fold's metrics.json holds."""
    prob = pred.volume(image, tta=bool(own["tta"]))[0][0]
    return prob, plan_mask(prob, pred, own)


def plan_mask(prob: Any, pred: Any, own: dict[str, Any]) -> Any:
    """prob (X, Y, Z) float32 -> bool mask: the run's threshold, then the plan's post-processing."""
    from brats2d.predict import postprocess

    return postprocess(prob > pred.train_cfg.threshold, int(own["min_size"]), bool(own["keep_largest"]))
