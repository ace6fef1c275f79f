"""Shared fixtures: a tiny fake BraTS tree made by the package's own phantom generator."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from brats2d.config import PreprocessConfig, TrainConfig
from brats2d.preprocess import preprocess
from brats2d.synth import write_cohort

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats-real"
SHAPE = (48, 48, 24)
SIZE = 32
# A U-Net small enough to train in seconds on 2 cores, same code path as the real one.
TINY = dict(base_channels=4, depth=2, epochs=2, batch_size=4, checkpoint_every=3, threads=1, precision="fp32")

torch.set_num_threads(1)


def make_tree(root: Path, patients: int = 6, seed: int = 1, naming: str = "2021", shape=SHAPE) -> Path:
    """A BraTS-layout folder of tiny synthetic patients under `root`."""
    write_cohort(root, patients, seed=seed, shape=shape, naming=naming)
    return root


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("raw"), patients=8)


@pytest.fixture()
def raw_copy(raw_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny tree, for tests that damage files."""
    dst = tmp_path / "raw"
    shutil.copytree(raw_dir, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_cache(raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "tiny.h5"
    preprocess(raw_dir, out, PreprocessConfig(size=SIZE), workers=1)
    return out


@pytest.fixture()
def tiny_cfg() -> TrainConfig:
    return TrainConfig(**TINY)


def real_dir() -> Path:
    if not (REAL.is_dir() and any(REAL.iterdir())):
        pytest.skip("../shared/data/brats-real is not present")
    return REAL


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))


@pytest.fixture(scope="session", autouse=True)
def _repo_stays_clean() -> Any:
    """Fail the run if a test leaves files in the repository root (tests write only under tmp_path)."""
    root = Path(__file__).resolve().parents[1]
    before = set(os.listdir(root))
    yield
    new = sorted(set(os.listdir(root)) - before)
    assert not new, f"tests left files in the repository root: {new}"


def script(folder: str, name: str) -> Any:
    """<folder>/<name>.py (folder "benchmarks" or "experiments") loaded as a module, as `python
    <folder>/<name>.py` would import it: with its folder first on sys.path, so its `import common` finds
    <folder>/common.py (both folders have one, so `common` is imported afresh for each script)."""
    import importlib.util
    import sys

    where = Path(__file__).resolve().parents[1] / folder
    spec = importlib.util.spec_from_file_location(name, where / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    saved = sys.modules.pop("common", None)
    sys.path.insert(0, str(where))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(where))
        sys.modules.pop("common", None)
        if saved is not None:
            sys.modules["common"] = saved
    return mod


def bench_script(name: str) -> Any:
    """benchmarks/<name>.py loaded as a module."""
    return script("benchmarks", name)


def experiment_script(name: str) -> Any:
    """experiments/<name>.py loaded as a module."""
    return script("experiments", name)
@pytest.fixture(scope="session")
def view_run(tiny_cache: Path, raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A miniature `make demo`: a tiny trained run and `predict --probabilities --tta --explain` of three
    patients (one without its seg, so it has no metrics), for the viewer's tests. Keys: raw, run, pred."""
    from brats2d.inference import load_predictor
    from brats2d.predict import predict
    from brats2d.train import train

    base = tmp_path_factory.mktemp("view")
    run = base / "run"
    train(tiny_cache, run, TrainConfig(**{**TINY, "epochs": 3}), log=lambda m: None)
    raw = base / "raw"
    cases = sorted(p.name for p in raw_dir.iterdir())[:3]
    for case in cases:
        shutil.copytree(raw_dir / case, raw / case)
    for seg in (raw / cases[2]).glob("*_seg.nii.gz"):
        seg.unlink()
    predict(load_predictor(run, device="cpu"), [raw], base / "pred", threshold=0.5, probabilities=True, tta=True,
            explain=True)
    return {"raw": raw, "run": run, "pred": base / "pred"}
