"""--crop brain: one square box around the head per patient, the same in preprocess and predict."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from brats2d import cache
from brats2d.config import ConfigError, PreprocessConfig, TrainConfig
from brats2d.crop import box_for, brain_box, paste
from brats2d.head import find_head
from brats2d.inference import Predictor
from brats2d.preprocess import preprocess
from brats2d.slicing import normalize, resize_slices

from .conftest import SIZE
from .test_predict import Identity


def test_brain_box_is_the_centred_square_around_the_head() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        X, Y = rng.integers(20, 60, size=2)
        vol = np.zeros((2, X, Y, 5), np.float32)
        x0, y0 = rng.integers(0, X - 4), rng.integers(0, Y - 4)
        x1, y1 = rng.integers(x0 + 1, X + 1), rng.integers(y0 + 1, Y + 1)
        vol[1, x0:x1, y0:y1, rng.integers(5)] = 3.0  # the head may show in any channel and slice
        b = brain_box(vol.any(axis=0))
        side = b[1] - b[0]
        assert b[3] - b[2] == side == min(max(x1 - x0, y1 - y0), X, Y)  # square, as tight as it can be
        assert 0 <= b[0] and b[1] <= X and 0 <= b[2] and b[3] <= Y  # inside the frame
        if side == max(x1 - x0, y1 - y0):
            assert b[0] <= x0 and x1 <= b[1] and b[2] <= y0 and y1 <= b[3]  # holds every non-zero voxel
        if b[0] > 0 and b[1] < X:  # not pushed by the frame's edge: centred to within half a voxel
            assert abs((b[0] + b[1]) - (x0 + x1)) <= 1
    empty = np.zeros((1, 30, 20, 4), np.float32)
    assert brain_box(empty[0] != 0) == (0, 30, 0, 20) == box_for(np.ones(empty.shape[1:], bool), "none")
    a = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    out = paste(a, (1, 3, 2, 4), (5, 6))
    assert out.shape == (2, 5, 6) and out.sum() == a.sum() and (out[:, 1:3, 2:4] == a).all()
    with pytest.raises(ConfigError, match="crop"):
        PreprocessConfig(crop="skull")


def test_cache_holds_the_head_box_resized(raw_dir: Path, tiny_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "crop.h5"
    preprocess(raw_dir, out, PreprocessConfig(size=SIZE, crop="brain"), workers=1)
    meta, seed_meta = cache.read_meta(out), cache.read_meta(tiny_cache)
    images, masks = cache.open_arrays(out, "train")
    pats, zs = cache.read_index(out, "train")
    assert (zs == cache.read_index(tiny_cache, "train")[1]).all()  # the same slices, only framed differently
    smaller = 0
    for case in sorted(set(pats)):
        flair = np.asarray(nib.load(str(raw_dir / case / f"{case}_flair.nii.gz")).dataobj, np.float32)
        seg = np.asarray(nib.load(str(raw_dir / case / f"{case}_seg.nii.gz")).dataobj)
        x0, x1, y0, y1 = box = brain_box(find_head(flair[None]).mask)
        info = meta.patients[case]
        assert tuple(info["box"]) == box and info["shape"] == list(flair.shape)
        assert info["spacing"][0] == pytest.approx(seed_meta.patients[case]["spacing"][0] * (x1 - x0) / flair.shape[0])
        smaller += (x1 - x0) < flair.shape[0]
        rows = np.flatnonzero(pats == case)
        want_x = resize_slices(np.moveaxis(normalize(flair, "minmax")[x0:x1, y0:y1, zs[rows]], -1, 0)[:, None], SIZE)
        want_y = resize_slices(np.moveaxis(seg[x0:x1, y0:y1, zs[rows]] > 0, -1, 0)[:, None], SIZE, binary=True)
        np.testing.assert_allclose(images[rows].astype(np.float32), want_x, atol=1e-3)
        np.testing.assert_array_equal(masks[rows], want_y)
    assert smaller == len(set(pats))  # the phantoms' heads do not fill the frame: the crop did something


def test_prediction_goes_back_to_the_voxels_it_came_from(tmp_path: Path) -> None:
    vol = np.zeros((1, 40, 30, 6), np.float32)
    vol[0, 20:36, 2:18, 1:5] = 100.0  # the head: a 16 x 16 box, off-centre
    vol[0, 25:28, 10:15, 2:4] = 900.0  # > 0.5 after min-max: "tumour" for the identity model
    seen: list[tuple[int, ...]] = []

    class Shapes(Identity):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(x.shape))
            return super().forward(x)

    pred = Predictor([Shapes()], TrainConfig(channels_last=False, precision="fp32"), PreprocessConfig(size=16, crop="brain"),
                     torch.device("cpu"), "fp32", tmp_path, "")
    prob, _ = pred.volume(vol)
    assert seen == [(4, 1, 16, 16)]  # the 16 x 16 head at the model's size: no resampling at all
    np.testing.assert_array_equal(prob[0] > 0.5, vol[0] > 500)
    assert not prob[0, :20].any() and not prob[0, :, 18:].any()  # 0 outside the box


def test_cli_preprocess_crop(raw_dir: Path, tmp_path: Path) -> None:
    from brats2d.cli.main import cli

    out = tmp_path / "c.h5"
    res = CliRunner().invoke(cli, ["preprocess", str(raw_dir), "--out", str(out), "--size", str(SIZE),
                                   "--crop", "brain", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert cache.read_meta(out).config["crop"] == "brain"
