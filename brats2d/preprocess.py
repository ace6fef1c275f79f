"""Raw BraTS NIfTI folders -> the HDF5 slice cache (normalize, pick slices, resize, split by patient)."""

from __future__ import annotations

import contextlib
import errno
import os
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from . import cache
from .config import PreprocessConfig, to_dict
from .files import LockBusy, error_reason, file_lock, remove_stale_temps, write_text
from .nifti import InputError, Patient, discover, load_patient
from .ood import ScanStats
from .slicing import prepare, region_masks, resize_slices, with_context
from .splits import load_splits, save_splits, split_patients
from .views import VIEWS, to_view


class PreprocessError(Exception):
    """Preprocessing cannot produce a cache (no usable patient, or --strict and a bad one)."""


@dataclass
class PatientSlices:
    case: str
    images: np.ndarray  # (n, cfg.in_channels, S, S) float32, in [0, 1] unless norm is zscore
    masks: np.ndarray  # (n, K, S, S) uint8
    slices: np.ndarray  # (n,) int32 z indices
    shape: tuple[int, int, int]  # of the raw volume
    spacing: tuple[float, float, float]  # mm of one cached pixel (x, y) and slice (z)
    box: tuple[int, int, int, int]  # x0, x1, y0, y1: the part of each raw slice that was resized (crop)
    views: dict[str, int] = field(default_factory=dict)  # slices per plane, in the order stored (axial first)
    stats: ScanStats | None = None  # what the raw scan looks like (brats2d.ood), recorded for predict's check


def process_patient(patient: Patient, cfg: PreprocessConfig, views: tuple[str, ...] = ("axial",)) -> PatientSlices:
    """Load, normalize, select and resize one patient's slices (InputError on bad input).

    Axial slices first, then those of each further plane in `views` (cfg.views for training patients:
    brats2d/views.py); `slices` holds each slice's index along its own plane's axis.
    """
    raw, seg, _, spacing = load_patient(patient, cfg.modalities, left_right=cfg.mirror)
    assert seg is not None
    masks = region_masks(seg, cfg.region, patient.et_label)
    if not masks[0].any():
        raise InputError(f"{patient.files['seg']}: no tumour voxels for region {cfg.region!r}; patient skipped")
    prep = prepare(raw, cfg, spacing, [str(patient.files[m]) for m in cfg.modalities])
    x0, x1, y0, y1 = prep.box
    image, masks, head = prep.image[:, x0:x1, y0:y1], masks[:, x0:x1, y0:y1], prep.head.mask[x0:x1, y0:y1]
    planes = [v for v in VIEWS if v in views]  # axial first, whatever order `views` lists them in
    xs, ys, zs = [], [], []
    for k, view in enumerate(planes):
        im, ms = to_view(image, view), to_view(masks, view)
        hd = to_view(head[None], view)[0]
        has_tumour = ms[0].any(axis=(0, 1))  # (D,): slice has region (WT for "all")
        keep = np.flatnonzero(has_tumour)
        if cfg.empty_slices > 0:
            empty = np.flatnonzero(hd.any(axis=(0, 1)) & ~has_tumour)
            # The axial draw keeps its seed of before views existed, so axial-only caches are unchanged.
            rng = np.random.default_rng([cfg.seed, zlib.crc32(patient.case.encode())] + ([k] if k else []))
            n = int(round(cfg.empty_slices * len(empty)))
            keep = np.sort(np.concatenate([keep, rng.choice(empty, size=n, replace=False)]))
        xs.append(resize_slices(with_context(im, keep, cfg.context), cfg.size))  # (n, C', S, S)
        ys.append(resize_slices(np.moveaxis(ms[..., keep], -1, 0), cfg.size, binary=True))
        zs.append(keep.astype(np.int32))
    sx, sy, sz = spacing
    return PatientSlices(
        case=patient.case, images=np.concatenate(xs), masks=np.concatenate(ys), slices=np.concatenate(zs),
        shape=seg.shape, box=(x0, x1, y0, y1), spacing=(sx * (x1 - x0) / cfg.size, sy * (y1 - y0) / cfg.size, sz),
        views={v: len(z) for v, z in zip(planes, zs)}, stats=prep.stats)


def _work(args: tuple[Patient, PreprocessConfig, tuple[str, ...]]) -> PatientSlices | str:
    """Worker entry: a result, or the one-line reason the patient was skipped."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # one patient per core; intra-op threads would oversubscribe
    try:
        return process_patient(*args)
    except InputError as e:
        return str(e)
    except MemoryError:
        return f"{args[0].folder}: out of memory while processing"
    finally:
        torch.set_num_threads(prev)  # _work also runs in the caller's process (1 worker); leave it as it was


def _results(todo: list[Patient], cfg: PreprocessConfig, workers: int, train: set[str]
             ) -> Iterator[PatientSlices | str]:
    # Only training patients get the extra planes: val and test stay axial, as predict's slices are.
    jobs = [(p, cfg, cfg.views if p.case in train else ("axial",)) for p in todo]
    if workers <= 1 or len(jobs) <= 1:
        yield from map(_work, jobs)
        return
    # spawn: a forked child of a process that already started OpenMP/torch threads can deadlock.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as ex:
        yield from ex.map(_work, jobs)


@dataclass
class Summary:
    out: Path
    up_to_date: bool = False
    seconds: float = 0.0
    per_split: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (case, reason)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def preprocess(raw: str | Path, out: str | Path, cfg: PreprocessConfig, *, workers: int = 0,
               splits_file: str | Path | None = None, force: bool = False, strict: bool = False,
               on_patient: Callable[[str], None] | None = None) -> Summary:
    """Build the cache `out` from the BraTS folder `raw`. See the module and docs/cache-format.md for the layout.

    Bad patients are skipped with a reason (or abort everything with `strict`); the cache appears at
    `out` only when complete. A second preprocess to the same `out` while this one runs is refused
    (PreprocessError). `on_patient(case)` is called after each patient (progress display).
    """
    t0 = time.perf_counter()
    out = Path(out)
    patients = discover(raw)
    source = {p.case: p.identity() for p in patients}
    summary = Summary(out=out)
    config = to_dict(cfg)
    with _exclusive(out):
        for path in (out, splits_path(out), config_path(out)):
            remove_stale_temps(path)  # temp files of a run killed while writing (even if up to date now)
        if splits_file is not None:
            splits = load_splits(splits_file)
            known = {c for s in splits.values() for c in s}
            summary.skipped += [(p.case, "not listed in the splits file") for p in patients if p.case not in known]
            patients = [p for p in patients if p.case in known]
        else:
            splits = split_patients([p.case for p in patients], cfg.split, cfg.seed)
            if not splits["train"]:
                raise PreprocessError(f"split {cfg.split}: with {len(patients)} patient(s) the train split is empty")
        if out.exists() and not force:
            try:
                meta = cache.read_meta(out)
                planned = {c for cases in splits.values() for c in cases}
                same_split = set(meta.patients) <= planned and meta.splits == {
                    s: [c for c in splits[s] if c in meta.patients] for s in cache.SPLITS}
                if meta.config == config and meta.source == source and same_split:
                    # A run killed after renaming the cache may have left old or no sidecars.
                    _write_sidecars(out, splits, config)
                    summary.up_to_date = True
                    return summary
            except cache.CacheError:
                pass  # an unreadable, corrupt or old cache is simply rebuilt
        split_of = {c: s for s, cases in splits.items() for c in cases}
        C = cfg.in_channels
        stats = {s: {"patients": 0, "slices": 0, "tumour_pixels": 0} for s in cache.SPLITS}
        info: dict[str, dict[str, Any]] = {}
        with cache.CacheWriter(out, (C, cfg.size, cfg.size), cfg.out_channels, cfg.dtype) as writer:
            for p, res in zip(patients, _results(patients, cfg, workers or default_workers(), set(splits["train"]))):
                if isinstance(res, str):
                    summary.skipped.append((p.case, res))
                    if strict:
                        raise PreprocessError(f"--strict: {res}")
                else:
                    split = split_of[p.case]
                    writer.add(split, p.case, res.images, res.masks, res.slices)
                    st = stats[split]
                    st["patients"] += 1
                    st["slices"] += len(res.slices)
                    st["tumour_pixels"] += int(res.masks[:, 0].sum())
                    info[p.case] = {"split": split, "shape": list(res.shape), "spacing": list(res.spacing),
                                    "box": list(res.box), "n_slices": len(res.slices), "views": res.views,
                                    "scan": res.stats.to_dict() if res.stats else None}
                if on_patient:
                    on_patient(p.case)
            if not info:
                raise PreprocessError(f"{raw}: no usable patient ({len(summary.skipped)} skipped)")
            used = {s: [c for c in splits[s] if c in info] for s in cache.SPLITS}
            writer.finish({"config": config, "source": source, "patients": info, "splits": used})
        _write_sidecars(out, splits, config)
    summary.seconds = time.perf_counter() - t0
    for s, st in stats.items():
        pix = st["slices"] * cfg.size * cfg.size
        summary.per_split[s] = {"patients": st["patients"], "slices": st["slices"],
                                "tumour_fraction": st["tumour_pixels"] / pix if pix else 0.0}
    return summary


def _json(d: dict[str, Any]) -> str:
    import json

    return json.dumps(d, indent=1, sort_keys=True) + "\n"


def _write_sidecars(out: Path, splits: dict[str, list[str]], config: dict[str, Any]) -> None:
    """splits.json and config.json beside the cache, each rewritten only when missing or different."""
    want_splits = {s: splits[s] for s in cache.SPLITS}
    try:
        current = load_splits(splits_path(out))
    except ValueError:
        current = None
    if current != want_splits:
        save_splits(want_splits, splits_path(out))
    cp = config_path(out)
    text = _json(config)
    if not cp.is_file() or cp.read_text(errors="replace") != text:
        try:
            write_text(cp, text)
        except OSError as e:
            raise PreprocessError(f"{cp}: could not write ({error_reason(e)})") from None


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold `.<name>.lock` beside the cache (`files.file_lock`, removed on release): a second
    preprocess to the same file is refused; a read-only folder is used unlocked (nobody can write there)."""
    lock = out.with_name(f".{out.name}.lock")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PreprocessError(f"{out}: cannot create its folder ({e.strerror or e})") from None
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(file_lock(lock, remove=True))
        except LockBusy as e:
            raise PreprocessError(f"{out}: another brats2d preprocess (pid {e.holder}) is writing this cache; "
                                  f"wait for it to finish or choose another --out") from None
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise PreprocessError(f"{out}: cannot create the lock file {lock.name} ({e.strerror or e})") from None
            # a read-only folder: nobody can write the cache there; an up-to-date check still works
        yield


def splits_path(cache_path: str | Path) -> Path:
    """The splits JSON written beside a cache: data_cache/brats2d.h5 -> data_cache/brats2d.splits.json."""
    p = Path(cache_path)
    return p.with_name(p.stem + ".splits.json")


def config_path(cache_path: str | Path) -> Path:
    p = Path(cache_path)
    return p.with_name(p.stem + ".config.json")
