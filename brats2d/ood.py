"""Does a scan look like the scans a model was trained on?

Preprocess records a few properties of every patient's scan in the cache (`ScanStats`); a run keeps
their range over its training patients (`Profile`); predict measures the same properties on each new
scan and names those far outside the range (`check`). A warning does not stop prediction: the mask may
still be right, but a person should look at it (docs/inputs.md says what to do about each property).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from .head import Head

# How far outside the training range a property may lie before it is named, as a factor on ratio-like
# properties and as a share of the training spread (plus an absolute floor) on intensities.
RATIO = 1.5
INTENSITY_MARGIN = 0.5
INTENSITY_FLOOR = 0.25


@dataclass(frozen=True)
class ScanStats:
    """What one patient's scan looks like, before and after normalization.

    shape: voxels (X, Y, Z); spacing: mm per voxel (x, y, z); head_fraction: share of voxels inside the
    head; background: each modality's background level in the scan's own units (NaN: none found);
    head_spread: each modality's 99th minus 1st percentile inside the head, in the same units (the scale
    the background level is judged on); p01 / p99: each modality's 1st and 99th percentile inside the
    head after normalization.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    head_fraction: float
    background: tuple[float, ...]
    head_spread: tuple[float, ...]
    p01: tuple[float, ...]
    p99: tuple[float, ...]

    @classmethod
    def measure(cls, raw: np.ndarray, normalized: np.ndarray, head: Head, spacing: Iterable[float],
                blank: tuple[int, ...] = ()) -> "ScanStats":
        """From a scan (C, X, Y, Z) as read, its normalized modality channels (C, X, Y, Z) float32 and its
        head (brats2d.head.Head, found over the channels not in `blank`; percentiles over its tissue
        voxels). A `blank` channel (a modality the scan lacks) gets NaN in every per-channel property."""
        spread, p01, p99 = [], [], []
        tissue = head.tissue
        nan = float("nan")
        for c in range(normalized.shape[0]):
            if c in blank:
                spread.append(nan)
                p01.append(nan)
                p99.append(nan)
                continue
            lo, hi = np.percentile(raw[c][tissue], (1, 99)) if tissue.any() else (0.0, 0.0)
            spread.append(round(float(hi - lo), 6))
            lo, hi = np.percentile(normalized[c][tissue], (1, 99)) if tissue.any() else (0.0, 0.0)
            p01.append(round(float(lo), 4))
            p99.append(round(float(hi), 4))
        return cls(tuple(int(n) for n in head.mask.shape), tuple(round(float(s), 4) for s in spacing),  # type: ignore[arg-type]
                   round(head.fraction, 5), tuple(_insert_nan([float(b) for b in head.background], blank)),
                   tuple(spread), tuple(p01), tuple(p99))

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScanStats":
        return cls(**{f.name: (tuple(d[f.name]) if isinstance(d[f.name], list) else d[f.name])
                      for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class Profile:
    """The range (min, max) of every ScanStats property over a run's training patients.

    Each entry maps a ScanStats field name to per-component (lo, hi) pairs, one per axis or modality.
    """

    ranges: dict[str, list[tuple[float, float]]]

    @classmethod
    def of(cls, stats: list[ScanStats]) -> "Profile | None":
        """The profile of some patients' stats; None for none (e.g. a cache written before they existed)."""
        if not stats:
            return None
        ranges: dict[str, list[tuple[float, float]]] = {}
        for f in dataclasses.fields(ScanStats):
            cols = np.array([np.atleast_1d(np.asarray(getattr(s, f.name), np.float64)) for s in stats])
            ranges[f.name] = [(float(np.nanmin(c)) if not np.isnan(c).all() else math.nan,
                               float(np.nanmax(c)) if not np.isnan(c).all() else math.nan) for c in cols.T]
        return cls(ranges)

    def to_dict(self) -> dict[str, Any]:
        return {k: [list(p) for p in v] for k, v in self.ranges.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Profile":
        return cls({k: [(float(a), float(b)) for a, b in v] for k, v in d.items()})


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def check(stats: ScanStats, profile: Profile | None) -> list[str]:
    """One short phrase per property of `stats` far outside `profile` (empty: nothing unusual).

    Ratio-like properties (spacing, shape, head fraction) are named beyond a factor RATIO of the training
    range; the background level when it is further than 1 % of the head's intensity spread from every
    training scan's (a scan stored another way, e.g. z-scored or offset: handled, but worth a look; a
    rescale or a faint noise floor is not named); the normalized intensities beyond the training range
    widened by INTENSITY_MARGIN of its spread (at least INTENSITY_FLOOR).
    """
    if profile is None:
        return []
    out: list[str] = []
    for name in ("spacing", "shape", "head_fraction"):
        got = np.atleast_1d(np.asarray(getattr(stats, name), np.float64))
        rng = profile.ranges.get(name, [])
        if any(not (lo / RATIO <= g <= hi * RATIO) for g, (lo, hi) in zip(got, rng)):
            out.append(f"{name.replace('_', ' ')} {'x'.join(_fmt(g) for g in got)} (training {_ranges(rng)})")
    for k, (b, (lo, hi)) in enumerate(zip(stats.background, profile.ranges.get("background", []))):
        far = 0.01 * stats.head_spread[k]
        if not any(math.isnan(x) for x in (b, lo, hi)) and not (lo - far <= b <= hi + far):
            out.append(f"background level {_fmt(b)} of channel {k} (training {_ranges([(lo, hi)])}; found and masked)")
    for name, what in (("p01", "1st"), ("p99", "99th")):
        for k, (g, (lo, hi)) in enumerate(zip(getattr(stats, name), profile.ranges.get(name, []))):
            if math.isnan(g):  # a modality the scan lacks (predicted blank)
                continue
            margin = max(INTENSITY_MARGIN * (hi - lo), INTENSITY_FLOOR)
            if not (lo - margin <= g <= hi + margin):
                out.append(f"normalized {what} percentile {_fmt(g)} of channel {k} (training {_ranges([(lo, hi)])})")
    return out


def _insert_nan(values: list[float], at: tuple[int, ...]) -> list[float]:
    """`values` of the present channels with NaN put back at the blank channels' places `at`."""
    out = list(values)
    for c in sorted(at):
        out.insert(c, float("nan"))
    return out


def _ranges(rng: list[tuple[float, float]]) -> str:
    return ", ".join(_fmt(lo) if lo == hi else f"{_fmt(lo)}..{_fmt(hi)}" for lo, hi in rng)


def recorded_profile(patients: dict[str, dict[str, Any]], cases: list[str]) -> dict[str, Any] | None:
    """The Profile (as a dict) of `cases` from a cache's per-patient records (their "scan" entries), which
    a run keeps for predict; None when none was recorded (a cache written before they were) or when they
    were recorded by another version of ScanStats (no profile rather than a wrong one)."""
    try:
        stats = [ScanStats.from_dict(patients[c]["scan"]) for c in cases if (patients.get(c) or {}).get("scan")]
    except (KeyError, TypeError):
        return None
    profile = Profile.of(stats)
    return None if profile is None else profile.to_dict()
