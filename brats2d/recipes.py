"""Named recipes (preset settings per stage, plain data) and `merge`, the one place settings are combined.

`seed` reproduces the seed protocol exactly (it is every dataclass default). `brats2d` is the recipe
chosen by cross-validation on training patients only (docs/experiments.md has every ablation).
Settings a user gives explicitly always win over a recipe: see `merge`. This module also reads a setting
written as text (`--set field=value`, comma lists), so the command line and the library parse alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, get_args, get_origin, get_type_hints

from .config import STAGES, ConfigError, from_dict, to_dict

# brats2d: the settings 5-fold cross-validation on the non-test real patients chose; brats2d-fast: the same
# at a quarter of the compute; docs/experiments.md has every ablation with its command and why each
# setting is in or out, and what brats2d-mm has been measured on.
_BRATS2D: dict[str, dict[str, Any]] = {
    "preprocess": {"norm": "zscore", "empty_slices": 0.3, "views": ("axial", "coronal", "sagittal")},
    "train": {"schedule": "cosine", "epochs": 4, "loss": "bce+dice"},
    "predict": {"keep_largest": True, "checkpoint": "best+latest"},
}
_FAST = {**_BRATS2D, "train": {**_BRATS2D["train"], "base_channels": 16, "batch_size": 8},
         "predict": {**_BRATS2D["predict"], "checkpoint": "best"}}
# brats2d-mm: brats2d-fast reading FLAIR, T1ce and T2 and segmenting the three BraTS regions (WT, TC, ET) on
# 128 x 128 slices (the thin enhancing rim needs the finer grid: docs/experiments.md, Step 33), at the batch
# size it was cross-validated with.
_MM = {**_FAST, "preprocess": {**_FAST["preprocess"], "modalities": ("flair", "t1ce", "t2"), "region": "all",
                               "size": 128},
       "train": {**_FAST["train"], "batch_size": 4}}
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "seed": {"preprocess": {}, "train": {}, "predict": {}},
    "brats2d": _BRATS2D,
    "brats2d-fast": _FAST,
    "brats2d-mm": _MM,
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
