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
