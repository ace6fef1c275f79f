"""Concurrency: one trainer per run folder (a SIGKILLed holder frees it), and two preprocess runs to one
cache never corrupt it or its sidecars (the second is refused while the first writes)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from click.testing import CliRunner

from brats2d import cache, checkpoint
from brats2d.cli.main import cli
from brats2d.preprocess import config_path

from .conftest import TINY_CLI, assert_one_line_error, leftovers, spawn_cli, wait_for


def _invoke(*args) -> tuple[int, str]:
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return r.exit_code, r.output


def test_second_trainer_refused_and_sigkilled_holder_frees_the_lock(tiny_cache: Path, tmp_path: Path) -> None:
    run, ready = tmp_path / "run", tmp_path / "ready"
    args = ["train", "--cache", tiny_cache, "--run-dir", run, *TINY_CLI, "--epochs", 1]
    # The holder stops before its 4th step (a checkpoint after step 3 exists) and waits there.
    holder = spawn_cli(args, [{"target": "brats2d.train:train_step", "nth": 4, "do": "pause", "ready": str(ready),
                               "until": str(tmp_path / "never")}])
    try:
        wait_for(ready, holder)
        before = (run / "latest_checkpoint.pth").read_bytes()
        code, out = _invoke(*args)
        assert_one_line_error(out, code, str(run), "in use", f"pid {holder.pid}")
        assert (run / "latest_checkpoint.pth").read_bytes() == before  # the refused trainer touched nothing
        os.kill(holder.pid, signal.SIGKILL)
        holder.communicate(timeout=60)
        assert holder.returncode == -signal.SIGKILL
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate()
    code, out = _invoke(*args)  # no stale lock: resumes from step 3 and finishes
    assert code == 0, out
    assert checkpoint.load(run / "latest_checkpoint.pth")["epoch"] == 1
    assert (run / ".lock").read_text().strip() != str(holder.pid)


def _consistent(out: Path, size: int) -> None:
    meta = cache.read_meta(out)
    cache.verify(out)
    assert meta.config["size"] == size
    assert json.loads(config_path(out).read_text()) == meta.config  # the sidecar describes this cache
    assert leftovers(out.parent) == []


def test_preprocess_while_another_writes_the_same_cache(raw_dir: Path, tmp_path: Path) -> None:
    """A (size 32) has renamed its cache into place and is about to write the sidecars when B (size 24)
    runs to the same output. B must not interleave with A: it is refused, and A's result is coherent."""
    out, ready, go = tmp_path / "out" / "c.h5", tmp_path / "ready", tmp_path / "go"
    a = spawn_cli(["preprocess", raw_dir, "--out", out, "--workers", 1, "--size", 32],
                  [{"target": "os:replace", "match": "cache.h5", "when": "after", "do": "pause",
                    "ready": str(ready), "until": str(go)}])
    try:
        wait_for(ready, a)
        code, output = _invoke("preprocess", raw_dir, "--out", out, "--workers", 1, "--size", 24)
        go.touch()
        _, err = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            a.kill()
            a.communicate()
    assert a.returncode == 0, err
    assert_one_line_error(output, code, str(out), "another brats2d preprocess", f"pid {a.pid}")
    _consistent(out, 32)


def test_two_simultaneous_preprocess_runs(raw_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "c.h5"
    procs = [spawn_cli(["preprocess", raw_dir, "--out", out, "--workers", 1, "--size", 24, "--force"]) for _ in range(2)]
    results = [p.communicate(timeout=180) for p in procs]
    codes = [p.returncode for p in procs]
    assert 0 in codes, results
    for p, (_, err) in zip(procs, results):
        if p.returncode != 0:  # refused cleanly while the other held the cache
            assert_one_line_error(err, p.returncode, "another brats2d preprocess")
    _consistent(out, 24)
