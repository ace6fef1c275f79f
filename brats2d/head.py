"""Finding the head in a scan, whatever intensity convention it arrived in.

BraTS stores skull-stripped scans with the background exactly 0, but scans from other pipelines do not:
z-scored inside the brain with the background at a negative constant (nnU-Net-style exports), rescaled
or offset (BraTS 2021, PACS), or with a small noise floor. Every step that needs "where is the head"
(normalization statistics, the head crop, the left-right mirror, which slices to predict) asks
`find_head`, in preprocess and predict alike, so all of these conventions give the same mask
(docs/inputs.md lists the conventions and the tests that check them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A background level must hold on at least this share of the in-plane frame border; a scan whose border
# is mostly head (cropped tight, or not skull-stripped and full of noise) has no background to remove.
MIN_BORDER_SHARE = 0.5
# Head components smaller than this share of the largest one are noise voxels beyond the background's
# tolerance (isolated specks), not anatomy.
MIN_COMPONENT_SHARE = 0.01


@dataclass(frozen=True)
class Head:
    """Where the head is in one patient's scan.

    mask: (X, Y, Z) bool, True inside the head (anything that is not background connected to the outside);
    tissue: (X, Y, Z) bool, the head less the voxels at the background level in every channel (holes a
    pipeline zeroed inside the brain): the voxels whose intensities normalization uses and keeps;
    background: the background level of each channel (C,), in the scan's own units;
    tolerance: per channel, how far from that level a voxel may lie and still be background (noise floor).
    """

    mask: np.ndarray
    tissue: np.ndarray
    background: tuple[float, ...]
    tolerance: tuple[float, ...]

    @property
    def fraction(self) -> float:
        """Share of the volume's voxels inside the head (0..1)."""
        return float(self.mask.mean())


def _level(vol: np.ndarray) -> tuple[float, float] | None:
    """(background level, tolerance) of one channel (X, Y, Z) from its in-plane frame border, or None
    when the border is not dominated by one level.

    The level is the border's median; the tolerance is 1.5x the 99.9th percentile of the border's
    deviation from it (covers a uniform or Gaussian noise floor with margin), and at least 1e-6 of the
    volume's range so float rounding of a constant never splits the background.
    """
    border = np.concatenate([vol[0].ravel(), vol[-1].ravel(), vol[:, 0].ravel(), vol[:, -1].ravel()])
    level = float(np.median(border))
    dev = np.abs(border.astype(np.float64) - level)
    span = float(vol.max()) - float(vol.min())
    tol = max(1.5 * float(np.quantile(dev, 0.999)), 1e-6 * span)
    if (dev <= tol).mean() < MIN_BORDER_SHARE or tol >= 0.5 * span:
        return None
    return level, tol


def find_head(image: np.ndarray) -> Head:
    """The head of a patient's scan (C, X, Y, Z), found jointly over its channels.

    Background is what every channel holds at its border level (within tolerance) and is connected to
    the volume's faces (6-connectivity); the head is everything else, less isolated specks (components
    under 1 % of the largest). So a constant background of any value, a rescaled or offset scan, and a
    small noise floor all give the same mask, and dark voxels enclosed by the brain stay in the head.
    A channel whose border has no dominant level leaves the decision to the others; if none has one,
    the whole volume is head.
    """
    from scipy import ndimage

    if image.ndim != 4:
        raise ValueError(f"find_head: expected a (C, X, Y, Z) scan, got shape {image.shape}")
    levels = [_level(image[c]) for c in range(image.shape[0])]
    if all(lv is None for lv in levels):
        everything = np.ones(image.shape[1:], bool)
        return Head(everything, everything, tuple(float("nan") for _ in levels),
                    tuple(float("nan") for _ in levels))
    candidate = np.ones(image.shape[1:], bool)
    for c, lv in enumerate(levels):
        if lv is not None:
            candidate &= np.abs(image[c] - np.float32(lv[0])) <= np.float32(lv[1])
    lab, _ = ndimage.label(candidate)
    faces = np.concatenate([lab[0].ravel(), lab[-1].ravel(), lab[:, 0].ravel(), lab[:, -1].ravel(),
                            lab[:, :, 0].ravel(), lab[:, :, -1].ravel()])
    outside = np.zeros(int(lab.max()) + 1, bool)
    outside[np.unique(faces)] = True
    outside[0] = False  # label 0 is the non-candidate voxels
    mask = ~outside[lab]
    mask = _drop_specks(mask)
    return Head(mask, mask & ~candidate, tuple(float("nan") if lv is None else lv[0] for lv in levels),
                tuple(float("nan") if lv is None else lv[1] for lv in levels))


def _drop_specks(mask: np.ndarray) -> np.ndarray:
    """`mask` without connected components (26-connectivity) under MIN_COMPONENT_SHARE of the largest."""
    from scipy import ndimage

    if not mask.any():
        return mask
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    keep = sizes >= MIN_COMPONENT_SHARE * sizes.max()
    keep[0] = False
    return keep[lab]
