"""train: learning happens, resume is bit-exact after SIGKILL, mismatches and unsafe files are refused."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from brats2d import checkpoint
from brats2d.config import ConfigError, TrainConfig
from brats2d.rundir import RunError
from brats2d.train import train

from .conftest import TINY

KILL_SCRIPT = """
import os, signal, sys
import brats2d.train as T
from brats2d.config import ConfigError, TrainConfig
kill_at, n = int(sys.argv[3]), [0]
step = T.train_step
def killing_step(*a, **k):
    n[0] += 1
    if n[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(*a, **k)
T.train_step = killing_step
T.train(sys.argv[1], sys.argv[2], TrainConfig(**{cfg}), log=lambda m: None)
"""


def _weights(run: Path, name: str = "latest_checkpoint.pth") -> dict[str, torch.Tensor]:
    return checkpoint.load(run / name)["model"]


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_unet_learns(tiny_cache: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(**{**TINY, "epochs": 6, "base_channels": 8, "lr": 3e-3})
    hist = train(tiny_cache, tmp_path / "run", cfg, log=lambda m: None)
    assert len(hist) == 6
    assert hist[-1]["train_loss"] < 0.6 * hist[0]["train_loss"]
    assert max(h["val_dice"] for h in hist) > 0.5
    run = tmp_path / "run"
    for name in ("config.json", "history.csv", "latest_checkpoint.pth", "best_model.pth", "curves.png", "train.log"):
        assert (run / name).exists(), name
    assert len((run / "history.csv").read_text().strip().splitlines()) == 7
    best = checkpoint.load(run / "best_model.pth")
    assert json.loads(best["metrics"])["val_dice"] == max(h["val_dice"] for h in hist)


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(lr=0.0), dict(loss="l2"), dict(schedule="step"),
                                 dict(intensity_p=1.5), dict(intensity_gamma=-0.1), dict(intensity_scale=1.0),
                                 dict(spatial_p=-0.1), dict(spatial_scale=1.5), dict(spatial_rotate=181.0),
                                 dict(norm_layer="layer"), dict(sync_bn=True, norm_layer="instance")])
def test_train_config_errors_name_the_setting(bad: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        TrainConfig(**bad)


@pytest.mark.parametrize("kill_at,aug_p", [(2, 0.0), (7, 0.5), (16, 0.0)])
def test_sigkill_then_resume_is_bit_exact(tiny_cache: Path, tmp_path: Path, kill_at: int, aug_p: float) -> None:
    cfg = TrainConfig(**TINY, intensity_p=aug_p, spatial_p=aug_p)  # the random augmentations resume exactly too
    ref = tmp_path / "ref"
    train(tiny_cache, ref, cfg, log=lambda m: None)
    run = tmp_path / "killed"
    script = KILL_SCRIPT.replace("{cfg}", repr(dataclasses.asdict(cfg)))
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_cache), str(run), str(kill_at)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    msgs: list[str] = []
    train(tiny_cache, run, cfg, log=msgs.append)
    assert any("resuming" in m for m in msgs) or kill_at <= cfg.checkpoint_every
    assert _equal(_weights(ref), _weights(run))
    assert _equal(_weights(ref, "best_model.pth"), _weights(run, "best_model.pth"))
    assert (ref / "history.csv").read_text().splitlines()[1].split(",")[:5] == \
        (run / "history.csv").read_text().splitlines()[1].split(",")[:5]


def test_finished_run_says_so_and_restart_starts_over(tiny_cache: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(**{**TINY, "epochs": 1})
    train(tiny_cache, tmp_path / "r", cfg, log=lambda m: None)
    msgs: list[str] = []
    train(tiny_cache, tmp_path / "r", cfg, log=msgs.append)
    assert any("already finished" in m for m in msgs)
    msgs.clear()
    train(tiny_cache, tmp_path / "r", cfg, restart=True, log=msgs.append)
    assert any("--restart" in m for m in msgs)


def test_norm_layer_run_round_trips_and_older_runs_read_batch(tiny_cache: Path, tmp_path: Path) -> None:
    """A run's normalization layer comes back from its checkpoint; one written before the setting existed is BatchNorm."""
    from torch import nn

    from brats2d.inference import load_predictor

    train(tiny_cache, tmp_path / "in", TrainConfig(**{**TINY, "epochs": 1, "norm_layer": "instance"}), log=lambda m: None)
    pred = load_predictor(tmp_path / "in", device="cpu")
    assert pred.train_cfg.norm_layer == "instance"
    assert any(isinstance(m, nn.InstanceNorm2d) for m in pred.model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in pred.model.modules())
    train(tiny_cache, tmp_path / "old", TrainConfig(**{**TINY, "epochs": 1}), log=lambda m: None)
    for name in ("best_model.pth", "latest_checkpoint.pth"):
        path = tmp_path / "old" / name
        ck = checkpoint.load(path)
        ident = json.loads(ck["identity"])
        del ident["train"]["norm_layer"]  # as brats2d wrote it before `norm_layer` existed
        checkpoint.save({**ck, "identity": json.dumps(ident)}, path)
    assert load_predictor(tmp_path / "old", device="cpu").train_cfg.norm_layer == "batch"


def test_a_run_written_before_a_preprocess_setting_existed_still_resumes(tiny_cache: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(**{**TINY, "epochs": 1})
    train(tiny_cache, tmp_path / "r", cfg, log=lambda m: None)
    latest = tmp_path / "r" / "latest_checkpoint.pth"
    ck = checkpoint.load(latest)
    ident = json.loads(ck["identity"])
    del ident["cache"]["config"]["context"]  # as brats2d wrote it before `context` existed
    checkpoint.save({**ck, "identity": json.dumps(ident)}, latest)
    msgs: list[str] = []
    train(tiny_cache, tmp_path / "r", cfg, log=msgs.append)
    assert any("already finished" in m for m in msgs)


def test_other_settings_are_refused_with_a_diff(tiny_cache: Path, tmp_path: Path) -> None:
    train(tiny_cache, tmp_path / "r", TrainConfig(**{**TINY, "epochs": 1}), log=lambda m: None)
    with pytest.raises(RunError, match=r"lr: 0\.001 -> 0\.01"):
        train(tiny_cache, tmp_path / "r", TrainConfig(**{**TINY, "epochs": 1, "lr": 1e-2}), log=lambda m: None)


def test_checkpoint_has_no_pickled_objects(tiny_cache: Path, tmp_path: Path) -> None:
    train(tiny_cache, tmp_path / "r", TrainConfig(**{**TINY, "epochs": 1}), log=lambda m: None)
    for name in ("latest_checkpoint.pth", "best_model.pth"):
        ck = torch.load(tmp_path / "r" / name, weights_only=True)
        assert json.loads(ck["config"])["epochs"] == 1


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": _Payload(str(marker))}, evil)
    with pytest.raises(checkpoint.CheckpointError, match="refused"):
        checkpoint.load(evil)
    assert not marker.exists()


def test_sigterm_writes_a_checkpoint(tiny_cache: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(**{**TINY, "checkpoint_every": 1000})
    script = textwrap.dedent(KILL_SCRIPT).replace("signal.SIGKILL", "signal.SIGTERM").replace("{cfg}", repr(dataclasses.asdict(cfg)))
    run = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_cache), str(run), "5"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "TrainingStopped" in proc.stderr
    ck = checkpoint.load(run / "latest_checkpoint.pth")
    assert (ck["epoch"], ck["step"]) == (0, 5)
