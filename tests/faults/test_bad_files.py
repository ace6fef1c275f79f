"""Bad files: damaged NIfTI inputs, a cache with a flipped byte or another format/config, damaged checkpoints.
Each gives an error naming the file (or a skipped patient naming it), never a deep traceback."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

from brats2d import cache, checkpoint
from brats2d.cli.main import cli
from brats2d.config import PreprocessConfig
from brats2d.preprocess import preprocess

from .conftest import TINY_CLI, assert_one_line_error, copy_cache, file_digest


def invoke(*args) -> tuple[int, str]:
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return r.exit_code, r.output


# --- NIfTI inputs -------------------------------------------------------------------------------------

def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x10
    return bytes(b)


def _damage_niftis(raw: Path) -> dict[str, Path]:
    """Damage one file of five patients in five ways; returns case -> damaged file."""
    cases = sorted(p.name for p in raw.iterdir())
    out = {}

    def hit(i: int, mod: str, fn) -> None:
        f = raw / cases[i] / f"{cases[i]}_{mod}.nii.gz"
        f.write_bytes(fn(f.read_bytes()))
        out[cases[i]] = f

    hit(0, "flair", lambda d: d[:-6])  # cut inside the gzip trailer: nibabel alone reads it happily
    hit(1, "flair", lambda d: _flip(d, len(d) // 2))  # a flipped bit in the compressed voxels
    hit(2, "seg", lambda d: b"")  # empty file
    hit(3, "flair", lambda d: b"<html>404 Not Found</html>\n")  # a download error page

    def nan_spacing(d: bytes) -> bytes:
        raw_bytes = bytearray(gzip.decompress(d))
        struct.pack_into("<f", raw_bytes, 80, float("nan"))  # pixdim[1]
        return gzip.compress(bytes(raw_bytes))

    hit(4, "flair", nan_spacing)
    return out


def test_damaged_niftis_are_skipped_naming_the_file(raw_copy: Path, tmp_path: Path) -> None:
    bad = _damage_niftis(raw_copy)
    out = tmp_path / "c.h5"
    s = preprocess(raw_copy, out, PreprocessConfig(size=24), workers=1)
    reasons = dict(s.skipped)
    assert set(reasons) == set(bad)
    for case, f in bad.items():
        assert str(f) in reasons[case], reasons[case]
    good = {p.name for p in raw_copy.iterdir()} - set(bad)
    assert set(cache.read_meta(out).patients) == good  # the others were processed
    cache.verify(out)


def test_damaged_nifti_with_strict_writes_nothing(raw_copy: Path, tiny_cache: Path, tmp_path: Path) -> None:
    bad = _damage_niftis(raw_copy)
    out = copy_cache(tiny_cache, tmp_path / "out" / "c.h5")
    before = {p.name: file_digest(p) for p in out.parent.iterdir()}
    code, output = invoke("preprocess", raw_copy, "--out", out, "--workers", 1, "--size", 24, "--strict")
    first = bad[sorted(bad)[0]]
    assert_one_line_error(output, code, "--strict", str(first))
    assert {p.name: file_digest(p) for p in out.parent.iterdir()} == before  # previous cache kept, no temp files


# --- caches ---------------------------------------------------------------------------------------------

def _flip_in_dataset(path: Path, name: str) -> None:
    with h5py.File(path, "r") as f:
        ds = f[name]
        at = ds.id.get_offset() + ds.id.get_storage_size() // 2
    with open(path, "r+b") as fh:
        fh.seek(at)
        b = fh.read(1)
        fh.seek(at)
        fh.write(bytes([b[0] ^ 0x01]))


@pytest.mark.parametrize("dataset", ["train/images", "val/masks", "test/images"])
def test_flipped_byte_in_cache_is_detected_everywhere(raw_dir: Path, tiny_cache: Path, tiny_run: Path,
                                                      tmp_path: Path, dataset: str) -> None:
    bad = copy_cache(tiny_cache, tmp_path / "bad.h5")
    _flip_in_dataset(bad, dataset)
    with pytest.raises(cache.CacheError, match=rf"{bad}:/{dataset} is corrupt"):
        cache.verify(bad)
    with pytest.raises(cache.CacheError, match=rf"{bad}:/{dataset} is corrupt"):
        cache.read_meta(bad)  # what the loader (SliceCache), train, eval and preprocess all go through
    code, out = invoke("train", "--cache", bad, "--run-dir", tmp_path / "run", *TINY_CLI, "--epochs", 1)
    assert_one_line_error(out, code, str(bad), "corrupt")
    assert not (tmp_path / "run" / "latest_checkpoint.pth").exists()
    code, out = invoke("eval", "--run-dir", shutil.copytree(tiny_run, tmp_path / "r2"), "--cache", bad)
    assert_one_line_error(out, code, str(bad), "corrupt")
    # Same settings and inputs as the damaged cache: preprocess must rebuild it, not call it up to date.
    s = preprocess(raw_dir, bad, PreprocessConfig(size=32), workers=1)
    assert not s.up_to_date
    cache.verify(bad)


def test_cache_of_another_format_version_is_refused(tiny_cache: Path, tiny_run: Path, tmp_path: Path) -> None:
    old = copy_cache(tiny_cache, tmp_path / "old.h5")
    with h5py.File(old, "r+") as f:
        f.attrs["format_version"] = 99
    code, out = invoke("train", "--cache", old, "--run-dir", tmp_path / "run", *TINY_CLI, "--epochs", 1)
    assert_one_line_error(out, code, str(old), "format_version 99")
    code, out = invoke("eval", "--run-dir", shutil.copytree(tiny_run, tmp_path / "r2"), "--cache", old)
    assert_one_line_error(out, code, str(old), "format_version 99")


@pytest.fixture(scope="module")
def cache24(raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cache24") / "c24.h5"
    preprocess(raw_dir, out, PreprocessConfig(size=24), workers=1)
    return out


def test_resuming_with_a_cache_of_other_settings_is_refused(cache24: Path, run_copy: Path) -> None:
    latest = run_copy / "latest_checkpoint.pth"
    before = file_digest(latest)
    code, out = invoke("train", "--cache", cache24, "--run-dir", run_copy, *TINY_CLI, "--epochs", 1)
    assert code == 2 and "Traceback" not in out, out
    assert out.strip().startswith(f"brats2d: error: {latest}: was trained with other settings or another cache"), out
    assert "cache.config.size: 32 -> 24" in out
    assert file_digest(latest) == before


def test_eval_with_a_cache_of_other_settings_is_refused(cache24: Path, run_copy: Path) -> None:
    code, out = invoke("eval", "--run-dir", run_copy, "--cache", cache24)
    assert_one_line_error(out, code, str(cache24), "size")


@pytest.mark.parametrize("schedule", ["cosine", "none"])
def test_training_on_a_cache_without_train_slices_is_refused(raw_dir: Path, tmp_path: Path, schedule: str) -> None:
    cases = sorted(p.name for p in raw_dir.iterdir())
    split = tmp_path / "eval_only.json"
    split.write_text(json.dumps({"train": [], "val": cases[:2], "test": cases[2:]}))
    c = tmp_path / "eval_only.h5"
    preprocess(raw_dir, c, PreprocessConfig(size=24), workers=1, splits_file=split)
    code, out = invoke("train", "--cache", c, "--run-dir", tmp_path / "run", *TINY_CLI, "--epochs", 1,
                       "--schedule", schedule)
    assert_one_line_error(out, code, str(c), "train")
    assert not (tmp_path / "run" / "best_model.pth").exists()


# --- checkpoints ----------------------------------------------------------------------------------------

def test_every_truncation_of_a_checkpoint_is_a_clear_error(tiny_run: Path, tmp_path: Path) -> None:
    data = (tiny_run / "latest_checkpoint.pth").read_bytes()
    cut = tmp_path / "cut.pth"
    for n in sorted({0, 1, 2, 10, 100, 1000, len(data) - 22, len(data) - 1} | set(range(0, len(data), len(data) // 24))):
        cut.write_bytes(data[:n])
        with pytest.raises(checkpoint.CheckpointError, match=rf"^{cut}: truncated or corrupt checkpoint") as e:
            checkpoint.load(cut)
        assert "\n" not in str(e.value) and len(str(e.value)) < 300, str(e.value)


def _flip_in_largest_tensor(ck: Path) -> None:
    import zipfile

    with zipfile.ZipFile(ck) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)  # the largest tensor's record (stored, not deflated)
        at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size // 2
    ck.write_bytes(_flip(ck.read_bytes(), at))


def test_flipped_byte_in_checkpoint_tensor_is_detected(tiny_run: Path, tmp_path: Path) -> None:
    ck = tmp_path / "flip.pth"
    shutil.copy(tiny_run / "best_model.pth", ck)
    _flip_in_largest_tensor(ck)
    with pytest.raises(checkpoint.CheckpointError, match=rf"^{ck}: corrupt checkpoint \(CRC mismatch"):
        checkpoint.load(ck)


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_damaged_checkpoints_through_the_cli(raw_dir: Path, tiny_cache: Path, run_copy: Path, tmp_path: Path,
                                             damage: str) -> None:
    for name in ("latest_checkpoint.pth", "best_model.pth"):
        f = run_copy / name
        if damage == "truncated":
            f.write_bytes(f.read_bytes()[: f.stat().st_size * 2 // 3])
        else:
            _flip_in_largest_tensor(f)
    words = "truncated or corrupt" if damage == "truncated" else "corrupt"
    code, out = invoke("train", "--cache", tiny_cache, "--run-dir", run_copy, *TINY_CLI, "--epochs", 1)
    assert_one_line_error(out, code, str(run_copy / "latest_checkpoint.pth"), words)
    code, out = invoke("eval", "--run-dir", run_copy)
    assert_one_line_error(out, code, str(run_copy / "best_model.pth"), words)
    code, out = invoke("predict", raw_dir / sorted(p.name for p in raw_dir.iterdir())[0], "--run-dir", run_copy,
                       "--out", tmp_path / "pred")
    assert_one_line_error(out, code, str(run_copy / "best_model.pth"), words)
    assert not (tmp_path / "pred").exists()
