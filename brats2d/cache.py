"""The HDF5 slice cache: the only module that knows its layout or opens the file.

Layout (``FORMAT_VERSION`` 1)::

    /                      attrs: format_version (int), config (JSON of PreprocessConfig), created (ISO time),
                                  source (JSON: {case: [[file, bytes, mtime_ns], ...]}),
                                  patients (JSON: {case: {split, shape, spacing, box, n_slices, views}}),
                                  splits (JSON: {train: [...], val: [...], test: [...]})
    /<split>/images        (N, C, S, S) float16|float32, normalized (config.norm), contiguous
    /<split>/masks         (N, K, S, S) uint8 0/1 (K = 1, or 3 for region "all": WT, TC, ET), contiguous
    /<split>/patient       (N,) variable-length UTF-8 case names
    /<split>/slice         (N,) int32 axial index z in the source volume; with config.views, a training
                           patient's axial slices come first, then each further plane's (counts in
                           patients[case].views), each indexed along its own plane's axis (brats2d/views.py)
    each images/masks dataset has attr sha256 (hex digest of its raw bytes) for `verify`.

Images and masks are stored contiguous and uncompressed so a reader can map them straight from the
file with ``numpy.memmap`` at the dataset's offset: no copy, no HDF5 call per batch, and the OS page
cache is shared between DataLoader workers. Writes go to a temporary file in the target folder that
is renamed over the target only once complete, so a crash never leaves a file that looks finished.
``read_meta`` (which every reader goes through) also checks the data checksums, once per process per
file, so a damaged cache is an error naming the file, not silently wrong slices.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import PreprocessConfig, with_defaults
from .files import atomic_write, error_reason, remove_stale_temps
from .splits import SPLITS

FORMAT_VERSION = 1
_BLOCK = 1024  # slices per block when copying/hashing; bounds memory for any cache size


class CacheError(Exception):
    """The cache file is missing, incompatible or damaged; the message names the file."""


@dataclass(frozen=True)
class CacheMeta:
    """Everything about a cache except the pixel data."""

    path: Path
    format_version: int
    config: dict[str, Any]
    created: str
    source: dict[str, list]
    patients: dict[str, dict[str, Any]]
    splits: dict[str, list[str]]
    counts: dict[str, int]  # slices per split
    image_shape: tuple[int, int, int]  # (C, S, S)
    mask_channels: int
    image_dtype: str
    checksums: dict[str, str]  # "split/name" -> sha256 of the raw data: the cache's content identity

    def identity(self) -> dict[str, Any]:
        """What a run records to know which cache it was trained on."""
        return {"path": str(self.path), "format_version": self.format_version, "created": self.created,
                "counts": self.counts, "config": self.config}


def _h5():
    import h5py

    return h5py


def _open(path: Path):
    if not Path(path).exists():
        raise CacheError(f"{path}: no such cache file (run `brats2d preprocess` first)")
    if Path(path).is_dir():
        raise CacheError(f"{path}: is a folder, not a cache file")
    try:
        return _h5().File(path, "r")
    except OSError as e:
        raise CacheError(f"{path}: not a readable HDF5 cache ({e})") from None


# Files whose data checksums this process has already checked: (path, device, inode, size, mtime_ns).
_VERIFIED: set[tuple[str, int, int, int, int]] = set()


def read_meta(path: str | Path) -> CacheMeta:
    """Read and check the cache's attributes, and (once per process per file) its data checksums.

    Raises CacheError naming the file for a wrong format_version, missing parts or corrupt data.
    """
    path = Path(path)
    meta = _read_meta(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        # A flipped bit in the slices would otherwise be trained or scored on silently.
        with _open(path) as f:
            _check_data(path, f, require=False)
        _VERIFIED.add(key)
    return meta


def _read_meta(path: Path) -> CacheMeta:
    with _open(path) as f:
        try:
            version = int(f.attrs["format_version"])
        except KeyError:
            raise CacheError(f"{path}: not a brats2d cache (no format_version attribute)") from None
        if version != FORMAT_VERSION:
            raise CacheError(
                f"{path}: cache format_version {version}, this brats2d reads version {FORMAT_VERSION}; "
                f"rebuild it with `brats2d preprocess --force`")
        try:
            counts = {s: int(f[s]["images"].shape[0]) for s in SPLITS}
            img = f["train"]["images"]
            return CacheMeta(
                path=path, format_version=version, config=with_defaults(PreprocessConfig, json.loads(f.attrs["config"])),
                created=str(f.attrs["created"]), source=json.loads(f.attrs["source"]),
                patients=json.loads(f.attrs["patients"]), splits=json.loads(f.attrs["splits"]),
                counts=counts, image_shape=tuple(img.shape[1:]), mask_channels=int(f["train"]["masks"].shape[1]),
                image_dtype=str(img.dtype),
                checksums={f"{s}/{n}": str(f[s][n].attrs.get("sha256", "")) for s in SPLITS for n in ("images", "masks")})
        except (KeyError, ValueError) as e:
            raise CacheError(f"{path}: damaged cache: missing or unreadable {e}") from None


def read_index(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(patient (N,) str, slice (N,) int32) of a split."""
    with _open(Path(path)) as f:
        if split not in f:
            raise CacheError(f"{path}: no split {split!r} (has {', '.join(k for k in f if k in SPLITS)})")
        g = f[split]
        return g["patient"].asstr()[...].astype(str), g["slice"][...].astype(np.int32)


def open_arrays(path: str | Path, split: str) -> tuple[Any, Any]:
    """The (images, masks) of a split as read-only numpy memmaps.

    Falls back to h5py datasets (with a warning) when the layout cannot be mapped, e.g. a compressed
    or chunked cache written by another tool; both support ``arr[sorted_indices]``.
    """
    path = Path(path)
    f = _open(path)
    if split not in f:
        f.close()
        raise CacheError(f"{path}: no split {split!r}")
    out = []
    for name in ("images", "masks"):
        ds = f[split][name]
        offset = ds.id.get_offset()
        if ds.shape[0] == 0:
            out.append(np.zeros(ds.shape, dtype=ds.dtype))
        elif ds.chunks is None and ds.compression is None and offset is not None:
            out.append(np.memmap(path, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape))
        else:
            warnings.warn(f"{path}:/{split}/{name} is chunked or compressed; reading through h5py (slower)")
            return f[split]["images"], f[split]["masks"]  # keeps `f` open as long as they live
    f.close()
    return out[0], out[1]


def verify(path: str | Path) -> None:
    """Recompute every data checksum; raise CacheError naming the dataset that does not match."""
    path = Path(path)
    _read_meta(path)
    with _open(path) as f:
        _check_data(path, f, require=True)


def _check_data(path: Path, f: Any, require: bool) -> None:
    """Compare every images/masks dataset with its stored sha256 (`require`: a missing one is an error)."""
    for split in SPLITS:
        for name in ("images", "masks"):
            ds = f[split][name]
            want = ds.attrs.get("sha256")
            if want is None:
                if not require:
                    continue
                raise CacheError(f"{path}:/{split}/{name} has no checksum; rebuild with --force")
            h = hashlib.sha256()
            for i in range(0, ds.shape[0], _BLOCK):
                h.update(np.ascontiguousarray(ds[i:i + _BLOCK]).tobytes())
            if h.hexdigest() != str(want):
                raise CacheError(f"{path}:/{split}/{name} is corrupt (checksum mismatch); "
                                 f"rebuild it with `brats2d preprocess --force`")


class CacheWriter:
    """Streams slices per split to temp files, then builds the HDF5 cache and renames it into place.

    Use as a context manager; nothing reaches `path` unless `finish()` completes. Memory use is one
    patient's slices at a time, whatever the cohort size.
    """

    def __init__(self, path: str | Path, image_shape: tuple[int, int, int], mask_channels: int, dtype: str):
        self.path = Path(path)
        self.image_shape, self.mask_channels, self.dtype = image_shape, mask_channels, np.dtype(dtype)
        self._dir = ""
        self._raw: dict[str, dict[str, Any]] = {s: {} for s in SPLITS}
        self._index: dict[str, tuple[list[str], list[int]]] = {s: ([], []) for s in SPLITS}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.path)
            self._dir = tempfile.mkdtemp(prefix=f".{self.path.name}.{os.getpid()}.", dir=self.path.parent)
            for s in SPLITS:
                for k in ("images", "masks"):
                    self._raw[s][k] = open(os.path.join(self._dir, f"{s}.{k}"), "wb")
        except OSError as e:
            self.close()
            raise CacheError(f"{self.path}: cannot create the cache or its temporary files beside it "
                             f"({error_reason(e)})") from None

    def add(self, split: str, case: str, images: np.ndarray, masks: np.ndarray, slices: np.ndarray) -> None:
        """images (n, C, S, S) float, masks (n, K, S, S) 0/1, slices (n,) z indices of one patient."""
        assert images.shape[1:] == self.image_shape and masks.shape[1] == self.mask_channels
        try:
            self._raw[split]["images"].write(np.ascontiguousarray(images, dtype=self.dtype).tobytes())
            self._raw[split]["masks"].write(np.ascontiguousarray(masks, dtype=np.uint8).tobytes())
        except OSError as e:
            self.close()
            raise CacheError(f"{self.path}: could not write cache ({error_reason(e)}); the previous file is untouched") from None
        names, zs = self._index[split]
        names.extend([case] * len(slices))
        zs.extend(int(z) for z in slices)

    def finish(self, attrs: dict[str, Any]) -> None:
        """Write the HDF5 file (temp name), fsync, and atomically rename it over `path`."""
        h5py = _h5()
        tmp = os.path.join(self._dir, "cache.h5")
        try:
            for s in SPLITS:
                for fh in self._raw[s].values():
                    fh.close()
            with atomic_write(self.path, fsync=True, temp=tmp), h5py.File(tmp, "w") as f:
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                for k, v in attrs.items():
                    f.attrs[k] = json.dumps(v, sort_keys=True)
                for s in SPLITS:
                    self._write_split(f, s)
        except (OSError, RuntimeError) as e:  # h5py reports some failed writes/flushes as RuntimeError
            raise CacheError(f"{self.path}: could not write cache ({error_reason(e)}); the previous file is untouched") from None
        finally:
            self.close()

    def _write_split(self, f, split: str) -> None:
        names, zs = self._index[split]
        n = len(zs)
        g = f.create_group(split)
        g.create_dataset("patient", data=np.array(names, dtype=object), dtype=_h5().string_dtype())
        g.create_dataset("slice", data=np.array(zs, dtype=np.int32))
        for key, dtype, shape in (("images", self.dtype, self.image_shape),
                                  ("masks", np.dtype(np.uint8), (self.mask_channels,) + self.image_shape[1:])):
            ds = g.create_dataset(key, shape=(n,) + shape, dtype=dtype)  # contiguous: memmap-able
            src = np.memmap(os.path.join(self._dir, f"{split}.{key}"), dtype=dtype, mode="r",
                            shape=(n,) + shape) if n else np.zeros((0,) + shape, dtype)
            h = hashlib.sha256()
            for i in range(0, n, _BLOCK):
                block = np.asarray(src[i:i + _BLOCK])
                ds[i:i + len(block)] = block
                h.update(block.tobytes())
            ds.attrs["sha256"] = h.hexdigest()
            del src

    def close(self) -> None:
        """Remove every temporary file (idempotent)."""
        import shutil

        for s in SPLITS:
            for fh in self._raw[s].values():
                try:
                    fh.close()
                except OSError:  # a failed flush of buffered bytes (disk full): the file is removed below
                    pass
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
