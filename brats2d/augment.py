"""The seed's augmentation (horizontal flip, vertical flip, rot90) as one gather per batch, and the
optional intensity (gamma, brightness) and spatial (zoom, free rotation) augmentations.

Every combination of hflip, vflip and k quarter-turns is one of the 8 symmetries of the square, so
each sample's transform is a fixed permutation of its S*S pixels. Applying a batch of different
transforms is then a single ``take_along_axis`` over (B, C, S*S): no per-sample Python work, and
exactly the same permutation moves the image and its mask.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def transform_code(hflip: np.ndarray, vflip: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Pack per-sample draws (hflip, vflip in {0,1}, k in {0..3}) into codes 0..15 (int64)."""
    return (np.asarray(hflip, np.int64) << 3) | (np.asarray(vflip, np.int64) << 2) | np.asarray(k, np.int64)


def apply_one(img: np.ndarray, code: int) -> np.ndarray:
    """Reference transform of one array (..., S, S): hflip (last axis), then vflip, then rot90 k times.

    This is the definition; `permutations` is derived from it, so the fast path cannot drift.
    """
    out = img
    if code >> 3 & 1:
        out = out[..., :, ::-1]
    if code >> 2 & 1:
        out = out[..., ::-1, :]
    return np.rot90(out, k=code & 3, axes=(-2, -1))


def invert_one(img: np.ndarray, code: int) -> np.ndarray:
    """Undo `apply_one(., code)` (used by test-time augmentation)."""
    out = np.rot90(img, k=-(code & 3), axes=(-2, -1))
    if code >> 2 & 1:
        out = out[..., ::-1, :]
    if code >> 3 & 1:
        out = out[..., :, ::-1]
    return out


@lru_cache(maxsize=8)
def permutations(size: int) -> np.ndarray:
    """(16, S*S) int64: flat source index of every output pixel for each transform code."""
    idx = np.arange(size * size).reshape(size, size)
    return np.stack([np.ascontiguousarray(apply_one(idx, c)).ravel() for c in range(16)])


def apply_batch(x: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Transform a batch (B, C, S, S) with one code per sample (B,); returns a new C-contiguous array."""
    b, c, s, _ = x.shape
    # Flat offsets into the whole batch: np.take on one flat array is ~6x faster than take_along_axis.
    base = (np.arange(b * c, dtype=np.int64) * (s * s)).reshape(b, c, 1)
    offsets = permutations(s)[codes][:, None, :] + base
    return np.take(np.ascontiguousarray(x).reshape(-1), offsets).reshape(b, c, s, s)


def draw_codes(rng: np.random.Generator, n: int) -> np.ndarray:
    """n transform codes with the seed's probabilities: hflip p=0.5, vflip p=0.5, k uniform in 0..3."""
    draws = rng.integers(0, 2, size=(2, n))
    return transform_code(draws[0], draws[1], rng.integers(0, 4, size=n))


def draw_intensity(rng: np.random.Generator, n: int, p: float, gamma: float, scale: float) -> np.ndarray | None:
    """(n, 2) float32 per-sample (gamma, scale), or None when p == 0 (the seed: no intensity change).

    With probability p a sample gets gamma = exp(U(-gamma, gamma)) and scale = U(1 - scale, 1 + scale);
    the others get (1, 1). Drawn after the geometric codes, so turning this on leaves the order and the
    flips/rotations of a (seed, epoch) unchanged.
    """
    if p <= 0:
        return None
    on = rng.random(n) < p
    g = np.exp(rng.uniform(-gamma, gamma, n))
    s = rng.uniform(1.0 - scale, 1.0 + scale, n)
    return np.stack([np.where(on, g, 1.0), np.where(on, s, 1.0)], axis=1).astype(np.float32)


def apply_intensity(x: "torch.Tensor", gains: np.ndarray) -> "torch.Tensor":
    """x (B, C, S, S) float32 in [0, 1] -> scale * x**gamma per sample (same for every channel).

    Gamma keeps 0 and 1 fixed (background stays 0) and bends the contrast between tissues; the scale
    then shifts the brightness, so a sample's tumour is no longer at the intensity its site put it at.
    Both are what scanner and protocol differences do to FLAIR after per-volume normalization.
    """
    import torch

    g = torch.from_numpy(gains).to(x.dtype)
    gamma, scale = g[:, 0].view(-1, 1, 1, 1), g[:, 1].view(-1, 1, 1, 1)
    return x.clamp_min(0).pow(gamma).mul(scale)


def draw_spatial(rng: np.random.Generator, n: int, p: float, scale: float, rotate: float) -> np.ndarray | None:
    """(n, 2) float32 per-sample (zoom, angle in radians), or None when p == 0 (the seed: none).

    With probability p a sample gets zoom = exp(U(-scale, scale)) (0.3: 0.74..1.35, nnU-Net's
    0.7..1.4) and angle = U(-rotate, rotate) degrees; the others get (1, 0) and are left untouched.
    Drawn after the codes and the intensity gains, so turning it on leaves both streams unchanged.
    """
    if p <= 0:
        return None
    on = rng.random(n) < p
    zoom = np.exp(rng.uniform(-scale, scale, n))
    angle = np.deg2rad(rng.uniform(-rotate, rotate, n))
    return np.stack([np.where(on, zoom, 1.0), np.where(on, angle, 0.0)], axis=1).astype(np.float32)


def apply_spatial(x: "torch.Tensor", y: "torch.Tensor", params: np.ndarray) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Zoom and rotate images x (B, C, S, S) and masks y (B, K, S, S) float32 about the slice centre.

    Both go through the same sampling grid: images bilinearly, masks bilinearly and then cut at 0.5
    (as `slicing.resize_slices` does), so a mask stays binary and covers what its image shows.
    Outside the slice is 0 (background after normalization). Samples with (1, 0) are not resampled
    (bit-identical), so p < 1 costs only the drawn samples' work.
    """
    import torch
    import torch.nn.functional as F

    sel = np.flatnonzero((params[:, 0] != 1.0) | (params[:, 1] != 0.0))
    if len(sel) == 0:
        return x, y
    zoom, angle = (torch.from_numpy(params[sel, i]).double() for i in (0, 1))
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(len(sel), 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos  # output -> input coords
    t = torch.from_numpy(sel)
    grid = F.affine_grid(theta.to(x.dtype), [len(sel), 1, *x.shape[-2:]], align_corners=False)
    x, y = x.clone(), y.clone()
    x[t] = F.grid_sample(x[t], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y[t] = (F.grid_sample(y[t], grid, mode="bilinear", padding_mode="zeros", align_corners=False) >= 0.5).to(y.dtype)
    return x, y


def draw_blanks(rng: np.random.Generator, n: int, modalities: int, p: float) -> np.ndarray | None:
    """(n, modalities) bool, True where a sample's modality is blanked (modality dropout), or None when
    p == 0 or there is one modality. Each modality after the first is blanked with probability p,
    independently; the first (FLAIR in every recipe) never is, so every sample keeps one image. Drawn
    after the other transforms, so turning it on leaves them unchanged."""
    if p <= 0 or modalities <= 1:
        return None
    out = rng.random((n, modalities)) < p
    out[:, 0] = False
    return out


def apply_blanks(x: "torch.Tensor", blanks: np.ndarray, channel_modality: tuple[int, ...]) -> "torch.Tensor":
    """x (B, C, S, S) -> x with every channel of a blanked modality set to 0, the value `prepare` gives a
    modality the scan lacks. blanks (B, M) bool; channel_modality (C,) the modality index of each channel
    (PreprocessConfig.channel_modality: mirror and context channels follow their modality)."""
    import torch

    keep = ~blanks[:, list(channel_modality)]  # (B, C)
    return x * torch.from_numpy(keep).to(x.dtype)[:, :, None, None]
