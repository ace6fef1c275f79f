"""Slicing planes: a volume seen as a stack of axial, coronal or sagittal 2D slices.

The seed trains and predicts on axial slices only. With ``views`` (PreprocessConfig) the training
patients' coronal and sagittal slices are cached too, and predict runs the same 2D model along each
plane and averages the three probability volumes (multi-view fusion, as in e.g. Zhao et al. 2018):
each voxel is judged from three different in-plane contexts, and the model sees about three times as
many distinct training slices.

Axes follow the NIfTI voxel order BraTS uses, (X, Y, Z) = (left-right, posterior-anterior,
inferior-superior): axial slices are fixed z, coronal fixed y, sagittal fixed x. A coronal or sagittal
plane (240 x 155 in BraTS) is zero-padded to a square (240 x 240, centred) before resizing, so one
cached pixel covers the same millimetres in every plane (BraTS voxels are isotropic 1 mm).
"""

from __future__ import annotations

import numpy as np

VIEWS = ("axial", "coronal", "sagittal")
# The axis each plane slices along (of the last three axes of a (..., X, Y, Z) array).
_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}


def pad_widths(shape: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Zero padding (before, after) of each in-plane axis that makes a (H, W) plane square, centred."""
    n = max(shape)
    return tuple(((n - s) // 2, n - s - (n - s) // 2) for s in shape)  # type: ignore[return-value]


def to_view(a: np.ndarray, view: str) -> np.ndarray:
    """(..., X, Y, Z) -> (..., H, W, D): the plane's slices stacked along the last axis, each plane
    zero-padded to square for coronal and sagittal (axial planes are returned as they are, unpadded)."""
    if view not in _AXIS:
        raise ValueError(f"view: unknown plane {view!r} (choose from {', '.join(VIEWS)})")
    lead = a.ndim - 3
    k = lead + _AXIS[view]
    if view == "axial":
        return a
    planes = [lead + i for i in range(3) if lead + i != k]
    out = np.moveaxis(a, (planes[0], planes[1], k), (lead, lead + 1, lead + 2))
    (p0, p1) = pad_widths(out.shape[lead:lead + 2])
    return np.pad(out, [(0, 0)] * lead + [p0, p1, (0, 0)])


def from_view(a: np.ndarray, view: str, shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of `to_view` for a volume of original spatial shape `shape` = (X, Y, Z): (..., H, W, D)
    -> (..., X, Y, Z), dropping the padding."""
    if view == "axial":
        return a
    lead = a.ndim - 3
    k = _AXIS[view]
    planes = [i for i in range(3) if i != k]
    (p0, p1) = pad_widths((shape[planes[0]], shape[planes[1]]))
    a = a[(slice(None),) * lead + (slice(p0[0], p0[0] + shape[planes[0]]), slice(p1[0], p1[0] + shape[planes[1]]))]
    return np.moveaxis(a, (lead, lead + 1, lead + 2), (lead + planes[0], lead + planes[1], lead + k))
