"""The `brats2d` command: thin click wrappers around the library; heavy imports happen inside commands."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable

import click

from brats2d import __version__
from brats2d.config import CHECKPOINTS, CROPS, NORMS, ConfigError, PreprocessConfig, TrainConfig
from brats2d.recipes import RECIPES  # light: no heavy imports

DEFAULT_CACHE = "data_cache/brats2d.h5"
P, T = PreprocessConfig(), TrainConfig()


def _expected_errors() -> tuple[type[BaseException], ...]:
    from brats2d.cache import CacheError
    from brats2d.checkpoint import CheckpointError
    from brats2d.nifti import InputError
    from brats2d.preprocess import PreprocessError
    from brats2d.rundir import NumericalError, RunError

    return (ConfigError, CacheError, CheckpointError, InputError, PreprocessError, RunError, NumericalError,
            ValueError, OSError)  # OSError: a path that is not a folder, a full disk, no permission


class Group(click.Group):
    """Turns the library's expected errors into one line on stderr and exit code 2 (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        from brats2d.rundir import TrainingStopped

        try:
            return super().invoke(ctx)
        except TrainingStopped as e:
            click.echo(f"brats2d: {e}", err=True)
            sys.exit(130)
        except _expected_errors() as e:
            click.echo(f"brats2d: error: {e}", err=True)
            sys.exit(2)


def _floats(n: int | None = None) -> Callable[[Any, Any, str], tuple[float, ...]]:
    def parse(ctx: Any, param: Any, value: str) -> tuple[float, ...]:
        try:
            out = tuple(float(v) for v in str(value).split(","))
        except ValueError:
            raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None
        if n is not None and len(out) != n:
            raise click.BadParameter(f"expected {n} comma-separated numbers, got {value!r}")
        return out
    return parse


def _device(ctx: Any, param: Any, value: str) -> str:
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value.strip()):
        raise click.BadParameter(f"{value!r} (choose from auto, cpu, cuda, cuda:N)")
    return value.strip()


def _threshold(ctx: Any, param: Any, value: float | None) -> float | None:
    if value is not None and not 0.0 < value < 1.0:  # also refuses nan
        raise click.BadParameter(f"must be in (0, 1), got {value}")
    return value


def _names(ctx: Any, param: Any, value: str) -> tuple[str, ...]:
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


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="brats2d")
def cli() -> None:
    """brats2d: a fast, CPU-first 2D U-Net for BraTS brain-tumour segmentation. Not for clinical use."""


@cli.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--patients", type=click.IntRange(1), default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--shape", callback=_floats(3), default="240,240,155", show_default=True, help="X,Y,Z voxels")
@click.option("--naming", type=click.Choice(["2021", "2023"]), default="2021", show_default=True)
def synth(out: str, patients: int, seed: int, shape: tuple[float, ...], naming: str) -> None:
    """Write synthetic BraTS-like patients (FLAIR, T1, T1ce, T2, seg) to OUT."""
    from brats2d.synth import write_cohort

    dims = tuple(int(s) for s in shape)
    if min(dims) < 16:
        raise click.BadParameter(f"every dimension must be >= 16, got {dims}", param_hint="--shape")
    folders = write_cohort(out, patients, seed=seed, shape=dims, naming=naming)  # type: ignore[arg-type]
    click.echo(f"wrote {len(folders)} synthetic patients to {out}")


@cli.command()
@click.argument("raw", type=click.Path())
@click.option("--out", default=DEFAULT_CACHE, show_default=True, help="cache file to write")
@click.option("--modalities", callback=_names, default="flair", show_default=True, help="comma list of flair,t1,t1ce,t2")
@click.option("--size", type=int, default=P.size, show_default=True)
@click.option("--region", type=click.Choice(["wt", "tc", "et", "all"]), default=P.region, show_default=True)
@click.option("--split", callback=_floats(3), default="0.7,0.15,0.15", show_default=True, help="train,val,test")
@click.option("--seed", type=int, default=P.seed, show_default=True)
@click.option("--splits-file", type=click.Path(exists=True, dir_okay=False), help="reuse a saved split exactly")
@click.option("--empty-slices", type=float, default=P.empty_slices, show_default=True, help="fraction of tumour-free brain slices kept")
@click.option("--norm", type=click.Choice(list(NORMS)), default=P.norm, show_default=True)
@click.option("--context", type=click.IntRange(0, 8), default=P.context, show_default=True,
              help="2.5D: neighbouring slices per side as extra input channels")
@click.option("--crop", type=click.Choice(list(CROPS)), default=P.crop, show_default=True,
              help="brain: resize a square box around the head, not the whole frame")
@click.option("--views", callback=_names, default=",".join(P.views), show_default=True,
              help="comma list of axial,coronal,sagittal: planes of the training slices; predict averages them")
@click.option("--mirror/--no-mirror", default=P.mirror, show_default=True,
              help="also input each modality reflected left-right about the brain's centre (asymmetry cue)")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default=P.dtype, show_default=True)
@click.option("--workers", type=click.IntRange(0), default=0, help="processes (default: all cores)")
@click.option("--force", is_flag=True, help="rebuild even if the cache is up to date")
@click.option("--strict", is_flag=True, help="any bad patient is fatal (no cache written)")
@click.option("--recipe", type=click.Choice(sorted(RECIPES)), default=None,
              help="preset settings (explicit options still win); see README Results")
def preprocess(raw: str, out: str, workers: int, force: bool, strict: bool, splits_file: str | None,
               recipe: str | None, **kw: Any) -> None:
    """Turn a raw BraTS folder into the HDF5 slice cache."""
    from .display import preprocess_summary, progress_bar
    from brats2d.nifti import discover
    from brats2d.preprocess import preprocess as run
    from brats2d.recipes import apply_recipe

    cfg = PreprocessConfig(**apply_recipe(recipe, kw, click.get_current_context(), "preprocess"))
    n = len(discover(raw))
    with progress_bar("preprocess", n) as advance:
        summary = run(raw, out, cfg, workers=workers, splits_file=splits_file, force=force, strict=strict,
                      on_patient=advance)
    preprocess_summary(summary)
    if not summary.up_to_date and not summary.per_split:
        sys.exit(2)


@cli.command()
@click.option("--cache", default=DEFAULT_CACHE, show_default=True, type=click.Path())
@click.option("--run-dir", required=True, type=click.Path(file_okay=False))
@click.option("--device", default="auto", callback=_device, show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--num-workers", type=click.IntRange(0), default=0, show_default=True)
@click.option("--restart", is_flag=True, help="start over instead of resuming")
@click.option("--recipe", type=click.Choice(sorted(RECIPES)), default=None,
              help="preset settings (explicit options still win); see README Results")
@config_options(TrainConfig)
def train(cache: str, run_dir: str, device: str, num_workers: int, restart: bool, recipe: str | None, **kw: Any) -> None:
    """Train a U-Net from a cache (resumes automatically from the run folder)."""
    from .display import train_progress
    from brats2d.recipes import apply_recipe
    from brats2d.train import train as run

    cfg = TrainConfig(**apply_recipe(recipe, kw, click.get_current_context()))
    with train_progress() as (log, progress):
        run(cache, run_dir, cfg, device=device, num_workers=num_workers, restart=restart, log=log, progress=progress)


@cli.command("eval")
@click.option("--run-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--checkpoint", type=click.Choice(CHECKPOINTS), default="best", show_default=True,
              help="best+latest: the mean of both models' probabilities")
@click.option("--threshold", type=float, default=None, callback=_threshold, help="default: the run's threshold")
@click.option("--cache", default=None, help="default: the cache the run was trained on")
@click.option("--raw", type=click.Path(exists=True, file_okay=False), help="also score whole volumes from this raw folder")
@click.option("--tta", is_flag=True, help="test-time augmentation (8 flips/rotations averaged)")
@click.option("--min-size", type=click.IntRange(0), default=0, show_default=True,
              help="whole volumes: drop 3D components smaller than this (voxels)")
@click.option("--keep-largest", is_flag=True, help="whole volumes: keep only the largest 3D component")
@click.option("--recipe", type=click.Choice(sorted(RECIPES)), default=None,
              help="its predict settings (min-size, tta, keep-largest, checkpoint)")
@click.option("--device", default="auto", callback=_device, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False))
def evaluate(run_dir: str, split: str, checkpoint: str, threshold: float | None, cache: str | None, raw: str | None,
             tta: bool, min_size: int, keep_largest: bool, recipe: str | None, device: str, json_path: str | None) -> None:
    """Evaluate a run on a split: pooled, per-slice and per-patient metrics."""
    from .display import eval_tables
    from brats2d.evaluate import evaluate as run
    from brats2d.inference import load_predictor
    from brats2d.recipes import apply_recipe

    ps = apply_recipe(recipe, {"min_size": min_size, "tta": tta, "keep_largest": keep_largest, "checkpoint": checkpoint},
                      click.get_current_context(), stage="predict")
    th = threshold if threshold is not None else load_predictor(run_dir, ps["checkpoint"], "cpu").train_cfg.threshold
    result = run(run_dir, split, ps["checkpoint"], th, cache, raw, device, ps["tta"], json_path,
                 min_size=ps["min_size"], keep_largest=ps["keep_largest"])
    eval_tables(result)
    click.echo(f"wrote {Path(run_dir) / f'metrics_{split}.json'}")


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--run-dir", required=True, multiple=True, type=click.Path(exists=True, file_okay=False),
              help="a trained run; give it several times for an ensemble (e.g. the fold runs of a crossval)")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--checkpoint", type=click.Choice(CHECKPOINTS), default="best", show_default=True,
              help="best+latest: the mean of both models' probabilities")
@click.option("--threshold", type=float, default=None, callback=_threshold, help="default: the run's threshold")
@click.option("--probabilities", is_flag=True, help="also write <case>_prob.nii.gz")
@click.option("--tta", is_flag=True, help="average 8 flips/rotations; writes <case>_uncertainty.nii.gz")
@click.option("--mc-dropout", type=click.IntRange(0), default=0, help="N stochastic passes (model trained with --dropout)")
@click.option("--explain", is_flag=True, help="also write <case>_explain.nii.gz: Grad-CAM evidence maps (docs/viewer.md)")
@click.option("--min-size", type=click.IntRange(0), default=0, help="drop 3D components smaller than this (voxels)")
@click.option("--keep-largest", is_flag=True, help="keep only the largest 3D component of each region")
@click.option("--recipe", type=click.Choice(sorted(RECIPES)), default=None,
              help="its predict settings (min-size, tta, keep-largest, checkpoint)")
@click.option("--device", default="auto", callback=_device, show_default=True)
def predict(inputs: tuple[str, ...], run_dir: tuple[str, ...], out: str, checkpoint: str, threshold: float | None,
            probabilities: bool, tta: bool, mc_dropout: int, min_size: int, keep_largest: bool, recipe: str | None,
            device: str, explain: bool = False) -> None:
    """Predict masks for patient folders (or folders of them) in the scans' own space."""
    from .display import predict_table
    from brats2d.inference import load_predictor
    from brats2d.predict import predict as run
    from brats2d.recipes import apply_recipe

    ps = apply_recipe(recipe, {"min_size": min_size, "tta": tta, "keep_largest": keep_largest, "checkpoint": checkpoint},
                      click.get_current_context(), stage="predict")
    pred = load_predictor(list(run_dir), ps.pop("checkpoint"), device)
    if mc_dropout and pred.train_cfg.dropout == 0:
        raise click.BadParameter("the model was trained without dropout (train with --dropout > 0)", param_hint="--mc-dropout")
    th = pred.train_cfg.threshold if threshold is None else threshold
    rows, errors = run(pred, list(inputs), out, threshold=th, probabilities=probabilities, mc_dropout=mc_dropout,
                       explain=explain, **ps)
    predict_table(rows, errors, out)
    if errors and not rows:
        sys.exit(2)


@cli.command()
@click.option("--run-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--uncertainty", is_flag=True, help="add a TTA uncertainty column to overlays.png")
@click.option("--device", default="auto", callback=_device, show_default=True)
def report(run_dir: str, split: str, uncertainty: bool, device: str) -> None:
    """Write curves.png and overlays.png for a run."""
    from brats2d.report import report as run

    for name, path in run(run_dir, split, device=device, uncertainty=uncertainty).items():
        click.echo(f"{name}: {path}")


@cli.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--patients", type=click.IntRange(4), default=16, show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=4, show_default=True)
@click.option("--shape", callback=_floats(3), default="240,240,155", show_default=True)
@click.option("--base-channels", type=click.IntRange(1), default=16, show_default=True)
@click.option("--size", type=int, default=96, show_default=True)
def demo(out: str, seed: int, patients: int, epochs: int, shape: tuple[float, ...], base_channels: int, size: int) -> None:
    """End to end on synthetic phantoms: synth, preprocess, train, eval, predict, pictures."""
    from brats2d.demo import run_demo
    from .display import console

    run_demo(out, seed=seed, patients=patients, epochs=epochs, shape=tuple(int(s) for s in shape),
             base_channels=base_channels, size=size, echo=console().print)


from . import crossval as _crossval_commands  # noqa: E402,F401  (registers crossval, crossval-ensemble)
from . import view as _view_command  # noqa: E402,F401  (registers view)


if __name__ == "__main__":
    cli()
