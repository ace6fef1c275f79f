"""The README's commands, through the click layer: synth -> preprocess -> train -> eval -> predict -> report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from brats2d.cli.main import cli

TINY_ARGS = ["--base-channels", "4", "--depth", "2", "--epochs", "2", "--threads", "1", "--precision", "fp32",
             "--checkpoint-every", "5"]


def _ok(runner: CliRunner, args: list[str]) -> str:
    res = runner.invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())  # rich wraps long lines


def test_readme_pipeline_through_the_cli(tmp_path: Path) -> None:
    r = CliRunner()
    raw, cache, run, out = tmp_path / "raw", tmp_path / "c.h5", tmp_path / "run", tmp_path / "pred"
    _ok(r, ["synth", str(raw), "--patients", "6", "--shape", "48,48,24", "--seed", "3"])
    _ok(r, ["preprocess", str(raw), "--out", str(cache), "--size", "32", "--workers", "1"])
    assert cache.is_file() and cache.with_name("c.splits.json").is_file() and cache.with_name("c.config.json").is_file()
    _ok(r, ["train", "--cache", str(cache), "--run-dir", str(run), *TINY_ARGS])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["epochs"] == 2 and cfg["train"]["lr"] == 1e-3 and cfg["train"]["batch_size"] == 4
    assert "already finished" in _ok(r, ["train", "--cache", str(cache), "--run-dir", str(run), *TINY_ARGS])
    diff = r.invoke(cli, ["train", "--cache", str(cache), "--run-dir", str(run), *TINY_ARGS[:-2], "--lr", "0.01"])
    assert diff.exit_code == 2 and "lr" in diff.output and "Traceback" not in diff.output
    _ok(r, ["eval", "--run-dir", str(run), "--split", "test", "--device", "cpu", "--raw", str(raw), "--recipe", "brats2d"])
    saved = json.loads((run / "metrics_test.json").read_text())
    assert saved["keep_largest"] is True and saved["checkpoint"] == "best+latest" and "volume" in saved  # the recipe's
    _ok(r, ["eval", "--run-dir", str(run), "--split", "test", "--device", "cpu", "--recipe", "brats2d", "--min-size", "7"])
    assert json.loads((run / "metrics_test.json").read_text())["min_size"] == 7  # explicit options win
    _ok(r, ["eval", "--run-dir", str(run), "--device", "cpu", "--recipe", "brats2d", "--checkpoint", "best"])
    assert json.loads((run / "metrics_test.json").read_text())["checkpoint"] == "best"
    _ok(r, ["eval", "--run-dir", str(run), "--device", "cpu", "--raw", str(raw)])
    plain = json.loads((run / "metrics_test.json").read_text())["volume"]["wt"]["per_patient"]
    _ok(r, ["eval", "--run-dir", str(run), "--device", "cpu", "--raw", str(raw), "--keep-largest"])
    saved = json.loads((run / "metrics_test.json").read_text())
    assert saved["keep_largest"] is True and saved["min_size"] == 0
    assert all(p["pred_voxels"] <= q["pred_voxels"] for p, q in zip(saved["volume"]["wt"]["per_patient"], plain))
    test_case = json.loads(cache.with_name("c.splits.json").read_text())["test"][0]
    _ok(r, ["predict", str(raw / test_case), "--run-dir", str(run), "--out", str(out), "--device", "cpu"])
    assert (out / f"{test_case}_pred.nii.gz").is_file() and (out / "metrics.csv").is_file()
    # An ensemble: both checkpoints of the run, given twice (every listed run is a member).
    _ok(r, ["predict", str(raw / test_case), "--run-dir", str(run), "--run-dir", str(run), "--checkpoint",
            "best+latest", "--out", str(tmp_path / "ens"), "--device", "cpu"])
    assert (tmp_path / "ens" / f"{test_case}_pred.nii.gz").is_file()
    _ok(r, ["eval", "--run-dir", str(run), "--device", "cpu", "--checkpoint", "best+latest"])
    assert json.loads((run / "metrics_test.json").read_text())["checkpoint"] == "best+latest"
    _ok(r, ["report", "--run-dir", str(run), "--device", "cpu"])
    assert (run / "curves.png").is_file() and (run / "overlays.png").is_file()


def test_python_dash_m_and_console_help() -> None:
    res = subprocess.run([sys.executable, "-m", "brats2d", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for cmd in ("synth", "preprocess", "train", "eval", "predict", "report", "demo", "crossval"):
        assert cmd in res.stdout
    assert "Not for clinical use" in " ".join(res.stdout.split())
