"""Option helpers shared by the `brats2d` commands (cli/main.py, cli/crossval.py): value parsers for
click callbacks and one --option per config dataclass field."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import click

from brats2d.config import PreprocessConfig, TrainConfig

P, T = PreprocessConfig(), TrainConfig()  # the seed protocol's settings: the options' defaults


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


def parse_names(ctx: Any, param: Any, value: str) -> tuple[str, ...]:
    """A click callback that reads "Flair, t2" as ("flair", "t2"): lower case, blanks dropped."""
    return tuple(v.strip().lower() for v in value.split(",") if v.strip())


def config_options(cls: type, skip: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """One --option per config field, defaults from the dataclass (one source of truth)."""
    def deco(f: Callable) -> Callable:
        for fld in reversed(dataclasses.fields(cls)):
            if fld.name in skip:
                continue
            name, default = fld.name.replace("_", "-"), fld.default
            if isinstance(default, bool):
                f = click.option(f"--{name}/--no-{name}", default=default, show_default=True)(f)
            else:
                f = click.option(f"--{name}", type=type(default), default=default, show_default=True)(f)
        return f
    return deco
