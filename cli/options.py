"""Click options generated from the config dataclasses, the generic `--set FIELD=VALUE`, and the settings a
user gave explicitly (the only values the CLI hands to `brats2d.recipes.merge` over a recipe).

Each config field becomes one option: the flag is the field name with dashes, the type comes from the
annotation (tuple fields are comma lists, bool fields --x/--no-x, text fields with allowed values a choice),
help, `--help` panel and choices come from the field's metadata (brats2d/config.py). The option's
destination is "<stage>__<field>", so `explicit` can sort the values back into stages.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import rich_click as click
from click.core import ParameterSource

from brats2d.config import COMPUTE, EXPERIMENT, MAIN, STAGES, ConfigError
from brats2d.recipes import RECIPES, field_type, parse_assignment, parse_value

Settings = tuple[tuple[str, str, Any], ...]  # parsed --set values: (stage, field, value)
# --help panel titles; a command's own options and the MAIN settings go in rich-click's "Options" panel,
# which comes first.
PANELS = {MAIN: "Options", COMPUTE: "Compute options", EXPERIMENT: "Experiment options"}


class SettingType(click.ParamType):
    """Text -> the value of one config field, parsed as `--set` parses it (brats2d.recipes.parse_value)."""

    def __init__(self, cls: type, field: str) -> None:
        self.cls, self.field = cls, field
        kind, n, is_tuple = field_type(cls, field)
        self.name = (f"{n} numbers" if n else "list") if is_tuple else kind.__name__

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return parse_value(self.cls, self.field, value)
        except ConfigError as e:
            self.fail(str(e), param, ctx)


def setting_options(stage: str, *, skip: tuple[str, ...] = (), rename: dict[str, str] | None = None,
                    panel: str | None = None, default_note: str | None = None) -> Callable[[Callable], Callable]:
    """One option per field of the stage's config. `rename` gives a field another flag (crossval's
    --train-seed); `panel` puts the MAIN fields in a panel of their own; `default_note` replaces the shown
    default (eval/predict: the run's recorded setting)."""
    cls = STAGES[stage]

    def deco(f: Callable) -> Callable:
        for fld in reversed(dataclasses.fields(cls)):
            if fld.name in skip:
                continue
            flag = (rename or {}).get(fld.name, fld.name).replace("_", "-")
            kind, _, is_tuple = field_type(cls, fld.name)
            meta, default = fld.metadata, fld.default
            help_text, choices = meta["help"], meta["choices"]
            if choices and is_tuple:
                help_text += f" ({', '.join(choices)})"
            if default_note is not None:
                shown = default if not is_tuple else ",".join(map(str, default))
                help_text += f" [default: {default_note}, else {str(shown).lower() if kind is bool else shown}]"
            kw: dict[str, Any] = dict(default=default, help=help_text, show_default=default_note is None,
                                      panel=panel if meta["group"] == MAIN and panel else PANELS[meta["group"]])
            if kind is bool and not is_tuple:
                f = click.option(f"--{flag}/--no-{flag}", f"{stage}__{fld.name}", **kw)(f)
                continue
            if is_tuple:
                kw["default"] = ",".join(map(str, default))
            typ = click.Choice(choices) if choices and not is_tuple else SettingType(cls, fld.name)
            f = click.option(f"--{flag}", f"{stage}__{fld.name}", type=typ, **kw)(f)
        return f
    return deco


def set_option(*stages: str) -> Callable[[Callable], Callable]:
    """`--set FIELD=VALUE` (repeatable): any setting of `stages`, checked as it is parsed."""
    def check(ctx: Any, param: Any, values: tuple[str, ...]) -> tuple[tuple[str, str, Any], ...]:
        try:
            return tuple(parse_assignment(v, {s: STAGES[s] for s in stages}) for v in values)
        except ConfigError as e:
            raise click.BadParameter(str(e)) from None

    names = ", ".join(stages[:-1]) + (" or " if len(stages) > 1 else "") + stages[-1]
    example = {"preprocess": "crop=brain", "train": "dropout=0.1", "predict": "min_size=100"}[stages[0]]
    return click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE", callback=check,
                        help=f"any {names} setting by its field name, e.g. --set {example} (repeatable"
                             + ("; STAGE.FIELD where two stages share a name" if len(stages) > 1 else "")
                             + "); a wrong name lists the valid ones")


def recipe_option(help_text: str, default: str | None = None) -> Callable[[Callable], Callable]:
    return click.option("--recipe", type=click.Choice(sorted(RECIPES)), default=default,
                        show_default=default is not None, help=help_text)


def explicit(ctx: click.Context, kw: dict[str, Any], sets: tuple[tuple[str, str, Any], ...],
             *stages: str) -> dict[str, dict[str, Any]]:
    """{stage: {field: value}} of the settings the user gave: generated options not left at their default,
    then `--set` values (a later one wins)."""
    out: dict[str, dict[str, Any]] = {s: {} for s in stages}
    for dest, value in kw.items():
        stage, _, name = dest.partition("__")
        if stage in out and ctx.get_parameter_source(dest) not in (ParameterSource.DEFAULT,
                                                                    ParameterSource.DEFAULT_MAP):
            out[stage][name] = value
    for stage, name, value in sets:
        out[stage][name] = value
    return out


def panels(*titles: str) -> Callable[[Callable], Callable]:
    """The command's `--help` panels, in this order (rich-click would list named panels before "Options")."""
    def deco(f: Callable) -> Callable:
        for title in reversed(titles):
            f = click.option_panel(title)(f)
        return f
    return deco


STANDARD_PANELS = (PANELS[MAIN], PANELS[COMPUTE], PANELS[EXPERIMENT])



def parse_floats(n: int | None = None) -> Callable[[Any, Any, str], tuple[float, ...]]:
    """A click callback that reads "a,b,c" as a tuple of floats (exactly `n` of them unless None)."""
    def parse(ctx: Any, param: Any, value: str) -> tuple[float, ...]:
        try:
            out = tuple(float(v) for v in str(value).split(","))
        except ValueError:
            raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None
        if n is not None and len(out) != n:
            raise click.BadParameter(f"expected {n} comma-separated numbers, got {value!r}")
        return out
    return parse


def parse_device(ctx: Any, param: Any, value: str) -> str:
    """A click callback for --device: auto, cpu, cuda or cuda:N (stripped), else a usage error."""
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value.strip()):
        raise click.BadParameter(f"{value!r} (choose from auto, cpu, cuda, cuda:N)")
    return value.strip()
