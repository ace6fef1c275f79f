"""The behaviour fingerprint (tests/fingerprint.py) of this checkout equals the recorded one.

A refactor must not change any result: the cache bytes always match exactly (preprocessing is plain
numpy/scipy, deterministic everywhere). Weights, predictions and metrics match exactly when the CPU's
vector ISA flags, torch's kernel capability and the torch version equal the recorded ones; elsewhere
fp32 convolution kernels (oneDNN/MKL pick AVX2, AVX-512 or AMX code paths, which sum in different
orders) round differently, the trained weights differ in their last bits and drift, so only the Dice
numbers are compared, within 0.05. A deliberate behaviour change re-records the fingerprint with
``python tests/fingerprint.py --update`` in the same commit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import pytest

from . import fingerprint

DICE_TOLERANCE = 0.05


def _leaves(d: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(d, dict):
        for k in sorted(d):
            yield from _leaves(d[k], f"{path}.{k}")
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, d


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


@pytest.mark.slow
def test_fingerprint_matches_recorded(tmp_path: Path) -> None:
    want = json.loads(fingerprint.EXPECTED.read_text())
    got = json.loads(json.dumps(fingerprint.compute(tmp_path), default=float))
    exact = got["platform"] == want["platform"]
    for name in fingerprint.PIPELINES:
        assert got[name]["cache"] == want[name]["cache"], f"{name}: the cache's data changed"
        if exact:
            assert got[name]["weights"] == want[name]["weights"], f"{name}: the trained weights changed"
            assert got[name]["predictions"] == want[name]["predictions"], f"{name}: the predicted masks changed"
        g, w = dict(_leaves(got[name]["metrics"])), dict(_leaves(want[name]["metrics"]))
        assert g.keys() == w.keys(), f"{name}: other metrics: {sorted(g.keys() ^ w.keys())[:5]}"
        for k in w:
            if exact:
                assert _same(g[k], w[k]), f"{name}{k}: {g[k]!r}, recorded {w[k]!r}"
            elif "dice" in k and isinstance(w[k], (int, float, str)) and not isinstance(w[k], bool):
                assert abs(float(g[k]) - float(w[k])) <= DICE_TOLERANCE, f"{name}{k}: {g[k]!r}, recorded {w[k]!r}"
