"""Every setting of the pipeline as a frozen dataclass, with the seed protocol as the default.

Configs are saved as JSON beside every cache and run, and inside every checkpoint, so a result can
always be traced back to the exact settings that produced it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from .views import VIEWS

MODALITIES = ("flair", "t1", "t1ce", "t2")
REGIONS = ("wt", "tc", "et", "all")
BRATS_REGIONS = ("wt", "tc", "et")  # whole tumour, tumour core, enhancing tumour: the channels of region "all"
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


# Where a setting is listed in `--help` (docs/configuration.md): MAIN first, then COMPUTE (speed, memory,
# numerics), then EXPERIMENT (ablation knobs: the recipes' choices are made, these stay for experiments).
MAIN, COMPUTE, EXPERIMENT = "main", "compute", "experiment"


def _setting(default: Any, help: str, group: str = MAIN, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with its help text, `--help` group and (for text settings) allowed values."""
    return field(default=default, metadata={"help": help, "group": group, "choices": choices})


@dataclass(frozen=True)
class PreprocessConfig:
    """How raw BraTS volumes become the HDF5 slice cache.

    Defaults are the seed protocol: FLAIR only, per-volume min-max to [0, 1], 96x96 axial slices,
    whole tumour (label > 0), tumour slices only, patient-level 70/15/15 split with seed 42.
    """

    modalities: tuple[str, ...] = _setting(("flair",), "input MRI sequences, a comma list", choices=MODALITIES)
    size: int = _setting(96, "side of the square slices, pixels (8..1024)")
    region: str = _setting("wt", "target: wt (whole tumour), tc, et, or all three as channels", choices=REGIONS)
    split: tuple[float, float, float] = _setting((0.7, 0.15, 0.15), "patient fractions train,val,test (sum 1)")
    seed: int = _setting(42, "seeds the patient split and the empty-slice draw")
    empty_slices: float = _setting(0.0, "fraction of tumour-free brain slices also kept (seeded), 0..1")
    norm: str = _setting("minmax", "per-volume intensity normalization", choices=NORMS)
    percentile: tuple[float, float] = _setting((0.5, 99.5), "low,high percentiles of head voxels for norm percentile",
                                               EXPERIMENT)
    dtype: str = _setting("float16", "image storage in the cache (docs/cache-format.md)", EXPERIMENT, CACHE_DTYPES)
    context: int = _setting(0, "2.5D: axial neighbours per side stacked as extra input channels (0..8; 0 = 2D)",
                            EXPERIMENT)
    crop: str = _setting("none", "brain: resize a square box around the head, not the whole frame", EXPERIMENT, CROPS)
    views: tuple[str, ...] = _setting(("axial",), "planes of the training slices, a comma list; predict fuses them "
                                      "(brats2d/views.py)", choices=VIEWS)
    mirror: bool = _setting(False, "also feed each modality reflected left-right about the brain's centre "
                            "(brats2d/slicing.py)", EXPERIMENT)

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

    @property
    def channel_modality(self) -> tuple[int, ...]:
        """For each of the in_channels image channels, the index in `modalities` of the modality it holds
        (its mirror and context neighbours included): what modality dropout and a missing scan blank."""
        per = 2 * self.context + 1
        return tuple((ch // per) % len(self.modalities) for ch in range(self.in_channels))


@dataclass(frozen=True)
class TrainConfig:
    """How a U-Net is trained from a cache. Defaults are the seed protocol."""

    epochs: int = _setting(10, "passes over the training slices")
    batch_size: int = _setting(4, "slices per optimizer step (per process under torchrun)")
    lr: float = _setting(1e-3, "Adam learning rate")
    weight_decay: float = _setting(0.0, "Adam weight decay", EXPERIMENT)
    schedule: str = _setting("none", "learning-rate schedule over all steps", choices=("none", "cosine"))
    loss: str = _setting("bce", "training loss", choices=LOSSES)
    focal_gamma: float = _setting(2.0, "focal loss exponent", EXPERIMENT)
    focal_alpha: float = _setting(-1.0, "focal loss positive-class weight; < 0: none", EXPERIMENT)
    dice_smooth: float = _setting(1e-5, "soft Dice smoothing term", EXPERIMENT)
    dice_batch: bool = _setting(False, "soft Dice summed over the batch too (nnU-Net's batch Dice); off: per slice",
                                EXPERIMENT)
    grad_clip: float = _setting(1.0, "gradient norm clip; 0: off", EXPERIMENT)
    seed: int = _setting(42, "seeds weights, data order and augmentation")
    augment: bool = _setting(True, "random rot90 and flips of each training slice", EXPERIMENT)
    intensity_p: float = _setting(0.0, "per-slice probability of a random gamma/brightness change (needs images in "
                                  "[0, 1])", EXPERIMENT)
    intensity_gamma: float = _setting(0.35, "gamma = exp(U(-g, g)): 0.70..1.42 at 0.35", EXPERIMENT)
    intensity_scale: float = _setting(0.25, "brightness x U(1 - s, 1 + s)", EXPERIMENT)
    spatial_p: float = _setting(0.0, "per-slice probability of a random zoom + rotation of image and mask",
                                EXPERIMENT)
    spatial_scale: float = _setting(0.3, "zoom = exp(U(-s, s)): 0.74..1.35 at 0.3", EXPERIMENT)
    spatial_rotate: float = _setting(45.0, "rotation U(-r, r), degrees", EXPERIMENT)
    modality_dropout: float = _setting(0.0, "per-slice probability of blanking each modality after the first "
                                       "(zeros, as predict fills one a scan lacks), so a model serves scans "
                                       "without them", EXPERIMENT)
    base_channels: int = _setting(32, "U-Net channels at the first level (doubled per level)")
    depth: int = _setting(4, "U-Net down-sampling levels (1..6)", EXPERIMENT)
    dropout: float = _setting(0.0, "dropout probability in the U-Net blocks (predict --mc-dropout needs > 0)",
                              EXPERIMENT)
    norm_layer: str = _setting("batch", "normalization after each convolution (brats2d/model.py)", EXPERIMENT,
                               NORM_LAYERS)
    precision: str = _setting("auto", "auto: bf16 where the CPU has native bf16, AMP (fp16) on CUDA", COMPUTE,
                              PRECISIONS)
    channels_last: bool = _setting(True, "channels-last memory layout (faster on CPU: docs/speed.md)",
                                   COMPUTE)
    sync_bn: bool = _setting(False, "under torchrun: BatchNorm statistics over the global batch (CUDA only)", COMPUTE)
    threads: int = _setting(0, "torch CPU threads; 0: all cores", COMPUTE)
    checkpoint_every: int = _setting(200, "steps between mid-epoch checkpoints", COMPUTE)
    select_by: str = _setting("dice", "validation metric that picks best_model.pth", EXPERIMENT, ("dice", "loss"))
    threshold: float = _setting(0.5, "probability cut for validation Dice and, by default, for eval/predict",
                                EXPERIMENT)

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
        _check(0.0 <= self.modality_dropout < 1.0, f"modality_dropout: must be in [0, 1), got {self.modality_dropout}")
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


@dataclass(frozen=True)
class PredictConfig:
    """How a trained run predicts whole volumes (eval --raw, predict, crossval scoring). Defaults are the
    seed protocol. A run records the predict settings of its recipe in RUN/predict.json (brats2d/rundir.py).

    The probability threshold is not here: it is TrainConfig.threshold, which also picks the best epoch,
    and eval/predict --threshold overrides it for one call.
    """

    min_size: int = _setting(0, "drop 3D components smaller than this, voxels (0: keep all)")
    tta: bool = _setting(False, "test-time augmentation: average 8 flips/rotations")
    keep_largest: bool = _setting(False, "keep only the largest 3D component of each region")
    largest_regions: tuple[str, ...] = _setting(BRATS_REGIONS, "regions --keep-largest applies to, a comma list "
                                                "(an enhancing tumour may have several real foci)", EXPERIMENT,
                                                BRATS_REGIONS)
    checkpoint: str = _setting("best", "model(s) of the run: best validation epoch, last epoch, or the mean of both",
                               choices=CHECKPOINTS)

    def __post_init__(self) -> None:
        _check(isinstance(self.min_size, int) and not isinstance(self.min_size, bool) and self.min_size >= 0,
               f"min_size: must be an integer >= 0, got {self.min_size!r}")
        _check(isinstance(self.tta, bool), f"tta: must be true or false, got {self.tta!r}")
        _check(isinstance(self.keep_largest, bool), f"keep_largest: must be true or false, got {self.keep_largest!r}")
        object.__setattr__(self, "largest_regions", tuple(self.largest_regions))
        for r in self.largest_regions:
            _check(r in BRATS_REGIONS, f"largest_regions: unknown region {r!r} (choose from {', '.join(BRATS_REGIONS)})")
        _check(self.checkpoint in CHECKPOINTS,
               f"checkpoint: {self.checkpoint!r} (choose from {', '.join(CHECKPOINTS)})")


# The stages of the pipeline and the config class of each (recipes name their settings per stage).
STAGES: dict[str, type] = {"preprocess": PreprocessConfig, "train": TrainConfig, "predict": PredictConfig}

C = TypeVar("C", PreprocessConfig, TrainConfig, PredictConfig)


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

