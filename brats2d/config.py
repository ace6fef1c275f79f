"""Every setting of the pipeline as a frozen dataclass, with the seed protocol as the default.

Configs are saved as JSON beside every cache and run, and inside every checkpoint, so a result can
always be traced back to the exact settings that produced it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from .views import VIEWS

MODALITIES = ("flair", "t1", "t1ce", "t2")
REGIONS = ("wt", "tc", "et", "all")
NORMS = ("minmax", "percentile", "zscore")
LOSSES = ("bce", "dice", "bce+dice", "focal", "dice+focal")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
NORM_LAYERS = ("batch", "instance", "group")  # the layer after each convolution (brats2d.model.norm_layer)
CACHE_DTYPES = ("float16", "float32")
CROPS = ("none", "brain")  # none: the whole frame (the seed); brain: a square around the head (brats2d/crop.py)
CHECKPOINTS = ("best", "latest", "best+latest")  # which model(s) of a run predict: best+latest averages both


class ConfigError(ValueError):
    """A setting has a value that cannot work; the message names the setting and the value."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class PreprocessConfig:
    """How raw BraTS volumes become the HDF5 slice cache.

    Defaults are the seed protocol: FLAIR only, per-volume min-max to [0, 1], 96x96 axial slices,
    whole tumour (label > 0), tumour slices only, patient-level 70/15/15 split with seed 42.
    """

    modalities: tuple[str, ...] = ("flair",)
    size: int = 96
    region: str = "wt"
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 42
    empty_slices: float = 0.0  # fraction of tumour-free brain slices also kept (seeded)
    norm: str = "minmax"
    percentile: tuple[float, float] = (0.5, 99.5)  # used by norm="percentile", over brain voxels
    dtype: str = "float16"  # image storage; see docs/cache-format.md for the measurement
    context: int = 0  # axial neighbours on each side stacked as extra input channels (2.5D); 0 = 2D, the seed
    crop: str = "none"  # brain: resize a square box around the head instead of the whole frame
    views: tuple[str, ...] = ("axial",)  # planes the train split's slices come from; predict fuses them (brats2d/views.py)
    mirror: bool = False  # also feed each modality reflected left-right about the brain's centre (brats2d/slicing.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))
        object.__setattr__(self, "split", tuple(float(s) for s in self.split))
        object.__setattr__(self, "percentile", tuple(float(p) for p in self.percentile))
        object.__setattr__(self, "views", tuple(self.views))
        _check(len(self.modalities) > 0, "modalities: at least one modality is needed")
        for m in self.modalities:
            _check(m in MODALITIES, f"modalities: unknown modality {m!r} (choose from {', '.join(MODALITIES)})")
        _check(len(set(self.modalities)) == len(self.modalities), f"modalities: duplicate in {self.modalities}")
        _check(8 <= self.size <= 1024, f"size: {self.size} is outside 8..1024")
        _check(self.region in REGIONS, f"region: unknown region {self.region!r} (choose from {', '.join(REGIONS)})")
        _check(len(self.split) == 3, f"split: need three fractions train,val,test, got {self.split}")
        _check(all(s >= 0 for s in self.split), f"split: fractions must be >= 0, got {self.split}")
        _check(abs(sum(self.split) - 1.0) < 1e-6, f"split: fractions must sum to 1, got {self.split} (sum {sum(self.split):.3f})")
        _check(self.split[0] > 0, "split: the train fraction must be > 0")
        _check(0.0 <= self.empty_slices <= 1.0, f"empty_slices: {self.empty_slices} is outside 0..1")
        _check(self.norm in NORMS, f"norm: unknown normalization {self.norm!r} (choose from {', '.join(NORMS)})")
        for v in self.views:
            _check(v in VIEWS, f"views: unknown plane {v!r} (choose from {', '.join(VIEWS)})")
        _check(len(self.views) > 0 and len(set(self.views)) == len(self.views) and "axial" in self.views,
               f"views: need distinct planes including axial (val/test slices are axial), got {self.views}")
        _check(self.views == ("axial",) or (self.context == 0 and self.crop == "none"),
               f"views: coronal/sagittal planes work with context 0 and crop none, got context {self.context}, crop {self.crop!r}")
        lo, hi = self.percentile
        _check(0 <= lo < hi <= 100, f"percentile: need 0 <= low < high <= 100, got {self.percentile}")
        _check(self.dtype in CACHE_DTYPES, f"dtype: {self.dtype!r} (choose from {', '.join(CACHE_DTYPES)})")
        _check(0 <= self.context <= 8, f"context: {self.context} neighbouring slices per side is outside 0..8")
        _check(self.crop in CROPS, f"crop: unknown crop {self.crop!r} (choose from {', '.join(CROPS)})")

    @property
    def out_channels(self) -> int:
        """Mask channels: 3 for region 'all' (WT, TC, ET as in BraTS), else 1."""
        return 3 if self.region == "all" else 1

    @property
    def in_channels(self) -> int:
        """Image channels: each modality (then, with mirror, each reflected modality) at z - context ..
        z + context, channel-major."""
        return len(self.modalities) * (2 if self.mirror else 1) * (2 * self.context + 1)


@dataclass(frozen=True)
class TrainConfig:
    """How a U-Net is trained from a cache. Defaults are the seed protocol."""

    epochs: int = 10
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "none"  # none | cosine
    loss: str = "bce"
    focal_gamma: float = 2.0
    focal_alpha: float = -1.0  # < 0: no alpha weighting
    dice_smooth: float = 1e-5
    dice_batch: bool = False  # soft Dice summed over the batch too (nnU-Net's batch Dice); False: per slice, the seed's
    grad_clip: float = 1.0
    seed: int = 42
    augment: bool = True
    intensity_p: float = 0.0  # per-slice probability of a random gamma/brightness change (0: the seed, off)
    intensity_gamma: float = 0.35  # gamma = exp(U(-g, g)): 0.70..1.42
    intensity_scale: float = 0.25  # brightness x U(1 - s, 1 + s)
    spatial_p: float = 0.0  # per-slice probability of a random zoom + rotation of image and mask (0: the seed, off)
    spatial_scale: float = 0.3  # zoom = exp(U(-s, s)): 0.74..1.35
    spatial_rotate: float = 45.0  # degrees, U(-r, r); with the seed's rot90 and flips this covers every angle
    base_channels: int = 32
    depth: int = 4
    dropout: float = 0.0
    norm_layer: str = "batch"  # batch (the seed) | instance (nnU-Net's) | group
    precision: str = "auto"  # auto: bf16 where the CPU has native bf16, AMP (fp16) on CUDA
    channels_last: bool = True  # faster on CPU: docs/speed.md (benchmarks/bench_train.py)
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch (CUDA only; torch has no CPU kernel)
    threads: int = 0  # 0: all cores
    checkpoint_every: int = 200  # steps, mid-epoch
    select_by: str = "dice"  # validation metric for best_model.pth
    threshold: float = 0.5

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"epochs: must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"batch_size: must be >= 1, got {self.batch_size}")
        _check(self.seed >= 0, f"seed: must be >= 0, got {self.seed}")
        _check(self.lr > 0, f"lr: must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, f"weight_decay: must be >= 0, got {self.weight_decay}")
        _check(self.schedule in ("none", "cosine"), f"schedule: {self.schedule!r} (choose from none, cosine)")
        _check(self.loss in LOSSES, f"loss: unknown loss {self.loss!r} (choose from {', '.join(LOSSES)})")
        _check(0.0 <= self.intensity_p <= 1.0, f"intensity_p: must be in [0, 1], got {self.intensity_p}")
        _check(0.0 <= self.intensity_gamma <= 2.0, f"intensity_gamma: must be in [0, 2], got {self.intensity_gamma}")
        _check(0.0 <= self.intensity_scale < 1.0, f"intensity_scale: must be in [0, 1), got {self.intensity_scale}")
        _check(0.0 <= self.spatial_p <= 1.0, f"spatial_p: must be in [0, 1], got {self.spatial_p}")
        _check(0.0 <= self.spatial_scale <= 1.0, f"spatial_scale: must be in [0, 1], got {self.spatial_scale}")
        _check(0.0 <= self.spatial_rotate <= 180.0, f"spatial_rotate: must be in [0, 180] degrees, got {self.spatial_rotate}")
        _check(isinstance(self.dice_batch, bool), f"dice_batch: must be true or false, got {self.dice_batch!r}")
        _check(self.grad_clip >= 0, f"grad_clip: must be >= 0 (0 turns it off), got {self.grad_clip}")
        _check(self.base_channels >= 1, f"base_channels: must be >= 1, got {self.base_channels}")
        _check(1 <= self.depth <= 6, f"depth: must be in 1..6, got {self.depth}")
        _check(0.0 <= self.dropout < 1.0, f"dropout: must be in [0, 1), got {self.dropout}")
        _check(self.norm_layer in NORM_LAYERS,
               f"norm_layer: {self.norm_layer!r} (choose from {', '.join(NORM_LAYERS)})")
        _check(not (self.sync_bn and self.norm_layer != "batch"),
               f"sync_bn: only BatchNorm has batch statistics to synchronize (norm_layer is {self.norm_layer!r})")
        _check(self.precision in PRECISIONS, f"precision: {self.precision!r} (choose from {', '.join(PRECISIONS)})")
        _check(isinstance(self.sync_bn, bool), f"sync_bn: must be true or false, got {self.sync_bn!r}")
        _check(self.threads >= 0, f"threads: must be >= 0, got {self.threads}")
        _check(self.checkpoint_every >= 1, f"checkpoint_every: must be >= 1, got {self.checkpoint_every}")
        _check(self.select_by in ("dice", "loss"), f"select_by: {self.select_by!r} (choose from dice, loss)")
        _check(0.0 < self.threshold < 1.0, f"threshold: must be in (0, 1), got {self.threshold}")


C = TypeVar("C", PreprocessConfig, TrainConfig)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON-able dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def with_defaults(cls: type[C], data: dict[str, Any]) -> dict[str, Any]:
    """A settings dict written before some setting of `cls` existed, with that setting's default filled
    in (which is what the older code used), so older caches, runs and folders keep matching."""
    return {**to_dict(cls()), **data}


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build a config from a dict, refusing unknown keys (a typo must not silently become a default)."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} setting(s): {', '.join(unknown)}")
    return cls(**data)


def from_json(cls: type[C], text: str) -> C:
    return from_dict(cls, json.loads(text))


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Human-readable differences between two config dicts: 'key: a -> b'."""
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k, "<missing>") != b.get(k, "<missing>"):
            out.append(f"{k}: {a.get(k, '<missing>')!r} -> {b.get(k, '<missing>')!r}")
    return out
