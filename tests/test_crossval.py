"""crossval: honest folds (seed test excluded, held-out never trained on), whole-volume scores, resume."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from click.testing import CliRunner

from brats2d import cache, checkpoint
from brats2d.cli.main import cli
from brats2d.config import ConfigError, PreprocessConfig, to_dict
from brats2d.cv.crossval import crossval
from brats2d.cv.plan import POSTPROCESSING_GRID, CrossvalError, make_folds, settings
from brats2d.cv.summary import summarize
from brats2d.evaluate import evaluate_volumes
from brats2d.inference import load_predictor
from brats2d.nifti import discover
from brats2d.splits import split_patients

from .conftest import SIZE, TINY, experiment_script

TRAIN = {**TINY, "epochs": 3, "lr": 3e-3}  # enough to score above 0, so the averages are checked on real numbers
OVERRIDES = {"preprocess": {"size": SIZE}, "train": TRAIN}
CLI_TINY = ["--size", str(SIZE), "--epochs", "3", "--lr", "3e-3", "--base-channels", "4", "--depth", "2", "--batch-size", "4",
            "--checkpoint-every", "3", "--threads", "1", "--precision", "fp32", "--workers", "1", "--device", "cpu"]


def _cases(raw: Path) -> list[str]:
    return [p.case for p in discover(raw)]


def test_folds_exclude_seed_test_and_partition() -> None:
    cases = [f"P{i:03d}" for i in range(34)]
    pcfg = PreprocessConfig()
    plan = make_folds(cases, 5, 42, pcfg)
    seed_test = split_patients(cases, (0.7, 0.15, 0.15), 42)["test"]
    assert plan["excluded"] == seed_test and len(seed_test) == 5
    held = [s["test"] for s in plan["splits"]]
    assert sorted(c for h in held for c in h) == sorted(set(cases) - set(seed_test))  # each patient held out once
    for s in plan["splits"]:
        parts = [set(s["train"]), set(s["val"]), set(s["test"])]
        assert sum(map(len, parts)) == len(set.union(*parts)) == 29  # disjoint, cover the CV pool
        assert not set(seed_test) & set.union(*parts)
        assert len(s["val"]) == 4  # the seed's val share of non-test patients: round(15/85 * 23)
    everyone = make_folds(cases, 5, 42, pcfg, include_test=True)
    assert everyone["excluded"] == [] and sorted(c for s in everyone["splits"] for c in s["test"]) == cases
    with pytest.raises(CrossvalError, match="folds"):
        make_folds(cases[:3], 4, 42, pcfg)


def test_recipe_settings_and_explicit_overrides() -> None:
    p, t, pred = settings("brats2d", {"train": {"epochs": 3}, "predict": {"tta": True}})
    assert (p.norm, p.empty_slices, p.views, t.loss, t.schedule, t.epochs) == (
        "zscore", 0.3, ("axial", "coronal", "sagittal"), "bce+dice", "cosine", 3)
    assert to_dict(pred) == {"min_size": 0, "tta": True, "keep_largest": True, "largest_regions": ["wt", "tc", "et"],
                             "checkpoint": "best+latest"}
    assert to_dict(settings("seed")[2]) == {"min_size": 0, "tta": False, "keep_largest": False,
                                            "largest_regions": ["wt", "tc", "et"], "checkpoint": "best"}
    with pytest.raises(ConfigError, match="checkpoint: 'last'"):
        settings("seed", {"predict": {"checkpoint": "last"}})


@pytest.fixture(scope="module")
def cv(raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cv") / "out"
    summary = crossval(raw_dir, out, folds=3, seed=42, recipe="seed", overrides=OVERRIDES, include_test=True,
                       device="cpu", workers=1, log=lambda m: None)
    return out, summary


def test_crossval_scores_every_patient_once_without_leaks(cv: tuple[Path, dict], raw_dir: Path) -> None:
    out, summary = cv
    cases = _cases(raw_dir)
    assert summary["complete"] and summary["finished"] == [0, 1, 2] and summary["excluded"] == []
    wt = summary["regions"]["wt"]
    assert sorted(p["patient"] for p in wt["per_patient"]) == sorted(cases)
    plan = json.loads((out / "crossval.json").read_text())
    assert plan["recipe"] == "seed" and plan["train"]["epochs"] == 3 and plan["preprocess"]["size"] == SIZE
    seen: set[str] = set()
    for i in range(3):
        m = json.loads((out / f"fold{i}" / "metrics.json").read_text())
        held = set(m["patients"]["test"])
        assert held == set(plan["splits"][i]["test"]) and not held & seen
        seen |= held
        cache_path = out / f"fold{i}" / "cache.h5"
        for split in ("train", "val"):
            in_cache = set(cache.read_index(cache_path, split)[0].tolist())
            assert in_cache and not in_cache & held, (i, split)
        assert set(cache.read_index(cache_path, "test")[0].tolist()) == held
        # The fold's run records the plan's predict settings (brats2d eval/predict --run-dir use them).
        assert json.loads((out / f"fold{i}" / "run" / "predict.json").read_text()) == plan["predict"]
        scored = [p["patient"] for p in m["volume"]["wt"]["per_patient"]]
        assert sorted(scored) == sorted(held)
        fold_row = next(f for f in wt["per_fold"] if f["fold"] == i)
        dice = [p["dice"] for p in m["volume"]["wt"]["per_patient"]]
        assert fold_row["dice_mean"] == pytest.approx(np.mean(dice))
        assert fold_row["pooled_slice_dice"] == m["slices"]["wt"]["pooled"]["dice"]
        assert 0.0 <= fold_row["dice_mean"] <= 1.0
    assert seen == set(cases)
    all_dice = [p["dice"] for p in wt["per_patient"]]
    assert wt["dice"]["mean"] == pytest.approx(np.mean(all_dice))
    assert wt["dice"]["sd"] == pytest.approx(np.std(all_dice, ddof=1))
    assert wt["fold_dice"]["mean"] == pytest.approx(np.mean([f["dice_mean"] for f in wt["per_fold"]]))
    assert wt["worst"]["dice"] == min(all_dice)
    assert json.loads((out / "cv_summary.json").read_text())["regions"]["wt"]["dice"]["mean"] == pytest.approx(np.mean(all_dice))


def test_rerun_skips_finished_folds_and_refuses_other_settings(cv: tuple[Path, dict], raw_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out, summary = cv
    stamps = {i: (out / f"fold{i}" / "metrics.json").stat().st_mtime_ns for i in range(3)}

    def boom(*a, **k):
        raise AssertionError("a finished fold was run again")

    monkeypatch.setattr("brats2d.train.train", boom)
    monkeypatch.setattr("brats2d.preprocess.preprocess", boom)
    again = crossval(raw_dir, out, folds=3, seed=42, recipe="seed", overrides=OVERRIDES, include_test=True,
                     device="cpu", workers=1, log=lambda m: None)
    assert json.dumps(again["regions"]) == json.dumps(summary["regions"])  # (NaN != NaN, so compare as text)
    assert stamps == {i: (out / f"fold{i}" / "metrics.json").stat().st_mtime_ns for i in range(3)}
    with pytest.raises(CrossvalError, match="train.epochs"):
        crossval(raw_dir, out, folds=3, seed=42, recipe="seed", overrides={**OVERRIDES, "train": {**TRAIN, "epochs": 2}},
                 include_test=True, device="cpu", workers=1, log=lambda m: None)
    # The CLI builds the same settings from its options: everything is finished, nothing runs.
    res = CliRunner().invoke(cli, ["crossval", str(raw_dir), "--out", str(out), "--folds", "3", "--include-test", *CLI_TINY])
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output and "cross-validation" in res.output


def test_settings_added_later_take_their_default_in_an_old_plan(cv: tuple[Path, dict], raw_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder written before a setting existed resumes: the new setting's default is what it used."""
    out = tmp_path / "old"
    shutil.copytree(cv[0], out)
    plan = json.loads((out / "crossval.json").read_text())
    del plan["train"]["intensity_p"], plan["preprocess"]["dtype"], plan["predict"]["checkpoint"]
    (out / "crossval.json").write_text(json.dumps(plan))
    for i in range(3):  # and in each finished fold's record of its settings
        m = json.loads((out / f"fold{i}" / "metrics.json").read_text())
        del m["settings"]["train"]["intensity_p"], m["settings"]["predict"]["checkpoint"]
        (out / f"fold{i}" / "metrics.json").write_text(json.dumps(m))
    assert summarize(out)["finished"] == [0, 1, 2]  # read as it is, before any run rewrites the plan
    monkeypatch.setattr("brats2d.train.train", lambda *a, **k: pytest.fail("a finished fold was run again"))
    again = crossval(raw_dir, out, folds=3, seed=42, recipe="seed", overrides=OVERRIDES, include_test=True,
                     device="cpu", workers=1, log=lambda m: None)
    assert json.dumps(again["regions"]) == json.dumps(cv[1]["regions"])
    with pytest.raises(CrossvalError, match="train.intensity_p: 0.0 -> 0.5"):
        crossval(raw_dir, out, folds=3, seed=42, recipe="seed", include_test=True, device="cpu", workers=1,
                 overrides={**OVERRIDES, "train": {**TRAIN, "intensity_p": 0.5}}, log=lambda m: None)


def test_cli_one_fold_excludes_seed_test(raw_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    res = CliRunner().invoke(cli, ["crossval", str(raw_dir), "--out", str(out), "--folds", "2", "--fold", "0",
                                   "--train-seed", "7", *CLI_TINY])
    assert res.exit_code == 0, res.output
    plan = json.loads((out / "crossval.json").read_text())
    assert plan["seed"] == 42 and plan["train"]["seed"] == 7  # folds as before, training seeded apart
    assert json.loads(checkpoint.load(out / "fold0" / "run" / "best_model.pth")["config"])["seed"] == 7
    cases = _cases(raw_dir)
    seed_test = split_patients(cases, (0.7, 0.15, 0.15), 42)["test"]
    s = json.loads((out / "cv_summary.json").read_text())
    assert s["excluded"] == seed_test and s["finished"] == [0] and s["missing"] == [1] and not s["complete"]
    meta = cache.read_meta(out / "fold0" / "cache.h5")
    assert not set(seed_test) & set(meta.patients)  # never even read
    assert not (out / "fold1").exists()
    assert "folds not finished yet: 1" in res.output


def test_folds_run_side_by_side_into_one_folder(raw_dir: Path, tmp_path: Path) -> None:
    """Two `--fold` processes at once into the same --out (docs/crossval.md: folds side by side): both finish, and a
    plain re-run finds every fold done and trains nothing."""
    out = tmp_path / "cv"
    cmd = [sys.executable, "-m", "brats2d", "crossval", str(raw_dir), "--out", str(out), "--folds", "2", *CLI_TINY]
    procs = [subprocess.Popen([*cmd, "--fold", str(i)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in (0, 1)]
    for p in procs:
        output = p.communicate(timeout=600)[0]
        assert p.returncode == 0, output
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("finished earlier") == 2
    s = json.loads((out / "cv_summary.json").read_text())
    assert s["complete"] and s["finished"] == [0, 1]
    held = [p["patient"] for p in s["regions"]["wt"]["per_patient"]]
    assert len(held) == len(set(held)) == len(_cases(raw_dir)) - len(s["excluded"])


def test_split_without_val_trains_on_every_other_patient_and_keeps_the_last_epoch(raw_dir: Path, tmp_path: Path) -> None:
    cases = _cases(raw_dir)
    plan = make_folds(cases, 2, 42, PreprocessConfig(split=(0.85, 0.0, 0.15)))
    assert plan["excluded"] == split_patients(cases, (0.7, 0.15, 0.15), 42)["test"]  # the same test patients
    for sp in plan["splits"]:
        assert sp["val"] == [] and sorted(sp["train"] + sp["test"]) == sorted(set(cases) - set(plan["excluded"]))
    out = tmp_path / "cv"
    res = CliRunner().invoke(cli, ["crossval", str(raw_dir), "--out", str(out), "--folds", "2", "--fold", "0",
                                   "--split", "0.85,0,0.15", "--checkpoint", "best+latest", *CLI_TINY])
    assert res.exit_code == 0, res.output
    assert "no validation" in res.output
    run = out / "fold0" / "run"
    with open(run / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    assert len(history) == 3 and all(r["val_dice"] == "" for r in history)  # no validation: nothing recorded
    best, latest = checkpoint.load(run / "best_model.pth"), checkpoint.load(run / "latest_checkpoint.pth")
    assert best["epoch"] == 3 and all(torch.equal(best["model"][k], latest["model"][k]) for k in best["model"])
    assert len(load_predictor(run, "best+latest", "cpu").models) == 1  # identical members run once
    m = json.loads((out / "fold0" / "metrics.json").read_text())
    assert m["patients"]["val"] == [] and sorted(m["patients"]["test"]) == sorted(plan["splits"][0]["test"])
    assert all(0 <= p["dice"] <= 1 for p in m["volume"]["wt"]["per_patient"])


def test_rescore_postprocessing_grid_without_retraining(cv: tuple[Path, dict], raw_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    src, summary = cv
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    largest = {**OVERRIDES, "predict": {"keep_largest": True}}
    kw = dict(folds=3, seed=42, recipe="seed", include_test=True, device="cpu", workers=1, log=lambda m: None)
    with pytest.raises(CrossvalError, match="--rescore"):  # predict settings changed: no silent mix of folds
        crossval(raw_dir, out, overrides=largest, **kw)

    def boom(*a, **k):
        raise AssertionError("re-scoring must not preprocess or train")

    monkeypatch.setattr("brats2d.train.train", boom)
    monkeypatch.setattr("brats2d.preprocess.preprocess", boom)
    again = crossval(raw_dir, out, overrides=largest, rescore=True, postprocessing=True, **kw)
    assert again["complete"] and set(again["postprocessing"]) == set(POSTPROCESSING_GRID)
    grid = again["postprocessing"]
    # The recipe now keeps the largest component: that grid cell is the headline itself (paired 0), and
    # the plain cell reproduces the first run's scores, which were made without post-processing.
    assert grid["largest only"]["regions"]["wt"]["paired"] == {"mean": 0.0, "se": 0.0, "better": 0, "worse": 0}
    assert grid["largest only"]["regions"]["wt"]["dice"]["mean"] == pytest.approx(again["regions"]["wt"]["dice"]["mean"])
    assert grid["none"]["regions"]["wt"]["dice"]["mean"] == pytest.approx(summary["regions"]["wt"]["dice"]["mean"])
    for name, v in grid.items():
        pr = v["regions"]["wt"]["paired"]
        assert pr["better"] + pr["worse"] <= len(summary["regions"]["wt"]["per_patient"]) and pr["se"] >= 0, name
    m = json.loads((out / "fold0" / "metrics.json").read_text())
    old = json.loads((src / "fold0" / "metrics.json").read_text())
    assert m["settings"]["predict"]["keep_largest"] is True and m["history"] == old["history"]
    assert json.loads((out / "fold0" / "run" / "predict.json").read_text())["keep_largest"] is True  # re-recorded
    assert {p["patient"] for p in m["postprocessing"]["TTA, none"]["regions"]["wt"]} == set(m["patients"]["test"])
    # model selection: the last epoch's checkpoint is another model, scored the same way
    last = {p["patient"]: p for p in m["postprocessing"]["last epoch, none"]["regions"]["wt"]}
    direct = evaluate_volumes(load_predictor(out / "fold0" / "run", "latest", "cpu"), raw_dir, m["patients"]["test"], 0.5)
    assert {p["patient"]: p for p in direct["wt"]["per_patient"]} == last
    both = {p["patient"]: p for p in m["postprocessing"]["best+last ensemble, none"]["regions"]["wt"]}
    direct = evaluate_volumes(load_predictor(out / "fold0" / "run", "best+latest", "cpu"), raw_dir,
                              m["patients"]["test"], 0.5)
    assert {p["patient"]: p for p in direct["wt"]["per_patient"]} == both
    # The threshold cells cut the ensemble's probabilities elsewhere (and differ from the run's 0.5).
    ens = load_predictor(out / "fold0" / "run", "best+latest", "cpu")
    cut = {t: {p["patient"]: p for p in evaluate_volumes(ens, raw_dir, m["patients"]["test"], t, keep_largest=True)
               ["wt"]["per_patient"]} for t in (0.3, 0.5)}
    assert {p["patient"]: p for p in m["postprocessing"]["best+last ensemble, largest only, threshold 0.3"]
            ["regions"]["wt"]} == cut[0.3] != cut[0.5]
    res = CliRunner().invoke(cli, ["crossval", str(raw_dir), "--out", str(out), "--folds", "3", "--include-test",
                                   "--keep-largest", "--rescore", "--postprocessing", *CLI_TINY])
    assert res.exit_code == 0, res.output
    assert "re-scoring" in res.output and "post-processing" in res.output and "largest" in res.output
    # A recipe that predicts with the ensemble scores exactly what that grid cell scored.
    cell = json.loads((out / "cv_summary.json").read_text())["postprocessing"]
    ens = CliRunner().invoke(cli, ["crossval", str(raw_dir), "--out", str(out), "--folds", "3", "--include-test",
                                   "--keep-largest", "--checkpoint", "best+latest", "--rescore", *CLI_TINY])
    assert ens.exit_code == 0, ens.output
    summary2 = json.loads((out / "cv_summary.json").read_text())
    assert summary2["regions"]["wt"]["dice"] == cell["best+last ensemble, largest only"]["regions"]["wt"]["dice"]


def test_crossval_ensemble_averages_the_folders_models_on_their_held_out_patients(
        cv: tuple[Path, dict], raw_dir: Path, tmp_path: Path) -> None:
    from brats2d.cv.ensemble import ensemble

    a, _ = cv
    kw = dict(folds=3, seed=42, recipe="seed", include_test=True, device="cpu", workers=1, log=lambda m: None)
    # With itself the ensemble is the folder's own model: every patient scores what crossval recorded.
    same = ensemble(raw_dir, [a, a], device="cpu", log=lambda m: None)["regions"]["wt"]
    assert len(same["per_patient"]) == len(_cases(raw_dir))
    assert all(p["dice"] == pytest.approx(p["first_dice"], abs=1e-12) for p in same["per_patient"])
    assert same["paired"] == {"mean": 0.0, "se": 0.0, "better": 0, "worse": 0}
    # Another training seed on the same folds: the ensemble of the two folders is the mean of the two
    # fold models, which load_predictor computes on its own when given both runs.
    b = tmp_path / "seed7"
    crossval(raw_dir, b, overrides={**OVERRIDES, "train": {**TRAIN, "seed": 7}}, **kw)
    both = ensemble(raw_dir, [a, b], device="cpu", log=lambda m: None)["regions"]["wt"]
    for i in range(3):
        held = json.loads((a / f"fold{i}" / "metrics.json").read_text())["patients"]["test"]
        runs = [a / f"fold{i}" / "run", b / f"fold{i}" / "run"]
        direct = evaluate_volumes(load_predictor(runs, "best", "cpu"), raw_dir, held, 0.5)
        want = {p["patient"]: p["dice"] for p in direct["wt"]["per_patient"]}
        got = {p["patient"]: p["dice"] for p in both["per_patient"] if p["fold"] == i}
        assert got == pytest.approx(want, abs=1e-12)
    assert any(abs(p["dice"] - p["first_dice"]) > 1e-6 for p in both["per_patient"])  # b's models did count
    # Other folds (other held-out patients) are refused, naming the folder.
    c = tmp_path / "other-folds"
    shutil.copytree(a, c)
    plan = json.loads((c / "crossval.json").read_text())
    plan["splits"][0]["test"], plan["splits"][1]["test"] = plan["splits"][1]["test"], plan["splits"][0]["test"]
    (c / "crossval.json").write_text(json.dumps(plan))
    with pytest.raises(CrossvalError, match="other-folds: other folds"):
        ensemble(raw_dir, [a, c], device="cpu", log=lambda m: None)
    # A fold not finished in one folder is skipped and listed; with none in common it is an error.
    shutil.rmtree(b / "fold2")
    part = ensemble(raw_dir, [a, b], device="cpu", log=lambda m: None)
    assert part["missing_folds"] == [2] and {p["fold"] for p in part["regions"]["wt"]["per_patient"]} == {0, 1}
    for fold in ("fold0", "fold1"):
        (c / fold / "metrics.json").unlink()
    plan["splits"][0]["test"], plan["splits"][1]["test"] = plan["splits"][1]["test"], plan["splits"][0]["test"]
    (c / "crossval.json").write_text(json.dumps(plan))
    with pytest.raises(CrossvalError, match="no fold is finished in every folder"):
        ensemble(raw_dir, [b, c], device="cpu", log=lambda m: None)
    res = CliRunner().invoke(cli, ["crossval-ensemble", str(raw_dir), str(a), str(b), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    saved = json.loads((a / "ensemble-with-seed7.json").read_text())
    assert saved["regions"]["wt"]["paired"] == pytest.approx(part["regions"]["wt"]["paired"])
    assert "ensemble" in res.output and "folds skipped (not finished in every folder): 2" in res.output
    (a / "ensemble-with-seed7.json").unlink()  # the module-scoped fixture folder stays as it was


def test_failure_analysis_counts_each_labels_misses() -> None:
    seg = np.zeros((6, 6, 2), np.uint8)
    seg[0, :4, 0] = 1  # 4 core voxels
    seg[1:3, :4, 0] = 2  # 8 oedema voxels; no enhancing tumour
    pred = seg == 2
    pred[0, :2, 0] = True  # half the core found
    image = np.ones(seg.shape, np.float32)
    image[seg == 2] = 3.0
    r = experiment_script("failure_analysis").analyse(image, seg, pred, et_label=4)
    assert r["missed"] == {"core": 0.5, "oedema": 0.0, "enhancing": None}
    assert r["volume_ratio"] == pytest.approx(10 / 12) and r["dice"] == pytest.approx(20 / 22)
    assert r["z"]["found"] > r["z"]["normal"] == r["z"]["missed"]  # the missed core is as bright as normal brain
    assert r["dice_filled"] == r["dice"]  # the missed core is at the rim's edge, not enclosed by it
    # Left-right (x) symmetry about the brain's centre (x 0..5 -> 5 - x): no tumour voxel has a tumour twin,
    # and the missed core (x = 0, z-score of normal brain) is exactly as bright as its twin at x = 5.
    assert r["both_sides"] == 0.0 and r["asym"]["missed"] == pytest.approx(0.0, abs=1e-6)
    sym = np.zeros_like(seg)
    sym[[0, 5], :4, 0] = 2  # the same oedema on both sides
    r2 = experiment_script("failure_analysis").analyse(image, sym, sym > 0, et_label=4)
    assert r2["both_sides"] == 1.0 and r2["asym"]["missed"] is None


def test_failure_analysis_fills_holes_in_every_plane() -> None:
    fa = experiment_script("failure_analysis")
    seg = np.zeros((7, 7, 7), np.uint8)
    seg[1:6, 1:6, 1:6] = 2
    seg[2:5, 2:5, 2:5] = 1  # a core enclosed by oedema
    pred = seg == 2  # the rim only: every core voxel is a hole in each plane's slices
    r = fa.analyse(np.ones(seg.shape, np.float32), seg, pred, et_label=4)
    assert r["missed"]["core"] == 1.0 and r["dice"] == pytest.approx(2 * 98 / (98 + 125))
    assert r["dice_filled"] == 1.0
    notch = pred.copy()
    notch[1, 3, 3] = False  # the core opens to the outside through one voxel of the rim's x = 1 face
    assert not ndimage.binary_fill_holes(notch)[3, 3, 3]  # not a hole in 3D
    assert fa.fill_holes(notch).sum() == 125  # but enclosed within slices: the x = 1 face, then the core


def test_inference_screen_morphology_adds_to_the_mask_where_it_should() -> None:
    screen = experiment_script("inference_screen")
    mask = np.zeros((12, 12, 12), bool)
    mask[2:5, 2:8, 2:8] = mask[6:9, 2:8, 2:8] = True  # two slabs with a one-voxel gap at x = 5
    prob = np.where(mask, 0.9, 0.0)
    prob[5, 2:8, 2:8] = 0.25  # the gap: just above one hysteresis cut
    prob[10:12, 10:12, 10:12] = 0.4  # a blob away from the mask: never added
    v = screen.morphology_variants(prob, mask)
    assert all((m | mask).sum() == m.sum() for m in v.values())  # every variant contains the mask
    assert v["close 1"][5, 3:7, 3:7].all() and not v["close 1"][10:, 10:, 10:].any()
    assert v["hysteresis 0.2"][5, 2:8, 2:8].all() and not v["hysteresis 0.3"][5].any()
    assert not v["hysteresis 0.2"][10:, 10:, 10:].any()  # over 0.3 but not touching the mask
    assert v["dilate 1"].sum() > mask.sum() and v["dilate 1"][1, 3, 3] and not v["dilate 1"][0, 3, 3]


def test_inference_screen_adabn_adapts_then_restores(cv: tuple[Path, dict], raw_dir: Path) -> None:
    from brats2d.predict import load_case

    screen = experiment_script("inference_screen")
    pred = load_predictor(cv[0] / "fold0" / "run", device="cpu")
    bn = next(m for m in pred.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = {k: v.clone() for k, v in pred.model.state_dict().items()}
    _, image, _, _ = load_case(pred, next(p for p in sorted(raw_dir.iterdir()) if p.is_dir()))
    plain = pred.volume(image)[0]
    before_mean = bn.running_mean.clone()
    with screen.adapted_batchnorm(pred, image):
        assert not torch.equal(bn.running_mean, before_mean)
        assert not pred.model.training  # the statistics were gathered; predictions run in evaluation mode
        assert not np.array_equal(pred.volume(image)[0], plain)
    assert all(torch.equal(v, before[k]) for k, v in pred.model.state_dict().items()) and bn.momentum == 0.1
    assert torch.equal(bn.running_mean, before_mean) and np.array_equal(pred.volume(image)[0], plain)


def test_inference_screen_reproduces_the_folds_scores(cv: tuple[Path, dict], raw_dir: Path, tmp_path: Path) -> None:
    out, summary = cv
    res = experiment_script("inference_screen").main([str(out), "--raw", str(raw_dir), "--json", str(tmp_path / "s.json")])
    want = {p["patient"]: p["dice"] for p in summary["regions"]["wt"]["per_patient"]}
    assert {r["patient"]: r["dice"]["recipe"] for r in res["patients"]} == pytest.approx(want, abs=1e-9)
    assert set(res["variants"]) == {"recipe", "close 1", "close 2", "close 3", "dilate 1", "hysteresis 0.2",
                                    "hysteresis 0.3", "adabn"}
    assert res["variants"]["recipe"]["mean"] == pytest.approx(np.mean(list(want.values())))
    assert json.loads((tmp_path / "s.json").read_text())["variants"] == res["variants"]


def test_failure_analysis_reproduces_the_folds_scores(cv: tuple[Path, dict], raw_dir: Path, tmp_path: Path) -> None:
    out, summary = cv
    res = experiment_script("failure_analysis").main([str(out), "--raw", str(raw_dir), "--json", str(tmp_path / "fa.json")])
    want = {p["patient"]: p["dice"] for p in summary["regions"]["wt"]["per_patient"]}
    assert {r["patient"]: r["dice"] for r in res["patients"]} == pytest.approx(want, abs=1e-9)
    assert sum(g["patients"] for g in res["summary"].values()) == len(want)
    assert res["holes_filled"]["patients"] == len(want)
    assert all(r["dice_filled"] >= 0 for r in res["patients"])
    assert json.loads((tmp_path / "fa.json").read_text())["summary"] == res["summary"]


def test_fit_ceiling_averages_each_patients_folds_by_role() -> None:
    fc = experiment_script("fit_ceiling")
    rows = fc.per_patient([("a", "test", 0, 0.5), ("a", "train", 1, 0.8), ("a", "train", 2, 0.9),
                           ("b", "train", 0, 0.7), ("b", "test", 1, 0.9), ("b", "val", 2, 0.6), ("c", "train", 0, 1.0)])
    assert [r["patient"] for r in rows] == ["a", "b", "c"]  # by held-out Dice; never held out last
    a, b, c = rows
    assert (a["fold"], a["test"], a["train"], a["train_folds"], a["val"], a["val_folds"]) == (0, 0.5, pytest.approx(0.85), 2, None, 0)
    assert (b["fold"], b["train"], b["val"]) == (1, 0.7, 0.6) and c["test"] is None and c["fold"] is None
    s = fc.summarise(rows, below=0.75)
    assert s["test"]["patients"] == 2 and s["test"]["below"] == 1 and s["test"]["worst"] == 0.5
    assert s["train"]["minus_held_out"]["mean"] == pytest.approx(((0.85 - 0.5) + (0.7 - 0.9)) / 2)
    assert s["train"]["minus_held_out"]["better"] == 1 and s["train"]["held_out_mean"] == pytest.approx(0.7)
    assert s["val"]["patients"] == 1 and s["val"]["minus_held_out"]["worse"] == 1  # c has no held-out score


def test_fit_ceiling_predicts_every_patient_in_every_role(cv: tuple[Path, dict], raw_dir: Path, tmp_path: Path) -> None:
    out, summary = cv
    res = experiment_script("fit_ceiling").main([str(out), "--raw", str(raw_dir), "--json", str(tmp_path / "fc.json")])
    want = {p["patient"]: p["dice"] for p in summary["regions"]["wt"]["per_patient"]}
    assert {r["patient"]: r["test"] for r in res["patients"]} == pytest.approx(want, abs=1e-9)
    splits = [cache.read_meta(out / f"fold{i}" / "cache.h5").splits for i in range(3)]
    for r in res["patients"]:
        for role in ("train", "val", "test"):
            assert r[f"{role}_folds"] == sum(r["patient"] in s[role] for s in splits), (r["patient"], role)
        assert r["train_folds"] + r["val_folds"] + r["test_folds"] == 3  # every fold used every patient once
    assert res["summary"]["test"]["mean"] == pytest.approx(np.mean(list(want.values())))
    fit = [r for r in res["patients"] if r["train"] is not None]
    assert res["summary"]["train"]["minus_held_out"]["mean"] == pytest.approx(np.mean([r["train"] - r["test"] for r in fit]))
    assert json.loads((tmp_path / "fc.json").read_text())["summary"] == res["summary"]


def test_cli_multimodal_crossval_scores_three_regions_the_brats_way(raw_dir: Path, tmp_path: Path) -> None:
    """The multimodal protocol end to end on phantoms (issue #35's CI check): FLAIR + T1ce + T2 in, three
    sigmoid regions out, every held-out patient scored per region with 3D Dice and HD95 under the BraTS
    empty-mask rule, and the per-region summary table printed."""
    out = tmp_path / "cv"
    res = CliRunner().invoke(cli, ["crossval", str(raw_dir), "--out", str(out), "--folds", "2", "--include-test",
                                   "--recipe", "brats2d", "--modalities", "flair,t1ce,t2", "--region", "all",
                                   "--views", "axial", *CLI_TINY])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "cv_summary.json").read_text())
    assert list(s["regions"]) == ["wt", "tc", "et"]
    cases = sorted(_cases(raw_dir))
    diagonal = float(np.linalg.norm([48, 48, 24]))  # the phantoms' shape at 1 mm: HD95 when one mask is empty
    for region, r in s["regions"].items():
        assert sorted(p["patient"] for p in r["per_patient"]) == cases  # each patient held out once
        for p in r["per_patient"]:
            assert 0.0 <= p["dice"] <= 1.0 and 0.0 <= p["hd95"] <= diagonal + 1e-6, (region, p)
        assert r["dice"]["mean"] == pytest.approx(np.mean([p["dice"] for p in r["per_patient"]]))
    m = json.loads((out / "fold0" / "metrics.json").read_text())
    assert json.loads(checkpoint.load(out / "fold0" / "run" / "best_model.pth")["config"])["base_channels"] == 4
    meta = cache.read_meta(out / "fold0" / "cache.h5")
    assert meta.config["modalities"] == ["flair", "t1ce", "t2"] and meta.image_shape[0] == 3 and meta.mask_channels == 3
    assert set(m["volume"]) == {"wt", "tc", "et"}
    table = res.output[res.output.index("per region"):]
    for name in ("WT", "TC", "ET"):
        assert f"\n│ {name} " in table or f"\n┃ {name} " in table, table
    # experiments/missing_modalities.py: the complete scan reproduces the folds' scores, region by region
    mm = experiment_script("missing_modalities").main([str(out), "--raw", str(raw_dir)])
    assert list(mm["summary"]) == ["flair+t1ce+t2", "flair+t1ce", "flair+t2", "flair"]
    for region, r in s["regions"].items():
        want = {p["patient"]: p["dice"] for p in r["per_patient"]}
        assert {p["patient"]: p["dice"]["flair+t1ce+t2"][region] for p in mm["patients"]} == pytest.approx(want, abs=1e-9)
        assert mm["summary"]["flair"][region]["paired"]["se"] >= 0


def test_prediction_cost_reproduces_the_folds_scores(cv: tuple[Path, dict], raw_dir: Path, tmp_path: Path) -> None:
    out, summary = cv
    res = experiment_script("prediction_cost").main([str(out), "--raw", str(raw_dir), "--json", str(tmp_path / "pc.json")])
    want = {p["patient"]: p["dice"] for p in summary["regions"]["wt"]["per_patient"]}
    assert res["settings"]["own"] == "best, axial"
    assert {r["patient"]: r["dice"]["best, axial"] for r in res["patients"]} == pytest.approx(want, abs=1e-9)
    v = res["variants"]
    assert set(v) == {"best, axial", "latest, axial", "best+latest, axial"}
    assert (v["best, axial"]["passes"], v["best+latest, axial"]["passes"]) == (1.0, 2.0)
    assert "paired" not in v["best, axial"] and v["latest, axial"]["paired"]["se"] >= 0
    assert json.loads((tmp_path / "pc.json").read_text())["variants"] == res["variants"]


def test_prediction_cost_tta_subsets_average_the_views_predict_averages(cv: tuple[Path, dict], raw_dir: Path) -> None:
    """--tta: each subset of TTA's views is the mean of one prediction per view; the full set scores what
    `Predictor.volume(tta=True)` (one call, all eight views) scores, and no TTA what the folds scored."""
    from brats2d import metrics as M
    from brats2d.cv.folds import mask_as_planned
    from brats2d.nifti import load_patient, patient_from_folder

    out, summary = cv
    res = experiment_script("prediction_cost").main([str(out), "--raw", str(raw_dir), "--tta"])
    v = res["variants"]
    assert res["settings"]["own"] == "best, axial, no tta" and "paired" not in v["best, axial, no tta"]
    assert {n: v[n]["passes"] for n in ("best, axial, flip 1st axis", "best, axial, tta 4", "best, axial, tta 8")} == {
        "best, axial, flip 1st axis": 2.0, "best, axial, tta 4": 4.0, "best, axial, tta 8": 8.0}
    want = {p["patient"]: p["dice"] for p in summary["regions"]["wt"]["per_patient"]}
    assert {r["patient"]: r["dice"]["best, axial, no tta"] for r in res["patients"]} == pytest.approx(want, abs=1e-9)
    row = res["patients"][0]
    pred = load_predictor(out / f"fold{row['fold']}" / "run", "best", "cpu")
    image, seg, _, _ = load_patient(patient_from_folder(raw_dir / row["patient"]), pred.prep_cfg.modalities)
    prob = pred.volume(image, tta=True)[0]
    dice = float(M.dice(M.confusion(mask_as_planned(prob[0], pred, res["settings"]["predict"]), seg > 0)))
    assert row["dice"]["best, axial, tta 8"] == pytest.approx(dice, abs=1e-3)  # summation order only
