"""The drop-in page's server side: a bounded multipart reader and background `predict` jobs with progress.

Order of checks for an upload: size (Content-Length against the limit, before any byte is read), then
each part's file name (plain BraTS-style .nii/.nii.gz names), then each file's NIfTI signature
(files.nifti_problem), and only then nibabel, inside predict. Files live in a per-job temporary
folder under the server's upload root. Every failure becomes a one-line message for the page.
"""

from __future__ import annotations

import mmap
import re
import secrets
import shutil
import sys
import tempfile
import threading
import traceback
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import BinaryIO, Callable

from ..nifti import SUFFIXES, InputError
from .files import NIFTI_SUFFIXES, nifti_problem

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,150}")
MAX_FILES = 6  # four modalities, a seg, and one spare


class UploadError(Exception):
    """A refused upload; the message is shown on the page as is. `status`: the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    """One uploaded patient being predicted. `state`: queued | running | done | error."""

    id: str
    state: str = "queued"
    stage: str = "received"
    progress: float = 0.0
    message: str = ""
    case_id: str = ""
    files: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "state": self.state, "stage": self.stage, "progress": round(self.progress, 3),
                "message": self.message, "case_id": self.case_id, "files": self.files}


def boundary_of(content_type: str) -> bytes:
    msg = Message()
    msg["content-type"] = content_type
    if msg.get_content_type() != "multipart/form-data":
        raise UploadError("expected a multipart/form-data upload")
    b = msg.get_param("boundary")
    if not isinstance(b, str) or not 0 < len(b) <= 70:
        raise UploadError("multipart upload without a valid boundary")
    return b.encode("latin-1")


def read_body(stream: BinaryIO, length: int, dest: Path, chunk: int = 1 << 20) -> Path:
    """Copy exactly `length` bytes of the request body to dest (the caller checked the limit)."""
    left = length
    with open(dest, "wb") as f:
        while left > 0:
            buf = stream.read(min(chunk, left))
            if not buf:
                raise UploadError("the upload was cut off before its end")
            f.write(buf)
            left -= len(buf)
    return dest


def split_parts(body: Path, boundary: bytes, folder: Path, max_file: int) -> list[Path]:
    """Write every file part of a multipart body to folder/<its plain file name>; returns the paths."""
    delim = b"--" + boundary
    out: list[Path] = []
    with open(body, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        pos = m.find(delim)
        if pos < 0:
            raise UploadError("malformed upload (no multipart boundary)")
        while True:
            pos += len(delim)
            if m[pos:pos + 2] == b"--":
                break  # closing delimiter
            head_end = m.find(b"\r\n\r\n", pos)
            nxt = m.find(b"\r\n" + delim, head_end)
            if head_end < 0 or nxt < 0 or head_end - pos > 8192:
                raise UploadError("malformed upload (unterminated part)")
            headers = Message()
            for line in m[pos:head_end].decode("latin-1").split("\r\n"):
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip()] = v.strip()
            start = head_end + 4
            name = headers.get_param("filename", header="content-disposition")
            if isinstance(name, str) and name:
                if len(out) >= MAX_FILES:
                    raise UploadError(f"too many files (at most {MAX_FILES}: the modalities and a seg)")
                base = re.split(r"[\\/]", name)[-1]
                if not NAME.fullmatch(base) or not base.endswith(NIFTI_SUFFIXES):
                    raise UploadError(f"{base!r}: not a NIfTI file name (expected e.g. <case>_flair.nii.gz)")
                if nxt - start > max_file:
                    raise UploadError(f"{base}: {(nxt - start) / 2**20:.1f} MB is over the {max_file / 2**20:.0f} MB "
                                      "limit per file", 413)
                dest = folder / base
                if dest.exists():
                    raise UploadError(f"{base}: uploaded twice")
                with open(dest, "wb") as g:
                    for at in range(start, nxt, 1 << 20):  # in 1 MB pieces: a part is never all in memory
                        g.write(m[at:min(at + (1 << 20), nxt)])
                out.append(dest)
            pos = nxt + 2
    if not out:
        raise UploadError("no files in the upload")
    return out


def case_of(files: list[Path]) -> str:
    """The one case name the files share (<case>_flair.nii.gz, <case>-t2f.nii.gz, ...)."""
    names = set()
    for f in files:
        stem = f.name[: -len(".nii.gz")] if f.name.endswith(".nii.gz") else f.name[: -len(".nii")]
        hit = [stem[: -len(s)] for scheme in SUFFIXES.values() for s in scheme.values() if stem.endswith(s)]
        if not hit or not hit[0]:
            wanted = ", ".join(f"<case>{s}" for s in SUFFIXES["2021"].values())
            raise UploadError(f"{f.name}: name does not say the modality (expected {wanted}, .nii.gz)")
        names.add(hit[0])
    if len(names) != 1:
        raise UploadError(f"the files name different patients: {', '.join(sorted(names))}")
    return names.pop()


def stage_upload(files: list[Path], job_dir: Path) -> Path:
    """Check each file's NIfTI signature, then move them into job_dir/in/<case>/; returns that folder."""
    for f in files:
        problem = nifti_problem(f)
        if problem is not None:
            raise UploadError(f"{f.name}: {problem}")
    case = case_of(files)
    folder = job_dir / "in" / case
    folder.mkdir(parents=True)
    for f in files:
        f.rename(folder / f.name)
    return folder


class Jobs:
    """Upload jobs, run one at a time on a background thread (predict uses every core already)."""

    def __init__(self, root: Path, run: Callable[[Job, Path, Path], None]) -> None:
        self.root = root
        self._run = run
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._one = threading.Lock()

    @classmethod
    def in_tempdir(cls, run: Callable[[Job, Path, Path], None]) -> "Jobs":
        return cls(Path(tempfile.mkdtemp(prefix="brats2d-view-")), run)

    def new(self) -> tuple[Job, Path]:
        job = Job(secrets.token_hex(8))
        d = self.root / job.id
        d.mkdir()
        with self._lock:
            self._jobs[job.id] = job
        return job, d

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def start(self, job: Job, folder: Path, job_dir: Path) -> None:
        threading.Thread(target=self._work, args=(job, folder, job_dir), daemon=True, name=f"job-{job.id}").start()

    def _work(self, job: Job, folder: Path, job_dir: Path) -> None:
        with self._one:
            job.state, job.stage = "running", "predicting"
            try:
                self._run(job, folder, job_dir / "out")
                job.state, job.stage, job.progress = "done", "done", 1.0
            except (InputError, UploadError, ValueError, OSError) as e:
                job.state, job.message = "error", " ".join(str(e).replace(str(job_dir) + "/", "").split())
            except Exception as e:  # never a traceback on the page; the console keeps it for the operator
                traceback.print_exc(file=sys.stderr)
                job.state, job.message = "error", f"unexpected {type(e).__name__} while predicting (see the server console)"

    def fail(self, job: Job, message: str) -> None:
        job.state, job.message = "error", message

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
