"""Synthetic BraTS-like phantoms: the project's embedded data set (demo and test suite run on it).

Each patient is a skull-stripped "brain" (a smoothly deformed ellipsoid with grey/white texture,
ventricles and sulcal CSF) holding one tumour of nested labels: oedema (2) around an enhancing
rim (4, or 3 with BraTS 2023 naming) around a necrotic core (1). Four MR contrasts are rendered
with a per-patient intensity scale, a smooth bias field and Rician noise, then written as int16
NIfTI with BraTS' 1 mm grid and affine. Everything is vectorised; one 240x240x155 patient with
its four modalities and seg is written in about a second on one core.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from .files import atomic_write

MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
NAMING: dict[str, dict[str, str]] = {
    "2021": {"flair": "_flair", "t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "seg": "_seg"},
    "2023": {"flair": "-t2f", "t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "seg": "-seg"},
}
# BraTS relabelled enhancing tumour from 4 to 3 in 2023.
ET_LABEL: dict[str, int] = {"2021": 4, "2023": 3}

# Mean intensity of each tissue relative to the modality's scale, read off real BraTS cases
# (e.g. FLAIR oedema ~2x normal brain, T1ce enhancing rim ~1.5x, T2 CSF brightest).
#        white  grey   csf   oedema enhancing necrosis
CONTRAST: dict[str, tuple[float, ...]] = {
    "flair": (0.80, 1.00, 0.25, 1.70, 1.85, 1.45),
    "t1": (1.00, 0.78, 0.35, 0.78, 0.90, 0.55),
    "t1ce": (1.00, 0.80, 0.35, 0.85, 1.80, 0.50),
    "t2": (0.62, 0.88, 2.20, 1.55, 1.25, 1.80),
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _field(rng: np.random.Generator, axes: Sequence[np.ndarray], cell: float) -> np.ndarray:
    """Smooth Gaussian random field on the grid axes[0] x axes[1] x axes[2] (coordinates in mm).

    A sum of Gaussian bumps on a lattice of spacing `cell` mm with N(0, 1) weights. The basis is
    separable, so evaluation is three small matrix products (BLAS) instead of an interpolating
    zoom of the full volume, and the result is smooth at any resolution. Rows are normalised so
    the field has unit variance everywhere. Returns float32 of shape (len(a) for a in axes).
    """
    mats = []
    for ax in axes:
        centres = np.arange(ax.min() - 1.5 * cell, ax.max() + 1.5 * cell + 1e-6, cell)
        m = np.exp(-0.5 * ((ax[:, None] - centres[None, :]) / (0.7 * cell)) ** 2)
        mats.append((m / np.sqrt((m**2).sum(1, keepdims=True))).astype(np.float32))
    w = rng.standard_normal(tuple(m.shape[1] for m in mats)).astype(np.float32)
    f = np.tensordot(mats[0], w, axes=(1, 0))  # (X, b, c)
    f = np.matmul(mats[1][None], f)  # (X, Y, c)
    n = f.shape[0] * f.shape[1]
    return (f.reshape(n, -1) @ mats[2].T).reshape(len(axes[0]), len(axes[1]), len(axes[2]))


def _affine(shape: tuple[int, int, int]) -> np.ndarray:
    """BraTS' LPS-style voxel-to-world matrix (real 2018 files: diag(-1, -1, 1), y origin 239)."""
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])
    aff[1, 3] = shape[1] - 1
    return aff


def _tumour(rng: np.random.Generator, cen: np.ndarray, semi: np.ndarray,
            brain: np.ndarray) -> tuple[tuple[slice, ...], list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Places one tumour in `brain` (bool mask) of centre `cen` and semi-axes `semi` (voxels).

    Returns (bbox slices into `brain`; bool masks [oedema, core, necrosis], nested, oedema =
    whole tumour; float32 intensity weights in [0, 1] for the same three; texture in [-1, 1]),
    all arrays of the bbox's shape.

    The oedema's diameter is 12-35 % of the brain's width; with its deformation it stays within
    radius 0.92 of the undeformed brain and spans at most 55 % of the brain's z extent, so it never
    leaves the brain and tumour-free axial slices always remain.
    """
    deform = 0.35
    r = rng.uniform(0.12, 0.35) * semi[0] * rng.uniform(0.8, 1.2, 3)  # semi-axes, voxels
    r = np.minimum(np.maximum(r, [5.0, 5.0, 4.0]), 0.55 * semi / (1 + deform))
    ext = r * (1 + deform) / semi  # tumour half-extent in brain-normalised units
    c = np.zeros(3)
    for _ in range(50):  # rejection sampling: the box around the tumour must fit in the brain
        cand = rng.uniform(-0.9, 0.9, 3)
        # Two upper bounds on the tumour's farthest point from the brain centre; either suffices.
        far = min(np.sqrt(((np.abs(cand) + ext) ** 2).sum()), np.sqrt((cand**2).sum()) + ext.max())
        if far <= 0.92:
            c = cand
            break
    centre = cen + c * semi  # voxel coordinates in the crop
    lo = np.maximum(np.floor(centre - r * (1 + deform) - 2), 0).astype(int)
    hi = np.minimum(np.ceil(centre + r * (1 + deform) + 3), brain.shape).astype(int)
    axes = [np.arange(lo[i], hi[i], dtype=np.float32) - centre[i] for i in range(3)]
    rm = float(r.mean())
    rho = np.sqrt(sum((ax.reshape([-1 if j == i else 1 for j in range(3)]) / r[i]) ** 2 for i, ax in enumerate(axes)))
    d_ed = rho / (1 + deform * np.tanh(_field(rng, axes, 0.6 * rm)))
    # Core is shifted off-centre (oedema is rarely concentric) and its boundaries are smoother.
    shift = rng.uniform(-0.2, 0.2, 3) * r
    rho_c = np.sqrt(sum((((ax - shift[i]).reshape([-1 if j == i else 1 for j in range(3)])) / r[i]) ** 2
                        for i, ax in enumerate(axes)))
    # Floors in voxels keep a rim and a core even in the tiny phantoms the tests use.
    tc = min(max(rng.uniform(0.5, 0.8), 3.0 / r.min()), 0.85)
    tn = min(max(tc * rng.uniform(0.45, 0.8), 1.5 / r.min()), tc - 1.0 / r.min())
    d_core = rho_c / (tc * (1 + 0.2 * np.tanh(_field(rng, axes, 0.8 * rm))))
    d_nec = rho_c / (tn * (1 + 0.25 * np.tanh(_field(rng, axes, 0.8 * rm))))
    tex = np.tanh(_field(rng, axes, max(0.25 * rm, 2.0)))
    bb = tuple(slice(lo[i], hi[i]) for i in range(3))
    # Erosion makes the nesting strict (each label's 6-neighbours lie in the next outer one), as
    # in the BraTS description: oedema surrounds the enhancing rim, which surrounds necrosis.
    ed = (d_ed < 1) & brain[bb]
    core = (d_core < 1) & ndimage.binary_erosion(ed)
    nec = (d_nec < 1) & ndimage.binary_erosion(core)
    # Intensities follow the final labels, blurred like partial volume (oedema fades out more).
    weights = [ndimage.gaussian_filter(m.astype(np.float32), max(0.6, k * rm))
               for m, k in ((ed, 0.05), (core, 0.02), (nec, 0.03))]
    return bb, [ed, core, nec], weights, tex


def synth_patient(shape: tuple[int, int, int], rng: np.random.Generator, naming: str = "2021") -> dict[str, np.ndarray]:
    """One synthetic patient on a 1 mm isotropic grid of `shape` (X, Y, Z) voxels (each >= 16).

    Returns {'flair', 't1', 't1ce', 't2': int16 (X, Y, Z) arrays, > 0 exactly inside the brain and
    0 outside; 'seg': uint8 (X, Y, Z) labels 0 background, 1 necrosis, 2 oedema, 4 enhancing
    (3 with naming '2023')}. Deterministic given the generator's state.
    """
    if naming not in NAMING:
        raise ValueError(f"naming must be one of {sorted(NAMING)}, got {naming!r}")
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be 3 sizes >= 16, got {shape}")
    size = np.array(shape, dtype=float)
    # Brain ellipsoid: ~62-72 % of the field left-right, 72-80 % front-back, 80-88 % of z.
    semi = size * [rng.uniform(0.31, 0.36), rng.uniform(0.36, 0.40), rng.uniform(0.40, 0.44)]
    amp = 0.06
    centre = (size - 1) / 2 + rng.uniform(-0.02, 0.02, 3) * size * [1, 1, 0.5]
    reach = semi * [1.08, 1, 1] / (1 - amp)  # farthest brain voxel given the egg and deformation below
    lo = np.maximum(np.floor(centre - reach - 1), 0).astype(int)
    hi = np.minimum(np.ceil(centre + reach + 2), size).astype(int)
    crop = tuple(slice(lo[i], hi[i]) for i in range(3))
    axes = [np.arange(lo[i], hi[i], dtype=np.float32) for i in range(3)]
    xn, yn, zn = ((axes[i] - centre[i]) / semi[i] for i in range(3))
    xn, yn, zn = xn[:, None, None], yn[None, :, None], zn[None, None, :]
    xe = xn / (1 + 0.08 * yn)  # egg shape: the back of the head is wider than the front
    rho = np.sqrt(xe**2 + yn**2 + zn**2)
    scale_mm = float(semi[:2].mean())  # textures scale with the head so small phantoms look alike
    r = rho * (1 + amp * np.tanh(_field(rng, axes, 0.45 * scale_mm)))
    brain = r < 1
    # Gyri: the zero level set of a smooth random field is a labyrinth of thin lines, which reads
    # as sulci (CSF) lined with grey matter; deeper in, a few grey islands stand for the nuclei.
    sulc = np.abs(_field(rng, axes, 0.07 * scale_mm))
    deep = _field(rng, axes, 0.12 * scale_mm)
    cortex = _sigmoid((r - 0.62) / 0.04)
    g = np.maximum(cortex * _sigmoid((0.6 - sulc) / 0.08), _sigmoid((r - 0.95) / 0.015))
    g = np.maximum(g, 0.8 * _sigmoid((deep - 1.4) / 0.15) * (r < 0.5))
    # CSF: two curved lateral ventricles (one |x| expression gives the symmetric pair), sulci, the
    # interhemispheric fissure in front of and behind the ventricles.
    vs = rng.uniform(0.7, 1.3)
    v = ((np.abs(xn) - vs * (0.07 + 0.1 * yn**2)) / (0.06 * vs)) ** 2
    v = v + ((yn + 0.05) / (0.32 * vs)) ** 2 + ((zn - 0.12) / 0.28) ** 2
    csf = _sigmoid((1 - v * (1 + 0.15 * deep)) / 0.1)
    csf = np.maximum(csf, cortex * _sigmoid((r - 0.75) / 0.05) * _sigmoid((0.12 - sulc) / 0.04))
    fissure = (np.abs(xn) * semi[0] < 0.8) & ((np.abs(yn) > 0.55) | (zn > 0.45)) & (r > 0.3)
    csf = np.maximum(csf, 0.8 * fissure)
    et = ET_LABEL[naming]
    bb, (ed, core, nec), (w_ed, w_core, w_nec), tex = _tumour(rng, centre - lo, semi, brain)
    out: dict[str, np.ndarray] = {"seg": np.zeros(shape, np.uint8)}
    out["seg"][crop][bb] = np.where(nec, 1, np.where(core, et, np.where(ed, 2, 0)))
    scale = np.exp(rng.uniform(np.log(300), np.log(3000)))  # sites differ by an order of magnitude
    jitter = rng.uniform(0.75, 1.3, 3)  # per-patient tumour contrast strength
    for mod in MODALITIES:
        wm, gm, cs, c_ed, c_et, c_nec = CONTRAST[mod]
        base = wm + (gm - wm) * g
        base += (cs - base) * csf
        sub = base[bb]  # a view: the tumour is painted in place
        sub += ((1 + (c_ed - 1) * jitter[0]) * (1 + 0.08 * tex) - sub) * w_ed
        sub += ((1 + (c_et - 1) * jitter[1]) * (1 + 0.12 * tex) - sub) * w_core
        sub += ((1 + (c_nec - 1) * jitter[2]) * (1 + 0.08 * tex) - sub) * w_nec
        s = scale * rng.uniform(0.8, 1.25)
        # Coil bias: a head-sized smooth multiplicative field, at most +-15 %, different per sequence.
        b = np.tanh(_field(rng, axes, 0.9 * scale_mm))[brain]
        val = base[brain] * (1 + rng.uniform(0.06, 0.15) * b) * s
        sigma = s * rng.uniform(0.02, 0.04)
        n1, n2 = rng.standard_normal((2, val.size), dtype=np.float32) * sigma
        val = np.sqrt((val + n1) ** 2 + n2**2)  # Rician magnitude noise
        out[mod] = np.zeros(shape, np.int16)
        # >= 1 so that "non-zero" is exactly the brain mask, as in skull-stripped BraTS volumes.
        out[mod][crop][brain] = np.clip(np.rint(val), 1, np.iinfo(np.int16).max)
    return out


def _save_atomic(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Writes a NIfTI to a temp name in the same folder then renames, so no half-written file survives."""
    img = nib.Nifti1Image(arr, affine)
    img.header.set_data_dtype(arr.dtype)
    img.header.set_zooms((1.0, 1.0, 1.0))
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    # Ends in .nii.gz so nibabel gzips it, but not in a modality suffix so readers never pick it
    # up; not mkstemp, whose 0600 mode would survive the rename.
    with atomic_write(path, suffix=".partial.nii.gz") as tmp:
        nib.save(img, tmp)


def case_name(i: int, naming: str = "2021") -> str:
    """Folder/case name of synthetic patient `i`: Synth_000 (2021) or BraTS-GLI-00000-000 (2023)."""
    return f"Synth_{i:03d}" if naming == "2021" else f"BraTS-GLI-{i:05d}-000"


def write_cohort(out: str | Path, patients: int, seed: int = 0, shape: tuple[int, int, int] = (240, 240, 155),
                 naming: str = "2021", modalities: tuple[str, ...] = MODALITIES) -> list[Path]:
    """Writes out/<case>/<case><suffix>.nii.gz for each modality plus seg, for `patients` patients.

    Volumes are int16, seg uint8, all (X, Y, Z) = `shape` at 1 mm. Patient i draws from its own
    generator seeded by (seed, i), so it is identical whatever `patients` is. Returns the folders.
    """
    if naming not in NAMING:
        raise ValueError(f"naming must be one of {sorted(NAMING)}, got {naming!r}")
    unknown = set(modalities) - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; choose from {MODALITIES}")
    out = Path(out)
    affine = _affine(shape)
    folders = []
    for i in range(patients):
        case = case_name(i, naming)
        folder = out / case
        folder.mkdir(parents=True, exist_ok=True)
        vols = synth_patient(shape, np.random.default_rng([seed, i]), naming)
        for mod in (*modalities, "seg"):
            _save_atomic(vols[mod], affine, folder / f"{case}{NAMING[naming][mod]}.nii.gz")
        folders.append(folder)
    return folders
