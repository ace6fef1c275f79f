"""Modality dropout: training blanks whole modalities (never the first), and a model trained that way predicts
a scan lacking them, with that input blank exactly as training saw it; other models still refuse such scans."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from brats2d.augment import apply_blanks, draw_blanks
from brats2d.config import ConfigError, PreprocessConfig, TrainConfig
from brats2d.dataset import EpochPlan, SliceCache
from brats2d.inference import load_predictor
from brats2d.nifti import InputError, discover, load_patient
from brats2d.ood import check
from brats2d.predict import predict, predict_case
from brats2d.preprocess import preprocess
from brats2d.slicing import prepare
from brats2d.train import train

from .conftest import SIZE, TINY

MODS = ("flair", "t1ce", "t2")


def test_blanks_spare_the_first_modality_and_leave_other_draws_unchanged() -> None:
    rng = np.random.default_rng(0)
    b = draw_blanks(rng, 20000, 3, 0.4)
    assert b is not None and b.shape == (20000, 3) and not b[:, 0].any()
    assert abs(b[:, 1:].mean() - 0.4) < 0.02 and abs((b[:, 1] & b[:, 2]).mean() - 0.16) < 0.02  # independent
    assert draw_blanks(rng, 10, 3, 0.0) is None and draw_blanks(rng, 10, 1, 0.5) is None
    off = EpochPlan.make(50, 4, 7, 2, intensity=(0.5, 0.3, 0.2), spatial=(0.5, 0.3, 30.0))
    on = EpochPlan.make(50, 4, 7, 2, intensity=(0.5, 0.3, 0.2), spatial=(0.5, 0.3, 30.0), blank=(0.5, 3))
    for a, c in ((off.order, on.order), (off.codes, on.codes), (off.gains, on.gains), (off.spatial, on.spatial)):
        np.testing.assert_array_equal(a, c)
    assert off.blanks is None and on.blanks is not None and on.blanks.shape == (50, 3)
    assert on.shard(1, 2).blanks.shape == (25, 3)  # sharded with the rest of the plan
    with pytest.raises(ConfigError, match="modality_dropout"):
        TrainConfig(modality_dropout=1.0)


def test_mirror_and_context_channels_follow_their_modality() -> None:
    cfg = PreprocessConfig(modalities=MODS, mirror=True, context=1)
    assert cfg.channel_modality == (0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 0, 1, 1, 1, 2, 2, 2)
    x = torch.ones(2, cfg.in_channels, 4, 4)
    blanks = np.array([[False, False, True], [False, True, False]])
    y = apply_blanks(x, blanks, cfg.channel_modality)
    kept = y.flatten(2).amax(2)  # (B, C): 1 where the channel survived
    want = torch.tensor([[m != 2 for m in cfg.channel_modality], [m != 1 for m in cfg.channel_modality]]).float()
    assert torch.equal(kept, want)


@pytest.fixture(scope="module")
def mm_cache(raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mm") / "mm.h5"
    preprocess(raw_dir, path, PreprocessConfig(size=SIZE, modalities=MODS, region="all", norm="zscore"), workers=1)
    return path


def test_training_batches_blank_whole_modalities(mm_cache: Path) -> None:
    data = SliceCache(mm_cache, "train")
    plan = EpochPlan.make(len(data), 8, 3, 0, blank=(0.5, 3))
    idx, codes, gains, spatial, blanks = plan.batch(0)
    x, y = data.gather(idx, codes, gains, spatial, blanks)
    x0, y0 = data.gather(idx, codes, gains, spatial)
    assert blanks is not None and blanks[:, 1:].any() and torch.equal(y, y0)
    for i in range(len(idx)):
        for c in range(3):
            assert torch.equal(x[i, c], torch.zeros_like(x[i, c]) if blanks[i, c] else x0[i, c])


@pytest.fixture(scope="module")
def runs(mm_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("runs")
    cfg = {**TINY, "epochs": 1}
    train(mm_cache, base / "dropout", TrainConfig(**cfg, modality_dropout=0.5), log=lambda m: None)
    train(mm_cache, base / "plain", TrainConfig(**cfg), log=lambda m: None)
    return base / "dropout", base / "plain"


def test_a_dropout_model_predicts_a_scan_without_t2(runs: tuple[Path, Path], raw_dir: Path, tmp_path: Path) -> None:
    dropout_run, plain_run = runs
    case = sorted(p.name for p in raw_dir.iterdir())[0]
    raw = tmp_path / "raw"
    shutil.copytree(raw_dir / case, raw / case)
    full = load_patient(discover(raw / case)[0], MODS, need_seg=False)[0]
    (raw / case / f"{case}_t2.nii.gz").unlink()
    pred = load_predictor(dropout_run, device="cpu")
    rows, errors = predict(pred, [raw], tmp_path / "out")
    assert errors == [] and rows[0]["blank"] == ["t2"] and set(rows[0]["regions"]) == {"wt", "tc", "et"}
    with open(tmp_path / "out" / "metrics.csv") as f:
        assert {r["blank"] for r in csv.DictReader(f)} == {"t2"}
    assert (tmp_path / "out" / f"{case}_pred.nii.gz").exists()
    # The missing T2 plays no part: the same as the full scan with its T2 channel declared blank.
    got = pred.volume(load_patient(discover(raw / case)[0], MODS, need_seg=False, optional=MODS[1:])[0], blank=(2,))[0]
    np.testing.assert_array_equal(got, pred.volume(full, blank=(2,))[0])
    assert not np.array_equal(got, pred.volume(full)[0])  # and the blank really changes the input
    prep = prepare(full, pred.prep_cfg, blank=(2,))
    assert not prep.image[2].any() and np.isnan(prep.stats.p99[2])
    assert not [f for f in check(prep.stats, pred.profile) if "channel 2" in f]  # no warning about the blank
    # FLAIR stays required, and a model trained without dropout still refuses the scan, naming the file.
    with pytest.raises(InputError, match="missing t2 file"):
        predict_case(load_predictor(plain_run, device="cpu"), raw / case, None)
    (raw / case / f"{case}_flair.nii.gz").unlink()
    with pytest.raises(InputError, match="missing flair file"):
        predict_case(pred, raw / case, None)
