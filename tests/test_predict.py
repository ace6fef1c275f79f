"""predict (source space), eval (metrics JSON), report (pictures) and the demo, on tiny synthetic data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from brats2d import metrics as M
from brats2d.config import ConfigError, PredictConfig, PreprocessConfig, TrainConfig
from brats2d.evaluate import evaluate
from brats2d.inference import Predictor, load_predictor
from brats2d.nifti import InputError, discover, load_patient
from brats2d.predict import post_settings, postprocess, postprocess_regions, predict, predict_case, score_variants
from brats2d.report import report
from brats2d.train import train

from .conftest import SHAPE, SIZE, TINY, make_tree


class Identity(nn.Module):
    """A 'model trained to identity': logits = 40 (x - 0.5) on channel 0, so p > 0.5 exactly where x > 0.5."""

    in_channels, out_channels = 1, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 40.0 * (x[:, :1] - 0.5)


def mask_as_flair(raw: Path) -> None:
    """Replace each FLAIR with its seg > 0 (tumour 1000, rest 0), keeping the NIfTI geometry."""
    for folder in sorted(p for p in raw.iterdir() if p.is_dir()):
        case = folder.name
        seg = nib.load(str(folder / f"{case}_seg.nii.gz"))
        flair = nib.load(str(folder / f"{case}_flair.nii.gz"))
        data = (np.asarray(seg.dataobj) > 0).astype(np.int16) * 1000
        nib.save(nib.Nifti1Image(data, flair.affine, flair.header), str(folder / f"{case}_flair.nii.gz"))


def test_identity_model_through_the_full_predict_path(tmp_path: Path) -> None:
    raw = make_tree(tmp_path / "raw", patients=2, shape=(64, 64, 20))
    mask_as_flair(raw)
    pred = Predictor([Identity()], TrainConfig(channels_last=False, precision="fp32"), PreprocessConfig(size=48),
                     torch.device("cpu"), "fp32", tmp_path, "")
    rows, errors = predict(pred, [raw], tmp_path / "out", threshold=0.5)
    assert not errors and len(rows) == 2
    for r in rows:
        # normalize -> 48x48 -> model -> bilinear back to 64x64 loses only boundary pixels
        assert r["regions"]["wt"]["dice"] > 0.9, r
        assert r["regions"]["wt"]["hd95"] <= 2.0
    with open(tmp_path / "out" / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["patient"] for t in table] == [r["patient"] for r in rows]


def test_postprocess_drops_small_or_all_but_the_largest_component() -> None:
    m = np.zeros((20, 20, 10), bool)
    m[1:6, 1:6, 1:6] = True  # 125 voxels
    m[10:13, 10:13, 2:4] = True  # 18
    m[13, 13, 4] = True  # touches the 18 only by a corner: 26-connectivity makes it part of it (19)
    m[17, 17, 8] = True  # 1
    assert postprocess(m) is m
    assert postprocess(m, min_size=19).sum() == 125 + 19
    assert postprocess(m, min_size=20).sum() == 125
    assert postprocess(m, keep_largest=True).sum() == 125 and postprocess(m, keep_largest=True)[1:6, 1:6, 1:6].all()
    assert not postprocess(m, min_size=126, keep_largest=True).any()
    assert not postprocess(np.zeros_like(m), keep_largest=True).any()


def test_postprocess_regions_keeps_the_largest_component_only_in_the_regions_named() -> None:
    prob = np.zeros((3, 20, 20, 10), np.float32)
    prob[:, 1:6, 1:6, 1:6] = 0.9  # every region: a large component and a small one
    prob[:, 12:14, 12:14, 2:4] = 0.6
    both, large = 125 + 8, 125
    masks = postprocess_regions(prob, ["wt", "tc", "et"], 0.5, keep_largest=True, largest_regions=("wt", "tc"))
    assert masks.dtype == bool and masks.shape == prob.shape
    assert [int(m.sum()) for m in masks] == [large, large, both]  # ET keeps its second focus
    assert [int(m.sum()) for m in postprocess_regions(prob, ["wt", "tc", "et"], 0.5, keep_largest=True)] == [large] * 3
    assert [int(m.sum()) for m in postprocess_regions(prob, ["wt", "tc", "et"], 0.5, min_size=10)] == [large] * 3
    assert int(postprocess_regions(prob[2:], ["et"], 0.5, keep_largest=True, largest_regions=("wt",)).sum()) == both
    # a plan written before largest_regions existed: the largest component everywhere, as then
    assert post_settings({"min_size": 0, "keep_largest": True, "tta": False})["largest_regions"] == ("wt", "tc", "et")
    with pytest.raises(ConfigError, match="largest_regions: unknown region 'all'"):
        PredictConfig(largest_regions=("wt", "all"))


def test_score_variants_match_predict_case_and_post_processing_helps(tmp_path: Path) -> None:
    raw = make_tree(tmp_path / "raw", patients=1, shape=(64, 64, 20))
    mask_as_flair(raw)
    folder = next(p for p in raw.iterdir() if p.is_dir())
    path = folder / f"{folder.name}_flair.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).copy()
    assert not data[2:10, 2:10, 2:5].any()  # a corner away from the tumour ...
    data[2:10, 2:10, 2:5] = 1000  # ... gets a bright blob: a false positive of the identity model
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(path))
    pred = Predictor([Identity()], TrainConfig(channels_last=False, precision="fp32"), PreprocessConfig(size=48),
                     torch.device("cpu"), "fp32", tmp_path, "")
    plain = {"tta": False, "min_size": 0, "keep_largest": False}
    rows = score_variants(pred, folder, 0.5, {"plain": plain, "largest": {**plain, "keep_largest": True},
                                              "tta": {**plain, "tta": True}})
    once = predict_case(pred, folder, None, threshold=0.5)["regions"]["wt"]
    assert rows["plain"]["regions"]["wt"] == once
    # a pixel-wise model is equivariant to flips/rotations, so TTA changes nothing
    assert rows["tta"]["regions"]["wt"]["dice"] == pytest.approx(once["dice"], abs=1e-6)
    big = rows["largest"]["regions"]["wt"]
    assert big["pred_voxels"] < once["pred_voxels"] and big["dice"] > once["dice"] + 0.02 and big["dice"] > 0.9
    assert big == predict_case(pred, folder, None, threshold=0.5, keep_largest=True)["regions"]["wt"]


@pytest.fixture(scope="module")
def tiny_run(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run") / "r"
    train(tiny_cache, run, TrainConfig(**{**TINY, "epochs": 3}), log=lambda m: None)
    return run


def test_prediction_is_a_nifti_in_the_input_space(tiny_run: Path, raw_dir: Path, tmp_path: Path) -> None:
    case = sorted(p.name for p in raw_dir.iterdir())[0]
    row = predict_case(load_predictor(tiny_run, device="cpu"), raw_dir / case, tmp_path, probabilities=True, tta=True)
    flair = nib.load(str(raw_dir / case / f"{case}_flair.nii.gz"))
    out = nib.load(str(tmp_path / f"{case}_pred.nii.gz"))
    assert out.shape == flair.shape == SHAPE
    np.testing.assert_allclose(out.affine, flair.affine)
    assert out.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(out.dataobj))) <= {0, 1}
    prob = nib.load(str(tmp_path / f"{case}_prob.nii.gz"))
    unc = nib.load(str(tmp_path / f"{case}_uncertainty.nii.gz"))
    assert prob.shape == unc.shape == SHAPE
    p = np.asarray(prob.dataobj)
    assert 0.0 <= p.min() and p.max() <= 1.0 and np.asarray(unc.dataobj).min() >= 0.0
    assert {"dice", "hd95", "tumour_voxels", "pred_voxels"} <= set(row["regions"]["wt"])
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temp files


def test_ensemble_averages_member_probabilities(tiny_run: Path, tiny_cache: Path, raw_dir: Path, tmp_path: Path) -> None:
    case = raw_dir / sorted(p.name for p in raw_dir.iterdir())[0]
    from brats2d.nifti import load_patient, patient_from_folder

    image = load_patient(patient_from_folder(case), ("flair",), need_seg=False)[0]
    # A run whose last checkpoint is another model than its best (here: another seed's 1-epoch model).
    run, other = tmp_path / "run", tmp_path / "other"
    shutil.copytree(tiny_run, run)
    train(tiny_cache, other, TrainConfig(**{**TINY, "epochs": 1, "seed": 1}), log=lambda m: None)
    shutil.copy(other / "latest_checkpoint.pth", run / "latest_checkpoint.pth")
    best, last = (load_predictor(run, w, "cpu").volume(image)[0] for w in ("best", "latest"))
    assert not np.array_equal(best, last)
    both = load_predictor(run, "best+latest", "cpu")
    assert len(both.models) == 2
    np.testing.assert_allclose(both.volume(image)[0], (best + last) / 2, atol=1e-6)
    # When the best epoch is the last one, both files hold one model: loaded once, same probabilities.
    shutil.copy(run / "best_model.pth", run / "latest_checkpoint.pth")
    one = load_predictor(run, "best+latest", "cpu")
    assert len(one.models) == 1
    np.testing.assert_array_equal(one.volume(image)[0], best)
    # Several runs: each listed run's checkpoint is a member (here the same run twice: the same mean).
    twice = load_predictor([tiny_run, tiny_run], "best", "cpu")
    assert len(twice.models) == 2
    np.testing.assert_allclose(twice.volume(image)[0], best, atol=1e-6)
    with pytest.raises(ValueError, match="choose from best, latest, best[+]latest"):
        load_predictor(tiny_run, "last", "cpu")


def test_ensemble_members_must_share_the_input(tiny_run: Path, raw_dir: Path, tmp_path: Path) -> None:
    from brats2d.preprocess import preprocess

    other = tmp_path / "pct.h5"
    preprocess(raw_dir, other, PreprocessConfig(size=SIZE, norm="percentile"), workers=1)
    run = tmp_path / "pct"
    train(other, run, TrainConfig(**{**TINY, "epochs": 1}), log=lambda m: None)
    with pytest.raises(ValueError, match="pct/best_model.pth: was trained on other preprocessing"):
        load_predictor([tiny_run, run], "best", "cpu")


def test_wrong_inputs_are_clear_errors(tiny_run: Path, raw_copy: Path, tmp_path: Path) -> None:
    pred = load_predictor(tiny_run, device="cpu")
    cases = sorted(p for p in raw_copy.iterdir() if p.is_dir())
    (cases[0] / f"{cases[0].name}_flair.nii.gz").unlink()  # the modality the model needs
    seg = nib.load(str(cases[1] / f"{cases[1].name}_seg.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16), seg.affine), str(cases[1] / f"{cases[1].name}_flair.nii.gz"))
    rows, errors = predict(pred, [raw_copy], tmp_path / "out")
    assert len(rows) == len(cases) - 2 and len(errors) == 2
    assert any(cases[0].name in e and "flair" in e for e in errors)
    assert any(cases[1].name in e for e in errors)
    with pytest.raises(InputError, match="not a BraTS patient folder"):
        predict_case(pred, tmp_path, None)
    # A multimodal model names the modality and the file a patient lacks.
    (cases[2] / f"{cases[2].name}_t2.nii.gz").unlink()
    with pytest.raises(InputError) as e:
        load_patient(discover(cases[2])[0], ("flair", "t1ce", "t2"), need_seg=False)
    assert str(cases[2] / f"{cases[2].name}_t2.nii.gz") in str(e.value)
    assert "missing t2 file (this model reads flair, t1ce, t2)" in str(e.value)


def test_eval_writes_consistent_metrics(tiny_run: Path, raw_dir: Path) -> None:
    res = evaluate(tiny_run, "test", "best", 0.5, raw=raw_dir, device="cpu")
    saved = json.loads((tiny_run / "metrics_test.json").read_text())
    assert saved["split"] == "test" and set(saved["regions"]) == {"wt"}
    wt = res["regions"]["wt"]
    c = M.Counts(**{k: np.int64(v) for k, v in wt["counts"].items()})
    assert wt["pooled"]["dice"] == pytest.approx(float(M.dice(c)))
    tp, fp, fn = (wt["counts"][k] for k in ("tp", "fp", "fn"))
    assert wt["pooled"]["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else True
    for key in ("accuracy", "precision", "recall", "specificity", "f1", "iou"):
        assert key in wt["pooled"] and key in wt["per_slice_mean"]
    assert wt["per_patient"] and {"patient", "dice", "hd95", "tumour_voxels"} <= set(wt["per_patient"][0])
    vol = res["volume"]["wt"]["per_patient"]
    assert [r["patient"] for r in vol] == [r["patient"] for r in wt["per_patient"]]


def test_report_writes_both_pictures(tiny_run: Path) -> None:
    pics = report(tiny_run, device="cpu", uncertainty=True)
    for name in ("curves", "overlays"):
        path = Path(pics[name])
        assert path.stat().st_size > 5000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_runs_end_to_end_on_a_tiny_setting(tmp_path: Path) -> None:
    from brats2d.demo import run_demo

    out = run_demo(tmp_path / "demo", patients=6, epochs=1, shape=SHAPE, base_channels=4, size=SIZE, echo=lambda m: None)
    run = Path(out["run_dir"])
    for name in ("best_model.pth", "latest_checkpoint.pth", "history.csv", "config.json", "curves.png",
                 "overlays.png", "metrics_test.json"):
        assert (run / name).is_file(), name
    assert list((tmp_path / "demo" / "predictions").glob("*_pred.nii.gz"))
    again = run_demo(tmp_path / "demo2", patients=6, epochs=1, shape=SHAPE, base_channels=4, size=SIZE, echo=lambda m: None)
    # deterministic for a seed (JSON text, so that NaN statistics compare equal)
    assert json.dumps(again["metrics"]["regions"]) == json.dumps(out["metrics"]["regions"])
    from brats2d.checkpoint import load

    a, b = load(run / "best_model.pth")["model"], load(Path(again["run_dir"]) / "best_model.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_slices_outside_the_head_are_not_run_through_the_model(tmp_path: Path) -> None:
    seen: list[int] = []

    class Counting(Identity):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(len(x))
            return super().forward(x)

    pred = Predictor([Counting()], TrainConfig(channels_last=False, precision="fp32"), PreprocessConfig(size=16),
                     torch.device("cpu"), "fp32", tmp_path, "")
    vol = np.zeros((1, 24, 24, 10), np.float32)
    vol[0, 4:20, 4:20, 3:7] = 100.0
    vol[0, 8:12, 8:12, 3:7] = 900.0  # > 0.5 after min-max: "tumour"
    prob, _ = pred.volume(vol)
    assert sum(seen) == 4  # only z = 3..6 have signal
    assert prob.shape == (1, 24, 24, 10) and not prob[..., :3].any() and not prob[..., 7:].any()
    assert (prob[0, 9:11, 9:11, 3:7] > 0.5).all()


def test_multimodal_all_regions_with_uncertainty_end_to_end(raw_dir: Path, raw_copy: Path, tmp_path: Path) -> None:
    from brats2d.preprocess import preprocess

    cache_path = tmp_path / "mm.h5"
    preprocess(raw_dir, cache_path, PreprocessConfig(size=SIZE, modalities=("flair", "t1ce"), region="all"), workers=1)
    run = tmp_path / "run"
    train(cache_path, run, TrainConfig(**{**TINY, "epochs": 1, "dropout": 0.2}), log=lambda m: None)
    res = evaluate(run, "test", "best", 0.5, device="cpu")
    assert set(res["regions"]) == {"wt", "tc", "et"}  # metrics per BraTS region
    pred = load_predictor(run, device="cpu")
    assert pred.model.in_channels == 2 and pred.model.out_channels == 3
    case = sorted(p.name for p in raw_dir.iterdir())[0]
    row = predict_case(pred, raw_dir / case, tmp_path / "out", mc_dropout=2)
    assert set(row["regions"]) == {"wt", "tc", "et"}
    labels = nib.load(str(tmp_path / "out" / f"{case}_pred.nii.gz"))
    assert labels.shape == SHAPE and set(np.unique(np.asarray(labels.dataobj))) <= {0, 1, 2, 4}
    assert nib.load(str(tmp_path / "out" / f"{case}_uncertainty.nii.gz")).shape == SHAPE + (3,)
    (raw_copy / case / f"{case}_t1ce.nii.gz").unlink()  # the run needs T1ce: a clear error naming it
    with pytest.raises(InputError, match="t1ce"):
        predict_case(pred, raw_copy / case, None)


@pytest.mark.parametrize("prep", [dict(context=1), dict(norm="zscore"), dict(crop="brain"), dict(mirror=True)])
def test_predict_feeds_the_model_what_training_saw(raw_dir: Path, tiny_cache: Path, tmp_path: Path, prep: dict) -> None:
    """2.5D stacks, z-scored, cropped and mirrored inputs are rebuilt from the raw volume exactly as the cache holds them."""
    from brats2d import cache
    from brats2d.cache import CacheError
    from brats2d.predict import load_case
    from brats2d.preprocess import preprocess

    cache_path = tmp_path / "ctx.h5"
    pcfg = PreprocessConfig(size=SIZE, **prep)
    preprocess(raw_dir, cache_path, pcfg, workers=1)
    run = tmp_path / "run"
    train(cache_path, run, TrainConfig(**{**TINY, "epochs": 1}), log=lambda m: None)
    pred = load_predictor(run, device="cpu")
    assert pred.model.in_channels == pcfg.in_channels and pred.prep_cfg == pcfg
    seen: list[np.ndarray] = []
    pred.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().float().cpu().numpy()))
    patients, slices = cache.read_index(cache_path, "train")
    case = str(patients[0])
    _, image, _, _ = load_case(pred, raw_dir / case)
    prob, _ = pred.volume(image)
    fed = np.concatenate(seen)  # (n head slices, C', S, S), in z order
    head = np.flatnonzero(image.any(axis=(0, 1, 2)))
    images, _ = cache.open_arrays(cache_path, "train")
    rows = np.flatnonzero(patients == case)
    for r in rows:  # every cached slice of the patient reaches the model exactly as it was trained on
        z = slices[r]
        np.testing.assert_allclose(fed[np.searchsorted(head, z)], images[r].astype(np.float32), atol=2e-3, rtol=2e-3)
    assert prob.shape == (1,) + SHAPE and 0 <= prob.min() and prob.max() <= 1
    with pytest.raises(CacheError, match=next(iter(prep))):  # a seed cache cannot be scored by this run
        evaluate(run, "test", "best", 0.5, cache_path=str(tiny_cache), device="cpu")
    assert Path(report(run, device="cpu")["overlays"]).stat().st_size > 5000
