"""Input fuzzing: malformed arguments and settings give one error line and a non-zero exit, never a
traceback, and write nothing."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from brats2d.cli.main import cli

from .conftest import ROOT, TINY_CLI, cli_env, assert_one_line_error


@pytest.fixture()
def places(raw_dir: Path, tiny_cache: Path, tiny_run: Path, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    return {"RAW": str(raw_dir), "CACHE": str(tiny_cache), "RUN": str(tiny_run), "EMPTY": str(tmp_path / "empty"),
            "MISSING": str(tmp_path / "missing"), "FILE": str(tmp_path / "afile"), "OUT": str(tmp_path / "new" / "c.h5"),
            "NEWRUN": str(tmp_path / "newrun"), "PRED": str(tmp_path / "pred"), "SYNTH": str(tmp_path / "synth"),
            "PATIENT": str(raw_dir / sorted(p.name for p in raw_dir.iterdir())[0])}


def _fill(args: list[str], places: dict[str, str]) -> list[str]:
    # Whole tokens or a leading path part only: substring replacement turned NEWRUN into "NEW" + RUN's path.
    def sub(a: str) -> str:
        head, sep, tail = a.partition("/")
        return places.get(a) or (places[head] + sep + tail if sep and head in places else a)
    return [sub(a) for a in args]


def _nothing_written(places: dict[str, str]) -> None:
    assert not Path(places["OUT"]).exists()
    assert not Path(places["OUT"]).parent.exists() or not any(Path(places["OUT"]).parent.iterdir())
    assert not (Path(places["NEWRUN"]) / "latest_checkpoint.pth").exists()
    assert not Path(places["PRED"]).exists()
    assert not Path(places["SYNTH"]).exists()


PRE = ["preprocess", "RAW", "--out", "OUT", "--workers", "1", "--size", "24"]
TRAIN = ["train", "--cache", "CACHE", "--run-dir", "NEWRUN", *TINY_CLI, "--epochs", "1"]
CASES = [  # (what, args, words the error line must contain)
    ("negative size", PRE + ["--size", "-1"], "size"),
    ("huge size", PRE + ["--size", "100000"], "size"),
    ("split not summing to 1", PRE + ["--split", "0.5,0.3,0.1"], "sum to 1"),
    ("negative split fraction", PRE + ["--split", "1.2,-0.1,-0.1"], ">= 0"),
    ("split with two numbers", PRE + ["--split", "0.7,0.3"], "--split"),
    ("split not numbers", PRE + ["--split", "a,b,c"], "--split"),
    ("empty split", PRE + ["--split", ""], "--split"),
    ("split leaving train empty", PRE + ["--split", "0.1,0.45,0.45"], "train split is empty"),
    ("unknown modality", PRE + ["--modalities", "flair,t3"], "t3"),
    ("no modality", PRE + ["--modalities", ","], "modalit"),
    ("negative seed", PRE + ["--seed", "-1"], "seed"),
    ("empty-slices nan", PRE + ["--empty-slices", "nan"], "empty_slices"),
    ("empty folder", ["preprocess", "EMPTY", "--out", "OUT"], "not a BraTS-like folder"),
    ("nonexistent folder", ["preprocess", "MISSING", "--out", "OUT"], "no such folder"),
    ("raw is a file", ["preprocess", "FILE", "--out", "OUT"], "not a folder"),
    ("out below a file", ["preprocess", "RAW", "--out", "FILE/c.h5", "--workers", "1"], "FILE"),
    ("epochs 0", TRAIN + ["--epochs", "0"], "epochs"),
    ("lr -1", TRAIN + ["--lr", "-1"], "lr"),
    ("lr nan", TRAIN + ["--lr", "nan"], "lr"),
    ("batch size 0", TRAIN + ["--batch-size", "0"], "batch_size"),
    ("depth 9", TRAIN + ["--depth", "9"], "depth"),
    ("unknown loss", TRAIN + ["--loss", "mse"], "loss"),
    ("unknown device", TRAIN + ["--device", "tpu"], "--device"),
    ("malformed cuda device", TRAIN + ["--device", "cuda:x"], "--device"),
    ("fp16 on cpu", TRAIN + ["--precision", "fp16", "--device", "cpu"], "fp16"),
    ("cache missing", ["train", "--cache", "MISSING", "--run-dir", "NEWRUN"], "no such cache"),
    ("cache is a folder", ["train", "--cache", "EMPTY", "--run-dir", "NEWRUN"], "is a folder"),
    ("cache is not hdf5", ["train", "--cache", "FILE", "--run-dir", "NEWRUN"], "not a readable HDF5"),
    ("run dir below a file", ["train", "--cache", "CACHE", "--run-dir", "FILE/run", *TINY_CLI], "FILE"),
    ("eval threshold 2", ["eval", "--run-dir", "RUN", "--threshold", "2"], "--threshold"),
    ("eval threshold nan", ["eval", "--run-dir", "RUN", "--threshold", "nan"], "--threshold"),
    ("eval run dir without checkpoint", ["eval", "--run-dir", "EMPTY"], "no such checkpoint"),
    ("eval unknown split", ["eval", "--run-dir", "RUN", "--split", "holdout"], "--split"),
    ("predict threshold 0", ["predict", "PATIENT", "--run-dir", "RUN", "--out", "PRED", "--threshold", "0"], "--threshold"),
    ("predict empty folder", ["predict", "EMPTY", "--run-dir", "RUN", "--out", "PRED"], "not a BraTS-like folder"),
    ("predict mc-dropout without dropout", ["predict", "PATIENT", "--run-dir", "RUN", "--out", "PRED", "--mc-dropout", "2"],
     "--mc-dropout"),
    ("synth nan shape", ["synth", "SYNTH", "--shape", "16,16,nan"], "NaN"),
    ("synth tiny shape", ["synth", "SYNTH", "--shape", "8,16,16"], "--shape"),
    ("synth 0 patients", ["synth", "SYNTH", "--patients", "0"], "--patients"),
]


@pytest.mark.parametrize("what,args,words", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_is_one_line_error(places: dict[str, str], what: str, args: list[str], words: str) -> None:
    r = CliRunner().invoke(cli, _fill(args, places), catch_exceptions=False)
    assert_one_line_error(r.output, r.exit_code, _fill([words], places)[0])
    _nothing_written(places)


def test_real_process_prints_exactly_one_line(raw_dir: Path, tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "brats2d", "preprocess", str(raw_dir), "--out", str(tmp_path / "c.h5"),
                        "--size", "-1"], capture_output=True, text=True, timeout=120, env=cli_env(None), cwd=ROOT)
    assert p.returncode == 2
    assert p.stderr == "brats2d: error: size: -1 is outside 8..1024\n"
    assert p.stdout == ""


# Per command: the fixed arguments, values that must each be refused, and valid values mixed in.
FUZZ = {
    "preprocess": (["preprocess", "RAW", "--out", "OUT", "--workers", "1"], {
        "--size": ["-1", "0", "7", "1025", "abc", "1.5", "nan", ""],
        "--split": ["0.5,0.5,0.5", "0.5,0.5", "a,b,c", "", ",,", "1,0,-0.5", "0,0.5,0.5", "nan,0,0", "1e400,0,0"],
        "--modalities": ["t3", ",", "flair,flair", "FLAIR2", "t1;t2"],
        "--region": ["xx", "", "WT2"], "--norm": ["z-score", ""], "--dtype": ["float64", "int8"],
        "--empty-slices": ["-0.1", "1.5", "nan", "x", "inf"], "--workers": ["-1", "x"], "--seed": ["x", "1.5", "-3"],
        "--recipe": ["best", ""], "--splits-file": ["MISSING", "EMPTY"],
    }, {"--size": ["24", "16"], "--region": ["all", "et"], "--norm": ["percentile"], "--dtype": ["float32"],
        "--empty-slices": ["0.5"], "--seed": ["0", "7"], "--split": ["0.5,0.25,0.25"], "--modalities": ["flair,t1"]}),
    "train": (["train", "--cache", "CACHE", "--run-dir", "NEWRUN", *TINY_CLI], {
        "--epochs": ["0", "-3", "x", "1.5"], "--batch-size": ["0", "-1"], "--lr": ["-1", "0", "nan", "-inf", "1e-3x"],
        "--weight-decay": ["-1", "nan"], "--schedule": ["linear"], "--loss": ["mse", ""], "--grad-clip": ["-1"],
        "--base-channels": ["0", "-4"], "--depth": ["0", "7"], "--dropout": ["1", "-0.1", "nan"],
        "--precision": ["fp8", "fp16"], "--threads": ["-1"], "--checkpoint-every": ["0"], "--select-by": ["iou"],
        "--threshold": ["0", "1", "nan", "2"], "--device": ["foo", "cuda:x", "", "gpu"], "--num-workers": ["-1"],
        "--recipe": ["best"], "--cache": ["MISSING", "EMPTY", "FILE"],
    }, {"--epochs": ["1"], "--lr": ["0.01"], "--loss": ["dice"], "--schedule": ["cosine"], "--seed": ["7"],
        "--batch-size": ["8"], "--dropout": ["0.1"], "--device": ["cpu"]}),
    "eval": (["eval", "--run-dir", "RUN"], {
        "--split": ["holdout", ""], "--checkpoint": ["worst"], "--threshold": ["0", "1", "nan", "-1", "x"],
        "--device": ["foo", "cuda:x"], "--cache": ["MISSING", "EMPTY", "FILE"], "--run-dir": ["EMPTY", "MISSING", "FILE"],
    }, {"--split": ["val"], "--checkpoint": ["latest"], "--threshold": ["0.3"], "--device": ["cpu"]}),
    "predict": (["predict", "PATIENT", "--run-dir", "RUN", "--out", "PRED"], {
        "--threshold": ["0", "1", "nan", "7"], "--mc-dropout": ["-1", "2"], "--min-size": ["-5", "x"],
        "--checkpoint": ["worst"], "--device": ["foo", "cuda:x"], "--run-dir": ["EMPTY", "MISSING"],
    }, {"--threshold": ["0.4"], "--min-size": ["10"], "--device": ["cpu"]}),
    "synth": (["synth", "SYNTH"], {
        "--patients": ["0", "-1", "x"], "--shape": ["16,16", "a,b,c", "8,16,16", "16,16,nan", "-16,16,16", ""],
        "--naming": ["2019"], "--seed": ["x"],
    }, {"--patients": ["1"], "--shape": ["16,16,16"], "--naming": ["2023"]}),
}


def test_random_malformed_option_combinations(places: dict[str, str]) -> None:
    """200 seeded draws: a command, 1-2 refused values and 0-2 valid ones for other options, in random
    order. Every draw must end in one error line, a non-zero exit and no output files."""
    rng = random.Random(1234)
    runner = CliRunner()
    for trial in range(200):
        command = rng.choice(sorted(FUZZ))
        base, bad, good = FUZZ[command]
        bad_opts = rng.sample(sorted(bad), rng.randint(1, 2))
        free = sorted(set(good) - set(bad_opts))
        good_opts = rng.sample(free, min(len(free), rng.randint(0, 2)))
        pairs = [(o, rng.choice(bad[o])) for o in bad_opts] + [(o, rng.choice(good[o])) for o in good_opts]
        rng.shuffle(pairs)
        args = _fill(base + [x for pair in pairs for x in pair], places)
        r = runner.invoke(cli, args, catch_exceptions=False)
        try:
            assert_one_line_error(r.output, r.exit_code)
            _nothing_written(places)
        except AssertionError as e:
            raise AssertionError(f"trial {trial}: brats2d {' '.join(args)}\n{r.output}") from e
