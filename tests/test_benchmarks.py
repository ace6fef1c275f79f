"""Smoke tests of benchmarks/bench_loader.py and bench_preprocess.py (and experiments/resolution_ceiling.py):
they run and write sane JSON.

Correctness only: every row is there with positive numbers. Wall times are never asserted (the
machine is shared; speed claims live in the benchmarks' own output).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, tmp_path: Path, *args: str, folder: str = "benchmarks") -> dict:
    out = tmp_path / f"out-{script}.json"
    cmd = [sys.executable, str(ROOT / folder / script), "--quick", "--json", str(out), "--workdir", str(tmp_path), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "120"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "total" in res.stdout  # the rich report was printed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("bench_")], "temp data left behind"
    return json.loads(out.read_text())


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_loader_quick(tmp_path: Path) -> None:
    res = _run("bench_loader.py", tmp_path, "--big-gb", "0.02")
    names = {"numpy-bound", "brats2d", "brats2d-torchthreads", "brats2d-2workers", "h5py-per-slice",
             "nifti-decode", "monai-cache"}
    rows = {(r["name"], r["batch"]): r for r in res["rows"]}
    assert set(rows) == {(n, b) for n in names for b in (4, 16)}
    for r in rows.values():
        assert _positive(r["images_per_s"]) and _positive(r["ms_per_batch"]) and _positive(r["x_h5py"]), r
        assert r["items"] >= r["batch"], r
    for b in (4, 16):
        assert rows["h5py-per-slice", b]["x_h5py"] == 1.0
        assert _positive(rows["brats2d-2workers", b]["first_batch_s"])
        assert set(res["speedup_vs_h5py"][str(b)]) == names
    assert res["settings"]["quick"] and res["settings"]["slices"] == 1000
    assert [s["batch"] for s in res["step"]] == [4] and _positive(res["step"][0]["step_ms"])
    (v,) = res["loader_vs_step"]
    assert v["batch"] == 4 and _positive(v["loader_pct_of_step"]) and _positive(v["loader_ms"])
    rss = res["rss"]  # --big-gb 0.02: the RSS path on a small cache
    assert rss["cache_bytes"] >= 0.02e9 and rss["slices"] > 0 and _positive(rss["images_per_s"])
    for k in ("VmRSS", "RssAnon", "RssFile"):
        assert k in rss["max_growth_mb"] and _positive(rss["peak_mb"][k])
    assert _positive(res["total_s"])


def test_bench_loader_takes_a_given_step_time(tmp_path: Path) -> None:
    res = _run("bench_loader.py", tmp_path, "--step-ms", "200", "--slices", "300")
    assert res["rss"] is None  # off with --quick
    (v,) = res["loader_vs_step"]
    assert v["step_ms"] == 200 and _positive(v["loader_pct_of_step"])


def test_bench_preprocess_quick(tmp_path: Path) -> None:
    # 3 small patients on 2 workers: every row and both estimates are measurable
    res = _run("bench_preprocess.py", tmp_path, "--no-real", "--patients", "3", "--shape", "64,64,40",
               "--workers", "2")
    rows = {r["name"]: r for r in res["rows"]}
    assert set(rows) == {"nibabel-decode", "brats2d-1worker", "brats2d-2workers"}
    assert {r["dataset"] for r in res["rows"]} == {"synthetic"}
    for r in rows.values():
        assert r["patients"] == 3 and _positive(r["seconds"]) and _positive(r["s_per_patient"])
        assert _positive(r["patients_per_s"]) and _positive(r["x_decode_time"])
    assert rows["nibabel-decode"]["x_decode_time"] == 1.0 and rows["brats2d-1worker"]["speedup_vs_1worker"] == 1.0
    for name in ("brats2d-1worker", "brats2d-2workers"):
        r = rows[name]
        assert r["slices"] > 0 and r["skipped"] == 0 and _positive(r["first_s"]) and _positive(r["finish_s"])
        assert r["steady_s_per_patient"] is not None and r["steady_s_per_patient"] >= 0
    assert rows["brats2d-1worker"]["slices"] == rows["brats2d-2workers"]["slices"]
    est = {e["workers"]: e for e in res["estimate_brats2021"]}
    assert set(est) == {1, 2}
    for e in est.values():
        assert e["label"] == "estimate" and e["patients"] == 1251 and _positive(e["minutes"])


def test_bench_preprocess_real_rows_when_data_present(tmp_path: Path) -> None:
    from .conftest import real_dir

    res = _run("bench_preprocess.py", tmp_path, "--real", str(real_dir()), "--real-limit", "1", "--patients", "1",
               "--shape", "64,64,40", "--workers", "1")
    assert {(r["dataset"], r["name"]) for r in res["rows"]} == {
        (d, n) for d in ("synthetic", "real") for n in ("nibabel-decode", "brats2d-1worker")}
    assert all(_positive(r["seconds"]) for r in res["rows"])


def test_bench_loader_on_a_product_cache(tmp_path: Path, tiny_cache: Path) -> None:
    from brats2d import cache

    res = _run("bench_loader.py", tmp_path, "--cache", str(tiny_cache), "--step-ms", "100")
    assert res["settings"]["slices"] == cache.read_meta(tiny_cache).counts["train"]
    assert {r["name"] for r in res["rows"]} >= {"numpy-bound", "brats2d", "h5py-per-slice"}
    assert tiny_cache.exists()  # the user's cache is read, never removed


def test_resolution_ceiling_quick(tmp_path: Path) -> None:
    res = _run("resolution_ceiling.py", tmp_path, folder="experiments")
    rows = {r["name"]: r for r in res["rows"]}
    assert list(rows) == ["64x64", "96x96", "128x128", "160x160", "96x96, brain crop"]
    for r in rows.values():
        assert r["patients"] == 2 and 0.5 < r["dice_min"] <= r["dice_median"] <= 1.0, r
    # Down-sampling 240 -> 64 and back loses boundary voxels; a bigger grid (or the brain crop) loses fewer.
    assert rows["64x64"]["dice_mean"] < rows["160x160"]["dice_mean"] < 1.0
    assert rows["96x96"]["dice_mean"] < rows["96x96, brain crop"]["dice_mean"]


def test_resolution_ceiling_of_the_enhancing_tumour(tmp_path: Path) -> None:
    res = _run("resolution_ceiling.py", tmp_path, "--region", "et", "--sizes", "64,160", folder="experiments")
    rows = {r["name"]: r for r in res["rows"]}
    assert res["settings"]["region"] == "et" and list(rows) == ["64x64", "160x160", "96x96, brain crop"]
    (tmp_path / "wt").mkdir()
    wt = _run("resolution_ceiling.py", tmp_path / "wt", "--sizes", "64", folder="experiments")
    # the enhancing rim is thinner than the whole tumour, so the round trip loses more of it
    assert rows["64x64"]["dice_mean"] < wt["rows"][0]["dice_mean"]
    assert rows["64x64"]["dice_mean"] < rows["160x160"]["dice_mean"] < 1.0


def test_bench_time_to_accuracy_quick(tmp_path: Path) -> None:
    from brats2d.device import cpu_supports_bf16

    # 8 tiny phantoms (seed split 6/1/1), a tiny U-Net: the seed recipe, brats2d (3 planes) and a variant
    res = _run("bench_time_to_accuracy.py", tmp_path, "--synthetic", "8", "--shape", "48,48,24",
               "--set", "preprocess.size=32", "--set", "train.base_channels=4", "--set", "train.depth=2",
               "--set", "train.threads=1", "--recipes", "seed,brats2d", "--variant", "narrow:brats2d:train.base_channels=2")
    rows = {r["name"]: r for r in res["rows"]}
    assert list(rows) == ["seed", "brats2d", "narrow"]
    assert res["settings"]["dataset"] == "synthetic" and res["settings"]["split"] == "seed"
    assert _positive(res["peak_gflops"]["fp32"])
    assert (res["peak_gflops"]["bf16"] is not None) == cpu_supports_bf16()
    for r in rows.values():
        assert r["patients"] == {"train": 6, "val": 1, "test": 1}, r["patients"]
        assert r["epochs"] == 1 and r["settings"]["preprocess"]["size"] == 32  # --quick, then --set
        assert r["train_images"] == r["train_slices"] > 0
        assert math.isclose(r["train_tflop"] * 1e12, r["train_images"] * r["train_gflop_per_image"] * 1e9)
        assert _positive(r["train_tflop"]) and _positive(r["train_minutes"]) and _positive(r["prep_minutes"])
        assert _positive(r["predict_s_per_patient"]) and _positive(r["predict_tflop_per_patient"])
        d = r["dice"]
        assert d["region"] == "wt" and 0.0 <= d["min"] <= d["median"] <= 1.0 and len(d["per_patient"]) == 1
    # slices predicted per patient: head slices of each plane the recipe predicts, per model
    assert 0 < rows["seed"]["predict_images_per_patient"] <= 24
    assert 24 < rows["brats2d"]["predict_images_per_patient"] <= (24 + 48 + 48) * rows["brats2d"]["predict_models"]
    assert rows["brats2d"]["settings"]["preprocess"]["views"] == ["axial", "coronal", "sagittal"]
    assert rows["narrow"]["settings"]["train"]["base_channels"] == 2 and rows["narrow"]["cache_shared"]
    assert rows["narrow"]["train_gflop_per_image"] < rows["brats2d"]["train_gflop_per_image"]


def test_flops_per_image_matches_a_hand_count() -> None:
    from brats2d.model import build_model

    from .conftest import bench_script

    C, K, b, S = 2, 3, 3, 16  # depth-1 U-Net: 3x3 convs C->b->b, b->2b->2b at S/2, (2b+b)->b->b, 1x1 head b->K
    fwd = 2 * S * S * (9 * C * b + 9 * b * b + 9 * 3 * b * b + 9 * b * b + b * K) + 2 * (S // 2) ** 2 * 9 * (2 * b * b + 4 * b * b)
    count = bench_script("bench_time_to_accuracy").flops_per_image
    model = build_model(C, K, b, 1)
    assert count(model, (C, S, S), train=False) == fwd
    # backward: twice the forward (input and weight gradients), but no input gradient for the first conv
    assert count(model, (C, S, S), train=True) == 3 * fwd - 2 * S * S * 9 * C * b
    assert model.training


def test_bench_time_to_accuracy_variants_and_splits() -> None:
    import pytest

    from brats2d.config import ConfigError, PreprocessConfig
    from brats2d.cv.plan import make_folds

    from .conftest import bench_script

    mod = bench_script("bench_time_to_accuracy")
    v = mod.parse_variant("narrow16:brats2d:train.base_channels=16:predict.checkpoint=best", ["train.epochs=1",
                                                                                             "train.base_channels=8"])
    pcfg, tcfg, pc = v.settings()
    assert (v.name, v.recipe, tcfg.base_channels, tcfg.epochs, tcfg.schedule) == ("narrow16", "brats2d", 16, 1, "cosine")
    assert pcfg.norm == "zscore" and pc.checkpoint == "best" and pc.keep_largest
    assert mod.parse_variant("seed").settings()[1].base_channels == 32
    for bad in ("nope", "x:nope", "x:seed:train.base_channels=0", "x:seed:train.no_such=1"):
        with pytest.raises(ConfigError):
            mod.parse_variant(bad)
    cases = [f"P{i:02d}" for i in range(34)]
    seed = mod.split_for(cases, PreprocessConfig(), None, 5, 42)
    assert [len(seed[s]) for s in ("train", "val", "test")] == [24, 5, 5]
    fold = mod.split_for(cases, PreprocessConfig(), 2, 5, 42)
    assert fold == make_folds(cases, 5, 42, PreprocessConfig())["splits"][2] and not set(fold["test"]) & set(seed["test"])
