"""Named recipes (preset settings per stage, plain data) and `merge`, the one place settings are combined.

`seed` reproduces the seed protocol exactly (it is every dataclass default). `brats2d` is the recipe
chosen by cross-validation on training patients only (README "Results" has the ablation table).
Settings a user gives explicitly always win over a recipe: see `merge`. This module also reads a setting
written as text (`--set field=value`, comma lists), so the command line and the library parse alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, get_args, get_origin, get_type_hints

from .config import STAGES, ConfigError, from_dict, to_dict

# brats2d: each choice kept because 5-fold CV on the 29 non-test real patients (FLAIR) measured a paired
# per-patient 3D Dice gain larger than its standard error (README "Results"): tumour-free slices
# +0.058 +- 0.016, percentile normalization +0.040 +- 0.018, dropping components < 100 voxels
# +0.020 +- 0.005 (GPU runs), and then keeping only the largest 3D component instead (CPU run, the same
# trained models, `crossval --postprocessing`): +0.008 +- 0.007, better in 13 and worse in 2 of 29
# patients, HD95 median 14.5 -> 10.0 mm; and then predicting with the mean of the best-validation and
# the last epoch's models (same CPU models): +0.031 +- 0.019, better in 21 and worse in 8, worst patient
# 0.23 -> 0.48; and then brain z-scores instead of percentile scaling (all 5 CPU folds, retrained):
# +0.013 +- 0.011, better in 21 and worse in 8 (Wilcoxon p = 0.048), median 0.827 -> 0.869, though the
# worst patient fell 0.48 -> 0.42 and 5 patients stay below 0.70. BCE+Dice (+0.007 +- 0.015), all brain
# slices instead of 30% (-0.002 +- 0.014), 20 epochs (worse on 3 of 4 folds), TTA (+0.001 +- 0.004) and the last epoch's
# checkpoint alone instead of the best validation epoch's (+0.010 +- 0.010, but its worst patient fell
# from 0.23 to 0.12) did not clear that bar, so they are not in it; nor did intensity augmentation
# (--intensity-p 0.5, folds 0-1 only: -0.025 +- 0.027 on 12 patients), spatial augmentation (--spatial-p 0.5,
# folds 0-1: -0.020 +- 0.019), 2.5D input (--context 1, folds 0-1: -0.001 +- 0.006) or FLAIR+T1ce
# (+0.005 +- 0.009, all folds), nor, on top of z-scores, cropping to the head (--crop brain, all folds:
# -0.008 +- 0.010), nor multi-view training with three-plane fusion (--views axial,coronal,sagittal
# --epochs 4, all folds: +0.010 +- 0.011, better in 25 and worse in 4, worst patient 0.42 -> 0.36, 1.55x the
# training time), nor BCE+Dice again on the z-score recipe (all folds: +0.008 +- 0.013, 17 better, 12 worse).
# Both together did (README Step 13): multi-view training (coronal and sagittal slices of the training
# patients too, 4 epochs so the compute stays near 10 axial ones), three-plane fusion at prediction and
# BCE+Dice, all 5 folds against the recipe re-run on the same machine: +0.015 +- 0.012, better in 24 and
# worse in 5 (Wilcoxon p = 0.006), median 0.846 -> 0.872, though the worst patient fell 0.42 -> 0.35;
# training 1.33x. The cosine schedule, ablated later on a GPU (README Step 19): +0.003 +- 0.006 over a constant rate,
# 20 better / 9 worse, within noise either way, so it stays. Not adopted on top of that (README Steps 14-19): 6 epochs
# (fold 0: +0.001 +- 0.003), the sub-regions as extra outputs (--region all, all folds: -0.007 +- 0.006), all
# 23 patients without validation (--split 0.85,0,0.15, all folds: +0.003 +- 0.003, 15 better / 14 worse, 1.3x
# the training time), batch Dice (--dice-batch, all folds: -0.007 +- 0.007, 13 better / 16 worse) and, on a GPU,
# a wider, deeper or finer network (README Step 17, all folds: --base-channels 48 -0.011 +- 0.006, --depth 5
# -0.012 +- 0.007, --size 128 -0.001 +- 0.007), nor the optimiser's settings (README Step 19, all folds on a GPU:
# --epochs 6 +0.000 +- 0.004, --lr 3e-4 +0.003 +- 0.005, --dropout 0.1 -0.004 +- 0.004), nor the left-right mirror as a
# second input channel (README Step 21, --mirror, all folds: -0.001 +- 0.005, 17 better / 12 worse), nor Dice + focal
# instead of BCE + Dice (Step 22, all folds: -0.003 +- 0.005, 13 better / 16 worse), nor, without retraining,
# closing, dilating or hysteresis-growing the mask or re-estimating BatchNorm on each scan (Step 23), nor
# InstanceNorm instead of BatchNorm (Step 24, --norm-layer instance, all folds: -0.002 +- 0.006,
# 16 better / 13 worse, 1.6-1.8x the training time), nor weight decay (Step 25, --weight-decay 1e-4, all folds:
# -0.005 +- 0.005, 8 better / 21 worse), nor, on one run, batch size 8 (Step 26, all folds: +0.012 +- 0.009 but
# 12 better / 17 worse, Wilcoxon p = 0.93: three failures up, the typical patient not; a second training,
# --train-seed 1, all folds: -0.003 +- 0.003, 13 better / 16 worse, Step 27), nor spatial augmentation again on
# this recipe (Step 28, --spatial-p 0.5, all folds: -0.003 +- 0.003, 10 better / 19 worse, 1.11x the time),
# nor GroupNorm (Step 29, --norm-layer group --train-seed 1, all folds: -0.002 +- 0.008, 12 better / 17 worse).
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "seed": {"preprocess": {}, "train": {}, "predict": {}},
    "brats2d": {
        "preprocess": {"norm": "zscore", "empty_slices": 0.3, "views": ("axial", "coronal", "sagittal")},
        "train": {"schedule": "cosine", "epochs": 4, "loss": "bce+dice"},
        "predict": {"keep_largest": True, "checkpoint": "best+latest"},
    },
}


def recipe(name: str | None, stage: str) -> dict[str, Any]:
    """Settings of recipe `name` for one stage (preprocess, train, predict); {} for None."""
    if stage not in STAGES:
        raise ConfigError(f"stage: unknown stage {stage!r} (choose from {', '.join(STAGES)})")
    if name is None:
        return {}
    if name not in RECIPES:
        raise ConfigError(f"recipe: unknown recipe {name!r} (choose from {', '.join(RECIPES)})")
    return dict(RECIPES[name][stage])


def merge(stage: str, recipe_name: str | None = None, explicit: Mapping[str, Any] | None = None,
          base: Any = None) -> Any:
    """The config of `stage`: `base` (default: the dataclass defaults, the seed protocol) <- the recipe's
    settings for that stage <- `explicit` (what the user set: command-line options, `--set`, overrides).

    `base` is an instance of the stage's config, e.g. the predict settings a run recorded. Unknown names
    and bad values raise ConfigError naming the setting.
    """
    preset = recipe(recipe_name, stage)  # also refuses an unknown stage or recipe
    cls = STAGES[stage]
    if base is not None and not isinstance(base, cls):
        raise ConfigError(f"{stage}: base settings must be a {cls.__name__}, got {type(base).__name__}")
    return from_dict(cls, {**(to_dict(base) if base is not None else {}), **preset, **dict(explicit or {})})


def field_type(cls: type, name: str) -> tuple[type, int | None, bool]:
    """(element type, tuple length, is_tuple) of setting `name`: (int, None, False) for an int,
    (str, None, True) for tuple[str, ...], (float, 3, True) for tuple[float, float, float]."""
    hint = get_type_hints(cls)[name]
    if get_origin(hint) is tuple:
        args = get_args(hint)
        return (args[0], None, True) if len(args) == 2 and args[1] is Ellipsis else (args[0], len(args), True)
    return hint, None, False


_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def parse_value(cls: type, name: str, text: str) -> Any:
    """The value of setting `name` of `cls` written as text (a comma list for tuples); ConfigError names the
    setting and what it expects. Ranges and choices are checked by the dataclass, not here."""
    kind, n, is_tuple = field_type(cls, name)
    what = {bool: "true or false", int: "an integer", float: "a number", str: "a word"}[kind]

    def one(t: str) -> Any:
        t = t.strip()
        try:
            if kind is bool:
                return _BOOLS[t.lower()]
            return kind(t.lower()) if kind is str else kind(t)
        except (KeyError, ValueError):
            raise ConfigError(f"{name}: expected {what}{' in each comma-separated place' if is_tuple else ''}, "
                              f"got {text!r}") from None

    if not is_tuple:
        return one(text)
    parts = str(text).split(",")
    if kind is str:  # names: blanks dropped, so "," is an empty list (which the dataclass refuses by name)
        return tuple(one(p) for p in parts if p.strip())
    if n is not None and len(parts) != n:
        raise ConfigError(f"{name}: expected {n} comma-separated numbers, got {text!r}")
    return tuple(one(p) for p in parts)


def parse_assignment(text: str, stages: Mapping[str, type] = STAGES) -> tuple[str, str, Any]:
    """'field=value' or 'stage.field=value' (for `--set`) -> (stage, field, value), `stage` among `stages`.

    Dashes in the field name are read as underscores. A name that is no setting of `stages` is refused
    with the valid names; a name that two stages share needs its stage.
    """
    key, eq, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if not eq or not key:
        raise ConfigError(f"expected FIELD=VALUE, got {text!r}")
    stage, dot, name = key.rpartition(".")
    names = {s: [f.name for f in dataclasses.fields(cls)] for s, cls in stages.items()}
    owners = [s for s in stages if (not dot or s == stage) and name in names[s]]
    if not owners:
        valid = sorted({f"{s}.{n}" if dot else n for s in stages for n in names[s]})
        raise ConfigError(f"unknown setting {key!r} (valid: {', '.join(valid)})")
    if len(owners) > 1:
        raise ConfigError(f"{name!r} is a setting of {' and '.join(owners)}: write "
                          + " or ".join(f"{s}.{name}={value}" for s in owners))
    return owners[0], name, parse_value(stages[owners[0]], name, value)
