"""Batches straight from the memory-mapped cache: one fancy-index per batch, augmentation included.

An epoch is fully described by (seed, epoch): the shuffled order and every sample's transform are drawn
up front from ``default_rng([seed, epoch])``. The loader's state is therefore just (epoch, batch index):
resuming, or splitting batches across DataLoader workers, replays exactly the same stream. Under
torchrun each process takes a strided shard of that same plan (`EpochPlan.shard`).
"""

from __future__ import annotations

import dataclasses
import functools
import mmap
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from . import cache
from .config import PreprocessConfig
from .augment import (apply_batch, apply_blanks, apply_intensity, apply_spatial, draw_blanks, draw_codes, draw_intensity,
                      draw_spatial)


# Release mapped pages after this many gathered bytes. The kernel maps whole page-cache folios (up to
# MBs) around each touched slice, so the resident part of the map is many times the bytes gathered:
# at 1 MiB it stayed under ~30 MB in tests/test_loader.py, for a ~15% slower gather (still < 1% of a step).
RELEASE_EVERY_BYTES = 2**20


@dataclass(frozen=True)
class EpochPlan:
    """The order and transforms of one epoch over `n` slices."""

    order: np.ndarray  # (n,) int64 slice indices in visiting order
    codes: np.ndarray | None  # (n,) int64 transform codes, None without augmentation
    batch_size: int
    drop_last: bool
    gains: np.ndarray | None = None  # (n, 2) float32 (gamma, scale) of the image intensities, None: unchanged
    spatial: np.ndarray | None = None  # (n, 2) float32 (zoom, angle in radians) of image and mask, None: unchanged
    blanks: np.ndarray | None = None  # (n, M) bool modalities blanked (modality dropout), None: none

    @classmethod
    def make(cls, n: int, batch_size: int, seed: int, epoch: int, *, shuffle: bool = True,
             augment: bool = True, drop_last: bool = False,
             intensity: tuple[float, float, float] = (0.0, 0.0, 0.0),
             spatial: tuple[float, float, float] = (0.0, 0.0, 0.0),
             blank: tuple[float, int] = (0.0, 1)) -> "EpochPlan":
        """intensity: (p, gamma, scale) of `augment.draw_intensity`; spatial: (p, scale, rotate) of
        `augment.draw_spatial`; blank: (p, modalities) of `augment.draw_blanks`; all used only with
        augment=True."""
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n) if shuffle else np.arange(n)
        codes = draw_codes(rng, n) if augment else None
        gains = draw_intensity(rng, n, *intensity) if augment else None
        moves = draw_spatial(rng, n, *spatial) if augment else None
        blanks = draw_blanks(rng, n, blank[1], blank[0]) if augment else None
        return cls(order.astype(np.int64), codes, batch_size, drop_last, gains, moves, blanks)

    def __len__(self) -> int:
        n = len(self.order)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def shard(self, rank: int, world: int, *, pad: bool = True) -> "EpochPlan":
        """This rank's part of the epoch under DistributedDataParallel: positions rank, rank+world, ...

        Every rank builds the same global plan from (seed, epoch) and keeps a strided slice, like torch's
        DistributedSampler, so the data order is still a pure function of (seed, epoch, world) and the
        resume position (batch index) is the same on every rank. pad=True first wraps the order around
        to a multiple of `world` (the first few slices are seen twice) so that every rank runs the same
        number of steps: unequal step counts would deadlock DDP's gradient all-reduce. Use pad=False
        for evaluation, where duplicates would bias pooled metrics and no collective runs per batch.
        world == 1 returns the plan itself, unchanged.
        """
        if not 0 <= rank < world:
            raise ValueError(f"shard: rank {rank} is outside 0..{world - 1}")
        if world == 1:
            return self
        n = len(self.order)
        total = -(-n // world) * world if pad and n > 0 else n
        take = (np.arange(total) % max(n, 1))[rank::world]
        part = [None if a is None else a[take] for a in (self.codes, self.gains, self.spatial, self.blanks)]
        return EpochPlan(self.order[take], part[0], self.batch_size, self.drop_last, part[1], part[2], part[3])

    def batch(self, b: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None,
                                     np.ndarray | None]:
        """(indices, codes, gains, spatial, blanks) of batch b, indices sorted so the memmap is read forward."""
        sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
        idx = self.order[sl]
        srt = np.argsort(idx, kind="stable")
        return (idx[srt], *(None if a is None else a[sl][srt] for a in (self.codes, self.gains, self.spatial,
                                                                         self.blanks)))


class SliceCache:
    """Read access to one split of a cache, opened lazily once per process (fork- and spawn-safe).

    Checks on construction: the file exists, its format_version is current and the split exists.
    Pickling drops the open maps, so workers re-open the file themselves.
    """

    def __init__(self, path: str | os.PathLike, split: str):
        self.path, self.split = str(path), split
        self.meta = cache.read_meta(self.path)
        if split not in cache.SPLITS:
            raise cache.CacheError(f"{path}: no split {split!r} (choose from {', '.join(cache.SPLITS)})")
        self.n = self.meta.counts[split]
        self._arrays: tuple[Any, Any] | None = None
        self._pid = -1
        self._maps: list[mmap.mmap] = []
        self._since_release = 0  # bytes gathered since the mapped pages were last released

    def __len__(self) -> int:
        return self.n

    @functools.cached_property
    def channel_modality(self) -> tuple[int, ...]:
        """(C,) the index of the modality each image channel holds (PreprocessConfig.channel_modality of the
        cache's settings; settings it does not know, e.g. a benchmark's notes, are not its business)."""
        names = {f.name for f in dataclasses.fields(PreprocessConfig)}
        return PreprocessConfig(**{k: v for k, v in self.meta.config.items() if k in names}).channel_modality

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None, "_pid": -1, "_maps": [], "_since_release": 0}

    def arrays(self) -> tuple[Any, Any]:
        """(images (N, C, S, S), masks (N, K, S, S)) memmaps, opened once in this process."""
        if self._arrays is None or self._pid != os.getpid():
            images, masks = cache.open_arrays(self.path, self.split)
            self._maps = [a._mmap for a in (images, masks) if isinstance(a, np.memmap) and a._mmap is not None]
            # A plain ndarray view of the memmap skips np.memmap's per-index subclass overhead.
            images, masks = (np.asarray(a) if isinstance(a, np.memmap) else a for a in (images, masks))
            if images.shape[0] != masks.shape[0] or images.shape[2:] != masks.shape[2:]:
                raise cache.CacheError(f"{self.path}:/{self.split}: images {images.shape} and masks {masks.shape} disagree")
            self._arrays, self._pid = (images, masks), os.getpid()
        return self._arrays

    def release_pages(self) -> None:
        """Unmap the cache pages this process has touched from its RSS (they stay in the OS page cache).

        A memory map counts every page read into the process's resident set, so one epoch over a
        20 GB cache would show a 20 GB RSS (file-backed and reclaimable, but schedulers and OOM
        killers look at RSS). MADV_DONTNEED on a read-only file mapping just drops the page-table
        entries; the next read of such a page is a minor fault served from the page cache.
        """
        for m in self._maps:
            if hasattr(m, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
                m.madvise(mmap.MADV_DONTNEED)
        self._since_release = 0

    def index(self) -> tuple[np.ndarray, np.ndarray]:
        """(patient (N,) str, slice (N,) int32)."""
        return cache.read_index(self.path, self.split)

    def gather(self, idx: np.ndarray, codes: np.ndarray | None = None, gains: np.ndarray | None = None,
               spatial: np.ndarray | None = None, blanks: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, S, S) and masks (B, K, S, S) as float32 tensors for sorted `idx`, transformed by
        `codes` (both), then `spatial` (both), then `gains` and `blanks` (images only)."""
        images, masks = self.arrays()
        x, y = images[idx], masks[idx]
        self._since_release += x.nbytes + y.nbytes
        if self._since_release > RELEASE_EVERY_BYTES:
            self.release_pages()
        if codes is not None:
            x, y = apply_batch(x, codes), apply_batch(y, codes)
        # torch's float16/uint8 -> float32 conversion is vectorized; numpy's astype is ~15x slower here.
        xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
        if spatial is not None:
            xt, yt = apply_spatial(xt, yt, spatial)
        if gains is not None:
            xt = apply_intensity(xt, gains)
        if blanks is not None:
            xt = apply_blanks(xt, blanks, self.channel_modality)
        return xt, yt


class _EpochBatches(torch.utils.data.Dataset):
    """Map-style view of one epoch, item b = batch b, for torch's DataLoader workers."""

    def __init__(self, data: SliceCache, plan: EpochPlan):
        self.data, self.plan = data, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.gather(*self.plan.batch(b))


def iterate(data: SliceCache, plan: EpochPlan, start: int = 0, num_workers: int = 0,
            pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, masks) float32 tensors for batches start..len(plan)-1 of the plan.

    num_workers=0 gathers in this process (the fastest choice for the 96x96 cache: a batch costs
    tens of microseconds); > 0 uses DataLoader workers, which yield the identical batches in order.
    """
    if num_workers <= 0:
        for b in range(start, len(plan)):
            yield data.gather(*plan.batch(b))
        return
    loader = torch.utils.data.DataLoader(
        _EpochBatches(data, plan), batch_size=None, sampler=range(start, len(plan)), num_workers=num_workers,
        pin_memory=pin_memory, prefetch_factor=4, persistent_workers=False)
    yield from loader
