"""Finding BraTS patients on disk and reading their NIfTI volumes with clear errors.

Two naming schemes are recognised:

* BraTS 2018-2021: ``<case>/<case>_flair.nii.gz``, ``_t1``, ``_t1ce``, ``_t2``, ``_seg``
* BraTS 2023:      ``<case>/<case>-t2f.nii.gz``, ``-t1n``, ``-t1c``, ``-t2w``, ``-seg``
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SUFFIXES: dict[str, dict[str, str]] = {
    "2021": {"flair": "_flair", "t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "seg": "_seg"},
    "2023": {"flair": "-t2f", "t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "seg": "-seg"},
}
# Label of the enhancing tumour: 4 up to BraTS 2021, 3 from BraTS 2023 on.
ET_LABEL = {"2021": 4, "2023": 3}
EXTS = (".nii.gz", ".nii")


class InputError(Exception):
    """A patient's input is unusable; the message names the file and the problem."""


@dataclass(frozen=True)
class Patient:
    """One patient folder: its case name, naming scheme and the files found (modality -> path)."""

    case: str
    folder: Path
    naming: str
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def et_label(self) -> int:
        return ET_LABEL[self.naming]

    def identity(self) -> list[list]:
        """[name, size, mtime_ns] of every file: enough to tell when inputs changed."""
        out = []
        for mod in sorted(self.files):
            st = self.files[mod].stat()
            out.append([self.files[mod].name, st.st_size, st.st_mtime_ns])
        return out


def _find(folder: Path, case: str, suffix: str) -> Path | None:
    for ext in EXTS:
        p = folder / f"{case}{suffix}{ext}"
        if p.exists():
            return p
    # Tolerate folders renamed after download: any single file ending in the suffix.
    hits = sorted(p for ext in EXTS for p in folder.glob(f"*{suffix}{ext}"))
    return hits[0] if len(hits) == 1 else None


def patient_from_folder(folder: Path) -> Patient | None:
    """A Patient if `folder` holds BraTS-named files of either scheme, else None."""
    folder = Path(folder)
    for naming, suffixes in SUFFIXES.items():
        files = {m: p for m, s in suffixes.items() if (p := _find(folder, folder.name, s)) is not None}
        # FLAIR (t2f) or seg identifies the scheme; other modalities are checked when needed.
        if "flair" in files or "seg" in files:
            case = folder.name
            return Patient(case=case, folder=folder, naming=naming, files=files)
    return None


def discover(raw: str | Path) -> list[Patient]:
    """All patients under `raw` (a folder of patient folders, or one patient folder), sorted by case.

    Raises InputError when nothing BraTS-like is found, naming what was expected.
    """
    raw = Path(raw)
    if not raw.exists():
        raise InputError(f"{raw}: no such folder")
    if not raw.is_dir():
        raise InputError(f"{raw}: not a folder (expected a folder of BraTS patient folders)")
    single = patient_from_folder(raw)
    if single is not None:
        return [single]
    patients = [p for d in sorted(raw.iterdir()) if d.is_dir() and (p := patient_from_folder(d)) is not None]
    if not patients:
        raise InputError(
            f"{raw}: not a BraTS-like folder: no <case>/<case>_flair.nii.gz (BraTS 2018-2021) "
            f"or <case>/<case>-t2f.nii.gz (BraTS 2023) found"
        )
    return patients


def _read_image(path: Path):
    """The nibabel image of `path`; a .gz file is decompressed whole first.

    nibabel reads only the bytes the header asks for and never the gzip trailer, so a flipped bit in
    the compressed data or a cut-off end would load as silently different voxels; decompressing it
    all checks the trailer's CRC-32 and length (EOFError / BadGzipFile / zlib.error on damage).
    """
    import gzip

    import nibabel as nib

    if not path.name.endswith(".gz"):
        return nib.load(str(path))
    raw = gzip.decompress(path.read_bytes())
    if not raw:
        raise ValueError("empty file")
    nifti2 = len(raw) >= 4 and 540 in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big"))
    return (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_bytes(raw)


def load_volume(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read one 3D NIfTI fully into memory.

    Returns (data as stored, e.g. int16 (X, Y, Z); affine (4, 4) float64; voxel spacing in mm).
    Any decoding problem (truncated gzip, bad header, wrong dimensionality) is an InputError naming the file.
    """
    try:
        img = _read_image(Path(path))
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel, gzip, zlib and OSError all signal corruption differently
        why = " ".join(str(e).split())  # one line: some nibabel messages span several
        raise InputError(f"{path}: cannot read NIfTI ({type(e).__name__}: {why})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {data.shape}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise InputError(f"{path}: invalid voxel spacing {zooms} (pixdim must be finite and > 0)")
    return data, np.asarray(img.affine, dtype=np.float64), zooms  # type: ignore[return-value]


def check_left_right(affine: np.ndarray, path: Path) -> None:
    """InputError naming `path` unless its first array axis runs left-right (what mirror reflects)."""
    from nibabel.orientations import aff2axcodes

    codes = aff2axcodes(affine)
    if codes[0] not in ("L", "R"):
        raise InputError(f"{path}: mirror reflects the first array axis, which here runs {codes[0]}-wards "
                         f"(orientation {''.join(str(c) for c in codes)}), not left-right; reorient the scan "
                         "(e.g. nibabel.as_closest_canonical) or train without --mirror")


def load_patient(patient: Patient, modalities: tuple[str, ...], need_seg: bool = True, left_right: bool = False,
                 optional: tuple[str, ...] = ()):
    """Read the requested modalities (stacked (C, X, Y, Z) float32) and the seg (X, Y, Z) int16 or None.

    A modality in `optional` that the patient lacks comes back as zeros (predict with a model trained with
    modality dropout: `prepare(..., blank=...)` then leaves it blank); the first modality is never optional.

    Checks that every file exists, shapes and affines agree, and voxels are finite (and with
    `left_right`, that the first array axis runs left-right: what mirror input needs); returns
    (image, seg, affine, spacing). Raises InputError naming the offending file.
    """
    wanted = list(modalities) + (["seg"] if need_seg else [])
    for m in wanted:
        if m not in patient.files and (m not in optional or m == modalities[0]):
            suffix = SUFFIXES[patient.naming][m]
            path = patient.folder / (patient.case + suffix + ".nii.gz")
            if m == "seg":
                raise InputError(f"{path}: missing seg file")
            raise InputError(f"{path}: missing {m} file (this model reads {', '.join(modalities)}); patient skipped")
    read: dict[str, np.ndarray] = {}
    ref_path = patient.files[modalities[0]]
    ref_affine: np.ndarray | None = None
    spacing = (1.0, 1.0, 1.0)
    for m in (m for m in modalities if m in patient.files):  # an absent optional one is zeros, below
        data, affine, zooms = load_volume(patient.files[m])
        if ref_affine is None:
            ref_affine, spacing = affine, zooms
            if left_right:
                check_left_right(affine, patient.files[m])
        elif data.shape != read[modalities[0]].shape:
            raise InputError(f"{patient.files[m]}: shape {data.shape} differs from {ref_path.name} {read[modalities[0]].shape}")
        elif not np.allclose(affine, ref_affine, atol=1e-3):
            raise InputError(f"{patient.files[m]}: affine differs from {ref_path.name}")
        vol = data.astype(np.float32, copy=False)
        if not np.isfinite(vol).all():
            raise InputError(f"{patient.files[m]}: contains NaN or infinite voxels")
        read[m] = vol
    chans = [read[m] if m in read else np.zeros_like(read[modalities[0]]) for m in modalities]
    seg = None
    if need_seg:
        sdata, saffine, _ = load_volume(patient.files["seg"])
        if sdata.shape != chans[0].shape:
            raise InputError(f"{patient.files['seg']}: shape {sdata.shape} differs from {ref_path.name} {chans[0].shape}")
        if not np.allclose(saffine, ref_affine, atol=1e-3):
            raise InputError(f"{patient.files['seg']}: affine differs from {ref_path.name}")
        if np.issubdtype(sdata.dtype, np.floating):
            if not np.isfinite(sdata).all():
                raise InputError(f"{patient.files['seg']}: contains NaN or infinite voxels")
            sdata = np.rint(sdata)
        seg = sdata.astype(np.int16, copy=False)
    assert ref_affine is not None
    return np.stack(chans), seg, ref_affine, spacing
