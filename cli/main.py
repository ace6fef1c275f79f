"""The `brats2d` command: thin click wrappers around the library; heavy imports happen inside commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click as plain_click
import rich_click as click

from brats2d import __version__
from brats2d.config import COMPUTE, ConfigError, PredictConfig, to_dict
from brats2d.recipes import merge

from .options import (PANELS, STANDARD_PANELS, Settings, explicit, panels, parse_device, parse_floats, recipe_option,
                      set_option, setting_options)

DEFAULT_CACHE = "data_cache/brats2d.h5"


def describe(cfg: Any) -> str:
    """'a=1 b=x' for a config, in field order (one line for the terminal)."""
    return " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in to_dict(cfg).items())


def _expected_errors() -> tuple[type[BaseException], ...]:
    from brats2d.cache import CacheError
    from brats2d.checkpoint import CheckpointError
    from brats2d.nifti import InputError
    from brats2d.preprocess import PreprocessError
    from brats2d.rundir import NumericalError, RunError

    return (ConfigError, CacheError, CheckpointError, InputError, PreprocessError, RunError, NumericalError,
            ValueError, OSError)  # OSError: a path that is not a folder, a full disk, no permission


class Group(click.RichGroup):
    """rich-click's help (option panels); the library's expected errors become one line on stderr and exit
    code 2 (no traceback); click's usage errors keep click's plain "Error: ..." line, not a rich panel."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        return plain_click.Group.main(self, *args, **kwargs)

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


def _threshold(ctx: Any, param: Any, value: float | None) -> float | None:
    if value is not None and not 0.0 < value < 1.0:  # also refuses nan
        raise click.BadParameter(f"must be in (0, 1), got {value}")
    return value


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.rich_config(help_config=click.RichHelpConfiguration(max_width=100))
@click.version_option(__version__, prog_name="brats2d")
def cli() -> None:
    """brats2d: a fast, CPU-first 2D U-Net for BraTS brain-tumour segmentation. Not for clinical use."""


@cli.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--patients", type=click.IntRange(1), default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--shape", callback=parse_floats(3), default="240,240,155", show_default=True, help="X,Y,Z voxels")
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
@panels(*STANDARD_PANELS)
@click.argument("raw", type=click.Path())
@click.option("--out", default=DEFAULT_CACHE, show_default=True, help="cache file to write")
@recipe_option("preset settings (explicit options still win); see docs/experiments.md")
@setting_options("preprocess")
@click.option("--workers", type=click.IntRange(0), default=0, help="processes (default: all cores)",
              panel=PANELS[COMPUTE])
@click.option("--force", is_flag=True, help="rebuild even if the cache is up to date")
@click.option("--strict", is_flag=True, help="any bad patient is fatal (no cache written)")
@click.option("--splits-file", type=click.Path(exists=True, dir_okay=False), help="reuse a saved split exactly")
@set_option("preprocess")
def preprocess(raw: str, out: str, workers: int, force: bool, strict: bool, splits_file: str | None,
               recipe: str | None, sets: Settings, **kw: Any) -> None:
    """Turn a raw BraTS folder into the HDF5 slice cache."""
    from .display import preprocess_summary, progress_bar
    from brats2d.nifti import discover
    from brats2d.preprocess import preprocess as run

    cfg = merge("preprocess", recipe, explicit(click.get_current_context(), kw, sets, "preprocess")["preprocess"])
    n = len(discover(raw))
    with progress_bar("preprocess", n) as advance:
        summary = run(raw, out, cfg, workers=workers, splits_file=splits_file, force=force, strict=strict,
                      on_patient=advance)
    preprocess_summary(summary)
    if not summary.up_to_date and not summary.per_split:
        sys.exit(2)


@cli.command()
@panels(*STANDARD_PANELS)
@click.option("--cache", default=DEFAULT_CACHE, show_default=True, type=click.Path())
@click.option("--run-dir", required=True, type=click.Path(file_okay=False))
@recipe_option("preset settings for training and the run's predict settings (explicit options still win); "
               "see docs/experiments.md")
@setting_options("train")
@click.option("--device", default="auto", callback=parse_device, show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--num-workers", type=click.IntRange(0), default=0, show_default=True, panel=PANELS[COMPUTE],
              help="data-loading processes")
@click.option("--restart", is_flag=True, help="start over instead of resuming")
@set_option("train", "predict")
def train(cache: str, run_dir: str, device: str, num_workers: int, restart: bool, recipe: str | None, sets: Settings,
          **kw: Any) -> None:
    """Train a U-Net from a cache (resumes automatically from the run folder).

    The run records the predict settings of its recipe (RUN/predict.json), which eval and predict use.
    """
    from .display import train_progress
    from brats2d.train import train as run

    given = explicit(click.get_current_context(), kw, sets, "train", "predict")
    cfg, predict_cfg = merge("train", recipe, given["train"]), merge("predict", recipe, given["predict"])
    with train_progress() as (log, progress):
        run(cache, run_dir, cfg, predict=predict_cfg, device=device, num_workers=num_workers, restart=restart,
            log=log, progress=progress)


def _predict_settings(run_dirs: list[str], recipe: str | None, kw: dict[str, Any], sets: Settings) -> PredictConfig:
    """The predict settings of eval/predict: the first run's record (or, with --recipe, that recipe's;
    without either, the seed's) <- explicit options; printed in one line."""
    from brats2d.rundir import PREDICT_RECORD, read_predict_record

    given = explicit(click.get_current_context(), kw, sets, "predict")["predict"]
    record = None if recipe else read_predict_record(run_dirs[0])
    cfg = merge("predict", recipe, given, base=record)
    source = (f"recipe {recipe}" if recipe else f"recorded in {Path(run_dirs[0]) / PREDICT_RECORD}" if record
              else f"seed defaults: {run_dirs[0]} has no {PREDICT_RECORD} (trained before runs recorded it)")
    if given:
        source += f"; given: {', '.join(sorted(given))}"
    click.echo(f"predict settings: {describe(cfg)} ({source})")
    return cfg


@cli.command("eval")
@click.option("--run-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--threshold", type=float, default=None, callback=_threshold, help="default: the run's threshold")
@click.option("--cache", default=None, help="default: the cache the run was trained on")
@click.option("--raw", type=click.Path(exists=True, file_okay=False), help="also score whole volumes from this raw folder")
@setting_options("predict", default_note="the run's predict.json")
@recipe_option("use this recipe's predict settings instead of the run's")
@click.option("--device", default="auto", callback=parse_device, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False))
@set_option("predict")
def evaluate(run_dir: str, split: str, threshold: float | None, cache: str | None, raw: str | None,
             recipe: str | None, device: str, json_path: str | None, sets: Settings, **kw: Any) -> None:
    """Evaluate a run on a split: pooled, per-slice and per-patient metrics.

    min-size and keep-largest apply to the whole volumes of --raw only (3D components need the whole scan).
    """
    from .display import eval_tables
    from brats2d.evaluate import evaluate as run
    from brats2d.inference import load_predictor

    ps = _predict_settings([run_dir], recipe, kw, sets)
    th = threshold if threshold is not None else load_predictor(run_dir, ps.checkpoint, "cpu").train_cfg.threshold
    result = run(run_dir, split, ps.checkpoint, th, cache, raw, device, ps.tta, json_path,
                 min_size=ps.min_size, keep_largest=ps.keep_largest, largest_regions=ps.largest_regions)
    eval_tables(result)
    click.echo(f"wrote {Path(run_dir) / f'metrics_{split}.json'}")


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--run-dir", required=True, multiple=True, type=click.Path(exists=True, file_okay=False),
              help="a trained run; give it several times for an ensemble (e.g. the fold runs of a crossval)")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--threshold", type=float, default=None, callback=_threshold, help="default: the run's threshold")
@click.option("--probabilities", is_flag=True, help="also write <case>_prob.nii.gz")
@setting_options("predict", default_note="the first run's predict.json")
@click.option("--mc-dropout", type=click.IntRange(0), default=0, help="N stochastic passes (model trained with --dropout)")
@click.option("--explain", is_flag=True,
              help="also write <case>_explain.nii.gz: where the tumour evidence comes from (docs/viewer.md)")
@recipe_option("use this recipe's predict settings instead of the run's")
@click.option("--device", default="auto", callback=parse_device, show_default=True)
@set_option("predict")
def predict(inputs: tuple[str, ...], run_dir: tuple[str, ...], out: str, threshold: float | None,
            probabilities: bool, mc_dropout: int, explain: bool, recipe: str | None, device: str, sets: Settings,
            **kw: Any) -> None:
    """Predict masks for patient folders (or folders of them) in the scans' own space.

    With TTA it also writes <case>_uncertainty.nii.gz; with --explain, <case>_explain.nii.gz.
    """
    from .display import predict_table
    from brats2d.inference import load_predictor
    from brats2d.predict import predict as run

    ps = _predict_settings(list(run_dir), recipe, kw, sets)
    pred = load_predictor(list(run_dir), ps.checkpoint, device)
    if mc_dropout and pred.train_cfg.dropout == 0:
        raise click.BadParameter("the model was trained without dropout (train with --dropout > 0)", param_hint="--mc-dropout")
    th = pred.train_cfg.threshold if threshold is None else threshold
    rows, errors = run(pred, list(inputs), out, threshold=th, probabilities=probabilities, mc_dropout=mc_dropout,
                       min_size=ps.min_size, tta=ps.tta, keep_largest=ps.keep_largest,
                       largest_regions=ps.largest_regions, explain=explain)
    predict_table(rows, errors, out)
    if errors and not rows:
        sys.exit(2)


@cli.command()
@click.option("--run-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--uncertainty", is_flag=True, help="add a TTA uncertainty column to overlays.png")
@click.option("--device", default="auto", callback=parse_device, show_default=True)
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
@click.option("--shape", callback=parse_floats(3), default="240,240,155", show_default=True)
@click.option("--base-channels", type=click.IntRange(1), default=16, show_default=True)
@click.option("--size", type=int, default=96, show_default=True)
def demo(out: str, seed: int, patients: int, epochs: int, shape: tuple[float, ...], base_channels: int, size: int) -> None:
    """End to end on synthetic phantoms: synth, preprocess, train, eval, predict, pictures."""
    from brats2d.demo import run_demo
    from .display import console

    run_demo(out, seed=seed, patients=patients, epochs=epochs, shape=tuple(int(s) for s in shape),
             base_channels=base_channels, size=size, echo=console().print)


from .crossval import crossval, crossval_ensemble  # noqa: E402  (after the commands above: help lists them first)

from .view import view  # noqa: E402

cli.add_command(crossval)
cli.add_command(crossval_ensemble)
cli.add_command(view)


if __name__ == "__main__":
    cli()
