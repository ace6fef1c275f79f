"""`brats2d crossval` and `brats2d crossval-ensemble`: thin click wrappers around brats2d.cv.

Added to the `brats2d` group by cli/main.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from brats2d.config import CHECKPOINTS, CROPS, NORMS, PreprocessConfig, TrainConfig
from brats2d.recipes import PREDICT_DEFAULTS, RECIPES

from .options import P, config_options, parse_device, parse_floats, parse_names


@click.command()
@click.argument("raw", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="default: runs/crossval-<recipe>")
@click.option("--folds", type=click.IntRange(2), default=5, show_default=True)
@click.option("--seed", type=int, default=P.seed, show_default=True, help="seeds the fold assignment")
@click.option("--train-seed", type=int, default=TrainConfig.seed, show_default=True,
              help="seeds each fold's training (weights, data order, augmentation): a replicate keeps the folds")
@click.option("--recipe", type=click.Choice(list(RECIPES)), default="seed", show_default=True,
              help="preset settings for preprocess, train and predict (explicit options still win)")
@click.option("--include-test", is_flag=True, help="also use the seed split's test patients (excluded by default)")
@click.option("--fold", type=click.IntRange(0), default=None, help="run only fold N (0-based), e.g. one per machine")
@click.option("--device", default="auto", callback=parse_device, show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--workers", type=click.IntRange(0), default=0, help="preprocess processes (default: all cores)")
@click.option("--restart", is_flag=True, help="start the selected folds over (also accepts changed settings in OUT)")
@click.option("--rescore", is_flag=True,
              help="score finished folds again with their trained models (accepts changed predict settings)")
@click.option("--postprocessing", is_flag=True,
              help="also score every held-out patient under the post-processing grid "
                   "(TTA, components, checkpoints, thresholds)")
@click.option("--modalities", callback=parse_names, default=",".join(P.modalities), show_default=True,
              help="comma list of flair,t1,t1ce,t2")
@click.option("--split", callback=parse_floats(3), default=",".join(str(f) for f in P.split), show_default=True,
              help="train,val,test: test picks the excluded seed test patients, val:train the validation share "
                   "of each fold's other patients (val 0: train on all of them, keep the last epoch)")
@click.option("--size", type=int, default=P.size, show_default=True)
@click.option("--region", type=click.Choice(["wt", "tc", "et", "all"]), default=P.region, show_default=True)
@click.option("--empty-slices", type=float, default=P.empty_slices, show_default=True,
              help="fraction of tumour-free brain slices kept")
@click.option("--norm", type=click.Choice(list(NORMS)), default=P.norm, show_default=True)
@click.option("--context", type=click.IntRange(0, 8), default=P.context, show_default=True,
              help="2.5D: neighbouring slices per side as extra input channels")
@click.option("--crop", type=click.Choice(list(CROPS)), default=P.crop, show_default=True,
              help="brain: resize a square box around the head, not the whole frame")
@click.option("--views", callback=parse_names, default=",".join(P.views), show_default=True,
              help="comma list of axial,coronal,sagittal: planes of the training slices; predict averages them")
@click.option("--mirror/--no-mirror", default=P.mirror, show_default=True,
              help="also input each modality reflected left-right about the brain's centre (asymmetry cue)")
@click.option("--min-size", type=click.IntRange(0), default=PREDICT_DEFAULTS["min_size"], show_default=True,
              help="predict: drop 3D components smaller than this (voxels)")
@click.option("--tta/--no-tta", default=PREDICT_DEFAULTS["tta"], show_default=True, help="predict: 8 flips/rotations averaged")
@click.option("--keep-largest/--no-keep-largest", default=PREDICT_DEFAULTS["keep_largest"], show_default=True,
              help="predict: keep only the largest 3D component")
@click.option("--checkpoint", type=click.Choice(CHECKPOINTS), default=PREDICT_DEFAULTS["checkpoint"],
              show_default=True, help="predict: which model(s) of each fold's run (best+latest: their mean)")
@config_options(TrainConfig, skip=("seed",))
def crossval(raw: str, out: str | None, folds: int, seed: int, train_seed: int, recipe: str, include_test: bool,
             fold: int | None, device: str, workers: int, restart: bool, rescore: bool, postprocessing: bool,
             **kw: Any) -> None:
    """Patient-level k-fold cross-validation of a recipe on a raw BraTS folder, scored on whole volumes.

    The seed split's test patients stay out (unless --include-test); finished folds are skipped and a
    killed fold resumes when the same command is run again. Option defaults shown are the seed
    protocol's; a recipe's values replace them unless the option is given.
    """
    from .display import crossval_table, train_progress
    from brats2d.cv.crossval import crossval as run
    from brats2d.recipes import apply_recipe

    ctx = click.get_current_context()
    names = {"preprocess": {f.name for f in dataclasses.fields(PreprocessConfig)},
             "train": {f.name for f in dataclasses.fields(TrainConfig)}, "predict": set(PREDICT_DEFAULTS)}
    overrides = {stage: apply_recipe(recipe, {k: v for k, v in kw.items() if k in keys}, ctx, stage)
                 for stage, keys in names.items()}
    # TrainConfig.seed under its own name: --seed is the folds', and PreprocessConfig.seed stays the seed split's.
    overrides["train"]["seed"] = train_seed
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
    from brats2d.files import write_json
    from brats2d.cv.ensemble import ensemble, ensemble_json_path

    res = ensemble(raw, list(outs), device=device, log=click.echo)
    path = Path(json_path) if json_path else ensemble_json_path(list(outs))
    write_json(path, res)
    ensemble_table(res)
    click.echo(f"wrote {path}")
