"""Cropping every axial slice of a patient to one square box around the head (nnU-Net's crop to non-zero).

BraTS volumes are skull-stripped, and the head's bounding square is 155-184 of the 240 pixels of the
frame on the 34 real patients. Cropping to it before resizing to S x S spends the S x S pixels on the
brain (docs/experiments.md measures the gain). The box is computed from the head mask of the raw scan
(brats2d.head.find_head), so `predict` finds the same box on an unseen scan as `preprocess` did,
whatever the scan's background convention.
"""

from __future__ import annotations

import numpy as np

Box = tuple[int, int, int, int]  # x0, x1, y0, y1 in voxels, half-open


def brain_box(head: np.ndarray) -> Box:
    """Square box around a head mask (X, Y, Z) bool, over every slice.

    Centred on the head's bounding box, its side the larger of the two extents (so resizing keeps the
    aspect ratio), shifted to lie inside the frame and no larger than it. An empty mask gets the whole
    frame.
    """
    b = np.asarray(head).any(axis=2)  # (X, Y) footprint of the head over all slices
    X, Y = b.shape
    if not b.any():
        return 0, X, 0, Y
    xs, ys = np.flatnonzero(b.any(1)), np.flatnonzero(b.any(0))
    side = min(max(xs[-1] + 1 - xs[0], ys[-1] + 1 - ys[0]), X, Y)
    x0 = int(np.clip((xs[0] + xs[-1] + 1 - side) // 2, 0, X - side))
    y0 = int(np.clip((ys[0] + ys[-1] + 1 - side) // 2, 0, Y - side))
    return x0, x0 + int(side), y0, y0 + int(side)


def box_for(head: np.ndarray, crop: str) -> Box:
    """The box a `crop` setting ('none': the whole frame, 'brain': brain_box) selects for a head mask (X, Y, Z)."""
    if crop == "none":
        return 0, head.shape[0], 0, head.shape[1]
    if crop == "brain":
        return brain_box(head)
    raise ValueError(f"crop: unknown crop {crop!r}")


def paste(a: np.ndarray, box: Box, shape: tuple[int, int]) -> np.ndarray:
    """a (..., x1 - x0, y1 - y0) placed into zeros of shape (..., X, Y) at `box`; same dtype."""
    x0, x1, y0, y1 = box
    if (x0, y0) == (0, 0) and (x1, y1) == shape:
        return a
    out = np.zeros(a.shape[:-2] + shape, a.dtype)
    out[..., x0:x1, y0:y1] = a
    return out
