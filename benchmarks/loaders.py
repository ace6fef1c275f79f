"""The loaders bench_loader.py compares (one function per row: each returns plan -> batches), and what it
measures them with: the synthetic cache, the timing loop, a seed U-Net step and a full-epoch RSS check."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from brats2d import cache
from brats2d.augment import apply_batch
from brats2d.dataset import EpochPlan, SliceCache, iterate

SIZE, BLOCK = 96, 1024
ROWS = ("numpy-bound", "brats2d", "brats2d-torchthreads", "brats2d-2workers", "h5py-per-slice", "nifti-decode",
        "monai-cache")
Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def proc_mem() -> dict[str, float]:
    """VmRSS, RssAnon, RssFile, RssShmem of this process in MB (Linux /proc/self/status)."""
    with open("/proc/self/status") as f:
        rows = [ln.split() for ln in f]
    return {r[0][:-1]: int(r[1]) / 1024 for r in rows if r[0][:-1] in ("VmRSS", "RssAnon", "RssFile", "RssShmem")}


def write_cache(path: Path, n: int, seed: int = 0, repeat_block: bool = False) -> float:
    """A train-only cache of n random slices (float16 in [0, 1), masks 10 % ones) via CacheWriter; seconds."""
    t0, rng = time.perf_counter(), np.random.default_rng(seed)
    draw = lambda k: (rng.random((k, 1, SIZE, SIZE), np.float32).astype(np.float16),  # noqa: E731
                      (rng.random((k, 1, SIZE, SIZE), np.float32) > 0.9).astype(np.uint8))
    fixed, cases = draw(BLOCK) if repeat_block else None, {}
    with cache.CacheWriter(path, (1, SIZE, SIZE), 1, "float16") as w:
        for i in range(0, n, BLOCK):
            k, case = min(BLOCK, n - i), f"bench{i // BLOCK:05d}"
            img, msk = (fixed[0][:k], fixed[1][:k]) if fixed else draw(k)
            w.add("train", case, img, msk, np.arange(k))
            cases[case] = {"split": "train", "shape": [SIZE, SIZE, k], "spacing": [1.0, 1.0, 1.0], "n_slices": k}
        w.finish({"config": {"benchmark": "bench_loader", "size": SIZE, "dtype": "float16"}, "source": {},
                  "patients": cases, "splits": {"train": sorted(cases), "val": [], "test": []}})
    return time.perf_counter() - t0


def _augmented(x: np.ndarray, y: np.ndarray, codes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(apply_batch(x, codes)).float(), torch.from_numpy(apply_batch(y, codes)).float()


def numpy_loader(images: np.ndarray, masks: np.ndarray) -> Callable[[EpochPlan], Batches]:
    def gen(plan: EpochPlan) -> Batches:
        for b in range(len(plan)):
            idx, codes, *_ = plan.batch(b)
            yield _augmented(images[idx], masks[idx], codes)
    return gen


def h5py_loader(path: Path) -> Callable[[EpochPlan], Batches]:
    import h5py  # the baseline opens the file by hand on purpose; brats2d only reads it via brats2d.cache

    f = h5py.File(path, "r")
    ds_i, ds_m = f["train"]["images"], f["train"]["masks"]

    def gen(plan: EpochPlan) -> Batches:
        for b in range(len(plan)):
            idx, codes, *_ = plan.batch(b)
            yield _augmented(np.stack([ds_i[i] for i in idx]), np.stack([ds_m[i] for i in idx]), codes)
    return gen


def nifti_loader(raw: Path, seed: int = 0) -> Callable[[EpochPlan], Batches]:
    """Batches of (patient, z) drawn at random; every slice decodes its patient's volumes anew."""
    import nibabel as nib
    from brats2d.nifti import discover
    from brats2d.slicing import resize_slices

    pats, rng = discover(raw), np.random.default_rng(seed)

    def one(p: Any) -> tuple[np.ndarray, np.ndarray]:
        vol = np.asanyarray(nib.load(str(p.files["flair"])).dataobj).astype(np.float32)
        seg = np.asanyarray(nib.load(str(p.files["seg"])).dataobj)
        z = int(rng.integers(vol.shape[2]))
        lo, hi = float(vol.min()), float(vol.max())
        return (vol[None, :, :, z] - lo) / max(hi - lo, 1e-6), (seg[None, :, :, z] > 0)

    def gen(plan: EpochPlan) -> Batches:
        for b in range(len(plan)):
            _, codes, *_ = plan.batch(b)
            xs, ys = zip(*(one(pats[int(rng.integers(len(pats)))]) for _ in codes))
            yield _augmented(resize_slices(np.stack(xs), SIZE), resize_slices(np.stack(ys), SIZE, binary=True), codes)
    return gen


def monai_loader(images: np.ndarray, masks: np.ndarray, batch: int, seed: int = 0) -> Callable[[EpochPlan], Batches]:
    from monai.data import CacheDataset, DataLoader
    from monai.transforms import Compose, EnsureTyped, RandFlipd, RandRotate90d

    k = ["image", "label"]
    t = Compose([RandFlipd(k, prob=0.5, spatial_axis=0), RandFlipd(k, prob=0.5, spatial_axis=1),
                 RandRotate90d(k, prob=0.75, max_k=3), EnsureTyped(k, dtype=torch.float32, track_meta=False)])
    t.set_random_state(seed)
    ds = CacheDataset([{"image": images[i], "label": masks[i]} for i in range(len(images))], t, cache_rate=1.0,
                      num_workers=0, progress=False)

    def gen(plan: EpochPlan) -> Batches:
        for d in DataLoader(ds, batch_size=batch, sampler=plan.order.tolist(), num_workers=0):
            yield d["image"], d["label"]
    return gen


def timed(batches: Batches, budget_s: float, skip_first: bool) -> dict[str, float]:
    """Consume batches until exhausted or budget_s has passed; images/s (after the first batch if skip_first)."""
    it, items, first, t0 = iter(batches), 0, None, time.perf_counter()
    for x, y in it:
        assert x.dtype == torch.float32 and y.shape == x.shape
        if skip_first and first is None:
            first, t0 = time.perf_counter() - t0, time.perf_counter()
        else:
            items += len(x)
        if time.perf_counter() - t0 > budget_s and items:
            break
    dt = time.perf_counter() - t0
    if hasattr(it, "close"):
        it.close()  # shuts DataLoader workers down before the next row runs
    return {"images_per_s": items / dt if dt > 0 and items else float("nan"), "items": items, "seconds": dt,
            **({"first_batch_s": first} if skip_first else {})}


def step_ms(cache_path: str, batch: int, precision: str, warmup: int, steps: int) -> float:
    """ms per brats2d.train.train_step with TrainConfig defaults (base 32, depth 4, channels_last)."""
    from brats2d.config import TrainConfig
    from brats2d.train import setup, train_step

    cfg = TrainConfig(batch_size=batch, precision=precision)
    tr = setup(cache_path, cfg, "cpu")
    plan = EpochPlan.make(len(tr.train), batch, cfg.seed, 0)
    data = [tr.train.gather(*plan.batch(b % len(plan))) for b in range(warmup + steps)]
    for x, y in data[:warmup]:
        train_step(tr, cfg, x, y).item()
    t0 = time.perf_counter()
    for x, y in data[warmup:]:
        loss = train_step(tr, cfg, x, y)
    loss.item()
    return (time.perf_counter() - t0) / steps * 1000


def rss_epoch(cache_path: str, batch: int, threads: int) -> dict[str, Any]:
    """One full brats2d epoch over `cache_path` in this (fresh) process, sampling memory every 64 batches."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    data = SliceCache(cache_path, "train")  # reads the metadata (and may check the data's checksums) first
    plan, open_s = EpochPlan.make(len(data), batch, 0, 0), time.perf_counter() - t0
    base, t0 = proc_mem(), time.perf_counter()
    peak = dict(base)
    for b, (x, _) in enumerate(iterate(data, plan)):
        if b % 64 == 0 or b == len(plan) - 1:
            peak = {k: max(peak[k], v) for k, v in proc_mem().items()}
    secs = time.perf_counter() - t0
    end = proc_mem()
    del data, x
    after = proc_mem()
    return {"slices": len(plan.order), "batch": batch, "open_s": open_s, "seconds": secs,
            "images_per_s": len(plan.order) / secs,
            "baseline_mb": base, "peak_mb": peak, "end_mb": end, "after_release_mb": after,
            "max_growth_mb": {k: peak[k] - base[k] for k in base}}


def in_subprocess(fn: Callable, *args: Any) -> Any:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)
