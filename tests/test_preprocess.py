"""preprocess: slice selection, normalization, splits, bad input, atomicity, naming schemes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats2d import cache
from brats2d.config import ConfigError, PreprocessConfig
from brats2d.nifti import InputError, discover
from brats2d.preprocess import PreprocessError, preprocess, splits_path
from brats2d.splits import kfold, load_splits, split_patients

from .conftest import SIZE, TINY, make_tree, real_dir


def _all_index(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, list[int]] = {}
    for split in cache.SPLITS:
        pats, zs = cache.read_index(path, split)
        for p, z in zip(pats, zs):
            out.setdefault(p, []).append(int(z))
    return {p: np.array(sorted(z)) for p, z in out.items()}


def test_kept_slices_are_exactly_the_tumour_slices(raw_dir: Path, tiny_cache: Path) -> None:
    index = _all_index(tiny_cache)
    assert len(index) == 8
    for case, zs in index.items():
        seg = np.asarray(nib.load(str(raw_dir / case / f"{case}_seg.nii.gz")).dataobj)
        expected = np.flatnonzero((seg > 0).any(axis=(0, 1)))
        np.testing.assert_array_equal(zs, expected)


def test_layout_dtypes_and_normalization(tiny_cache: Path) -> None:
    meta = cache.read_meta(tiny_cache)
    assert meta.format_version == cache.FORMAT_VERSION
    assert meta.image_shape == (1, SIZE, SIZE) and meta.mask_channels == 1
    assert PreprocessConfig(**{**meta.config, "modalities": tuple(meta.config["modalities"])}) == PreprocessConfig(size=SIZE)
    for split in cache.SPLITS:
        images, masks = cache.open_arrays(tiny_cache, split)
        assert isinstance(images, np.memmap) and images.dtype == np.float16
        assert masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
        assert images.min() >= 0.0 and images.max() <= 1.0
    cache.verify(tiny_cache)


def test_resized_masks_lose_only_tiny_tumour_tips(raw_dir: Path, tiny_cache: Path) -> None:
    # Slices are chosen at native resolution (the seed's rule); a tumour tip a few voxels wide
    # can vanish at the cache size, and only such a tip may.
    voxels_per_pixel = (48 / SIZE) ** 2
    for split in cache.SPLITS:
        _, masks = cache.open_arrays(tiny_cache, split)
        pats, zs = cache.read_index(tiny_cache, split)
        empty = np.flatnonzero(~masks.reshape(len(masks), -1).any(axis=1))
        assert len(empty) <= 0.1 * len(masks)
        for i in empty:
            seg = np.asarray(nib.load(str(raw_dir / pats[i] / f"{pats[i]}_seg.nii.gz")).dataobj)
            area = int((seg[..., int(zs[i])] > 0).sum())
            assert 0 < area <= 4 * voxels_per_pixel, (pats[i], int(zs[i]), area)


def test_split_is_patient_level_sized_and_reproducible(tiny_cache: Path, raw_dir: Path, tmp_path: Path) -> None:
    meta = cache.read_meta(tiny_cache)
    sets = [set(meta.splits[s]) for s in cache.SPLITS]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert [len(s) for s in sets] == [6, 1, 1]  # 8 patients at 0.7/0.15/0.15
    for split in cache.SPLITS:
        pats, _ = cache.read_index(tiny_cache, split)
        assert set(pats) == set(meta.splits[split])
    cases = [p.case for p in discover(raw_dir)]
    assert split_patients(cases, (0.7, 0.15, 0.15), 42) == split_patients(cases[::-1], (0.7, 0.15, 0.15), 42)
    assert split_patients(cases, (0.7, 0.15, 0.15), 42) != split_patients(cases, (0.7, 0.15, 0.15), 7)
    assert [len(v) for v in split_patients([f"p{i}" for i in range(34)], (0.7, 0.15, 0.15), 42).values()] == [24, 5, 5]
    # the same split again from the saved file, with a different seed that must be ignored
    other = tmp_path / "other.h5"
    preprocess(raw_dir, other, PreprocessConfig(size=SIZE, seed=7), workers=1, splits_file=splits_path(tiny_cache))
    assert cache.read_meta(other).splits == meta.splits
    assert load_splits(splits_path(other)) == load_splits(splits_path(tiny_cache))


def test_kfold_partitions_patients() -> None:
    folds = kfold([f"p{i}" for i in range(29)], 5, 0)
    assert sorted(sum(folds, [])) == sorted(f"p{i}" for i in range(29))
    assert [len(f) for f in folds] == [6, 6, 6, 6, 5]


def test_up_to_date_and_force(raw_dir: Path, tiny_cache: Path) -> None:
    again = preprocess(raw_dir, tiny_cache, PreprocessConfig(size=SIZE), workers=1)
    assert again.up_to_date
    other = preprocess(raw_dir, tiny_cache.with_name("forced.h5"), PreprocessConfig(size=SIZE), workers=1, force=True)
    assert not other.up_to_date


def test_multimodal_region_all_and_empty_slices(raw_dir: Path, tmp_path: Path) -> None:
    cfg = PreprocessConfig(size=SIZE, modalities=("flair", "t1ce"), region="all", empty_slices=0.5, norm="percentile")
    out = tmp_path / "mm.h5"
    preprocess(raw_dir, out, cfg, workers=2)
    meta = cache.read_meta(out)
    assert meta.image_shape == (2, SIZE, SIZE) and meta.mask_channels == 3
    images, masks = cache.open_arrays(out, "train")
    assert (masks[:, 2] <= masks[:, 1]).all() and (masks[:, 1] <= masks[:, 0]).all()  # ET in TC in WT
    has_tumour = masks[:, 0].reshape(len(masks), -1).any(axis=1)
    assert (~has_tumour).sum() > 0  # tumour-free brain slices were kept too
    assert images.min() >= 0 and images.max() <= 1


def test_brats2023_naming(tmp_path: Path) -> None:
    raw = make_tree(tmp_path / "raw23", patients=4, naming="2023")
    assert all(p.naming == "2023" for p in discover(raw))
    out = tmp_path / "c23.h5"
    preprocess(raw, out, PreprocessConfig(size=SIZE, region="et"), workers=1)
    assert sum(cache.read_meta(out).counts.values()) > 0


def test_not_brats_like_folder(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("hi")
    with pytest.raises(Exception, match="not a BraTS-like folder"):
        preprocess(tmp_path, tmp_path / "c.h5", PreprocessConfig(size=SIZE))


def _case(raw: Path, i: int) -> tuple[str, Path]:
    case = sorted(p.name for p in raw.iterdir())[i]
    return case, raw / case


def _damage(raw: Path) -> dict[str, str]:
    """Damage six patients in six different ways; returns case -> expected words in the reason."""
    expect = {}
    case, d = _case(raw, 0)  # truncated gzip
    f = d / f"{case}_flair.nii.gz"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    expect[case] = "cannot read NIfTI"
    case, d = _case(raw, 1)  # missing seg
    (d / f"{case}_seg.nii.gz").unlink()
    expect[case] = "missing seg"
    case, d = _case(raw, 2)  # shape mismatch
    img = nib.load(str(d / f"{case}_seg.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-2], img.affine), str(d / f"{case}_seg.nii.gz"))
    expect[case] = "shape"
    case, d = _case(raw, 3)  # NaN voxels in a float FLAIR
    img = nib.load(str(d / f"{case}_flair.nii.gz"))
    a = np.asarray(img.dataobj).astype(np.float32)
    a[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(a, img.affine), str(d / f"{case}_flair.nii.gz"))
    expect[case] = "NaN"
    case, d = _case(raw, 4)  # constant volume
    img = nib.load(str(d / f"{case}_flair.nii.gz"))
    nib.save(nib.Nifti1Image(np.full(img.shape, 7, np.int16), img.affine), str(d / f"{case}_flair.nii.gz"))
    expect[case] = "constant"
    case, d = _case(raw, 5)  # no tumour
    img = nib.load(str(d / f"{case}_seg.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), str(d / f"{case}_seg.nii.gz"))
    expect[case] = "no tumour"
    return expect


def test_bad_patients_are_skipped_with_reasons(raw_copy: Path, tmp_path: Path) -> None:
    expect = _damage(raw_copy)
    out = tmp_path / "c.h5"
    s = preprocess(raw_copy, out, PreprocessConfig(size=SIZE), workers=2)
    reasons = dict(s.skipped)
    assert set(reasons) == set(expect)
    for case, words in expect.items():
        assert words in reasons[case] and case in reasons[case], reasons[case]
    assert set(cache.read_meta(out).patients) == {p.name for p in raw_copy.iterdir()} - set(expect)


def test_strict_refuses_and_writes_nothing(raw_copy: Path, tmp_path: Path) -> None:
    _damage(raw_copy)
    out = tmp_path / "c.h5"
    with pytest.raises(PreprocessError, match="--strict"):
        preprocess(raw_copy, out, PreprocessConfig(size=SIZE), workers=1, strict=True)
    assert not out.exists() and not list(tmp_path.glob(".c.h5*"))


def test_interrupted_run_leaves_no_cache(raw_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    seen = []

    def boom(case: str) -> None:
        seen.append(case)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        preprocess(raw_dir, out, PreprocessConfig(size=SIZE), workers=1, on_patient=boom)
    assert not out.exists() and not list(tmp_path.glob(".c.h5*"))


def test_config_errors() -> None:
    for bad in (dict(size=-1), dict(split=(0.5, 0.5, 0.5)), dict(modalities=("t3",)), dict(region="xx"),
                dict(empty_slices=2.0), dict(norm="z-score")):
        with pytest.raises(ConfigError):
            PreprocessConfig(**bad)


def test_real_patients_slice_counts(tmp_path: Path) -> None:
    real = real_dir()
    raw = tmp_path / "real"
    raw.mkdir()
    cases = sorted(p.name for p in real.iterdir() if p.is_dir())[:2]
    for c in cases:
        (raw / c).symlink_to(real / c)
    out = tmp_path / "real.h5"
    preprocess(raw, out, PreprocessConfig(), workers=2)
    index = _all_index(out)
    for c in cases:
        seg = np.asarray(nib.load(str(real / c / f"{c}_seg.nii.gz")).dataobj)
        np.testing.assert_array_equal(index[c], np.flatnonzero((seg > 0).any(axis=(0, 1))))


def test_context_stacks_neighbouring_slices_edges_repeated(raw_dir: Path, tiny_cache: Path, tmp_path: Path) -> None:
    from brats2d.slicing import with_context

    vol = np.zeros((2, 3, 4, 5), np.float32)
    for c in range(2):
        for z in range(5):
            vol[c, ..., z] = 10 * c + z
    x = with_context(vol, np.array([0, 2, 4]), 1)
    assert x.shape == (3, 6, 3, 4)  # modality-major: flair z-1, z, z+1, then t1ce z-1, z, z+1
    assert x[:, :, 0, 0].tolist() == [[0, 0, 1, 10, 10, 11], [1, 2, 3, 11, 12, 13], [3, 4, 4, 13, 14, 14]]
    np.testing.assert_array_equal(with_context(vol, np.array([2, 3]), 0), np.moveaxis(vol[..., 2:4], -1, 0))
    # The 2.5D cache: three channels per slice, the middle one exactly the 2D cache's slice.
    out = tmp_path / "ctx.h5"
    preprocess(raw_dir, out, PreprocessConfig(size=SIZE, context=1), workers=1)
    assert cache.read_meta(out).image_shape == (3, SIZE, SIZE)
    for split in cache.SPLITS:
        assert (cache.read_index(out, split)[1] == cache.read_index(tiny_cache, split)[1]).all()
        (img, masks), (img2d, masks2d) = cache.open_arrays(out, split), cache.open_arrays(tiny_cache, split)
        np.testing.assert_array_equal(img[:, 1:2], img2d)
        np.testing.assert_array_equal(masks, masks2d)
        assert not np.array_equal(img[:, 0], img[:, 1])  # the neighbours are other slices


def test_mirror_reflects_each_channel_about_the_brain_centre(raw_copy: Path, tiny_cache: Path, tmp_path: Path) -> None:
    from brats2d.slicing import with_mirror

    vol = np.zeros((2, 10, 3, 2), np.float32)
    vol[:, 3:8] = np.arange(3, 8, dtype=np.float32)[None, :, None, None] + np.array([0, 100])[:, None, None, None]
    out = with_mirror(vol, (vol != 0).any(axis=0))
    assert out.shape == (4, 10, 3, 2)
    np.testing.assert_array_equal(out[:2], vol)  # the channels themselves come first, untouched
    # The brain spans x 3..7 (centre 5, off the frame's centre 4.5): x -> 10 - x inside it, 0 outside.
    assert out[2, :, 0, 0].tolist() == [0, 0, 0, 7, 6, 5, 4, 3, 0, 0]
    assert out[3, :, 0, 0].tolist() == [0, 0, 0, 107, 106, 105, 104, 103, 0, 0]
    assert PreprocessConfig(modalities=("flair", "t1ce"), mirror=True, context=1).in_channels == 12
    # The cache: two channels per slice, the first exactly the plain cache's slice, the second its reflection.
    path = tmp_path / "mirror.h5"
    preprocess(raw_copy, path, PreprocessConfig(size=SIZE, mirror=True), workers=1)
    assert cache.read_meta(path).image_shape == (2, SIZE, SIZE)
    img, _ = cache.open_arrays(path, "train")
    img2d, _ = cache.open_arrays(tiny_cache, "train")
    np.testing.assert_array_equal(img[:, :1], img2d)
    assert not np.array_equal(img[:, 0], img[:, 1])
    # A scan whose first array axis is not left-right cannot be mirrored: skipped with the file named.
    case = sorted(p.name for p in raw_copy.iterdir())[0]
    flair = raw_copy / case / f"{case}_flair.nii.gz"
    for f in (raw_copy / case).glob("*.nii.gz"):  # every file alike, so only the orientation is wrong
        im = nib.load(str(f))
        nib.save(nib.Nifti1Image(np.asarray(im.dataobj), im.affine[:, [1, 0, 2, 3]]), str(f))  # axis 0: anterior-posterior
    summary = preprocess(raw_copy, tmp_path / "m2.h5", PreprocessConfig(size=SIZE, mirror=True), workers=1, force=True)
    reasons = dict(summary.skipped)
    assert case in reasons and str(flair) in reasons[case] and "left-right" in reasons[case]
    assert preprocess(raw_copy, tmp_path / "m3.h5", PreprocessConfig(size=SIZE), workers=1).skipped == []


def test_a_cache_written_before_a_setting_existed_is_still_up_to_date(raw_dir: Path, tmp_path: Path) -> None:
    import h5py

    out = tmp_path / "old.h5"
    preprocess(raw_dir, out, PreprocessConfig(size=SIZE), workers=1)
    with h5py.File(out, "r+") as f:  # as brats2d wrote it before `context` existed
        config = json.loads(f.attrs["config"])
        del config["context"]
        f.attrs["config"] = json.dumps(config)
    assert cache.read_meta(out).config["context"] == 0
    assert preprocess(raw_dir, out, PreprocessConfig(size=SIZE), workers=1).up_to_date


def test_zscore_uses_brain_voxels_only_and_keeps_background_zero(raw_dir: Path, tmp_path: Path) -> None:
    from brats2d.config import TrainConfig
    from brats2d.slicing import normalize
    from brats2d.train import train

    rng = np.random.default_rng(0)
    vol = np.zeros((20, 20, 10), np.float32)
    vol[4:16, 4:16, 2:8] = rng.gamma(4.0, 100.0, (12, 12, 6)).astype(np.float32) + 1
    out = normalize(vol, "zscore")
    brain = vol != 0
    assert abs(out[brain].mean()) < 1e-5 and abs(out[brain].std() - 1) < 1e-5 and not out[~brain].any()
    # Scale-free: a site that stores 20x the values gives the same input.
    np.testing.assert_allclose(normalize(vol * 20, "zscore"), out, atol=1e-5)
    with pytest.raises(InputError, match="constant volume inside the head"):
        normalize(np.where(brain, np.float32(7), np.float32(0)), "zscore", name="x.nii.gz")
    out_cache = tmp_path / "z.h5"
    preprocess(raw_dir, out_cache, PreprocessConfig(size=SIZE, norm="zscore"), workers=1)
    images, _ = cache.open_arrays(out_cache, "train")
    assert images.min() < 0 < images.max()  # z-scores, not [0, 1]
    with pytest.raises(ConfigError, match="intensity_p"):  # gamma on negative values would be meaningless
        train(out_cache, tmp_path / "run", TrainConfig(**{**TINY, "intensity_p": 0.5}), log=lambda m: None)
