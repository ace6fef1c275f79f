"""The patients the viewer shows: what `brats2d predict` wrote (masks, maps, metrics.csv) joined with the raw scans.

A case appears when PRED_DIR holds <case>_pred.nii.gz. Its layers are URLs under the server's
/files/<root>/ namespace, never filesystem paths, so the page only ever names files the catalog listed.
"""

from __future__ import annotations

import csv
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..nifti import InputError, discover

MODALITIES = ("flair", "t1", "t1ce", "t2")
MAPS = ("prob", "uncertainty", "explain")  # <case>_<map>.nii.gz next to <case>_pred.nii.gz


@dataclass(frozen=True)
class Root:
    """A folder the server may read, under the URL prefix /files/<name>/."""

    name: str
    path: Path

    def url(self, file: Path) -> str | None:
        """The URL of a file found under this root, or None when its real path (symlinks followed) lies
        outside: the server would refuse it, so the catalog does not list it."""
        if not file.resolve().is_relative_to(self.path):
            return None
        return f"/files/{self.name}/" + "/".join(quote(p) for p in file.relative_to(self.path).parts)


@dataclass
class Case:
    """One patient in the viewer. `layers`: kind (a modality, seg, pred or a map) -> URL.
    `metrics`: region -> {dice, hd95 (mm)} from metrics.csv; empty when the patient had no seg."""

    id: str
    case: str
    layers: dict[str, str]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    source: str = "predictions"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "case": self.case, "layers": self.layers, "metrics": self.metrics, "source": self.source}


def read_metrics(path: Path) -> dict[str, dict[str, dict[str, float]]]:
    """metrics.csv -> {patient: {region: {dice, hd95}}} (hd95 may be inf/nan: JSON gets null)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    if not path.is_file():
        return out
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                dice, hd = float(row["dice"]), float(row["hd95_mm"])
            except (KeyError, ValueError):
                continue  # a malformed row is skipped, not fatal: the viewer still shows the images
            out.setdefault(row["patient"], {})[row["region"]] = {
                "dice": dice, "hd95": hd if math.isfinite(hd) else None}
    return out


def scan_predictions(pred: Root, raw: Root | None, source: str = "predictions", prefix: str = "") -> list[Case]:
    """The cases of one predict output folder, with their raw scans from `raw` when it has the case."""
    patients = {}
    if raw is not None:
        try:
            patients = {p.case: p for p in discover(raw.path)}
        except InputError:
            patients = {}
    metrics = read_metrics(pred.path / "metrics.csv")
    cases = []
    for mask in sorted(pred.path.glob("*_pred.nii.gz")):
        case = mask.name[: -len("_pred.nii.gz")]
        found = {"pred": pred.url(mask)}
        p = patients.get(case)
        if p is not None and raw is not None:
            found.update((kind, raw.url(file)) for kind, file in p.files.items())
        found.update((m, pred.url(f)) for m in MAPS if (f := pred.path / f"{case}_{m}.nii.gz").is_file())
        layers = {k: u for k, u in found.items() if u is not None}
        if "pred" not in layers:
            continue
        cases.append(Case(prefix + case, case, layers, metrics.get(case, {}), source))
    return cases


class Catalog:
    """The served roots and cases; thread-safe, because uploads add cases while requests read them."""

    def __init__(self, pred_dir: Path | None, raw_dir: Path | None) -> None:
        self._lock = threading.Lock()
        self.roots: dict[str, Root] = {}
        self._cases: list[Case] = []
        raw = self.add_root("raw", raw_dir) if raw_dir is not None else None
        if pred_dir is not None:
            self._cases = scan_predictions(self.add_root("pred", pred_dir), raw)

    def add_root(self, name: str, path: Path) -> Root:
        root = Root(name, Path(path).resolve(strict=True))
        with self._lock:
            self.roots[name] = root
        return root

    def add_cases(self, cases: list[Case]) -> None:
        with self._lock:
            self._cases.extend(cases)

    def cases(self) -> list[Case]:
        with self._lock:
            return list(self._cases)

    def regions(self) -> list[str]:
        seen: list[str] = []
        for c in self.cases():
            seen.extend(r for r in c.metrics if r not in seen)
        return seen
