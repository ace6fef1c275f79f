"""`brats2d crossval`: patient-level k-fold cross-validation, scored on whole volumes.

Protocol (honest by construction):

* The seed split's test patients -- ``split_patients(cases, pcfg.split, pcfg.seed)["test"]``, exactly the
  patients ``brats2d preprocess`` with these settings holds out (5 of 34 at 70/15/15, seed 42) -- are
  excluded unless ``include_test``, so choices made from CV never see them. They are not even read.
* The remaining patients are cut into k folds with ``kfold(cases, k, seed)``. Fold i holds out
  ``folds[i]``. From the other patients a validation set (best-epoch selection only) of
  ``max(1, round(v / (t + v) * n))`` patients is drawn by a shuffle seeded with ``[seed, i]`` -- the
  seed protocol's share of val among non-test patients (15/85: 4 of 23 at 5 folds of 29) -- and the
  rest train. (A whole neighbouring fold as validation would leave 2-fold CV no training patients
  and cost 5-fold CV a fifth of its training data.) A split with val 0 (``--split 0.85,0,0.15``: the
  same excluded test patients) trains on all of them, and each run's model is its last epoch's.
* Each fold gets its own cache (preprocess with a splits file {train, val, test = held-out}), its own
  run, and two scores: whole volumes -- every axial slice of each held-out patient from the raw NIfTI
  through the predict path with the recipe's ``checkpoint``/``min_size``/``keep_largest``/``tta``
  (best+latest: the mean of the run's two models), per-patient 3D Dice and HD95 at
  native resolution -- and the seed's metric, pooled Dice over the held-out patients' cached slices.
  Patients that preprocess skips (unreadable, no tumour) are listed in metrics.json "skipped", unscored.

Layout: ``OUT/crossval.json`` (recipe, every setting, folds and patient lists), ``OUT/fold{i}/``
(``splits.json``, ``cache.h5``, ``run/``, ``metrics.json``) and ``OUT/cv_summary.json``.

Post-processing is chosen the way nnU-Net chooses it: with ``postprocessing`` each held-out patient is
also scored under POSTPROCESSING_GRID (TTA or not x nothing / components < 100 voxels dropped / only
the largest component, with the best-validation checkpoint; and model selection: the last epoch's
checkpoint instead, or the mean of both as a two-model ensemble, whose largest-component cell is also
scored at other thresholds), from five forward passes per patient (plus 8 for TTA), and the summary
reports each variant's per-patient Dice and its paired difference to the recipe's own setting.
``rescore`` re-scores finished folds with their trained models (no preprocessing, no training) and
accepts a plan that differs from the folder's in predict settings only.

Resumable: a fold whose metrics.json records the same settings is skipped; a killed fold resumes
(an up-to-date cache is reused, training resumes from its checkpoint). An OUT made with another plan
is refused unless ``restart`` (which starts the selected folds over), so an ablation never mixes
with earlier folds. ``fold=i`` runs one fold: folds can run on different machines and their
``fold{i}`` folders be copied into one OUT; a rerun there then only summarizes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from ..config import PredictConfig, PreprocessConfig, TrainConfig, diff, from_dict, to_dict
from ..files import read_json, write_json
from ..splits import load_splits, save_splits
from .plan import (METRICS, PLAN, POSTPROCESSING_GRID, CrossvalError, fill_plan_defaults, flat, fold_settings,
                   make_folds, settings)
from .summary import summarize

def crossval(raw: str | Path, out: str | Path | None = None, *, folds: int = 5, seed: int = 42,
             recipe: str | None = "seed", overrides: dict[str, dict[str, Any]] | None = None,
             include_test: bool = False, fold: int | None = None, device: str = "auto", workers: int = 0,
             restart: bool = False, rescore: bool = False, postprocessing: bool = False,
             log: Callable[[str], None] = print, progress: Any = None) -> dict[str, Any]:
    """Run (or resume) the folds of a cross-validation and return the summary (see the module docstring)."""
    from ..nifti import discover

    pcfg, tcfg, pred = settings(recipe, overrides)
    out = Path(out) if out is not None else Path(f"runs/crossval-{recipe or 'seed'}")
    cases = [p.case for p in discover(raw)]
    if fold is not None and not 0 <= fold < folds:
        raise CrossvalError(f"fold: {fold} is outside 0..{folds - 1}")
    plan = json.loads(json.dumps({
        "recipe": recipe, "raw": str(Path(raw).resolve()), "folds": folds, "seed": seed,
        "include_test": include_test, "patients": sorted(cases), "preprocess": to_dict(pcfg),
        "train": to_dict(tcfg), "predict": to_dict(pred), **make_folds(cases, folds, seed, pcfg, include_test)}))
    old = read_json(out / PLAN)
    if old is not None and not restart:
        old = fill_plan_defaults(old)
        changes = diff(flat({**old, "raw": None}), flat({**plan, "raw": None}))
        predict_only = all(c.startswith("predict.") for c in changes)
        if changes and rescore and predict_only:
            log(f"{out}: predict settings changed ({'; '.join(changes)}); re-scoring the trained folds")
        elif changes:
            hint = "--rescore (only predict settings differ)" if predict_only else "another --out or --restart"
            raise CrossvalError(f"{out} holds a cross-validation with other settings; use {hint}. "
                                "Differences (there -> now):\n  " + "\n  ".join(c if len(c) < 160 else
                                                                                 c.split(":")[0] + ": changed" for c in changes))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / PLAN, plan)
    for i in [fold] if fold is not None else range(folds):
        run_fold(raw, out, plan, i, device=device, workers=workers, restart=restart, rescore=rescore,
                 postprocessing=postprocessing, log=log, progress=progress)
    return summarize(out)

def run_fold(raw: str | Path, out: Path, plan: dict[str, Any], i: int, *, device: str = "auto", workers: int = 0,
             restart: bool = False, rescore: bool = False, postprocessing: bool = False,
             log: Callable[[str], None] = print, progress: Any = None) -> dict[str, Any]:
    """Preprocess, train and score fold `i` of `plan` into out/fold{i}; returns its metrics.

    With `rescore` a fold that has metrics.json is only scored again, with the model it trained.
    """
    from ..cache import read_meta
    from ..preprocess import preprocess, splits_path
    from ..rundir import write_predict_record
    from ..train import train

    d, k, ident = out / f"fold{i}", plan["folds"], fold_settings(plan, i)
    done = read_json(d / METRICS)
    if done is not None and fill_plan_defaults(done.get("settings", {})) == ident and not (restart or rescore):
        log(f"fold {i} ({i + 1} of {k}): finished earlier ({d / METRICS}); skipped")
        return done
    if done is not None and rescore and not restart:
        if done.get("settings", {}).get("splits") != plan["splits"][i]:
            raise CrossvalError(f"{d}: trained on other splits than this plan; --rescore needs the same folds")
        log(f"fold {i} ({i + 1} of {k}): re-scoring the model trained earlier ({d / 'run'})")
        t0 = time.perf_counter()
        scores = _score_fold(raw, d, plan, device, postprocessing)
        write_predict_record(d / "run", from_dict(PredictConfig, plan["predict"]))  # what the fold's run is scored with
        metrics = {**{key: v for key, v in done.items() if key != "postprocessing"}, "settings": ident, **scores,
                   "seconds": {**done["seconds"], "evaluate": round(time.perf_counter() - t0, 2)}}
        write_json(d / METRICS, metrics)
        _log_fold(log, i, k, metrics)
        return metrics
    splits = plan["splits"][i]
    pcfg, tcfg = from_dict(PreprocessConfig, plan["preprocess"]), from_dict(TrainConfig, plan["train"])
    d.mkdir(parents=True, exist_ok=True)
    save_splits(splits, d / "splits.json")
    cache_path = d / "cache.h5"
    try:  # preprocess's up-to-date check looks at settings and inputs, not at the split
        stale = cache_path.exists() and load_splits(splits_path(cache_path)) != splits
    except ValueError:
        stale = True
    log(f"fold {i} ({i + 1} of {k}): {len(splits['train'])} train / {len(splits['val'])} val / {len(splits['test'])} "
        f"held-out patients -> {d}")
    t0 = time.perf_counter()
    preprocess(raw, cache_path, pcfg, workers=workers, splits_file=d / "splits.json", force=stale)
    t1 = time.perf_counter()
    history = train(cache_path, d / "run", tcfg, predict=from_dict(PredictConfig, plan["predict"]), device=device,
                    restart=restart, log=log, progress=progress)
    t2 = time.perf_counter()
    meta = read_meta(cache_path)
    scores = _score_fold(raw, d, plan, device, postprocessing)
    t3 = time.perf_counter()
    listed = [c for s in splits.values() for c in s]
    metrics = {
        "settings": ident, "fold": i, "cache": str(cache_path), "run_dir": str(d / "run"),
        "patients": {s: meta.splits[s] for s in ("train", "val", "test")},
        "skipped": sorted(set(listed) - set(meta.patients)), **scores,
        "train_minutes": sum(h["seconds"] for h in history) / 60, "history": history,
        "seconds": {"preprocess": round(t1 - t0, 2), "train": round(t2 - t1, 2), "evaluate": round(t3 - t2, 2)}}
    write_json(d / METRICS, metrics)
    _log_fold(log, i, k, metrics)
    return metrics

def _score_fold(raw: str | Path, d: Path, plan: dict[str, Any], device: str, postprocessing: bool) -> dict[str, Any]:
    """{volume, slices[, postprocessing]} of fold folder `d`'s best model on its held-out patients."""
    from ..cache import read_meta
    from ..evaluate import evaluate_cache, evaluate_variants
    from ..inference import load_predictor

    cache_path = d / "cache.h5"
    held = read_meta(cache_path).splits["test"]
    own = plan["predict"]
    variants = {"recipe": own, **(POSTPROCESSING_GRID if postprocessing else {})}
    predictors = {which: load_predictor(d / "run", which, device) for which in {v["checkpoint"] for v in variants.values()}}
    threshold = predictors[own["checkpoint"]].train_cfg.threshold
    scored: dict[str, Any] = {}
    for which, predictor in predictors.items():
        scored.update(evaluate_variants(predictor, raw, held, threshold, {
            name: {key: v[key] for key in ("tta", "min_size", "keep_largest", "largest_regions", "threshold")
                   if key in v}
            for name, v in variants.items() if v["checkpoint"] == which}))
    slices = evaluate_cache(predictors[own["checkpoint"]], str(cache_path), "test", threshold, tta=bool(own["tta"]))
    out: dict[str, Any] = {
        "volume": scored["recipe"],
        "slices": {r: {key: v[key] for key in ("pooled", "per_slice_mean", "per_patient_dice", "counts")}
                   for r, v in slices.items()}}
    if postprocessing:
        out["postprocessing"] = {name: {"settings": v, "regions": {r: scored[name][r]["per_patient"] for r in scored[name]}}
                                 for name, v in POSTPROCESSING_GRID.items()}
    return out

def _log_fold(log: Callable[[str], None], i: int, k: int, metrics: dict[str, Any]) -> None:
    for region, v in metrics["volume"].items():
        log(f"fold {i} ({i + 1} of {k}): {region} whole-volume 3D Dice mean {v['per_patient_dice']['mean']:.4f} "
            f"over {len(v['per_patient'])} patients; pooled slice Dice {metrics['slices'][region]['pooled']['dice']:.4f}")
