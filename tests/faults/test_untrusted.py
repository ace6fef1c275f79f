"""Untrusted checkpoints: a .pth carrying a pickle payload is refused and the payload never runs,
whichever command loads it (checkpoint.load, eval, predict, train resume) and however it is packed."""

from __future__ import annotations

import builtins
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from brats2d import checkpoint
from brats2d.cli.main import cli

from .conftest import TINY_CLI, assert_one_line_error


class _System:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Open:
    """Unpickling this calls open(marker, 'w'): the file appears even though nothing is written to it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


class _Exec:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


PAYLOADS = {"os.system": _System, "builtins.open": _Open, "builtins.exec": _Exec}


def _write(kind: str, pack: str, path: Path, marker: Path, genuine: dict | None = None) -> None:
    payload = PAYLOADS[kind](marker)
    obj = {**(genuine or {"model": {}}), "metrics": payload}  # hidden among genuine entries when given
    if pack == "zip":
        torch.save(obj, path)
    elif pack == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle renamed .pth
        path.write_bytes(pickle.dumps(obj, protocol=2))


@pytest.mark.parametrize("pack", ["zip", "legacy", "pickle"])
@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_payload_refused_by_checkpoint_load(tmp_path: Path, kind: str, pack: str) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    _write(kind, pack, evil, marker)
    with pytest.raises(checkpoint.CheckpointError, match=rf"^{evil}: refused: .*pickled Python objects"):
        checkpoint.load(evil)
    assert not marker.exists()


@pytest.fixture()
def evil_run(tiny_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of a genuine run whose two checkpoints each hide an open(marker, 'w') payload."""
    run = shutil.copytree(tiny_run, tmp_path / "run")
    marker = tmp_path / "pwned"
    for name in ("best_model.pth", "latest_checkpoint.pth"):
        _write("builtins.open", "zip", run / name, marker, genuine=checkpoint.load(run / name))
    return run, marker


def _invoke(*args) -> tuple[int, str]:
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return r.exit_code, r.output


@pytest.mark.parametrize("which", ["best", "latest"])
def test_payload_refused_by_eval(evil_run: tuple[Path, Path], which: str) -> None:
    run, marker = evil_run
    code, out = _invoke("eval", "--run-dir", run, "--checkpoint", which)
    name = "best_model.pth" if which == "best" else "latest_checkpoint.pth"
    assert_one_line_error(out, code, f"{run / name}: refused")
    assert not marker.exists()
    assert not (run / "metrics_test.json").exists()


def test_payload_refused_by_predict(evil_run: tuple[Path, Path], raw_dir: Path, tmp_path: Path) -> None:
    run, marker = evil_run
    patient = raw_dir / sorted(p.name for p in raw_dir.iterdir())[0]
    code, out = _invoke("predict", patient, "--run-dir", run, "--out", tmp_path / "pred")
    assert_one_line_error(out, code, f"{run / 'best_model.pth'}: refused")
    assert not marker.exists()
    assert not (tmp_path / "pred").exists()


def test_payload_refused_when_resuming(evil_run: tuple[Path, Path], tiny_cache: Path) -> None:
    run, marker = evil_run
    code, out = _invoke("train", "--cache", tiny_cache, "--run-dir", run, *TINY_CLI, "--epochs", 1)
    assert_one_line_error(out, code, f"{run / 'latest_checkpoint.pth'}: refused")
    assert not marker.exists()


def test_own_checkpoints_hold_only_tensors_and_text(tiny_run: Path) -> None:
    """What makes sharing safe: both files load weights-only and hold nothing but tensors, numbers and JSON text."""
    def leaves(o):
        if isinstance(o, dict):
            for k, v in o.items():
                assert isinstance(k, (str, int)), type(k)
                yield from leaves(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                yield from leaves(v)
        else:
            yield o

    for name in ("best_model.pth", "latest_checkpoint.pth"):
        ck = torch.load(tiny_run / name, weights_only=True)
        kinds = {type(x) for x in leaves(ck)}
        assert kinds <= {torch.Tensor, str, int, float, bool, type(None)}, (name, kinds)
    best = torch.load(tiny_run / "best_model.pth", weights_only=True)
    assert set(best) == {"model", "epoch", "metrics", "identity", "config"}
