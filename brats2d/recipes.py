"""Named recipes: preset settings for preprocess, train and predict.

`seed` reproduces the seed protocol exactly (it is every dataclass default). `brats2d` is the recipe
chosen by cross-validation on training patients only (README "Results" has the ablation table).
Explicitly given command-line options always win over a recipe.
"""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "seed": {"preprocess": {}, "train": {}, "predict": {}},
    "brats2d": {
        "preprocess": {"norm": "percentile", "empty_slices": 0.3},
        "train": {"loss": "bce+dice", "schedule": "cosine", "epochs": 10},
        "predict": {"min_size": 100},
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
