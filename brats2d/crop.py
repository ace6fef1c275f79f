"""Cropping every axial slice of a patient to one square box around the head (nnU-Net's crop to non-zero).

BraTS volumes are skull-stripped and 0 outside the head, whose bounding square is 155-184 of the 240
pixels of the frame on the 34 real patients. Cropping to it before resizing to S x S spends the S x S
pixels on the brain: tumours are drawn 1.3-1.5x larger, and at 96 x 96 a perfect model's 3D Dice ceiling
rises from 0.956 to 0.967 (experiments/resolution_ceiling.py). The box is computed from the raw
image alone, so `predict` finds the same box on an unseen scan as `preprocess` did.
"""

from __future__ import annotations

import numpy as np

Box = tuple[int, int, int, int]  # x0, x1, y0, y1 in voxels, half-open


def brain_box(image: np.ndarray) -> Box:
    """Square box around the non-zero voxels of a raw volume (C, X, Y, Z), over every channel and slice.

    Centred on the head's bounding box, its side the larger of the two extents (so resizing keeps the
    aspect ratio), shifted to lie inside the frame and no larger than it. A volume with no non-zero
    voxel gets the whole frame.
    """
    b = np.asarray(image).any(axis=(0, 3))  # (X, Y) footprint of the head over all slices
    X, Y = b.shape
    if not b.any():
        return 0, X, 0, Y
    xs, ys = np.flatnonzero(b.any(1)), np.flatnonzero(b.any(0))
    side = min(max(xs[-1] + 1 - xs[0], ys[-1] + 1 - ys[0]), X, Y)
    x0 = int(np.clip((xs[0] + xs[-1] + 1 - side) // 2, 0, X - side))
    y0 = int(np.clip((ys[0] + ys[-1] + 1 - side) // 2, 0, Y - side))
    return x0, x0 + int(side), y0, y0 + int(side)


def box_for(image: np.ndarray, crop: str) -> Box:
    """The box a `crop` setting ('none': the whole frame, 'brain': brain_box) selects in (C, X, Y, Z)."""
    if crop == "none":
        return 0, image.shape[1], 0, image.shape[2]
    if crop == "brain":
        return brain_box(image)
    raise ValueError(f"crop: unknown crop {crop!r}")


def paste(a: np.ndarray, box: Box, shape: tuple[int, int]) -> np.ndarray:
    """a (..., x1 - x0, y1 - y0) placed into zeros of shape (..., X, Y) at `box`; same dtype."""
    x0, x1, y0, y1 = box
    if (x0, y0) == (0, 0) and (x1, y1) == shape:
        return a
    out = np.zeros(a.shape[:-2] + shape, a.dtype)
    out[..., x0:x1, y0:y1] = a
    return out
