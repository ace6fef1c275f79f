"""Fault-injection helpers: run `python -m brats2d ...` with faults planted at chosen call sites.

A fault is a dict: {"target": "module:attr.path", "nth": N, "when": "before"|"after", "match": "substr",
"do": "kill"|"kill_midwrite"|"pause"|"fill", ...}. The N-th call of the target (counting only calls
with an argument whose str() contains `match`) triggers the action:

* kill           SIGKILL this process (no cleanup handler runs: the OS view of a power cut for the file)
* kill_midwrite  for torch.save(obj, f): write the first half of the serialized bytes to f, then SIGKILL
* pause          create file `ready`, then wait until file `until` exists (another process acts meanwhile)
* fill           write zeros to file `path` until the disk is full (ENOSPC), keep what was written
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

DRIVER = r'''
import errno, importlib, io, json, os, runpy, signal, sys, time

def _act(f, args):
    do = f["do"]
    if do == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif do == "pause":
        open(f["ready"], "w").close()
        t0 = time.time()
        while not os.path.exists(f["until"]) and time.time() - t0 < f.get("timeout", 120):
            time.sleep(0.02)
    elif do == "fill":
        with open(f["path"], "wb", buffering=0) as fh:  # unbuffered: nothing left to flush on close
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    else:
        raise SystemExit(f"unknown fault action {do!r}")

def _install(f):
    mod, _, attr = f["target"].partition(":")
    owner = importlib.import_module(mod)
    parts = attr.split(".")
    for p in parts[:-1]:
        owner = getattr(owner, p)
    orig = getattr(owner, parts[-1])
    count = [0]

    def wrapper(*args, **kw):
        if f.get("match") and not any(f["match"] in str(a) for a in args):
            return orig(*args, **kw)
        count[0] += 1
        if count[0] != f.get("nth", 1):
            return orig(*args, **kw)
        if f["do"] == "kill_midwrite":  # torch.save(obj, f): half the bytes reach the file, then death
            buf = io.BytesIO()
            orig(args[0], buf, **kw)
            data = buf.getvalue()
            args[1].write(data[: len(data) // 2])
            args[1].flush()
            os.kill(os.getpid(), signal.SIGKILL)
        if f.get("when", "before") == "before":
            _act(f, args)
        out = orig(*args, **kw)
        if f.get("when") == "after":
            _act(f, args)
        return out

    setattr(owner, parts[-1], wrapper)

for f in json.loads(os.environ.get("BRATS2D_FAULTS", "[]")):
    _install(f)
sys.argv = ["brats2d"] + sys.argv[1:]
runpy.run_module("brats2d", run_name="__main__", alter_sys=True)
'''


def cli_env(faults: list[dict[str, Any]] | None) -> dict[str, str]:
    """The environment of a `python -m brats2d` subprocess: `faults` planted, one thread, plain output."""
    env = dict(os.environ, BRATS2D_FAULTS=json.dumps(faults or []), OMP_NUM_THREADS="1", PYTHONHASHSEED="0",
               COLUMNS="200", TERM="dumb", NO_COLOR="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(args: list[str], faults: list[dict[str, Any]] | None = None, timeout: float = 180,
            **kw: Any) -> subprocess.CompletedProcess:
    """`python -m brats2d ARGS` in a subprocess, with `faults` planted."""
    return subprocess.run([sys.executable, "-c", DRIVER, *map(str, args)], env=cli_env(faults), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, **kw)


def spawn_cli(args: list[str], faults: list[dict[str, Any]] | None = None, **kw: Any) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER, *map(str, args)], env=cli_env(faults), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for(path: Path, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Wait until `path` exists (failing early, with its stderr, if `proc` ends first)."""
    t0 = time.time()
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process ended (rc {proc.returncode}) before {path.name}:\n{proc.stderr.read()}")
        if time.time() - t0 > timeout:
            pytest.fail(f"timed out waiting for {path}")
        time.sleep(0.02)


def assert_one_line_error(output: str, exit_code: int, *words: str) -> str:
    """A short error, no traceback, non-zero exit; returns the error line (which must contain `words`)."""
    assert exit_code != 0, output
    assert "Traceback" not in output, output
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    err = [ln for ln in lines if ln.startswith(("brats2d: error:", "Error:"))]
    assert len(err) == 1, output
    assert len(lines) <= 6, output  # click usage errors add "Usage:" and "Try ... -h" lines
    for w in words:
        assert w in err[0], (w, err[0])
    return err[0]


def file_digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path, keep: tuple[str, ...] = ()) -> list[str]:
    """Hidden (temp/lock) files or folders in `folder`, except names in `keep`."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name not in keep)


def copy_cache(src: Path, dst: Path) -> Path:
    """Copy a cache and its sidecars (splits.json, config.json) under a new name."""
    from brats2d.preprocess import config_path, splits_path

    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    for side in (splits_path, config_path):
        if side(src).exists():
            shutil.copy(side(src), side(dst))
    return dst


TINY_CLI = ["--base-channels", "4", "--depth", "2", "--batch-size", "4", "--checkpoint-every", "3",
            "--threads", "1", "--precision", "fp32"]


@pytest.fixture(scope="session")
def tiny_run(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch tiny run (best_model.pth, latest_checkpoint.pth); copy it before damaging it."""
    from brats2d.config import TrainConfig
    from brats2d.train import train

    from ..conftest import TINY

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    train(tiny_cache, run, TrainConfig(**{**TINY, "epochs": 1}), log=lambda m: None)
    return run


@pytest.fixture()
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


def unshare_ok() -> bool:
    """True when an unprivileged user+mount namespace can mount a tmpfs (for a real full disk)."""
    import tempfile

    if not shutil.which("unshare") or not sys.platform.startswith("linux"):
        return False
    d = tempfile.mkdtemp()
    try:
        probe = subprocess.run(["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs -o size=64k none {d}"],
                               capture_output=True, timeout=30)
        return probe.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        os.rmdir(d)
