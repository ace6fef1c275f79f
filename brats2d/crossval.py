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
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import STAGES, ConfigError, PredictConfig, PreprocessConfig, TrainConfig, diff, from_dict, to_dict
from .config import with_defaults as fill_defaults
from .recipes import merge
from .splits import kfold, load_splits, save_splits, split_patients

PLAN, SUMMARY, METRICS = "crossval.json", "cv_summary.json", "metrics.json"
_CHECKPOINT_LABEL = {"best": "", "latest": "last epoch, ", "best+latest": "best+last ensemble, "}
POSTPROCESSING_GRID: dict[str, dict[str, Any]] = {
    f"{_CHECKPOINT_LABEL[ck]}{'TTA, ' if tta else ''}{name}":
        {"checkpoint": ck, "tta": tta, "min_size": min_size, "keep_largest": largest}
    for ck, tta in (("best", False), ("best", True), ("latest", False), ("best+latest", False))
    for name, min_size, largest in (("none", 0, False), ("drop < 100 voxels", 100, False), ("largest only", 0, True))}
# The threshold on the ensemble's mean probability, where under- and over-segmentation trade off; these
# cells reuse the ensemble's probabilities, so they cost no forward pass. (Other cells use the run's threshold.)
POSTPROCESSING_GRID.update({
    f"best+last ensemble, largest only, threshold {t}":
        {"checkpoint": "best+latest", "tta": False, "min_size": 0, "keep_largest": True, "threshold": t}
    for t in (0.3, 0.4, 0.45, 0.55, 0.6)})


class CrossvalError(ValueError):
    """The cross-validation cannot run as asked; the message says why and what to do."""


def settings(recipe: str | None, overrides: dict[str, dict[str, Any]] | None = None
             ) -> tuple[PreprocessConfig, TrainConfig, PredictConfig]:
    """(preprocess, train, predict) settings: dataclass defaults <- recipe <- overrides[stage] (recipes.merge)."""
    ov = overrides or {}
    if set(ov) - set(STAGES):
        raise ConfigError(f"overrides: unknown stage(s) {', '.join(sorted(set(ov) - set(STAGES)))}")
    return (merge("preprocess", recipe, ov.get("preprocess")), merge("train", recipe, ov.get("train")),
            merge("predict", recipe, ov.get("predict")))


def make_folds(cases: list[str], folds: int, seed: int, pcfg: PreprocessConfig,
               include_test: bool = False) -> dict[str, Any]:
    """{"excluded": seed test patients (or []), "splits": per fold {train, val, test = held-out}}."""
    excluded = [] if include_test else split_patients(cases, pcfg.split, pcfg.seed)["test"]
    pool = sorted(set(cases) - set(excluded))
    if not 2 <= folds <= len(pool):
        raise CrossvalError(f"folds: need 2 <= folds <= {len(pool)} (patients available to CV"
                            f"{'' if include_test else f' after excluding {len(excluded)} seed test patients'}), got {folds}")
    share = pcfg.split[1] / (pcfg.split[0] + pcfg.split[1])
    out = []
    for i, held in enumerate(kfold(pool, folds, seed)):
        rest = sorted(set(pool) - set(held))
        need = 2 if share > 0 else 1
        if len(rest) < need:
            raise CrossvalError(f"fold {i}: {len(rest)} patient(s) outside the held-out fold; need >= {need} "
                                f"({'train and val' if share > 0 else 'train'})")
        # share 0 (a split like 0.85,0,0.15): every other patient trains and the last epoch is the model.
        n_val = 0 if share == 0 else min(len(rest) - 1, max(1, int(round(share * len(rest)))))
        order = np.random.default_rng([seed, i]).permutation(len(rest))
        val = sorted(rest[j] for j in order[:n_val])
        out.append({"train": sorted(set(rest) - set(val)), "val": val, "test": held})
    return {"excluded": excluded, "splits": out}


def fold_settings(plan: dict[str, Any], i: int) -> dict[str, Any]:
    """What a fold's metrics.json must record for the fold to count as finished for `plan`."""
    keep = ("recipe", "folds", "seed", "include_test", "preprocess", "train", "predict")
    return {**{k: plan[k] for k in keep}, "fold": i, "splits": plan["splits"][i]}


def with_defaults(settings: dict[str, Any]) -> dict[str, Any]:
    """A plan or fold settings dict written before a setting existed, with that setting's default
    filled in (what those folds used), so older output folders still resume and summarize."""
    out = dict(settings)
    for key, cls in STAGES.items():
        if isinstance(out.get(key), dict):
            out[key] = fill_defaults(cls, out[key])
    return out


def crossval(raw: str | Path, out: str | Path | None = None, *, folds: int = 5, seed: int = 42,
             recipe: str | None = "seed", overrides: dict[str, dict[str, Any]] | None = None,
             include_test: bool = False, fold: int | None = None, device: str = "auto", workers: int = 0,
             restart: bool = False, rescore: bool = False, postprocessing: bool = False,
             log: Callable[[str], None] = print, progress: Any = None) -> dict[str, Any]:
    """Run (or resume) the folds of a cross-validation and return the summary (see the module docstring)."""
    from .nifti import discover

    pcfg, tcfg, pred = settings(recipe, overrides)
    out = Path(out) if out is not None else Path(f"runs/crossval-{recipe or 'seed'}")
    cases = [p.case for p in discover(raw)]
    if fold is not None and not 0 <= fold < folds:
        raise CrossvalError(f"fold: {fold} is outside 0..{folds - 1}")
    plan = json.loads(json.dumps({
        "recipe": recipe, "raw": str(Path(raw).resolve()), "folds": folds, "seed": seed,
        "include_test": include_test, "patients": sorted(cases), "preprocess": to_dict(pcfg),
        "train": to_dict(tcfg), "predict": to_dict(pred), **make_folds(cases, folds, seed, pcfg, include_test)}))
    old = _read(out / PLAN)
    if old is not None and not restart:
        old = with_defaults(old)
        changes = diff(_flat({**old, "raw": None}), _flat({**plan, "raw": None}))
        predict_only = all(c.startswith("predict.") for c in changes)
        if changes and rescore and predict_only:
            log(f"{out}: predict settings changed ({'; '.join(changes)}); re-scoring the trained folds")
        elif changes:
            hint = "--rescore (only predict settings differ)" if predict_only else "another --out or --restart"
            raise CrossvalError(f"{out} holds a cross-validation with other settings; use {hint}. "
                                "Differences (there -> now):\n  " + "\n  ".join(c if len(c) < 160 else
                                                                                 c.split(":")[0] + ": changed" for c in changes))
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / PLAN, plan)
    for i in [fold] if fold is not None else range(folds):
        run_fold(raw, out, plan, i, device=device, workers=workers, restart=restart, rescore=rescore,
                 postprocessing=postprocessing, log=log, progress=progress)
    from .cvsummary import summarize  # it reads folders through this module's helpers

    return summarize(out)


def run_fold(raw: str | Path, out: Path, plan: dict[str, Any], i: int, *, device: str = "auto", workers: int = 0,
             restart: bool = False, rescore: bool = False, postprocessing: bool = False,
             log: Callable[[str], None] = print, progress: Any = None) -> dict[str, Any]:
    """Preprocess, train and score fold `i` of `plan` into out/fold{i}; returns its metrics.

    With `rescore` a fold that has metrics.json is only scored again, with the model it trained.
    """
    from .cache import read_meta
    from .preprocess import preprocess, splits_path
    from .rundir import write_predict_record
    from .train import train

    d, k, ident = out / f"fold{i}", plan["folds"], fold_settings(plan, i)
    done = _read(d / METRICS)
    if done is not None and with_defaults(done.get("settings", {})) == ident and not (restart or rescore):
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
        _write_json(d / METRICS, metrics)
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
    _write_json(d / METRICS, metrics)
    _log_fold(log, i, k, metrics)
    return metrics


def _score_fold(raw: str | Path, d: Path, plan: dict[str, Any], device: str, postprocessing: bool) -> dict[str, Any]:
    """{volume, slices[, postprocessing]} of fold folder `d`'s best model on its held-out patients."""
    from .cache import read_meta
    from .evaluate import evaluate_cache, evaluate_variants
    from .inference import load_predictor

    cache_path = d / "cache.h5"
    held = read_meta(cache_path).splits["test"]
    own = plan["predict"]
    variants = {"recipe": own, **(POSTPROCESSING_GRID if postprocessing else {})}
    predictors = {which: load_predictor(d / "run", which, device) for which in {v["checkpoint"] for v in variants.values()}}
    threshold = predictors[own["checkpoint"]].train_cfg.threshold
    scored: dict[str, Any] = {}
    for which, predictor in predictors.items():
        scored.update(evaluate_variants(predictor, raw, held, threshold, {
            name: {key: v[key] for key in ("tta", "min_size", "keep_largest", "threshold") if key in v}
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


def finished_fold(out: Path, plan: dict[str, Any], i: int) -> dict[str, Any] | None:
    """Fold i's metrics in `out` if that fold finished with `plan`'s settings, else None."""
    m = _read(out / f"fold{i}" / METRICS)
    return m if m is not None and with_defaults(m.get("settings", {})) == fold_settings(plan, i) else None


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update({f"{k}.{kk}": vv for kk, vv in v.items()} if isinstance(v, dict) else {k: v})
    return out


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float) + "\n")
    os.replace(tmp, path)
