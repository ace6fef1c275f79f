"""Disk full: a cache or checkpoint write that runs out of space fails with one clear line and leaves
the previous file intact and loadable (checked with injected ENOSPC and with a real, tiny tmpfs)."""

from __future__ import annotations

import errno
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import brats2d.checkpoint as ckmod
from brats2d import cache, checkpoint
from brats2d.cli.main import cli
from brats2d.config import PreprocessConfig
from brats2d.preprocess import preprocess

from .conftest import DRIVER, ROOT, TINY_CLI, cli_env, assert_one_line_error, copy_cache, file_digest, leftovers, \
    unshare_ok


class _FullDisk:
    """A file whose writes fail with ENOSPC once `budget` bytes have been written (shared by all files)."""

    def __init__(self, f, budget: list[int]):
        self.f, self.budget = f, budget

    def write(self, b) -> int:
        n = len(memoryview(b).cast("B"))
        if n > self.budget[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget[0] -= n
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def _full_open(budget: int):
    left = [budget]

    def fake_open(file, mode="r", *a, **kw):
        f = open(file, mode, *a, **kw)
        return _FullDisk(f, left) if "w" in mode or "a" in mode or "+" in mode else f

    return fake_open


def _prev_cache(tiny_cache: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    out = copy_cache(tiny_cache, tmp_path / "out" / "c.h5")
    return out, {p.name: file_digest(p) for p in out.parent.iterdir()}


def _preprocess_cli(raw_dir: Path, out: Path):
    return CliRunner().invoke(cli, ["preprocess", str(raw_dir), "--out", str(out), "--workers", "1", "--size", "24"],
                              catch_exceptions=False)


@pytest.mark.parametrize("layer", ["slice-streams", "fsync"])
def test_cache_write_on_full_disk_keeps_previous_cache(raw_dir: Path, tiny_cache: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, layer: str) -> None:
    out, before = _prev_cache(tiny_cache, tmp_path)
    if layer == "slice-streams":  # the per-split temp files the slices are streamed to
        monkeypatch.setattr(cache, "open", _full_open(20_000), raising=False)
    else:  # the HDF5 file is complete, but the filesystem reports the full disk on fsync (NFS, delayed allocation)
        def no_space(fd: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(cache.os, "fsync", no_space)
    r = _preprocess_cli(raw_dir, out)
    assert_one_line_error(r.output, r.exit_code, "disk full", str(out))
    assert {p.name: file_digest(p) for p in out.parent.iterdir()} == before  # nothing new, nothing left over
    cache.verify(out)


def test_checkpoint_write_on_full_disk_keeps_previous_checkpoints(tiny_cache: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Epoch 1 writes 4 mid-epoch saves, best and latest; the disk fills during epoch 2's second save."""
    saves: list[tuple[str, int, int, bool]] = []
    real_save = ckmod.save
    full_from = 8

    def recording_save(obj, path):
        if len(saves) + 1 == full_from:
            monkeypatch.setattr(ckmod, "open", _full_open(10_000), raising=False)
        try:
            real_save(obj, path)
            saves.append((Path(path).name, obj["epoch"], obj.get("step", -1), True))
        except checkpoint.CheckpointError:
            saves.append((Path(path).name, obj["epoch"], obj.get("step", -1), False))
            raise

    monkeypatch.setattr(ckmod, "save", recording_save)
    run = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", "--cache", str(tiny_cache), "--run-dir", str(run), *TINY_CLI, "--epochs", "2"],
                           catch_exceptions=False)
    assert_one_line_error(r.output, r.exit_code, "disk full", "latest_checkpoint.pth")
    assert saves[-1][3] is False and all(ok for *_, ok in saves[:-1]) and len(saves) == full_from
    last_latest = [s for s in saves if s[0] == "latest_checkpoint.pth" and s[3]][-1]
    last_best = [s for s in saves if s[0] == "best_model.pth" and s[3]][-1]
    latest, best = checkpoint.load(run / "latest_checkpoint.pth"), checkpoint.load(run / "best_model.pth")
    assert (latest["epoch"], latest["step"]) == last_latest[1:3] == (1, 3)
    assert best["epoch"] == last_best[1] == 1
    assert set(leftovers(run)) <= {".lock"}


# --- a real full disk: a tiny tmpfs mounted in an unprivileged user+mount namespace -------------------

needs_tmpfs = pytest.mark.skipif(not unshare_ok(), reason="cannot mount a tmpfs in a user namespace here")


def _in_tmpfs(disk: Path, size: int, setup: str, args: list, faults: list | None = None) -> tuple[int, str, Path]:
    """Mount a `size`-byte tmpfs at `disk`, run `setup` (sh) then `python -m brats2d ARGS` there, and copy
    what is left on the disk to `disk.parent / 'after'` (the tmpfs vanishes with the namespace)."""
    after = disk.parent / "after"
    after.mkdir()
    cmd = " ".join(shlex.quote(str(a)) for a in [sys.executable, "-c", DRIVER, *args])
    script = (f"mount -t tmpfs -o size={size} none {shlex.quote(str(disk))} || exit 99\n{setup}\n"
              f"{cmd} 2> {shlex.quote(str(disk.parent / 'stderr'))}; rc=$?\n"
              f"rm -f {shlex.quote(str(disk / 'filler'))}\n"
              f"cp -a {shlex.quote(str(disk))}/. {shlex.quote(str(after))}/\nexit $rc\n")
    disk.mkdir(exist_ok=True)
    p = subprocess.run(["unshare", "-Urm", "sh", "-c", script], env=cli_env(faults), cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode != 99, p.stderr
    return p.returncode, (disk.parent / "stderr").read_text(), after


@needs_tmpfs
@pytest.mark.slow
@pytest.mark.parametrize("room", [0.5, 1.5], ids=["fills-in-slice-streams", "fills-in-hdf5-file"])
def test_cache_on_really_full_disk(raw_dir: Path, tiny_cache: Path, tmp_path: Path, room: float) -> None:
    new = tmp_path / "probe" / "c.h5"  # how big the new cache will be
    preprocess(raw_dir, new, PreprocessConfig(size=48), workers=1)
    old = copy_cache(tiny_cache, tmp_path / "old" / "c.h5")
    used = sum(p.stat().st_size for p in old.parent.iterdir())
    size = (used + int(room * new.stat().st_size)) // 4096 * 4096 + 3 * 4096
    disk = tmp_path / "disk"
    rc, err, after = _in_tmpfs(disk, size, f"cp -a {shlex.quote(str(old.parent))}/. {shlex.quote(str(disk))}/",
                               ["preprocess", raw_dir, "--out", disk / "c.h5", "--workers", "1", "--size", "48"])
    assert_one_line_error(err, rc, "disk full", str(disk / "c.h5"))
    assert {p.name: file_digest(p) for p in after.iterdir()} == {p.name: file_digest(p) for p in old.parent.iterdir()}
    cache.verify(after / "c.h5")


@needs_tmpfs
@pytest.mark.slow
def test_checkpoint_on_really_full_disk(tiny_cache: Path, tmp_path: Path) -> None:
    """Training into a tmpfs run folder; before step 8 the disk is filled, so the save after step 9 fails."""
    disk = tmp_path / "disk"
    rc, err, after = _in_tmpfs(disk, 2 * 1024 * 1024, "",
                               ["train", "--cache", tiny_cache, "--run-dir", disk, *TINY_CLI, "--epochs", "2"],
                               [{"target": "brats2d.train:train_step", "nth": 8, "do": "fill",
                                 "path": str(disk / "filler")}])
    assert_one_line_error(err, rc, "disk full", str(disk / "latest_checkpoint.pth"))
    ck = checkpoint.load(after / "latest_checkpoint.pth")
    assert (ck["epoch"], ck["step"]) == (0, 6)
    assert set(leftovers(after)) <= {".lock"}
