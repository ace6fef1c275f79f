"""Loader: augmentation alignment, determinism, resumable position, workers, refusal of bad caches."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from brats2d import cache
from brats2d.augment import apply_batch, apply_one, invert_one, transform_code
from brats2d.dataset import EpochPlan, SliceCache, iterate


def test_every_transform_moves_a_marked_pixel_identically() -> None:
    s = 8
    img = np.zeros((16, 2, s, s), np.float32)
    mask = np.zeros((16, 1, s, s), np.uint8)
    img[:, :, 1, 2] = 1.0
    mask[:, :, 1, 2] = 1
    codes = np.arange(16)
    ti, tm = apply_batch(img, codes), apply_batch(mask, codes)
    for c in range(16):
        assert ti[c].sum() == 2 and tm[c].sum() == 1
        (yi, xi), (ym, xm) = np.argwhere(ti[c, 0])[0], np.argwhere(tm[c, 0])[0]
        assert (yi, xi) == (ym, xm)
        assert (ti[c, 1] == ti[c, 0]).all()  # all channels move together
        np.testing.assert_array_equal(ti[c], apply_one(img[c], c))
        np.testing.assert_array_equal(invert_one(ti[c], c), img[c])
    # the 16 (hflip, vflip, k) draws cover exactly the 8 symmetries of the square
    assert len({apply_one(np.arange(16).reshape(4, 4), c).tobytes() for c in range(16)}) == 8
    assert transform_code(1, 0, 3) == 11
    # explicit semantics: hflip mirrors the last axis, k=1 is np.rot90
    a = np.arange(9).reshape(3, 3)
    np.testing.assert_array_equal(apply_one(a, transform_code(1, 0, 0)), a[:, ::-1])
    np.testing.assert_array_equal(apply_one(a, transform_code(0, 0, 1)), np.rot90(a))


def test_batches_and_transforms_follow_image_mask_pairs(tiny_cache: Path) -> None:
    data = SliceCache(tiny_cache, "train")
    images, masks = data.arrays()
    plan = EpochPlan.make(len(data), 4, seed=3, epoch=0)
    idx, codes, *_ = plan.batch(0)
    x, y = data.gather(idx, codes)
    assert x.dtype == torch.float32 and y.dtype == torch.float32 and x.shape[1:] == images.shape[1:]
    for j in range(len(idx)):
        np.testing.assert_array_equal(x[j].numpy(), apply_one(np.asarray(images[idx[j]], np.float32), codes[j]))
        np.testing.assert_array_equal(y[j].numpy(), apply_one(np.asarray(masks[idx[j]], np.float32), codes[j]))



def test_intensity_augmentation_changes_images_only_and_keeps_the_stream(tiny_cache: Path) -> None:
    data = SliceCache(tiny_cache, "train")
    images, masks = data.arrays()
    plain = EpochPlan.make(len(data), 4, seed=3, epoch=1)
    plan = EpochPlan.make(len(data), 4, seed=3, epoch=1, intensity=(0.5, 0.35, 0.25))
    assert plain.gains is None and plan.gains is not None and plan.gains.shape == (len(data), 2)
    # Switching it on draws after the order and the flips: the geometric stream is the seed's.
    np.testing.assert_array_equal(plain.order, plan.order)
    np.testing.assert_array_equal(plain.codes, plan.codes)
    gamma, scale = plan.gains[:, 0], plan.gains[:, 1]
    on = (gamma != 1) | (scale != 1)
    assert 0 < on.sum() < len(data)  # p = 0.5: some slices changed, some not
    assert np.all((gamma > np.exp(-0.35) - 1e-6) & (gamma < np.exp(0.35) + 1e-6))
    assert np.all((scale >= 0.75 - 1e-6) & (scale <= 1.25 + 1e-6))
    for b in range(len(plan)):
        idx, codes, gains, *_ = plan.batch(b)
        x, y = data.gather(idx, codes, gains)
        for j in range(len(idx)):
            geo = apply_one(np.asarray(images[idx[j]], np.float32), codes[j])
            want = gains[j, 1] * np.power(np.clip(geo, 0, None), gains[j, 0])
            np.testing.assert_allclose(x[j].numpy(), want, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(y[j].numpy(), apply_one(np.asarray(masks[idx[j]], np.float32), codes[j]))
    # Without augmentation (validation) nothing is drawn, whatever the intensity setting.
    assert EpochPlan.make(len(data), 4, 3, 1, augment=False, intensity=(1.0, 0.35, 0.25)).gains is None
    sharded = plan.shard(1, 2)
    np.testing.assert_array_equal(sharded.gains, plan.gains[np.arange(1, len(data) + len(data) % 2, 2) % len(data)])


def _zoom_rotate_reference(a: np.ndarray, zoom: float, angle: float) -> np.ndarray:
    """scipy's bilinear affine map of (C, S, S) about the slice centre, zeros outside: the definition
    `apply_spatial` (torch affine_grid/grid_sample) must agree with."""
    from scipy import ndimage

    c, s = np.cos(angle) / zoom, np.sin(angle) / zoom
    m = np.array([[c, s], [-s, c]])  # (row, col) of the output -> (row, col) of the input
    centre = np.full(2, (a.shape[-1] - 1) / 2)
    return np.stack([ndimage.affine_transform(ch.astype(np.float64), m, offset=centre - m @ centre, order=1,
                                              mode="grid-constant", cval=0.0) for ch in a])


def test_spatial_augmentation_moves_image_and_mask_together_and_keeps_the_stream(tiny_cache: Path) -> None:
    data = SliceCache(tiny_cache, "train")
    images, masks = data.arrays()
    plain = EpochPlan.make(len(data), 4, seed=5, epoch=2, intensity=(0.5, 0.35, 0.25))
    plan = EpochPlan.make(len(data), 4, seed=5, epoch=2, intensity=(0.5, 0.35, 0.25), spatial=(0.5, 0.3, 45.0))
    assert plain.spatial is None and plan.spatial is not None and plan.spatial.shape == (len(data), 2)
    for a, b in ((plain.order, plan.order), (plain.codes, plan.codes), (plain.gains, plan.gains)):
        np.testing.assert_array_equal(a, b)  # drawn last: order, flips and intensities are unchanged
    zoom, angle = plan.spatial[:, 0], plan.spatial[:, 1]
    on = (zoom != 1) | (angle != 0)
    assert 0 < on.sum() < len(data)
    assert np.all((zoom > np.exp(-0.3) - 1e-6) & (zoom < np.exp(0.3) + 1e-6))
    assert np.all(np.abs(angle) <= np.deg2rad(45.0) + 1e-6) and np.abs(angle).max() > np.deg2rad(20)
    moved = 0
    for b in range(len(plan)):
        idx, codes, _, spatial, _ = plan.batch(b)
        x, y = data.gather(idx, codes, None, spatial)
        for j in range(len(idx)):
            geo_x = apply_one(np.asarray(images[idx[j]], np.float32), codes[j])
            geo_y = apply_one(np.asarray(masks[idx[j]], np.float32), codes[j])
            if spatial[j, 0] == 1 and spatial[j, 1] == 0:  # not drawn: bit-identical to the seed's transform
                np.testing.assert_array_equal(x[j].numpy(), geo_x)
                np.testing.assert_array_equal(y[j].numpy(), geo_y)
                continue
            np.testing.assert_allclose(x[j].numpy(), _zoom_rotate_reference(geo_x, *spatial[j]), atol=1e-4)
            ref_y = _zoom_rotate_reference(geo_y, *spatial[j])
            clear = np.abs(ref_y - 0.5) > 1e-3  # a pixel interpolated to exactly 0.5 may round either way
            np.testing.assert_array_equal(y[j].numpy()[clear], (ref_y >= 0.5)[clear])
            assert set(np.unique(y[j].numpy())) <= {0.0, 1.0}
            moved += not np.array_equal(y[j].numpy(), geo_y)
    assert moved > 0  # the masks did move (the test is not vacuous)
    assert EpochPlan.make(len(data), 4, 5, 2, augment=False, spatial=(1.0, 0.3, 45.0)).spatial is None
    sharded = plan.shard(1, 2)
    np.testing.assert_array_equal(sharded.spatial, plan.spatial[np.arange(1, len(data) + len(data) % 2, 2) % len(data)])

def test_same_seed_same_stream_and_epochs_differ(tiny_cache: Path) -> None:
    data = SliceCache(tiny_cache, "train")
    a = [x for x, _ in iterate(data, EpochPlan.make(len(data), 4, 42, 0))]
    b = [x for x, _ in iterate(data, EpochPlan.make(len(data), 4, 42, 0))]
    c = [x for x, _ in iterate(data, EpochPlan.make(len(data), 4, 42, 1))]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))
    plan = EpochPlan.make(len(data), 4, 42, 0)
    assert sorted(plan.order.tolist()) == list(range(len(data)))  # a permutation: every slice once


def test_resume_position_continues_identically(tiny_cache: Path) -> None:
    data = SliceCache(tiny_cache, "train")
    plan = EpochPlan.make(len(data), 4, 42, 5)
    full = list(iterate(data, plan))
    rest = list(iterate(data, EpochPlan.make(len(data), 4, 42, 5), start=3))
    assert len(rest) == len(full) - 3
    assert all(torch.equal(u[0], v[0]) and torch.equal(u[1], v[1]) for u, v in zip(full[3:], rest))


@pytest.mark.parametrize("ctx", ["fork", "spawn"])
def test_workers_yield_the_same_batches(tiny_cache: Path, ctx: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.utils.data as tud

    real = tud.DataLoader

    def loader(*a, **kw):
        kw["multiprocessing_context"] = ctx
        return real(*a, **kw)

    monkeypatch.setattr(tud, "DataLoader", loader)
    data = SliceCache(tiny_cache, "train")
    plan = EpochPlan.make(len(data), 4, 42, 0)
    main = list(iterate(data, plan))
    data.arrays()  # opened in the parent: the children must reopen, not share the handle
    workers = list(iterate(data, plan, num_workers=2))
    assert len(main) == len(workers)
    assert all(torch.equal(u[0], v[0]) and torch.equal(u[1], v[1]) for u, v in zip(main, workers))


def test_wrong_version_and_missing_split_are_refused(tiny_cache: Path, tmp_path: Path) -> None:
    bad = tmp_path / "old.h5"
    shutil.copy(tiny_cache, bad)
    with h5py.File(bad, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(cache.CacheError, match="format_version 99"):
        SliceCache(bad, "train")
    with pytest.raises(cache.CacheError, match="no split"):
        SliceCache(tiny_cache, "holdout")
    with pytest.raises(cache.CacheError, match="no such cache"):
        SliceCache(tmp_path / "missing.h5", "train")


def test_chunked_cache_falls_back_to_h5py_with_warning(tiny_cache: Path, tmp_path: Path) -> None:
    chunked = tmp_path / "chunked.h5"
    shutil.copy(tiny_cache, chunked)
    with h5py.File(chunked, "r+") as f:
        for name in ("images", "masks"):
            data = f["train"][name][...]
            attrs = dict(f["train"][name].attrs)
            del f["train"][name]
            ds = f["train"].create_dataset(name, data=data, chunks=(1,) + data.shape[1:], compression="gzip")
            ds.attrs.update(attrs)
    ref = SliceCache(tiny_cache, "train")
    data = SliceCache(chunked, "train")
    with pytest.warns(UserWarning, match="chunked or compressed"):
        data.arrays()
    plan = EpochPlan.make(len(data), 4, 1, 0)
    assert all(torch.equal(u[0], v[0]) for u, v in zip(iterate(ref, plan), iterate(data, plan)))


def _mapped_rss_mb(path: Path) -> float:
    """Resident MB of this process's mappings of `path` (from /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if len(head) >= 5 and "-" in head[0]:  # a mapping's header line
                inside = head[-1] == str(path)
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total / 1024


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_an_epoch_keeps_the_mapped_cache_out_of_rss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import brats2d.dataset as ds

    n, size = 8000, 64  # 64 MB of float16 images + 32 MB of masks
    path = tmp_path / "big.h5"
    rng = np.random.default_rng(0)
    with cache.CacheWriter(path, (1, size, size), 1, "float16") as w:
        for i in range(0, n, 1000):
            w.add("train", f"p{i}", rng.random((1000, 1, size, size), np.float32), np.zeros((1000, 1, size, size)),
                  np.arange(1000))
        w.finish({"config": {}, "source": {}, "patients": {}, "splits": {"train": [], "val": [], "test": []}})
    data = ds.SliceCache(path, "train")
    plan = ds.EpochPlan.make(n, 16, 0, 0)
    peak = 0.0
    for b, (x, _) in enumerate(ds.iterate(data, plan)):
        if b % 25 == 0:
            peak = max(peak, _mapped_rss_mb(path))
    assert x.dtype == torch.float32
    assert 0 < peak < 45, f"{peak:.0f} MB of a 96 MB cache resident during an epoch"
    monkeypatch.setattr(ds, "RELEASE_EVERY_BYTES", 2**40)  # the control: without releases the map stays resident
    data.release_pages()
    for x, _ in ds.iterate(data, plan):
        pass
    assert _mapped_rss_mb(path) > 80
