"""What the viewer may read: a request path resolved inside one named root, and the NIfTI signature check.

Every file the server sends goes through `resolve`: the path is split into plain names (no empty,
'.', '..', hidden or backslash parts, no NUL), joined under the root, and the real path (symlinks
followed) must still lie inside the root's real path and be a regular file with an allowed suffix.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from urllib.parse import unquote

SERVED_SUFFIXES = (".nii.gz", ".nii", ".csv", ".json", ".js", ".css", ".html", ".png", ".svg")
NIFTI_SUFFIXES = (".nii.gz", ".nii")


class Refused(Exception):
    """A request path that must not be served; `status` is the HTTP status to answer (403 or 404)."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


def split_request_path(raw: str) -> list[str]:
    """'/a/b%20c' -> ['a', 'b c'], refusing anything that is not a plain relative name.

    Decodes once (so '%2e%2e' is '..' and refused; '%252e' stays a literal '%2e' name that is
    not found); query strings must be stripped by the caller.
    """
    path = unquote(raw, errors="strict")
    if "\x00" in path or "\\" in path:
        raise Refused("NUL or backslash in path")
    parts = path.split("/")
    if parts and parts[0] == "":
        parts = parts[1:]
    if not parts or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise Refused("not a plain relative path (empty, '.', '..' or hidden part)")
    return parts


def resolve(root: Path, parts: list[str], suffixes: tuple[str, ...] = SERVED_SUFFIXES) -> Path:
    """The real path of root/parts..., if it is a regular file inside root's real path (else Refused)."""
    base = root.resolve(strict=True)
    if not any(parts[-1].endswith(s) for s in suffixes):
        raise Refused(f"file type not served: {parts[-1]}")
    candidate = base.joinpath(*parts)
    try:
        real = candidate.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise Refused("no such file", 404) from None
    except (OSError, RuntimeError):  # symlink loop, permission
        raise Refused("unreadable path") from None
    if not real.is_relative_to(base):
        raise Refused("outside the served folder (symlink out)")
    if not real.is_file():
        raise Refused("not a regular file", 404)
    return real


NIFTI_MAGIC = {348: (344, (b"n+1\x00",)), 540: (4, (b"n+2\x00",))}


def nifti_problem(path: Path) -> str | None:
    """None when `path` starts like a single-file NIfTI-1/2 image (gzip allowed), else what is wrong.

    Reads at most the 540-byte header (decompressed), so nothing else has to parse a hostile file first.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:  # type: ignore[operator]
            hdr = f.read(540)
    except (OSError, EOFError, zlib.error) as e:
        return f"cannot read it ({'corrupt gzip' if isinstance(e, (EOFError, zlib.error, gzip.BadGzipFile)) else e})"
    if len(hdr) < 348:
        return f"too short for a NIfTI header ({len(hdr)} bytes)"
    for endian in "<>":
        size = struct.unpack(f"{endian}i", hdr[:4])[0]
        if size in NIFTI_MAGIC:
            at, magics = NIFTI_MAGIC[size]
            magic = hdr[at:at + 4]
            if magic in magics:
                return None
            if magic == b"ni1\x00":
                return "a NIfTI .hdr/.img pair; upload single-file .nii or .nii.gz images"
            return f"header size {size} but no NIfTI magic at offset {at}"
    return "not a NIfTI image (no NIfTI-1/2 header)"
