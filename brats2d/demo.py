"""`brats2d demo`: the whole pipeline on synthetic phantoms, in minutes on 2 CPU cores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from .config import PreprocessConfig, TrainConfig


def run_demo(out: str | Path, *, seed: int = 0, patients: int = 16, epochs: int = 4,
             shape: tuple[int, int, int] = (240, 240, 155), base_channels: int = 16, size: int = 96,
             workers: int = 0, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """synth -> preprocess -> train -> eval -> predict -> pictures under `out`; returns the paths and metrics.

    Deterministic for a given `seed` (and thread count): phantoms, split, data order and weights.
    """
    from .evaluate import evaluate
    from .inference import load_predictor
    from .predict import explain_case, predict
    from .preprocess import preprocess
    from .report import report
    from .synth import write_cohort
    from .train import train

    out = Path(out)
    raw, cache_path, run_dir, pred_dir = out / "raw", out / "cache.h5", out / "run", out / "predictions"
    echo(f"[1/6] synthesizing {patients} phantoms {shape} -> {raw}")
    write_cohort(raw, patients, seed=seed, shape=shape)
    echo(f"[2/6] preprocessing -> {cache_path}")
    summary = preprocess(raw, cache_path, PreprocessConfig(size=size, seed=seed), workers=workers)
    if not summary.up_to_date:
        echo("      " + ", ".join(f"{s}: {v['patients']} patients / {v['slices']} slices"
                                  for s, v in summary.per_split.items()))
    echo(f"[3/6] training {epochs} epochs (base {base_channels} channels) -> {run_dir}")
    cfg = TrainConfig(epochs=epochs, base_channels=base_channels, seed=seed, checkpoint_every=100)
    train(cache_path, run_dir, cfg, log=lambda m: echo("      " + m))
    echo("[4/6] evaluating on the test split")
    res = evaluate(run_dir, "test", "best", cfg.threshold)
    wt = res["regions"]["wt"]
    echo(f"      pooled Dice {wt['pooled']['dice']:.4f}, per-patient 3D Dice mean "
         f"{wt['per_patient_dice']['mean']:.4f} -> {run_dir / 'metrics_test.json'}")
    test_cases = json.loads((cache_path.parent / "cache.splits.json").read_text())["test"]
    echo(f"[5/6] predicting the {len(test_cases)} test patients in source space with TTA uncertainty, and an "
         f"explanation map of {test_cases[0]} -> {pred_dir}")
    pred = load_predictor(run_dir)
    rows, _ = predict(pred, [raw / c for c in test_cases], pred_dir, threshold=cfg.threshold, tta=True)
    explain_case(pred, raw / test_cases[0], pred_dir, cfg.threshold)  # one is enough to look at; each costs a path integral
    for r in rows:
        echo(f"      {r['patient']}: 3D Dice {r['regions']['wt']['dice']:.4f} -> {pred_dir / (r['patient'] + '_pred.nii.gz')}")
    echo("[6/6] pictures")
    pics = report(run_dir)
    for name, path in pics.items():
        echo(f"      {name}: {path}")
    echo(f"done: everything is under {out}")
    echo(f"look at the predictions (not for clinical use; add --run-dir {run_dir} to upload scans):")
    echo(f"  brats2d view {pred_dir} --raw {raw}")
    return {"run_dir": str(run_dir), "metrics": res, "pictures": pics, "prediction": rows[0]}
