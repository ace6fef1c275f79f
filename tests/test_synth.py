"""The synthetic phantoms: file layout, NIfTI geometry, labels, anatomy, contrast, determinism."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from brats2d import synth
from brats2d.nifti import SUFFIXES, discover
from brats2d.synth import NAMING, synth_patient, write_cohort

SHAPE = (48, 48, 24)
MODS = ("flair", "t1", "t1ce", "t2")
BRATS18_AFFINE = np.array([[-1, 0, 0, 0], [0, -1, 0, SHAPE[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)


def _patients(n: int = 6, naming: str = "2021", shape: tuple[int, int, int] = SHAPE) -> list[dict[str, np.ndarray]]:
    return [synth_patient(shape, np.random.default_rng([7, i]), naming) for i in range(n)]


@pytest.fixture(scope="module")
def many() -> list[dict[str, np.ndarray]]:
    return _patients()


def test_naming_matches_the_reader() -> None:
    assert NAMING == SUFFIXES


@pytest.mark.parametrize("naming, cases, et", [("2021", ["Synth_000", "Synth_001"], 4),
                                               ("2023", ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"], 3)])
def test_files_geometry_and_dtypes(tmp_path: Path, naming: str, cases: list[str], et: int) -> None:
    folders = write_cohort(tmp_path, 2, seed=3, shape=SHAPE, naming=naming)
    umask = os.umask(0)
    os.umask(umask)
    assert folders == [tmp_path / c for c in cases]
    for folder in folders:
        expected = {f"{folder.name}{NAMING[naming][m]}.nii.gz" for m in (*MODS, "seg")}
        assert {p.name for p in folder.iterdir()} == expected  # and no temp files left behind
        for m in (*MODS, "seg"):
            path = folder / f"{folder.name}{NAMING[naming][m]}.nii.gz"
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # atomic write keeps normal permissions
            img = nib.load(path)
            data = np.asanyarray(img.dataobj)
            assert data.shape == SHAPE
            assert data.dtype == img.get_data_dtype() == (np.uint8 if m == "seg" else np.int16)
            assert img.header.get_zooms() == (1.0, 1.0, 1.0)
            np.testing.assert_array_equal(img.affine, BRATS18_AFFINE)
            if m == "seg":
                assert set(np.unique(data)) == {0, 1, 2, et}
    found = discover(tmp_path)
    assert [p.case for p in found] == [f.name for f in folders] and {p.naming for p in found} == {naming}


def test_modalities_subset(tmp_path: Path) -> None:
    (folder,) = write_cohort(tmp_path, 1, shape=SHAPE, modalities=("flair", "t1ce"))
    assert sorted(p.name for p in folder.iterdir()) == ["Synth_000_flair.nii.gz", "Synth_000_seg.nii.gz",
                                                        "Synth_000_t1ce.nii.gz"]


def test_labels_are_nested(many: list[dict[str, np.ndarray]]) -> None:
    six = ndimage.generate_binary_structure(3, 1)
    for p in many:
        seg = p["seg"]
        assert set(np.unique(seg)) == {0, 1, 2, 4}
        core = (seg == 1) | (seg == 4)
        # Every necrotic voxel is surrounded by core, every core voxel by tumour: oedema is outermost.
        assert not ((seg == 1) & ~ndimage.binary_erosion(core, six)).any()
        assert not (core & ~ndimage.binary_erosion(seg > 0, six)).any()
    assert set(np.unique(_patients(2, "2023")[1]["seg"])) == {0, 1, 2, 3}


def test_brain_mask_background_and_tumour(many: list[dict[str, np.ndarray]]) -> None:
    for p in many:
        brain = p["flair"] > 0
        for m in MODS:
            assert p[m].min() == 0
            np.testing.assert_array_equal(p[m] > 0, brain)  # zero exactly outside the head, in every modality
        assert not (p["seg"][~brain] > 0).any()  # tumour inside the brain
        for face in (brain[0], brain[-1], brain[:, 0], brain[:, -1], brain[:, :, 0], brain[:, :, -1]):
            assert not face.any()
        extent = [brain.any(axis=tuple(j for j in range(3) if j != i)).mean() for i in range(3)]
        assert 0.55 <= extent[0] <= 0.85 and 0.65 <= extent[1] <= 0.9 and 0.75 <= extent[2] < 1
        tumour_z = (p["seg"] > 0).any((0, 1))
        brain_z = brain.any((0, 1))
        assert tumour_z.sum() >= 3
        assert (brain_z & ~tumour_z).sum() >= 3  # tumour-free brain slices exist


def test_full_size_patient() -> None:
    p = synth_patient((240, 240, 155), np.random.default_rng(0))
    brain, seg = p["flair"] > 0, p["seg"]
    assert p["t1ce"].shape == (240, 240, 155) and p["t1ce"].dtype == np.int16 and seg.dtype == np.uint8
    assert set(np.unique(seg)) == {0, 1, 2, 4} and not (seg[~brain] > 0).any()
    assert 0.15 < brain.mean() < 0.4
    tumour_z = (seg > 0).any((0, 1))
    assert tumour_z.sum() >= 10 and (brain.any((0, 1)) & ~tumour_z).sum() >= 20


def test_contrast(many: list[dict[str, np.ndarray]]) -> None:
    for p in many:
        seg, normal = p["seg"], (p["flair"] > 0) & (p["seg"] == 0)
        mean = {m: {lab: p[m][seg == lab].mean() for lab in (1, 2, 4)} | {0: p[m][normal].mean()} for m in MODS}
        assert mean["flair"][2] > 1.3 * mean["flair"][0]  # oedema bright on FLAIR
        assert mean["t2"][2] > 1.3 * mean["t2"][0]  # ... and on T2
        assert mean["t1ce"][4] > 1.3 * mean["t1ce"][0]  # enhancing rim bright on T1ce
        assert mean["t1ce"][1] < mean["t1ce"][4]  # necrosis dark on T1ce
        assert mean["t2"][1] > mean["t2"][0]  # necrosis moderately bright on T2
    # Sites differ: the intensity scale varies between patients.
    medians = [np.median(p["t1"][p["t1"] > 0]) for p in many]
    assert max(medians) > 1.5 * min(medians)


def test_determinism(tmp_path: Path) -> None:
    a, b = _patients(2), _patients(2)
    for m in (*MODS, "seg"):
        np.testing.assert_array_equal(a[0][m], b[0][m])
        assert not np.array_equal(a[0][m], a[1][m])
    # Patient i depends on (seed, i) only, not on how many patients are written.
    one = write_cohort(tmp_path / "one", 1, seed=5, shape=SHAPE)[0]
    three = write_cohort(tmp_path / "three", 3, seed=5, shape=SHAPE)[0]
    for m in (*MODS, "seg"):
        name = f"Synth_000{NAMING['2021'][m]}.nii.gz"
        np.testing.assert_array_equal(nib.load(one / name).get_fdata(), nib.load(three / name).get_fdata())
    other = write_cohort(tmp_path / "other", 1, seed=6, shape=SHAPE)[0]
    assert not np.array_equal(nib.load(one / "Synth_000_seg.nii.gz").get_fdata(),
                              nib.load(other / "Synth_000_seg.nii.gz").get_fdata())


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = nib.save

    def dying_save(img: nib.Nifti1Image, path: str) -> None:
        real_save(img, path)
        Path(path).write_bytes(Path(path).read_bytes()[:100])  # half-written, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(synth.nib, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        write_cohort(tmp_path, 1, shape=SHAPE)
    assert list((tmp_path / "Synth_000").iterdir()) == []


@pytest.mark.parametrize("kwargs", [dict(naming="2019"), dict(shape=(48, 48, 8)), dict(modalities=("dwi",))])
def test_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        write_cohort(tmp_path, 1, **{"shape": SHAPE, **kwargs})
