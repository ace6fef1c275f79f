#!/usr/bin/env python
"""Time to a good model: named recipes trained on one fixed patient split, scored on its held-out patients.

    python benchmarks/bench_time_to_accuracy.py [--recipes brats2d,brats2d-fast] [--variant NAME:RECIPE[:stage.field=value]...]
        [--set stage.field=value] [--raw DIR | --synthetic N] [--fold I [--folds K]] [--quick] [--json PATH]

The split is the seed split of the raw folder (PreprocessConfig split and seed: 70/15/15 with seed 42, 24/5/5
of the 34 real patients): train on its train patients, pick the best epoch on its val patients, score its
test patients. With --fold I it is fold I of `brats2d crossval`'s K folds instead (brats2d.cv.plan.make_folds:
the seed test patients excluded, fold I held out), so a row can be set beside a cross-validation's fold.

One row per variant: training images (epochs x the cache's training slices, every plane), training TFLOP
(FLOPs of one image's forward + backward from torch.utils.flop_counter x images; validation passes are not
counted), minutes to preprocess and to train on this machine, prediction seconds per held-out patient (the
whole volume from the raw NIfTI, as `brats2d predict` does it with the run's recorded predict settings: every
plane of the recipe, both models of best+latest unless identical), its forward TFLOP, and per-patient 3D
whole-tumour Dice. The machine's fp32 matmul peak (and bf16 where the CPU has it natively) is measured in the
same run, so minutes can be compared across CPUs. Figures and how to read them: docs/time-to-accuracy.md.

--quick adds train.epochs=1 and preprocess.size=64 before the user's --set. Not for clinical use.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from brats2d.cache import read_meta
from brats2d.config import ConfigError, PredictConfig, PreprocessConfig, TrainConfig, to_dict, to_json
from brats2d.cv.plan import make_folds, settings
from brats2d.files import write_json
from brats2d.inference import load_predictor
from brats2d.model import build_model
from brats2d.nifti import discover
from brats2d.predict import predict_case
from brats2d.preprocess import preprocess
from brats2d.recipes import RECIPES, parse_assignment
from brats2d.rundir import read_predict_record
from brats2d.splits import save_splits, split_patients
from brats2d.synth import write_cohort
from brats2d.train import train

from common import cpu_name, finish, flops_per_image, matmul_peak

REAL_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats-real"
QUICK = ("train.epochs=1", "preprocess.size=64")


@dataclass(frozen=True)
class Variant:
    """A named recipe with overrides {stage: {setting: value}} on top of it (recipes.merge order)."""

    name: str
    recipe: str
    overrides: dict[str, dict[str, Any]]

    def settings(self) -> tuple[PreprocessConfig, TrainConfig, PredictConfig]:
        return settings(self.recipe, self.overrides)


def parse_variant(text: str, sets: list[str] | tuple[str, ...] = ()) -> Variant:
    """'RECIPE' or 'NAME:RECIPE[:stage.field=value[:...]]' -> Variant; the assignments `sets` (every
    variant's) come before the variant's own. ConfigError names a bad recipe or setting."""
    parts = text.split(":")
    name, recipe = (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    if recipe not in RECIPES:
        raise ConfigError(f"variant {text!r}: unknown recipe {recipe!r} (choose from {', '.join(RECIPES)})")
    over: dict[str, dict[str, Any]] = {}
    for assignment in [*sets, *parts[2:]]:
        stage, key, value = parse_assignment(assignment)
        over.setdefault(stage, {})[key] = value
    v = Variant(name, recipe, over)
    v.settings()  # bad values are refused now, before any work
    return v


def split_for(cases: list[str], pcfg: PreprocessConfig, fold: int | None, folds: int, seed: int
              ) -> dict[str, list[str]]:
    """{train, val, test} patients: the seed split of `cases`, or crossval's fold `fold` of `folds`."""
    if fold is None:
        return split_patients(cases, pcfg.split, pcfg.seed)
    return make_folds(cases, folds, seed, pcfg)["splits"][fold]


def run_variant(v: Variant, raw: Path, work: Path, split: dict[str, list[str]], device: str,
                prep_seconds: dict[str, float]) -> dict[str, Any]:
    """Preprocess (a cache shared by variants with the same preprocessing), train, count and predict one
    variant; its table row. `prep_seconds` remembers how long each shared cache took to build."""
    pcfg, tcfg, pc = v.settings()
    key = hashlib.sha1((to_json(pcfg) + json.dumps(split, sort_keys=True)).encode()).hexdigest()[:12]
    cache_path, splits_file, run = work / f"cache-{key}.h5", work / f"splits-{key}.json", work / f"run-{v.name}"
    shared = key in prep_seconds
    if not shared:
        save_splits(split, splits_file)
        t0 = time.perf_counter()
        preprocess(raw, cache_path, pcfg, splits_file=splits_file)
        prep_seconds[key] = time.perf_counter() - t0
    t0 = time.perf_counter()
    history = train(cache_path, run, tcfg, predict=pc, device=device, log=lambda m: print(f"[{v.name}] {m}", flush=True))
    train_s = time.perf_counter() - t0
    meta = read_meta(cache_path)
    torch.manual_seed(0)
    net = build_model(meta.image_shape[0], meta.mask_channels, tcfg.base_channels, tcfg.depth, tcfg.dropout,
                      tcfg.norm_layer)
    train_flops = flops_per_image(net, meta.image_shape, train=True)
    infer_flops = flops_per_image(net, meta.image_shape, train=False)
    rec = read_predict_record(run) or PredictConfig()
    pred = load_predictor(run, rec.checkpoint, device)
    forwarded = [0]  # images through any member: slices x planes x members (x 8 with TTA)

    def count(module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        forwarded[0] += int(args[0].shape[0])

    hooks = [m.register_forward_hook(count) for m in pred.models]
    folders = {p.case: p.folder for p in discover(raw)}
    scored = [predict_case(pred, folders[c], None, threshold=pred.train_cfg.threshold, tta=rec.tta,
                           min_size=rec.min_size, keep_largest=rec.keep_largest,
                           largest_regions=rec.largest_regions) for c in meta.splits["test"]]
    for h in hooks:
        h.remove()
    if not scored:
        raise SystemExit(f"variant {v.name}: no held-out patient to score (split {split})")
    region = "wt" if "wt" in pred.regions else pred.regions[0]  # whole tumour unless the run predicts tc or et only
    dice = {r["patient"]: r["regions"][region]["dice"] for r in scored}
    images = tcfg.epochs * meta.counts["train"]
    return {"name": v.name, "recipe": v.recipe, "overrides": v.overrides,
            "settings": {"preprocess": to_dict(pcfg), "train": to_dict(tcfg), "predict": to_dict(rec)},
            "patients": {s: len(meta.splits[s]) for s in ("train", "val", "test")},
            "train_slices": meta.counts["train"], "epochs": tcfg.epochs, "train_images": images,
            "train_gflop_per_image": train_flops / 1e9, "train_tflop": images * train_flops / 1e12,
            "prep_minutes": prep_seconds[key] / 60, "cache_shared": shared, "train_minutes": train_s / 60,
            "epoch_seconds": [h["seconds"] for h in history], "predict_models": len(pred.models),
            "predict_s_per_patient": statistics.mean(r["seconds"] for r in scored),
            "predict_images_per_patient": forwarded[0] / len(scored),
            "predict_tflop_per_patient": infer_flops * forwarded[0] / len(scored) / 1e12,
            "dice": {"region": region, "per_patient": dice, "mean": statistics.mean(dice.values()),
                        "median": statistics.median(dice.values()), "min": min(dice.values())}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipes", default="brats2d,brats2d-fast", help=f"comma-separated recipes, one row each ({', '.join(RECIPES)})")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:RECIPE[:stage.field=value...]",
                    help="a further row: a recipe with its own overrides (repeatable)")
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="stage.field=value",
                    help="an override for every row (repeatable)")
    ap.add_argument("--raw", type=Path, help=f"raw BraTS folder (default {REAL_DEFAULT} if present, else synthetic)")
    ap.add_argument("--synthetic", type=int, metavar="N", help="N synthetic phantoms instead (brats2d.synth)")
    ap.add_argument("--shape", default="96,96,64", help="phantom volume shape X,Y,Z (default 96,96,64)")
    ap.add_argument("--fold", type=int, help="score crossval's fold I instead of the seed split's test patients")
    ap.add_argument("--folds", type=int, default=5, help="folds of --fold (default 5)")
    ap.add_argument("--cv-seed", type=int, default=42, help="crossval seed of --fold (default 42, crossval's)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {' '.join(QUICK)} before --set")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--workdir", type=Path, help="where temp data goes (default: a temp folder, removed afterwards)")
    a = ap.parse_args(argv)
    sets = [*(QUICK if a.quick else ()), *a.sets]
    try:
        variants = [parse_variant(t, sets) for t in [*filter(None, a.recipes.split(",")), *a.variant]]
    except ConfigError as e:
        ap.error(str(e))
    if not variants or len({v.name for v in variants}) != len(variants):
        ap.error(f"need one or more variants with distinct names, got {[v.name for v in variants]}")
    raw = a.raw or (REAL_DEFAULT if a.synthetic is None and REAL_DEFAULT.is_dir() else None)
    n_synth = a.synthetic or 10
    t_start = time.perf_counter()
    peak = matmul_peak(*((1024, 0.3) if a.quick else (2048, 1.0)))
    res: dict[str, Any] = {
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "loadavg_start": os.getloadavg()},
        "peak_gflops": peak,
        "settings": {"raw": str(raw) if raw else None, "dataset": "real" if raw else "synthetic",
                     "synthetic_patients": None if raw else n_synth, "quick": a.quick, "sets": sets,
                     "split": "seed" if a.fold is None else f"fold {a.fold} of {a.folds}, seed {a.cv_seed}",
                     "device": a.device},
        "rows": []}
    work = Path(tempfile.mkdtemp(prefix="bench_tta.", dir=a.workdir))
    try:
        if raw is None:
            raw = work / "raw"
            write_cohort(raw, n_synth, seed=0, shape=tuple(int(s) for s in a.shape.split(",")))
        cases = [p.case for p in discover(raw)]
        prep_seconds: dict[str, float] = {}
        for v in variants:
            split = split_for(cases, v.settings()[0], a.fold, a.folds, a.cv_seed)
            res["rows"].append(run_variant(v, raw, work, split, a.device, prep_seconds))
            if a.json:  # the rows so far survive a later variant's failure (hours into a full run)
                a.json.parent.mkdir(parents=True, exist_ok=True)
                write_json(a.json, res)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["machine"]["loadavg_end"] = os.getloadavg()
    return finish(res, t_start, report, a.json)


def report(res: dict[str, Any]) -> None:
    """One table, one row per variant; the peak and the caveats below it."""
    from rich.console import Console
    from rich.table import Table

    m, s, p = res["machine"], res["settings"], res["peak_gflops"]
    bf16 = f"{p['bf16']:.0f}" if p["bf16"] is not None else "not native"
    t = Table(title=f"Time to accuracy, {s['dataset']} data, {s['split']} split -- {m['cpu']}, {m['threads']} "
                    f"threads; peak GFLOP/s fp32 {p['fp32']:.0f}, bf16 {bf16}")
    cols = ("variant", "patients", "images", "TFLOP", "prep min", "train min", "pred s/pt", "pred TFLOP/pt",
            "Dice mean", "median", "min")
    for c in cols:
        t.add_column(c, justify="left" if c == "variant" else "right")
    for r in res["rows"]:
        n, d = r["patients"], r["dice"]
        t.add_row(r["name"], f"{n['train']}/{n['val']}/{n['test']}", f"{r['train_images']:,}", f"{r['train_tflop']:.3g}",
                  f"{r['prep_minutes']:.1f}" + ("*" if r["cache_shared"] else ""), f"{r['train_minutes']:.1f}",
                  f"{r['predict_s_per_patient']:.1f}", f"{r['predict_tflop_per_patient']:.3g}",
                  f"{d['mean']:.3f}", f"{d['median']:.3f}", f"{d['min']:.3f}")
    con = Console(width=max(120, Console().width))
    con.print(t)
    for r in res["rows"]:
        over = "; ".join(f"{st}.{k}={v}" for st, kv in r["overrides"].items() for k, v in kv.items())
        con.print(f"{r['name']}: recipe {r['recipe']}{', ' + over if over else ''}; {r['epochs']} epochs x "
                  f"{r['train_slices']:,} slices, {r['train_gflop_per_image']:.2f} GFLOP/image; predict: "
                  f"{r['predict_models']} model(s), {r['predict_images_per_patient']:.0f} slices/patient")
    con.print("patients: train/val/test; images: training images seen (epochs x slices); *: the cache another row "
              "built; Dice: per-patient 3D Dice (whole tumour) on the test patients")
    con.print(f"load average {m['loadavg_start'][0]:.1f} -> {m['loadavg_end'][0]:.1f} on {m['cpu_count']} cores "
              "(minutes stretch with other load). Research benchmark, not for clinical use.")
    con.print(f"total {res['total_s']:.0f} s")


if __name__ == "__main__":
    main()
