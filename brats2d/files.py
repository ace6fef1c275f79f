"""Files that are never half-written and folders that one process uses at a time.

* `atomic_write`: write to a temp file beside the target, then rename it over the target (one
  `os.replace`, atomic on POSIX); on any failure the temp file is removed and the previous file stays.
* `remove_stale_temps`: remove the temp files of writers that were killed (SIGKILL leaves them).
* `file_lock`: an exclusive `flock` on a lock file, released by the OS when its holder dies.
* `error_reason`: "disk full" for ENOSPC however the layer below reported it, for one-line errors.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator


def error_reason(e: BaseException) -> str:
    """'disk full' for ENOSPC/EDQUOT (also when wrapped, e.g. by h5py or torch), else the error's first line."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(e):
        return "disk full"
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def temp_path(path: str | Path, suffix: str = ".tmp") -> Path:
    """`.<name>.<pid>.<random>.<suffix>` beside `path`: hidden, unique per writer, and recognisable by
    `remove_stale_temps` (the pid says whether its writer still runs)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")


@contextlib.contextmanager
def atomic_write(path: str | Path, *, fsync: bool = False, suffix: str = ".tmp",
                 temp: str | Path | None = None) -> Iterator[Path]:
    """Yield a temp path to write the new content of `path` to; on a normal exit rename it over `path`.

    `fsync` flushes the temp file to the disk before the rename, so a power cut cannot leave a renamed
    but empty file (used for checkpoints and caches; small sidecars skip it). `suffix` ends the temp
    name (a writer that picks the format from the extension needs e.g. ".tmp.nii.gz"); `temp` gives
    the temp path instead (it must be on the same filesystem). If the body or the rename raises, the
    temp file is removed and the exception propagates: the previous `path` is untouched.
    """
    path = Path(path)
    tmp = Path(temp) if temp is not None else temp_path(path, suffix)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Replace `path`'s content with `text` atomically (temp file + rename); OSError on failure."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    """`data` as indented JSON (NumPy scalars as floats), replacing `path` atomically."""
    write_text(path, json.dumps(data, indent=1, default=float) + "\n")


def read_json(path: str | Path) -> Any | None:
    """The JSON in `path`, or None when it is missing or unreadable (an unfinished step)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def remove_stale_temps(path: str | Path) -> None:
    """Delete temp files/folders `.<name>.<pid>.*` beside `path` left by writers that were killed
    (their pid no longer runs); those of live writers are kept."""
    path = Path(path)
    for d in path.parent.glob(f".{path.name}.*.*"):
        try:
            pid = int(d.name[len(path.name) + 2:].split(".")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d, ignore_errors=True)
            else:
                d.unlink(missing_ok=True)
        except (ValueError, PermissionError, OverflowError):
            continue


class LockBusy(Exception):
    """Another process holds the lock; `holder` is its pid as it wrote it ("?" if unknown)."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path}: locked by pid {holder}")
        self.path, self.holder = path, holder


@contextlib.contextmanager
def file_lock(path: str | Path, *, remove: bool = False) -> Iterator[None]:
    """Hold an exclusive, non-blocking `flock` on `path` (created if missing), with this pid written in it.

    Raises LockBusy when another process holds it, OSError when the file cannot be created. The OS
    drops the lock when its holder dies, even by SIGKILL. With `remove` the file is deleted on release
    (while still locked); a process that locked the deleted file notices the inode changed and retries.
    """
    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LockBusy(path, holder) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError:
            pass  # the pid is only for the message of a refused second process
        yield
    finally:
        if remove:
            path.unlink(missing_ok=True)
        os.close(fd)  # closing releases the flock
