"""A cross-validation's plan: its settings, folds and output layout, shared by running,
summarizing and ensembling (see brats2d.cv.crossval for the protocol)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config import STAGES, ConfigError, PredictConfig, PreprocessConfig, TrainConfig, with_defaults
from ..files import read_json
from ..recipes import merge
from ..splits import kfold, split_patients

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


def fill_plan_defaults(settings: dict[str, Any]) -> dict[str, Any]:
    """A plan or fold settings dict written before a setting existed, with that setting's default
    filled in (what those folds used), so older output folders still resume and summarize."""
    out = dict(settings)
    for key, cls in STAGES.items():
        if isinstance(out.get(key), dict):
            out[key] = with_defaults(cls, out[key])
    return out


def finished_fold(out: Path, plan: dict[str, Any], i: int) -> dict[str, Any] | None:
    """Fold i's metrics in `out` if that fold finished with `plan`'s settings, else None."""
    m = read_json(out / f"fold{i}" / METRICS)
    return m if m is not None and fill_plan_defaults(m.get("settings", {})) == fold_settings(plan, i) else None


def flat(d: dict[str, Any]) -> dict[str, Any]:
    """{"a": {"b": 1}, "c": 2} -> {"a.b": 1, "c": 2} (one level), for `config.diff` of two plans."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update({f"{k}.{kk}": vv for kk, vv in v.items()} if isinstance(v, dict) else {k: v})
    return out



def load_plan(out: str | Path) -> dict[str, Any]:
    """The plan of the cross-validation folder `out`, with the defaults of settings added since it was
    written (so older folders still count their finished folds); CrossvalError if it has none."""
    plan = read_json(Path(out) / PLAN)
    if plan is None:
        raise CrossvalError(f"{out}: no {PLAN} (not a cross-validation folder)")
    return fill_plan_defaults(plan)
