"""Multi-view slices (`views`): coronal and sagittal training slices, and fused prediction."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from brats2d import cache
from brats2d.config import ConfigError, PreprocessConfig, TrainConfig
from brats2d.inference import Predictor
from brats2d.predict import predict
from brats2d.preprocess import preprocess
from brats2d.head import Head
from brats2d.slicing import Prepared, resize_slices
from brats2d.views import VIEWS, from_view, to_view

from .conftest import SIZE, experiment_script, make_tree
from .test_predict import Identity, mask_as_flair


def test_planes_are_the_right_slices_padded_square_and_invert() -> None:
    a = np.random.default_rng(0).random((2, 10, 12, 7)).astype(np.float32)
    cor, sag = to_view(a, "coronal"), to_view(a, "sagittal")
    assert to_view(a, "axial") is a
    assert cor.shape == (2, 10, 10, 12) and sag.shape == (2, 12, 12, 10)
    # coronal slice y is a[:, :, y, :] (X by Z), Z zero-padded 1 before and 2 after to 10
    np.testing.assert_array_equal(cor[:, :, 1:8, 5], a[:, :, 5, :])
    assert not cor[:, :, [0, 8, 9], :].any()
    # sagittal slice x is a[:, x, :, :] (Y by Z), Z padded 2 + 3 to 12
    np.testing.assert_array_equal(sag[:, :, 2:9, 3], a[:, 3, :, :])
    assert not sag[:, :, [0, 1, 9, 10, 11], :].any()
    for v in VIEWS:
        np.testing.assert_array_equal(from_view(to_view(a, v), v, (10, 12, 7)), a)
    with pytest.raises(ValueError, match="unknown plane 'oblique'"):
        to_view(a, "oblique")


def test_views_setting_is_checked() -> None:
    assert PreprocessConfig(views=["axial", "sagittal"]).views == ("axial", "sagittal")
    for bad, msg in [(("coronal",), "including axial"), (("axial", "axial"), "distinct"),
                     (("axial", "oblique"), "unknown plane 'oblique'")]:
        with pytest.raises(ConfigError, match=msg):
            PreprocessConfig(views=bad)
    with pytest.raises(ConfigError, match="context 0 and crop none"):
        PreprocessConfig(views=("axial", "coronal"), context=1)
    with pytest.raises(ConfigError, match="context 0 and crop none"):
        PreprocessConfig(views=("axial", "coronal"), crop="brain")


def test_training_patients_get_every_plane_val_and_test_stay_axial(raw_dir: Path, tmp_path: Path) -> None:
    base = dict(size=SIZE, empty_slices=0.5, norm="zscore")
    ax, mv = tmp_path / "axial.h5", tmp_path / "multi.h5"
    preprocess(raw_dir, ax, PreprocessConfig(**base), workers=1)
    preprocess(raw_dir, mv, PreprocessConfig(**base, views=VIEWS), workers=1)
    meta = cache.read_meta(mv)
    for split in ("val", "test"):  # byte for byte the axial-only cache
        for a, b in zip(cache.open_arrays(ax, split), cache.open_arrays(mv, split)):
            np.testing.assert_array_equal(a, b)
    pats_ax, z_ax = cache.read_index(ax, "train")
    pats, zs = cache.read_index(mv, "train")
    img_ax, masks_ax = cache.open_arrays(ax, "train")
    img, masks = cache.open_arrays(mv, "train")
    for case in meta.splits["train"]:
        counts = meta.patients[case]["views"]
        assert list(counts) == list(VIEWS)
        rows = np.flatnonzero(pats.astype(str) == case)
        assert len(rows) == sum(counts.values()) == meta.patients[case]["n_slices"]
        # the axial slices first, exactly those of the axial-only cache (same seeded empty slices)
        n = counts["axial"]
        rows_ax = np.flatnonzero(pats_ax.astype(str) == case)
        np.testing.assert_array_equal(zs[rows[:n]], z_ax[rows_ax])
        np.testing.assert_array_equal(img[rows[:n]], img_ax[rows_ax])
        # then each plane's tumour slices (and half its tumour-free brain slices), masks as resized planes
        seg = np.asarray(nib.load(str(raw_dir / case / f"{case}_seg.nii.gz")).dataobj) > 0
        start = n
        for view in ("coronal", "sagittal"):
            sel = rows[start:start + counts[view]]
            planes = to_view(seg[None], view)[0]  # (H, W, D)
            tumour = np.flatnonzero(planes.any(axis=(0, 1)))
            assert set(tumour) <= set(zs[sel]) and len(zs[sel]) > len(tumour)
            expected = resize_slices(np.moveaxis(planes[..., zs[sel]], -1, 0)[:, None], SIZE, binary=True)
            np.testing.assert_array_equal(masks[sel], expected)
            start += counts[view]


def test_fused_prediction_averages_the_planes_and_finds_the_tumour(tmp_path: Path) -> None:
    """A 'model' that answers each slice with its row coordinate (0..1) tells the planes apart: rows are
    x in axial and coronal slices and y in sagittal ones, so the fused volume is (2x + y) / 3 (scaled).
    An identity model then finds a mask-as-FLAIR tumour through the real resize path."""
    vol = np.ones((1, 16, 16, 10), np.float32)
    every = np.ones(vol.shape[1:], bool)
    whole = Prepared(vol, Head(every, every, (0.0,), (0.0,)), (0, 16, 0, 16), None)  # type: ignore[arg-type]

    class Rows(Predictor):
        def slices(self, x: np.ndarray, **kw: object) -> tuple[np.ndarray, None]:
            rows = np.linspace(0, 1, x.shape[-2], dtype=np.float32)[:, None]
            return np.broadcast_to(rows, (len(x), 1) + x.shape[-2:]).copy(), None

    x, y = np.meshgrid(np.arange(16) / 15, np.arange(16) / 15, indexing="ij")
    for views, expected in ((("axial",), x), (VIEWS, (2 * x + y) / 3), (("axial", "sagittal"), (x + y) / 2)):
        pred = Rows([], TrainConfig(), PreprocessConfig(size=16, views=views), torch.device("cpu"), "fp32", tmp_path, "")
        p, _ = pred.volume_prepared(whole)
        assert p.shape == (1, 16, 16, 10)
        np.testing.assert_allclose(p[0], np.repeat(expected[..., None], 10, axis=-1), atol=1e-6, err_msg=str(views))
    # a multi-view run predicts along fewer planes when asked (the plane ablation)
    p, _ = pred.volume_prepared(whole, views=("sagittal",))
    np.testing.assert_allclose(p[0], np.repeat(y[..., None], 10, axis=-1), atol=1e-6)
    with pytest.raises(ValueError, match="views: need planes"):
        pred.volume_prepared(whole, views=("oblique",))

    raw = make_tree(tmp_path / "raw", patients=2, shape=(64, 64, 20))
    mask_as_flair(raw)
    pred = Predictor([Identity()], TrainConfig(channels_last=False, precision="fp32"), PreprocessConfig(size=48, views=VIEWS),
                     torch.device("cpu"), "fp32", tmp_path, "")
    rows, errors = predict(pred, [raw], tmp_path / "out", threshold=0.5)
    assert not errors and len(rows) == 2
    for r in rows:
        assert r["regions"]["wt"]["dice"] > 0.9, r


def test_cli_preprocess_takes_views(raw_dir: Path, tmp_path: Path) -> None:
    from brats2d.cli.main import cli

    out = tmp_path / "c.h5"
    res = CliRunner().invoke(cli, ["preprocess", str(raw_dir), "--out", str(out), "--size", str(SIZE), "--workers", "1",
                                   "--views", "axial,sagittal"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert cache.read_meta(out).config["views"] == ["axial", "sagittal"]
    res = CliRunner().invoke(cli, ["preprocess", str(raw_dir), "--out", str(tmp_path / "d.h5"), "--views", "coronal"])
    assert res.exit_code != 0 and "including axial" in res.output


def test_multi_view_crossval_and_its_plane_ablation(raw_dir: Path, tmp_path: Path) -> None:
    from brats2d.cv.crossval import crossval

    from .conftest import TINY

    out = tmp_path / "cv"
    over = {"preprocess": {"size": SIZE, "views": list(VIEWS)}, "train": {**TINY, "epochs": 2, "lr": 3e-3},
            "predict": {"keep_largest": True}}
    summary = crossval(raw_dir, out, folds=2, seed=42, recipe="seed", overrides=over, include_test=True,
                       device="cpu", workers=1, log=lambda m: None)
    assert summary["complete"]
    res = experiment_script("view_ablation").main([str(out), "--raw", str(raw_dir), "--json", str(tmp_path / "va.json")])
    assert list(res["summary"]) == ["axial", "coronal", "sagittal", "axial+coronal", "axial+sagittal",
                                    "coronal+sagittal", "axial+coronal+sagittal"]
    # the fused column is what crossval scored; single planes are other predictions
    want = {p["patient"]: p["dice"] for p in summary["regions"]["wt"]["per_patient"]}
    assert {r["patient"]: r["dice"]["axial+coronal+sagittal"] for r in res["patients"]} == pytest.approx(want, abs=1e-9)
    assert any(r["dice"]["axial"] != r["dice"]["sagittal"] for r in res["patients"])
    f = res["fused_minus_first"]
    assert f["first"] == "axial" and f["better"] + f["worse"] <= len(want)
    # an axial-only crossval has nothing to take apart
    plain = tmp_path / "plain"
    crossval(raw_dir, plain, folds=2, seed=42, recipe="seed", overrides={**over, "preprocess": {"size": SIZE}},
             include_test=True, device="cpu", workers=1, log=lambda m: None, fold=0)
    with pytest.raises(SystemExit):
        experiment_script("view_ablation").main([str(plain), "--raw", str(raw_dir)])
