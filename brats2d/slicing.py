"""Volume-to-slice array operations shared by preprocess (the cache) and inference (a raw scan):
region masks from labels, per-volume intensity normalization, slice resizing and 2.5D stacking.
Predict must feed the model exactly what preprocess cached, so both call these same functions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import NORMS, PreprocessConfig
from .crop import Box, box_for
from .head import Head, find_head
from .nifti import InputError
from .ood import ScanStats


def region_masks(seg: np.ndarray, region: str, et_label: int = 4) -> np.ndarray:
    """Binary masks (K, X, Y, Z) bool from a label volume: wt = label>0, tc = NCR|ET, et = ET; all = [wt, tc, et]."""
    wt = seg > 0
    tc = (seg == 1) | (seg == et_label)
    et = seg == et_label
    return np.stack({"wt": [wt], "tc": [tc], "et": [et], "all": [wt, tc, et]}[region])


def normalize(vol: np.ndarray, method: str, percentile: tuple[float, float] = (0.5, 99.5), name: str = "volume",
              tissue: np.ndarray | None = None) -> np.ndarray:
    """Scale one modality volume (X, Y, Z) to float32: to [0, 1] (minmax, percentile) or to z-scores.

    Statistics come from the head's tissue voxels only (`tissue`, (X, Y, Z) bool: brats2d.head.Head.tissue,
    found from `vol` alone when not given) and everything else becomes 0, so the result does not depend
    on how the scan stores its background (docs/inputs.md):
    minmax: (v - min) / (max - min) over the head (the seed's per-volume min-max); a head of one
    intensity (e.g. a mask stored as a scan) becomes 1.
    percentile: clip to the given percentiles of the head and scale to [0, 1] -- robust to the
    single-voxel outliers some sites have.
    zscore: (v - mean) / sd over the head (nnU-Net's MRI scheme): the normal brain, not the brightest
    tumour, sets the scale (docs/experiments.md). Unbounded, so the gamma/brightness augmentation (which
    needs [0, 1]) refuses such a cache.
    Each is invariant to a positive linear rescale, an offset and a change of dtype of the scan.
    """
    if method not in NORMS:
        raise ValueError(f"normalize: unknown method {method!r} (choose from {', '.join(NORMS)})")
    lo, hi = float(vol.min()), float(vol.max())
    if hi <= lo:
        raise InputError(f"{name}: constant volume (every voxel is {lo:g})")
    if tissue is None:
        tissue = find_head(vol[None]).tissue
    if not tissue.any():
        raise InputError(f"{name}: no head found (the whole volume is one background level)")
    v = vol[tissue]
    if method == "zscore":
        v64 = v.astype(np.float64)
        mean, sd = float(v64.mean()), float(v64.std())
        if sd <= 0:
            raise InputError(f"{name}: constant volume inside the head ({mean:g})")
        out = (vol - np.float32(mean)) * np.float32(1.0 / sd)
    else:
        lo, hi = (float(v.min()), float(v.max())) if method == "minmax" else np.percentile(v, percentile)
        if hi <= lo and method == "minmax":
            return tissue.astype(np.float32)
        if hi <= lo:
            raise InputError(f"{name}: constant volume inside the head ({lo:g})")
        src = vol if method == "minmax" else np.clip(vol, lo, hi)
        out = (src - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    out = out.astype(np.float32, copy=False)
    out[~tissue] = 0.0
    return out


def with_mirror(image: np.ndarray, head: np.ndarray) -> np.ndarray:
    """(C, X, Y, Z) -> (2C, X, Y, Z): the channels, then each reflected along X about the head's centre.

    The head's extent x0..x1 along X (`head`, (X, Y, Z) bool) is reflected onto itself
    (x -> x0 + x1 - x), zero elsewhere. BraTS volumes are registered to an atlas with X left-right, so a
    voxel then sits beside its contralateral twin: a tumour that is no brighter than normal brain on
    FLAIR may still be brighter than the same place on the other side (symmetry-driven segmentation,
    e.g. Shen et al. 2017; docs/experiments.md measures it).
    """
    xs = np.flatnonzero(head.any(axis=(1, 2)))
    out = np.zeros_like(image)
    if xs.size:
        x0, x1 = int(xs[0]), int(xs[-1]) + 1
        out[:, x0:x1] = image[:, x0:x1][:, ::-1]
    return np.concatenate([image, out])


def resize_slices(x: np.ndarray, size: int, binary: bool = False) -> np.ndarray:
    """Resize (N, C, H, W) to (N, C, size, size) with torch bilinear interpolation.

    Images use antialias=True (a proper low-pass before down-sampling). Binary masks are resized
    as floats the same way and thresholded at 0.5, which preserves the label region without the
    one-pixel jitter of nearest-neighbour. Returns float32 (images) or uint8 (masks).
    """
    import torch
    import torch.nn.functional as F

    if x.shape[0] == 0:
        return np.zeros(x.shape[:2] + (size, size), np.uint8 if binary else np.float32)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if x.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    out = t.numpy()
    return (out >= 0.5).astype(np.uint8) if binary else out.astype(np.float32, copy=False)


def with_context(image: np.ndarray, z: np.ndarray, context: int) -> np.ndarray:
    """Axial slices `z` of a volume (C, X, Y, Z) as (n, C * (2 * context + 1), X, Y), same dtype.

    Channel c * (2 * context + 1) + j holds modality c at slice z - context + j; neighbours beyond the
    volume's ends repeat its first or last slice (the way a 3D conv pads by replication). context 0 is
    the plain 2D slice stack.
    """
    idx = np.clip(np.asarray(z)[:, None] + np.arange(-context, context + 1), 0, image.shape[-1] - 1)  # (n, 2k+1)
    x = image[..., idx]  # (C, X, Y, n, 2k+1)
    return np.ascontiguousarray(x.transpose(3, 0, 4, 1, 2)).reshape(len(idx), -1, *image.shape[1:3])


@dataclass(frozen=True)
class Prepared:
    """A patient's scan as the model's preprocessing sees it (built by `prepare`).

    image: (C', X, Y, Z) float32, each modality normalized, then (mirror) each reflected; head: where the
    head is (brats2d.head.Head); box: x0, x1, y0, y1, the part of each axial slice that is resized (crop);
    stats: what the scan looks like (brats2d.ood.ScanStats), for the out-of-distribution check.
    """

    image: np.ndarray
    head: Head
    box: Box
    stats: ScanStats


def prepare(image: np.ndarray, cfg: PreprocessConfig, spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
            names: list[str] | None = None, blank: tuple[int, ...] = ()) -> Prepared:
    """Normalize a raw scan (C, X, Y, Z) exactly as preprocess does for the cache; predict calls it too.

    The head is found once, jointly over the modalities, and every later step (normalization statistics,
    crop box, mirror) uses it. `names` label the channels in error messages (file names); `spacing` is
    the scan's mm per voxel, recorded in the stats. `blank` lists channels the scan lacks: they play no
    part in finding the head and stay 0 after normalization, the value a model trained with modality
    dropout saw for a dropped modality (TrainConfig.modality_dropout).
    """
    present = [c for c in range(image.shape[0]) if c not in blank]
    head = find_head(image[present])
    names = names or [f"channel {c}" for c in range(image.shape[0])]
    out = np.zeros(image.shape, np.float32)
    for c in present:
        out[c] = normalize(image[c], cfg.norm, cfg.percentile, name=names[c], tissue=head.tissue)
    stats = ScanStats.measure(image, out, head, spacing, blank)
    if cfg.mirror:
        out = with_mirror(out, head.mask)
    return Prepared(out, head, box_for(head.mask, cfg.crop), stats)
