"""Named recipes: preset settings for preprocess, train and predict.

`seed` reproduces the seed protocol exactly (it is every dataclass default). `brats2d` is the recipe
chosen by cross-validation on training patients only (docs/experiments.md has every ablation).
Explicitly given command-line options always win over a recipe.
"""

from __future__ import annotations

from typing import Any

# Settings of the predict stage that a recipe may set, with the seed protocol's values (no dataclass holds them).
PREDICT_DEFAULTS: dict[str, Any] = {"min_size": 0, "tta": False, "keep_largest": False, "checkpoint": "best"}

# brats2d: the settings 5-fold cross-validation on the non-test real patients chose; docs/experiments.md
# has every ablation with its command and why each setting is in or out.
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "seed": {"preprocess": {}, "train": {}, "predict": {}},
    "brats2d": {
        "preprocess": {"norm": "zscore", "empty_slices": 0.3, "views": ("axial", "coronal", "sagittal")},
        "train": {"schedule": "cosine", "epochs": 4, "loss": "bce+dice"},
        "predict": {"keep_largest": True, "checkpoint": "best+latest"},
    },
}


def recipe(name: str | None, stage: str) -> dict[str, Any]:
    """Settings of `name` for one stage (preprocess, train, predict); {} for None."""
    if name is None:
        return {}
    if name not in RECIPES:
        raise ValueError(f"recipe: unknown recipe {name!r} (choose from {', '.join(RECIPES)})")
    return dict(RECIPES[name][stage])


def apply_recipe(name: str | None, options: dict[str, Any], ctx: Any = None, stage: str = "train") -> dict[str, Any]:
    """Options with the recipe's values filled in where the user did not set them explicitly."""
    import click

    out = dict(options)
    for key, value in recipe(name, stage).items():
        src = ctx.get_parameter_source(key) if ctx is not None else None
        if src in (None, click.core.ParameterSource.DEFAULT):
            out[key] = value
    return out


def predict_settings(name: str | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Predict-stage settings (min_size, tta, keep_largest, checkpoint): seed defaults <- recipe <-
    `overrides`; unknown keys and values refused."""
    from .config import CHECKPOINTS, ConfigError

    out = {**PREDICT_DEFAULTS, **recipe(name, "predict"), **(overrides or {})}
    unknown = sorted(set(out) - set(PREDICT_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown predict setting(s): {', '.join(unknown)}")
    if int(out["min_size"]) < 0:
        raise ConfigError(f"min_size: must be >= 0, got {out['min_size']}")
    if out["checkpoint"] not in CHECKPOINTS:
        raise ConfigError(f"checkpoint: {out['checkpoint']!r} (choose from {', '.join(CHECKPOINTS)})")
    return {"min_size": int(out["min_size"]), "tta": bool(out["tta"]), "keep_largest": bool(out["keep_largest"]),
            "checkpoint": str(out["checkpoint"])}
