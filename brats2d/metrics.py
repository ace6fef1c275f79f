"""Segmentation metrics as pure functions of confusion counts, plus HD95 on masks.

Everything works on boolean (or 0/1) masks. `confusion` turns masks into a `Counts` of int64 arrays
(tp, fp, fn, tn), summed over chosen axes; the ratio metrics (`dice`, `iou`, ...) are elementwise
functions of those counts, so the same code gives a pooled scalar, per-slice (N,) or per-patient (P,)
values. How values are averaged is always explicit: `summarize(c, "pooled" | "mean")`.

Empty rule: a ratio whose denominator is 0 takes the value `empty` (keyword on every metric). The
default 1.0 reads "both masks empty is a perfect match" (e.g. dice of an empty prediction on an empty
slice). Pass `empty=float("nan")` to leave such items out: `summarize(..., "mean")` uses nan-aware
means. MONAI differs here (DiceMetric gives nan or 1.0 depending on `ignore_empty`, confusion-matrix
metrics give nan), which is why the tests compare with MONAI on non-empty cases only.

`hd95` follows MONAI's `compute_hausdorff_distance(..., percentile=95)` definition without importing
MONAI: edges are `mask XOR binary_erosion(mask)` (cross-shaped structuring element), directed
distances are exact Euclidean distances (in units of `spacing`) from each edge voxel of one mask to
the nearest edge voxel of the other (a KD-tree, as MONAI's CPU path; equal to the EDT definition),
and the result is the max of the two directed 95th percentiles (linear interpolation, as
`torch.quantile`). Both masks empty -> 0.0; exactly one empty -> inf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

METRICS = ("dice", "iou", "accuracy", "precision", "recall", "specificity", "f1")


@dataclass(frozen=True)
class Counts:
    """Confusion counts: int64 arrays of one common shape (scalar pooled, (N,) per slice, (P,) per patient)."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray

    def __post_init__(self) -> None:
        # Coerce once here so every metric can rely on int64 arrays of one shape (no overflow on big volumes).
        arrays = np.broadcast_arrays(*(np.asarray(getattr(self, k), dtype=np.int64) for k in ("tp", "fp", "fn", "tn")))
        for k, a in zip(("tp", "fp", "fn", "tn"), arrays):
            object.__setattr__(self, k, np.array(a, dtype=np.int64))

    def __add__(self, other: Counts) -> Counts:
        """Elementwise sum (shapes broadcast)."""
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    def total(self) -> Counts:
        """All items summed into 0-d arrays: the pooled counts."""
        return Counts(self.tp.sum(), self.fp.sum(), self.fn.sum(), self.tn.sum())

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the count arrays."""
        return self.tp.shape


def _as_bool(a: np.ndarray, name: str) -> np.ndarray:
    """bool view of a bool or 0/1 array; anything else (e.g. probabilities) is a caller bug."""
    a = np.asarray(a)
    if a.dtype == bool:
        return a
    if np.any((a != 0) & (a != 1)):
        raise ValueError(f"{name} must be boolean or 0/1, got values other than 0 and 1 (dtype {a.dtype})")
    return a.astype(bool)


def _pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = _as_bool(pred, "pred"), _as_bool(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {t.shape}")
    return p, t


def confusion(pred: np.ndarray, target: np.ndarray, axes: tuple[int, ...] | None = None) -> Counts:
    """Confusion counts of two masks.

    pred/target: bool or 0/1 arrays of equal shape (any dims). Counts are summed over `axes`
    (None: all axes -> 0-d counts); the remaining axes are kept, in order. Units: pixels/voxels.
    """
    p, t = _pair(pred, target)
    ax = tuple(range(p.ndim)) if axes is None else tuple(a % p.ndim for a in axes)
    n = int(np.prod([p.shape[a] for a in ax], dtype=np.int64))
    tp = np.count_nonzero(p & t, axis=ax)
    fp = np.count_nonzero(p & ~t, axis=ax)
    fn = np.count_nonzero(~p & t, axis=ax)
    # tn by subtraction saves a fourth full pass over the masks.
    return Counts(tp, fp, fn, n - np.asarray(tp) - fp - fn)


def per_slice(pred: np.ndarray, target: np.ndarray) -> Counts:
    """Counts per item: pred/target (N, ..., H, W) bool/0-1 -> (N,) counts (summed over all other axes)."""
    p, t = _pair(pred, target)
    if p.ndim < 2:
        raise ValueError(f"per_slice needs (N, ...) arrays with at least 2 dims, got shape {p.shape}")
    return confusion(p, t, axes=tuple(range(1, p.ndim)))


def per_patient(pred: np.ndarray, target: np.ndarray, patient_ids: np.ndarray) -> tuple[list[str], Counts]:
    """3D counts per patient from 2D slices.

    pred/target: (N, H, W) bool/0-1 slices; patient_ids: (N,) id of each slice (any dtype, compared as str).
    Returns (sorted patient names, Counts of shape (P,)) where item i sums all slices of names[i].
    """
    ids = np.asarray(patient_ids).astype(str)
    if ids.shape != (np.shape(pred)[0],):
        raise ValueError(f"patient_ids must have shape ({np.shape(pred)[0]},), got {ids.shape}")
    c = per_slice(pred, target)
    names, inverse = np.unique(ids, return_inverse=True)

    def group(x: np.ndarray) -> np.ndarray:
        out = np.zeros(len(names), dtype=np.int64)
        np.add.at(out, inverse, x)
        return out

    return [str(n) for n in names], Counts(group(c.tp), group(c.fp), group(c.fn), group(c.tn))


def _ratio(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    """num/den as float64, `empty` where den == 0 (the module's empty rule)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, empty, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def dice(c: Counts, empty: float = 1.0) -> np.ndarray:
    """2tp / (2tp + fp + fn), float64 of c's shape; `empty` where both masks are empty."""
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn, empty)


def iou(c: Counts, empty: float = 1.0) -> np.ndarray:
    """Jaccard tp / (tp + fp + fn), float64 of c's shape; `empty` where both masks are empty."""
    return _ratio(c.tp, c.tp + c.fp + c.fn, empty)


def accuracy(c: Counts, empty: float = 1.0) -> np.ndarray:
    """(tp + tn) / all, float64 of c's shape; `empty` only for zero-size items."""
    return _ratio(c.tp + c.tn, c.tp + c.fp + c.fn + c.tn, empty)


def precision(c: Counts, empty: float = 1.0) -> np.ndarray:
    """tp / (tp + fp), float64 of c's shape; `empty` where the prediction is empty."""
    return _ratio(c.tp, c.tp + c.fp, empty)


def recall(c: Counts, empty: float = 1.0) -> np.ndarray:
    """Sensitivity tp / (tp + fn), float64 of c's shape; `empty` where the target is empty."""
    return _ratio(c.tp, c.tp + c.fn, empty)


sensitivity = recall


def specificity(c: Counts, empty: float = 1.0) -> np.ndarray:
    """tn / (tn + fp), float64 of c's shape; `empty` where the target covers everything."""
    return _ratio(c.tn, c.tn + c.fp, empty)


def f1(c: Counts, empty: float = 1.0) -> np.ndarray:
    """F1 = 2tp / (2tp + fp + fn) (MONAI's form), float64; `empty` where both masks are empty.

    Equal to the harmonic mean of precision and recall whenever both are defined; the count form is
    used so f1 == dice exactly and no 0/0 appears when only one of precision/recall is undefined.
    """
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn, empty)


_FUNCS: dict[str, Callable[[Counts, float], np.ndarray]] = {
    "dice": dice, "iou": iou, "accuracy": accuracy, "precision": precision,
    "recall": recall, "specificity": specificity, "f1": f1,
}


def summarize(c: Counts, reduction: Literal["pooled", "mean"], empty: float = 1.0) -> dict[str, float]:
    """All METRICS as floats in [0, 1] (or nan).

    pooled: metric of the summed counts (the seed's way: every pixel of a split counts once).
    mean: nan-aware mean over the items of 0-d or (N,) counts of per-item metrics (per slice or per
    patient); nan when every item is nan (e.g. all empty with empty=nan) or there are no items.
    """
    if reduction == "pooled":
        tot = c.total()
        return {m: float(_FUNCS[m](tot, empty)) for m in METRICS}
    if reduction != "mean":
        raise ValueError(f"reduction must be 'pooled' or 'mean', got {reduction!r}")
    if c.tp.ndim > 1:
        raise ValueError(f"mean reduction needs 0-d or (N,) counts, got shape {c.tp.shape}")
    out = {}
    for m in METRICS:
        v = np.atleast_1d(_FUNCS[m](c, empty))
        keep = v[~np.isnan(v)]
        # An explicit check instead of np.nanmean, which warns on all-nan input.
        out[m] = float(keep.mean()) if keep.size else float("nan")
    return out


def _edges(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: mask XOR eroded mask (scipy's default cross structure, outside = background)."""
    return mask ^ ndimage.binary_erosion(mask)


EMPTY_HD95 = ("inf", "brats")  # what hd95 gives when exactly one mask is empty (see hd95)


def hd95(pred: np.ndarray, target: np.ndarray, spacing: tuple[float, ...] | None = None,
         empty: str = "inf") -> float:
    """95th-percentile symmetric Hausdorff distance between the surfaces of two masks.

    pred/target: bool or 0/1 arrays of equal shape (2D or 3D; any ndim works). spacing: voxel size
    per axis of the arrays (e.g. mm); None means 1.0 per axis. Returns a float in units of spacing:
    max of the 95th percentiles of the two directed edge-to-edge distance sets (MONAI's definition).
    Empty-mask rule: both masks empty -> 0.0; exactly one empty -> `empty`: "inf" (MONAI gives nan), or
    "brats" (the BraTS challenge's: the image diagonal, sqrt(sum((shape * spacing) ** 2)), 373.13 mm
    for 240 x 240 x 155 voxels of 1 mm), which keeps means and medians finite.
    """
    if empty not in EMPTY_HD95:
        raise ValueError(f"empty: {empty!r} (choose from {', '.join(EMPTY_HD95)})")
    p, t = _pair(pred, target)
    sp = np.ones(p.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if sp.shape != (p.ndim,) or np.any(sp <= 0):
        raise ValueError(f"spacing must be {p.ndim} positive numbers, got {spacing!r}")
    has_p, has_t = bool(p.any()), bool(t.any())
    if not has_p and not has_t:
        return 0.0
    if not has_p or not has_t:
        return float(np.sqrt(np.sum((np.asarray(p.shape) * sp) ** 2))) if empty == "brats" else float("inf")
    # Crop to the union bounding box + 1 voxel: distances are translation invariant and every edge
    # voxel lies inside, so the result is unchanged while the erosions run on a small box, not the volume.
    union = p | t
    box = []
    for ax in range(p.ndim):
        hit = np.flatnonzero(np.any(union, axis=tuple(a for a in range(p.ndim) if a != ax)))
        box.append(slice(max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, p.shape[ax])))
    # Nearest-neighbour queries between edge-voxel coordinates (in spacing units) give the same exact
    # Euclidean distances as distance_transform_edt(~edges, sampling=spacing) read at the other mask's
    # edges (MONAI's CPU path does the same), but cost O(E log E) in the number of edge voxels instead
    # of a pass over the whole box: a stray false positive far from the tumour no longer costs seconds.
    ep = np.argwhere(_edges(p[tuple(box)])) * sp
    et = np.argwhere(_edges(t[tuple(box)])) * sp
    d_pt = cKDTree(et).query(ep, k=1)[0]
    d_tp = cKDTree(ep).query(et, k=1)[0]
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))
