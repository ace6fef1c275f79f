"""Scans arrive in many intensity conventions; the head is found, not assumed (docs/inputs.md).

A scan stored as float32, rescaled, offset, z-scored inside the brain with a constant non-zero
background, or with a faint noise floor in the background must give the same head mask, the same
normalized image, the same cache and the same predicted mask as the scan stored the BraTS way.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from brats2d import cache
from brats2d.config import PreprocessConfig, TrainConfig
from brats2d.head import find_head
from brats2d.inference import load_predictor
from brats2d.nifti import discover, load_patient
from brats2d.ood import Profile, check
from brats2d.predict import predict_case
from brats2d.preprocess import preprocess
from brats2d.recipes import RECIPES
from brats2d.slicing import prepare
from brats2d.splits import split_patients
from brats2d.train import train

from .conftest import SIZE, TINY, make_tree, real_dir

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def _zscored(v: np.ndarray, head: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = v[head].astype(np.float64)
    return np.where(head, (v - x.mean()) / x.std(), -3.19).astype(np.float32)


def _noise_floor(v: np.ndarray, head: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    amp = 0.005 * float(np.median(v[head]))  # 0.5 % of the brain's median: a faint floor, not a second tissue
    return np.where(head, v, rng.uniform(0, amp, v.shape)).astype(np.float32)


# Each takes one modality (X, Y, Z) float32 as stored the BraTS way and its head mask; returns float32.
CONVENTIONS: dict[str, Transform] = {
    "float32": lambda v, head, rng: v.astype(np.float32),
    "x0.1": lambda v, head, rng: (v * np.float32(0.1)).astype(np.float32),
    "x10": lambda v, head, rng: (v * np.float32(10)).astype(np.float32),
    "+1000": lambda v, head, rng: (v + np.float32(1000)).astype(np.float32),
    "zscored, background -3.19": _zscored,
    "noise floor": _noise_floor,
}
# The settings that touch the head: every normalization, the head crop and the left-right mirror.
CONFIGS = {
    "seed": PreprocessConfig(size=SIZE),
    "brats2d": PreprocessConfig(size=SIZE, **RECIPES["brats2d"]["preprocess"]),
    "percentile+crop+mirror": PreprocessConfig(size=SIZE, norm="percentile", crop="brain", mirror=True),
}


def _convert(image: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """A patient's scan (C, X, Y, Z) in convention `name`; the head is where any modality is non-zero."""
    head = (image != 0).any(axis=0)
    rng = np.random.default_rng(seed)
    return np.stack([CONVENTIONS[name](image[c], head, rng) for c in range(len(image))])


def _write_converted(src: Path, dst: Path, name: str) -> Path:
    """A copy of a BraTS tree with every modality stored in convention `name` (float32 NIfTI)."""
    for k, p in enumerate(discover(src)):
        out = dst / p.case
        out.mkdir(parents=True)
        mods = [m for m in ("flair", "t1", "t1ce", "t2") if m in p.files]
        image, _, _, _ = load_patient(p, tuple(mods), need_seg=False)
        conv = _convert(image, name, seed=k)
        for c, m in enumerate(mods):
            ref = nib.load(str(p.files[m]))
            img = nib.Nifti1Image(conv[c], ref.affine, ref.header)
            img.set_data_dtype(np.float32)
            img.header.set_slope_inter(1, 0)
            nib.save(img, str(out / p.files[m].name))
        shutil.copy(p.files["seg"], out / p.files["seg"].name)
    return dst


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("name", list(CONVENTIONS))
def test_prepared_scan_is_the_same_in_every_convention(raw_dir: Path, name: str, config: str) -> None:
    cfg = CONFIGS[config]
    for p in discover(raw_dir)[:3]:
        image, _, _, spacing = load_patient(p, ("flair", "t1ce", "t2"), need_seg=False)
        want, got = prepare(image, cfg, spacing), prepare(_convert(image, name), cfg, spacing)
        np.testing.assert_array_equal(got.head.mask, want.head.mask)
        np.testing.assert_array_equal(got.head.tissue, want.head.tissue)
        assert got.box == want.box
        np.testing.assert_allclose(got.image, want.image, rtol=1e-4, atol=1e-4, err_msg=f"{p.case}, {name}")


def test_head_is_found_whatever_the_background() -> None:
    rng = np.random.default_rng(0)
    vol = np.zeros((1, 30, 30, 10), np.float32)
    vol[0, 8:22, 6:24, 2:9] = rng.uniform(50, 100, (14, 18, 7))
    vol[0, 14, 14, 5] = 0  # a dark voxel inside the brain stays brain: it is not connected to the outside
    want = np.zeros(vol.shape[1:], bool)
    want[8:22, 6:24, 2:9] = True
    for bg in (0.0, -3.19, 1000.0):
        head = find_head(np.where(want, vol, np.float32(bg)))
        np.testing.assert_array_equal(head.mask, want)
        assert head.background == (pytest.approx(bg),)
    noisy = np.where(want, vol, rng.normal(2.0, 0.3, vol.shape).astype(np.float32))
    np.testing.assert_array_equal(find_head(noisy).mask, want)  # Gaussian floor, specks beyond it dropped
    # A scan with no dominant border level (the head fills the frame) is all head.
    assert find_head(rng.uniform(1, 2, vol.shape).astype(np.float32)).mask.all()


def _cache_arrays(path: Path) -> list[np.ndarray]:
    return [a for s in cache.SPLITS for a in (*cache.open_arrays(path, s), cache.read_index(path, s)[1])]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["seed", "brats2d"])
def test_cache_is_the_same_in_every_convention(tmp_path: Path, config: str) -> None:
    cfg = CONFIGS[config]
    src = make_tree(tmp_path / "src", patients=4)
    want = tmp_path / "want.h5"
    preprocess(src, want, cfg, workers=1)
    for k, name in enumerate(CONVENTIONS):
        raw = _write_converted(src, tmp_path / f"raw{k}", name)
        got = tmp_path / f"got{k}.h5"
        assert preprocess(raw, got, cfg, workers=1).skipped == []
        for a, b in zip(_cache_arrays(got), _cache_arrays(want)):
            assert a.shape == b.shape, name
            # float16 storage: the same float32 value within one or two float16 steps
            np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2e-3, atol=2e-3,
                                       err_msg=name)


@pytest.fixture(scope="module")
def runs(raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny trained run of each protocol (seed, brats2d recipe)."""
    out = {}
    for name in ("seed", "brats2d"):
        root = tmp_path_factory.mktemp(f"conv-{name}")
        preprocess(raw_dir, root / "cache.h5", CONFIGS[name], workers=1)
        train_kw = {**TINY, **(RECIPES[name]["train"] if name != "seed" else {})}
        train_kw["epochs"] = 2
        train(root / "cache.h5", root / "run", TrainConfig(**train_kw), log=lambda m: None)
        out[name] = root / "run"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["seed", "brats2d"])
def test_prediction_is_the_same_in_every_convention(runs: dict[str, Path], raw_dir: Path, tmp_path: Path,
                                                    protocol: str) -> None:
    pred = load_predictor(runs[protocol], "best", "cpu")
    test = split_patients([p.case for p in discover(raw_dir)], (0.7, 0.15, 0.15), 42)["test"]
    case = test[0]
    image = load_patient(discover(raw_dir / case)[0], pred.prep_cfg.modalities, need_seg=False)[0]
    want = pred.volume(image)[0]
    assert want.max() > 0.05  # the model says something, so equality below is not that of two blanks
    for k, name in enumerate(CONVENTIONS):
        got = pred.volume(_convert(image, name, seed=k))[0]
        np.testing.assert_allclose(got, want, atol=2e-3, err_msg=name)
        a, b = got > 0.5, want > 0.5
        assert (a == b).mean() > 0.9999, name


@pytest.mark.slow
def test_predict_warns_when_a_scan_looks_unlike_the_training_scans(runs: dict[str, Path], raw_dir: Path,
                                                                   tmp_path: Path) -> None:
    from brats2d.cli.main import cli

    run = runs["brats2d"]
    pred = load_predictor(run, "best", "cpu")
    assert pred.profile is not None
    case = sorted(p.name for p in raw_dir.iterdir())[0]
    assert predict_case(pred, raw_dir / case, None)["ood"] == []  # its own kind of scan: no warning
    zs = _write_converted(raw_dir / case, tmp_path / "z", "zscored, background -3.19")
    flagged = predict_case(pred, zs / case, None)["ood"]
    assert len(flagged) == 1 and "background level -3.19" in flagged[0]
    # A 3 mm scan: its spacing is named (the model was trained on 1 mm voxels).
    coarse = tmp_path / "coarse" / case
    shutil.copytree(raw_dir / case, coarse)
    for f in coarse.glob("*.nii.gz"):
        im = nib.load(str(f))
        im.header.set_zooms((3.0, 3.0, 3.0))
        nib.save(nib.Nifti1Image(np.asarray(im.dataobj), np.diag([3.0, 3.0, 3.0, 1.0]), im.header), str(f))
    assert any(f.startswith("spacing 3x3x3") for f in predict_case(pred, coarse, None)["ood"])
    # The command prints one warning line per such patient and the metrics CSV names the properties.
    out = tmp_path / "pred"
    res = CliRunner().invoke(cli, ["predict", "--run-dir", str(run), str(raw_dir / case), str(zs / case),
                                   str(coarse), "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    warnings = [line for line in res.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all(case in w for w in warnings)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(bool(r["ood"]) for r in rows) == [False, True, True]
    assert "not for clinical use" in " ".join(res.output.split())


@pytest.mark.real
def test_real_scans_are_the_same_in_every_convention() -> None:
    """On real BraTS scans (one per site family, incl. the 16-bit TCIA10 case) every convention gives the
    same head and normalized image; a noise floor may swallow brain voxels no brighter than itself at
    the brain's edge (the 2013 scans have a few thousand of value 1), never more than 0.5 % of the head."""
    raw = real_dir()
    cases = ["Brats18_2013_3_1", "Brats18_CBICA_AQP_1", "Brats18_TCIA10_637_1"]
    for case in cases:
        image, _, _, spacing = load_patient(discover(raw / case)[0], ("flair", "t1ce", "t2"), need_seg=False)
        for config in ("seed", "brats2d"):
            want = prepare(image, CONFIGS[config], spacing)
            for name in CONVENTIONS:
                got = prepare(_convert(image, name), CONFIGS[config], spacing)
                differ = (got.head.mask != want.head.mask) | (got.head.tissue != want.head.tissue)
                both = got.head.tissue & want.head.tissue
                assert differ.sum() <= (0.005 * want.head.mask.sum() if name == "noise floor" else 0), (case, name)
                assert got.box == want.box or name == "noise floor"
                tol = 0.02 if name == "noise floor" else 1e-4  # stats over a head that lost its faintest voxels
                np.testing.assert_allclose(got.image[:, both], want.image[:, both], rtol=tol, atol=tol,
                                           err_msg=f"{case}, {config}, {name}")


@pytest.mark.real
def test_real_scans_raise_no_warning_and_a_zscored_one_does() -> None:
    raw = real_dir()
    patients = discover(raw)
    train_cases = set(split_patients([p.case for p in patients], (0.7, 0.15, 0.15), 42)["train"])
    cfg = CONFIGS["brats2d"]
    stats, zscored = {}, None
    for p in patients:
        image, _, _, spacing = load_patient(p, ("flair",), need_seg=False)
        stats[p.case] = prepare(image, cfg, spacing).stats
        if zscored is None:
            zscored = prepare(_convert(image, "zscored, background -3.19"), cfg, spacing).stats
    profile = Profile.of([s for c, s in stats.items() if c in train_cases])
    assert {c: check(s, profile) for c, s in stats.items() if check(s, profile)} == {}
    assert zscored is not None and [f.split(" (")[0] for f in check(zscored, profile)] == [
        "background level -3.19 of channel 0"]
