"""torchrun / DistributedDataParallel: epoch sharding, a real 2-process CPU run, exact resume, world-size refusal."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from brats2d import cache, checkpoint, distributed
from brats2d.config import TrainConfig
from brats2d.dataset import EpochPlan
from brats2d.rundir import RunError
from brats2d.train import train

from .conftest import TINY

OPTS = {"base-channels": 4, "depth": 2, "epochs": 3, "threads": 1, "precision": "fp32", "batch-size": 4,
        "checkpoint-every": 3, "dropout": 0.1}  # dropout: ranks 1.. RNG states must resume too
# torchrun runs this file as each worker: rank 0 SIGTERMs itself before its kill_at-th step, then the CLI runs.
STOP_SCRIPT = """
import os, signal, sys
import brats2d.train as T
from brats2d.cli.main import cli
kill_at, n, step = int(os.environ["KILL_AT"]), [0], T.train_step
def stopping_step(*a, **k):
    n[0] += 1
    if n[0] == kill_at and os.environ["RANK"] == "0":
        os.kill(os.getpid(), signal.SIGTERM)
    return step(*a, **k)
T.train_step = stopping_step
cli(sys.argv[1:])
"""


def _torchrun(target: list[str], cache_path: Path, run: Path, env: dict[str, str] | None = None,
              nproc: int = 2) -> subprocess.CompletedProcess:
    opts = [a for k, v in OPTS.items() for a in (f"--{k}", str(v))]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *target,
           "train", "--cache", str(cache_path), "--run-dir", str(run), "--device", "cpu", *opts]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("n", [1, 7, 51, 64])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_are_equal_length_and_cover_the_epoch(n: int, world: int) -> None:
    plan = EpochPlan.make(n, 4, seed=3, epoch=2, augment=True)
    shards = [plan.shard(r, world) for r in range(world)]
    assert len({len(s.order) for s in shards}) == 1 and len({len(s) for s in shards}) == 1  # same step count
    got = np.concatenate([s.order for s in shards])
    assert set(got.tolist()) == set(range(n))
    pad = len(got) - n
    assert 0 <= pad < world  # only the wrap-around repeats, like DistributedSampler
    if n >= world:
        assert (np.unique(got, return_counts=True)[1] > 1).sum() == pad
    for r, s in enumerate(shards):  # each slice keeps its own augmentation code
        pos = (np.arange(len(got)) % n)[r::world]
        assert np.array_equal(s.order, plan.order[pos]) and np.array_equal(s.codes, plan.codes[pos])
    exact = [plan.shard(r, world, pad=False).order for r in range(world)]  # evaluation: a true partition
    assert sorted(np.concatenate(exact).tolist()) == list(range(n))
    assert plan.shard(0, 1) is plan
    with pytest.raises(ValueError, match="rank"):
        plan.shard(world, world)


def test_single_process_helpers_issue_no_collectives() -> None:
    d = distributed.Dist()
    assert not d.enabled and d.is_rank0
    assert distributed.all_sum(d, [1.5, 2, torch.tensor(3.0)]).tolist() == [1.5, 2.0, 3.0]
    assert distributed.any_true(d, True) and not distributed.any_true(d, False)
    assert distributed.broadcast_object(d, {"a": 1}) == {"a": 1}
    assert distributed.gather_objects(d, 7) == [7]
    assert distributed.on_rank0(d, lambda: 5) == 5
    distributed.barrier(d)
    assert distributed.env_world() == (0, 1, 0, 1)
    assert distributed.rank_seed(42, 1) != distributed.rank_seed(42, 2)


def test_sync_bn_setting() -> None:
    assert TrainConfig().sync_bn is False and TrainConfig(sync_bn=True).sync_bn is True


@pytest.fixture(scope="module")
def ddp_ref(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One uninterrupted 2-process CPU run, shared by the tests below."""
    run = tmp_path_factory.mktemp("ddp") / "runs" / "ref"
    return run, _torchrun(["-m", "brats2d"], tiny_cache, run)


def test_torchrun_two_processes_train_one_run(ddp_ref: tuple[Path, subprocess.CompletedProcess],
                                              tiny_cache: Path) -> None:
    run, proc = ddp_ref
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert [p.name for p in run.parent.iterdir()] == ["ref"]  # one run folder, written by rank 0 alone
    assert proc.stdout.count("starting run") == 1 and proc.stdout.count("epoch 3/3") == 1
    hist = _history(run)
    assert len(hist) == 3 and float(hist[-1]["train_loss"]) < float(hist[0]["train_loss"])
    assert checkpoint.load(run / "latest_checkpoint.pth")["epoch"] == 3
    # The same world size resumes (here: finds the run finished); another world size is refused.
    again = _torchrun(["-m", "brats2d"], tiny_cache, run)
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr[-3000:]
    cfg = TrainConfig(**{**TINY, "epochs": 3, "checkpoint_every": 3, "dropout": 0.1})
    with pytest.raises(RunError, match=r"trained by 2 process\(es\).*this run has 1"):
        train(tiny_cache, run, cfg, device="cpu", log=lambda m: None)


def test_torchrun_stop_then_resume_is_bit_exact(ddp_ref: tuple[Path, subprocess.CompletedProcess],
                                               tiny_cache: Path, tmp_path: Path) -> None:
    ref, proc = ddp_ref
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = len(EpochPlan.make(cache.read_meta(tiny_cache).counts["train"], 4, 0, 0).shard(0, 2))
    kill_at = steps + 2  # mid epoch 2, not at a --checkpoint-every step
    script = tmp_path / "stop.py"
    script.write_text(STOP_SCRIPT)
    run = tmp_path / "stopped"
    stopped = _torchrun([str(script)], tiny_cache, run, env={"KILL_AT": str(kill_at)})
    assert stopped.returncode != 0 and "checkpoint saved" in stopped.stderr, stopped.stderr[-3000:]
    ck = checkpoint.load(run / "latest_checkpoint.pth")
    assert (ck["epoch"], ck["step"]) == (1, 2) and len(ck["rng_ranks"]) == 1  # both ranks stopped at one step
    resumed = _torchrun(["-m", "brats2d"], tiny_cache, run)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr[-3000:]
    for name in ("latest_checkpoint.pth", "best_model.pth"):
        assert _equal(checkpoint.load(ref / name)["model"], checkpoint.load(run / name)["model"]), name
    for a, b in zip(_history(ref), _history(run)):
        assert (a["epoch"], a["val_loss"], a["val_dice"]) == (b["epoch"], b["val_loss"], b["val_dice"])
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-12)
