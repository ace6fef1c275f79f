"""brats2d.metrics: hand-computed cases always; MONAI as an oracle when it is installed."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from brats2d import metrics as M

# pred [[1,1],[1,0]] vs target [[1,0],[0,0]]: tp=1 fp=2 fn=0 tn=1.
P22 = np.array([[1, 1], [1, 0]], dtype=bool)
T22 = np.array([[1, 0], [0, 0]], dtype=bool)
EXPECTED22 = {"dice": 0.5, "iou": 1 / 3, "accuracy": 0.5, "precision": 1 / 3, "recall": 1.0,
              "specificity": 1 / 3, "f1": 0.5}


def test_confusion_and_all_metrics_on_2x2() -> None:
    c = M.confusion(P22, T22)
    assert (int(c.tp), int(c.fp), int(c.fn), int(c.tn)) == (1, 2, 0, 1)
    assert c.tp.dtype == np.int64 and c.tp.shape == ()
    for name, want in EXPECTED22.items():
        assert float(getattr(M, name)(c)) == pytest.approx(want, abs=1e-12), name
    assert M.summarize(c, "pooled") == pytest.approx(EXPECTED22)
    assert M.summarize(c, "mean") == pytest.approx(EXPECTED22)
    assert M.sensitivity is M.recall
    assert set(M.METRICS) == set(EXPECTED22)


def test_confusion_accepts_01_ints_and_axes() -> None:
    p = np.stack([P22, T22, np.zeros((2, 2), bool)]).astype(np.uint8)
    t = np.stack([T22, T22, np.zeros((2, 2), bool)]).astype(np.int64)
    c = M.confusion(p, t, axes=(1, 2))
    assert c.tp.tolist() == [1, 1, 0] and c.fp.tolist() == [2, 0, 0]
    assert c.fn.tolist() == [0, 0, 0] and c.tn.tolist() == [1, 3, 4]
    s = M.per_slice(p, t)
    assert all((getattr(s, k) == getattr(c, k)).all() for k in ("tp", "fp", "fn", "tn"))
    tot = c.total()
    assert (int(tot.tp), int(tot.fp), int(tot.fn), int(tot.tn)) == (2, 2, 0, 8)
    summed = M.Counts(c.tp[0], c.fp[0], c.fn[0], c.tn[0]) + M.Counts(c.tp[1], c.fp[1], c.fn[1], c.tn[1])
    assert (int(summed.tp), int(summed.fp), int(summed.tn)) == (2, 2, 4)


def test_confusion_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="0/1"):
        M.confusion(np.array([0.3, 1.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="shapes"):
        M.confusion(np.zeros((2, 2), bool), np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="reduction"):
        M.summarize(M.confusion(P22, T22), "median")  # type: ignore[arg-type]


def test_empty_rule_both_ways() -> None:
    z = np.zeros((3, 3), bool)
    c = M.confusion(z, z)
    for name in ("dice", "iou", "precision", "recall", "f1"):
        assert float(getattr(M, name)(c)) == 1.0
        assert math.isnan(float(getattr(M, name)(c, empty=float("nan"))))
    assert float(M.accuracy(c)) == 1.0 and float(M.specificity(c)) == 1.0  # tn = 9: defined
    full = np.ones((3, 3), bool)
    assert float(M.specificity(M.confusion(full, full), empty=0.25)) == 0.25
    # Empty prediction on a non-empty target is a real miss, never "empty".
    miss = M.confusion(z, full)
    assert float(M.dice(miss, empty=float("nan"))) == 0.0 and float(M.recall(miss)) == 0.0
    assert float(M.precision(miss)) == 1.0  # tp + fp = 0 -> the empty rule


def test_summarize_mean_is_nan_aware() -> None:
    z = np.zeros((2, 2), bool)
    c = M.per_slice(np.stack([P22, z]), np.stack([T22, z]))
    assert M.summarize(c, "mean")["dice"] == pytest.approx(0.75)
    assert M.summarize(c, "mean", empty=float("nan"))["dice"] == pytest.approx(0.5)
    assert M.summarize(c, "pooled")["dice"] == pytest.approx(0.5)
    all_empty = M.per_slice(np.stack([z, z]), np.stack([z, z]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" warning
        assert math.isnan(M.summarize(all_empty, "mean", empty=float("nan"))["dice"])


def test_per_patient_groups_and_sorts() -> None:
    z = np.zeros((2, 2), bool)
    pred = np.stack([P22, z, T22, P22])
    target = np.stack([T22, T22, T22, z])
    names, c = M.per_patient(pred, target, np.array(["b", "a", "b", "a"]))
    assert names == ["a", "b"]
    # a: slices 1 (miss 1 fn, 3 tn) + 3 (3 fp, 1 tn); b: slices 0 (1,2,0,1) + 2 (1,0,0,3)
    assert c.tp.tolist() == [0, 2] and c.fp.tolist() == [3, 2]
    assert c.fn.tolist() == [1, 0] and c.tn.tolist() == [4, 4]
    assert M.dice(c).tolist() == pytest.approx([0.0, 4 / 6])
    names_int, _ = M.per_patient(pred, target, np.array([10, 9, 10, 9]))
    assert names_int == ["10", "9"]  # ids are compared as strings


def test_hd95_single_voxels_anisotropic() -> None:
    a, b = np.zeros((4, 8), bool), np.zeros((4, 8), bool)
    a[2, 2], b[2, 5] = True, True
    assert M.hd95(a, b) == pytest.approx(3.0)
    assert M.hd95(a, b, spacing=(1.0, 2.0)) == pytest.approx(6.0)
    a3, b3 = np.zeros((3, 5, 6), bool), np.zeros((3, 5, 6), bool)
    a3[1, 1, 1], b3[1, 3, 4] = True, True
    assert M.hd95(a3, b3, spacing=(1.0, 2.0, 3.0)) == pytest.approx(math.sqrt(4.0**2 + 9.0**2))


def test_hd95_two_squares_and_percentile() -> None:
    # Two 2x2 squares (all four voxels are edge) 4 columns apart: directed distances {4, 4, 5, 5} * dx
    # in each direction; the 95th percentile (position 2.85 of 0..3) lies between the two 5s.
    a, b = np.zeros((4, 8), bool), np.zeros((4, 8), bool)
    a[0:2, 0:2], b[0:2, 5:7] = True, True
    assert M.hd95(a, b, spacing=(3.0, 0.5)) == pytest.approx(5 * 0.5)
    # Target = square + one far voxel 4 rows below: target->pred {0,0,0,0,4dy}, p95 = 0.8 * 4dy;
    # pred->target is all 0: the symmetric result is the larger directed value.
    t = np.zeros((6, 8), bool)
    t[0:2, 0:2] = True
    p = t.copy()
    t[5, 1] = True
    assert M.hd95(p, t, spacing=(2.0, 0.5)) == pytest.approx(0.8 * 8.0)
    assert M.hd95(t, p, spacing=(2.0, 0.5)) == pytest.approx(0.8 * 8.0)
    assert M.hd95(p, p) == 0.0


def test_hd95_crop_does_not_change_result() -> None:
    rng = np.random.default_rng(0)
    small_p, small_t = rng.random((6, 7, 5)) < 0.4, rng.random((6, 7, 5)) < 0.4
    big_p, big_t = np.zeros((30, 31, 20), bool), np.zeros((30, 31, 20), bool)
    big_p[10:16, 3:10, 15:20], big_t[10:16, 3:10, 15:20] = small_p, small_t  # touches the last border
    sp = (1.0, 1.5, 2.5)
    assert M.hd95(big_p, big_t, sp) == pytest.approx(M.hd95(small_p, small_t, sp))


def test_hd95_empty_cases_and_errors() -> None:
    z, one = np.zeros((5, 5), bool), np.zeros((5, 5), bool)
    one[2, 2] = True
    assert M.hd95(z, z) == 0.0
    assert M.hd95(one, z) == math.inf and M.hd95(z, one) == math.inf
    # The BraTS challenge's rule: one empty mask costs the image diagonal (373.13 mm at 240x240x155, 1 mm).
    assert M.hd95(z, z, empty="brats") == 0.0
    assert M.hd95(one, z, empty="brats") == M.hd95(z, one, empty="brats") == pytest.approx(math.sqrt(50))
    big, empty = np.zeros((240, 240, 155), bool), np.zeros((240, 240, 155), bool)
    big[100:110, 100:110, 70:80] = True
    assert M.hd95(big, empty, (1.0, 1.0, 1.0), empty="brats") == pytest.approx(373.13, abs=0.005)
    assert M.hd95(big[::2, ::2], empty[::2, ::2], (2.0, 2.0, 1.0), empty="brats") == pytest.approx(373.13, abs=0.005)
    assert M.hd95(big, big, (1.0, 1.0, 1.0), empty="brats") == 0.0  # not empty: the usual distance
    with pytest.raises(ValueError, match="empty"):
        M.hd95(one, z, empty="nan")
    with pytest.raises(ValueError, match="spacing"):
        M.hd95(one, one, spacing=(1.0, 1.0, 1.0))


# --- MONAI as oracle -------------------------------------------------------------------------------
# MONAI's empty handling differs from ours (DiceMetric: nan for an empty target with ignore_empty=True;
# confusion-matrix metrics: nan for a 0 denominator; HD: nan/inf when a mask is empty), so the
# comparisons below only use items where both masks are non-empty.

def _masks(shape: tuple[int, ...], seed: int, density: float, smooth: bool) -> tuple[np.ndarray, np.ndarray]:
    """Two random (B, *spatial) bool masks, each item non-empty; `smooth` gives blob-like regions."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        x = rng.random(shape)
        if smooth:
            x = ndimage.gaussian_filter(x, sigma=(0,) + (2,) * (len(shape) - 1))
            x = x > np.quantile(x, 1 - density, axis=tuple(range(1, len(shape))), keepdims=True)
        else:
            x = x < density
        for b in range(shape[0]):
            x[b].flat[rng.integers(x[b].size)] = True  # never empty
        out.append(x)
    return out[0], out[1]


CASES = [((4, 24, 32), 0, 0.3, False), ((3, 40, 36), 1, 0.1, True), ((4, 32, 32), 2, 0.01, False),
         ((2, 16, 20, 12), 3, 0.2, True), ((2, 14, 12, 10), 4, 0.03, False)]


@pytest.mark.parametrize("shape,seed,density,smooth", CASES)
def test_dice_and_confusion_match_monai(shape: tuple[int, ...], seed: int, density: float, smooth: bool) -> None:
    pytest.importorskip("monai")
    import torch
    from monai.metrics import DiceMetric, compute_confusion_matrix_metric, get_confusion_matrix

    p, t = _masks(shape, seed, density, smooth)
    yp, yt = torch.from_numpy(p[:, None].astype(np.float32)), torch.from_numpy(t[:, None].astype(np.float32))
    c = M.per_slice(p, t)

    dm = DiceMetric(include_background=True, reduction="mean")
    dm(yp, yt)
    assert M.summarize(c, "mean")["dice"] == pytest.approx(float(dm.aggregate()), abs=1e-6)

    cm = get_confusion_matrix(yp, yt, include_background=True)[:, 0]  # (B, 4): tp, fp, tn, fn
    assert cm[:, 0].tolist() == c.tp.tolist() and cm[:, 1].tolist() == c.fp.tolist()
    assert cm[:, 2].tolist() == c.tn.tolist() and cm[:, 3].tolist() == c.fn.tolist()
    names = {"sensitivity": M.recall, "specificity": M.specificity, "precision": M.precision,
             "accuracy": M.accuracy, "f1 score": M.f1, "threat score": M.iou}
    for monai_name, ours in names.items():
        want = compute_confusion_matrix_metric(monai_name, cm).numpy()
        defined = ~np.isnan(want)
        assert defined.any()
        np.testing.assert_allclose(ours(c)[defined], want[defined], atol=1e-6, err_msg=monai_name)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation noise in get_mask_edges
@pytest.mark.parametrize("shape,seed,density,smooth", CASES)
def test_hd95_matches_monai(shape: tuple[int, ...], seed: int, density: float, smooth: bool) -> None:
    pytest.importorskip("monai")
    import torch
    from monai.metrics import HausdorffDistanceMetric

    p, t = _masks(shape, seed, density, smooth)
    spacing = (0.8, 1.7, 3.0)[: len(shape) - 1]
    hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    want = hd(torch.from_numpy(p[:, None]).float(), torch.from_numpy(t[:, None]).float(), spacing=spacing)
    ours = [M.hd95(p[b], t[b], spacing) for b in range(shape[0])]
    np.testing.assert_allclose(ours, want[:, 0].numpy(), rtol=1e-5, atol=1e-5)
