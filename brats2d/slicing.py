"""Volume-to-slice array operations shared by preprocess (the cache) and inference (a raw scan):
region masks from labels, per-volume intensity normalization, slice resizing and 2.5D stacking.
Predict must feed the model exactly what preprocess cached, so both call these same functions."""

from __future__ import annotations

import numpy as np

from .nifti import InputError


def region_masks(seg: np.ndarray, region: str, et_label: int = 4) -> np.ndarray:
    """Binary masks (K, X, Y, Z) bool from a label volume: wt = label>0, tc = NCR|ET, et = ET; all = [wt, tc, et]."""
    wt = seg > 0
    tc = (seg == 1) | (seg == et_label)
    et = seg == et_label
    return np.stack({"wt": [wt], "tc": [tc], "et": [et], "all": [wt, tc, et]}[region])


def normalize(vol: np.ndarray, method: str, percentile: tuple[float, float] = (0.5, 99.5), name: str = "volume") -> np.ndarray:
    """Scale one modality volume (X, Y, Z) float32: to [0, 1] (minmax, percentile) or to brain z-scores.

    minmax: (v - min) / (max - min) over the whole volume (the seed's way).
    percentile: clip to the given percentiles of brain voxels (v != 0; BraTS background is exactly 0)
    and scale, leaving background at 0 -- robust to the single-voxel outliers some sites have.
    zscore: (v - mean) / sd of brain voxels, background 0 (nnU-Net's MRI scheme): the normal brain,
    not the brightest tumour, sets the scale, so patients' tumours line up better (README "Results").
    Unbounded, so the gamma/brightness augmentation (which needs [0, 1]) refuses such a cache.
    """
    if method == "minmax":
        lo, hi = float(vol.min()), float(vol.max())
        if hi <= lo:
            raise InputError(f"{name}: constant volume (every voxel is {lo:g})")
        return (vol - lo) * np.float32(1.0 / (hi - lo))
    brain = vol != 0
    if not brain.any():
        raise InputError(f"{name}: constant volume (every voxel is 0)")
    if method == "zscore":
        v = vol[brain].astype(np.float64)
        mean, sd = float(v.mean()), float(v.std())
        if sd <= 0:
            raise InputError(f"{name}: constant volume inside the brain ({mean:g})")
        out = (vol - np.float32(mean)) * np.float32(1.0 / sd)
        out[~brain] = 0.0
        return out
    lo, hi = np.percentile(vol[brain], percentile)
    if hi <= lo:
        raise InputError(f"{name}: constant volume inside the brain ({lo:g})")
    out = (np.clip(vol, lo, hi) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    out[~brain] = 0.0
    return out


def with_mirror(image: np.ndarray) -> np.ndarray:
    """(C, X, Y, Z) -> (2C, X, Y, Z): the channels, then each reflected along X about the brain's centre.

    The brain is where any channel is non-zero (BraTS background is exactly 0); its extent x0..x1
    along X is reflected onto itself (x -> x0 + x1 - x), zero elsewhere. BraTS volumes are registered
    to an atlas with X left-right, so a voxel then sits beside its contralateral twin: a tumour that
    is no brighter than normal brain on FLAIR may still be brighter than the same place on the other
    side (symmetry-driven segmentation, e.g. Shen et al. 2017; README Step 21 measures it).
    """
    xs = np.flatnonzero((image != 0).any(axis=(0, 2, 3)))
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
