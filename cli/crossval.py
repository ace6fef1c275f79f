"""`brats2d crossval` and `brats2d crossval-ensemble`: thin click wrappers around brats2d.cv.

Added to the `brats2d` group by cli/main.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import rich_click as click

from brats2d.config import COMPUTE, EXPERIMENT

from .options import PANELS, Settings, explicit, panels, parse_device, recipe_option, set_option, setting_options


@click.command()
@panels("Options", "Preprocess options", "Train options", "Predict options", PANELS[COMPUTE], PANELS[EXPERIMENT])
@click.argument("raw", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="default: runs/crossval-<recipe>")
@recipe_option("preset settings for preprocess, train and predict (explicit options still win)", default="seed")
@click.option("--folds", type=click.IntRange(2), default=5, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True, help="seeds the fold assignment")
@click.option("--fold", type=click.IntRange(0), default=None, help="run only fold N (0-based), e.g. one per machine")
@click.option("--include-test", is_flag=True, help="also use the seed split's test patients (excluded by default)")
@click.option("--device", default="auto", callback=parse_device, show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--restart", is_flag=True, help="start the selected folds over (also accepts changed settings in OUT)")
@click.option("--rescore", is_flag=True,
              help="score finished folds again with their trained models (accepts changed predict settings)")
@click.option("--postprocessing", is_flag=True,
              help="also score every held-out patient under the post-processing grid "
                   "(TTA, components, checkpoints, thresholds)")
@set_option("preprocess", "train", "predict")
@click.option("--workers", type=click.IntRange(0), default=0, help="preprocess processes (default: all cores)",
              panel=PANELS[COMPUTE])
# PreprocessConfig.seed picks the seed split's test patients (excluded) and the empty-slice draw: --split-seed;
# TrainConfig.seed seeds each fold's training (a replicate keeps the folds): --train-seed.
@setting_options("preprocess", rename={"seed": "split_seed"}, panel="Preprocess options")
@setting_options("train", rename={"seed": "train_seed"}, panel="Train options")
@setting_options("predict", panel="Predict options")
def crossval(raw: str, out: str | None, folds: int, seed: int, recipe: str, include_test: bool,
             fold: int | None, device: str, workers: int, restart: bool, rescore: bool, postprocessing: bool,
             sets: Settings, **kw: Any) -> None:
    """Patient-level k-fold cross-validation of a recipe on a raw BraTS folder, scored on whole volumes.

    The seed split's test patients stay out (unless --include-test); finished folds are skipped and a
    killed fold resumes when the same command is run again. Option defaults shown are the seed
    protocol's; a recipe's values replace them unless the option is given. --split's test fraction picks
    the excluded seed test patients and val:train the validation share of each fold's other patients
    (val 0: train on all of them, keep the last epoch).
    """
    from .display import crossval_table, train_progress
    from brats2d.cv.crossval import crossval as run

    overrides = explicit(click.get_current_context(), kw, sets, "preprocess", "train", "predict")
    with train_progress() as (log, progress):
        summary = run(raw, out, folds=folds, seed=seed, recipe=recipe, overrides=overrides, include_test=include_test,
                      fold=fold, device=device, workers=workers, restart=restart, rescore=rescore,
                      postprocessing=postprocessing, log=log, progress=progress)
    crossval_table(summary)


@click.command("crossval-ensemble")
@click.argument("raw", type=click.Path(exists=True, file_okay=False))
@click.argument("outs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--device", default="auto", callback=parse_device, show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="default: OUT1/ensemble-with-<OUT2>[+<OUT3>...].json")
def crossval_ensemble(raw: str, outs: tuple[str, ...], device: str, json_path: str | None) -> None:
    """Average the fold models of finished cross-validations OUT1 OUT2 ... (same folds) on each held-out
    patient, and compare per patient with OUT1 alone: nnU-Net's question "is the ensemble better?".

    Each folder's models read their own input (modalities, normalization, 2.5D); thresholding and
    post-processing are OUT1's. Nothing is retrained.
    """
    from .display import ensemble_table
    from brats2d.cv.ensemble import ensemble, ensemble_json_path
    from brats2d.files import write_json

    res = ensemble(raw, list(outs), device=device, log=click.echo)
    path = Path(json_path) if json_path else ensemble_json_path(list(outs))
    write_json(path, res)
    ensemble_table(res)
    click.echo(f"wrote {path}")
