"""brats2d.losses: properties always; MONAI / torch as oracles for the exact values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brats2d import losses as L


def _batch(seed: int, shape: tuple[int, ...] = (2, 3, 8, 8), scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits (float32) and 0/1 targets with one all-empty channel to cover the smooth term."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * scale
    target = (torch.rand(shape, generator=g) < 0.3).float()
    target[0, -1] = 0.0
    return logits, target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bce_matches_torch(seed: int) -> None:
    x, t = _batch(seed, scale=20.0)  # large logits: the stable form must not overflow
    want = F.binary_cross_entropy_with_logits(x, t)
    assert torch.allclose(L.bce(x, t), want, atol=1e-6)


def test_focal_with_gamma0_no_alpha_is_bce() -> None:
    x, t = _batch(3)
    assert torch.allclose(L.focal(x, t, gamma=0.0), L.bce(x, t), atol=1e-6)


def test_soft_dice_hand_case() -> None:
    # One sample, one channel of 2 pixels, logits 0 -> p = 0.5 each; target [1, 0]:
    # 1 - (2 * 0.5 + s) / (1.0 + 1.0 + s)
    x, t = torch.zeros(1, 1, 1, 2), torch.tensor([[[[1.0, 0.0]]]])
    assert L.soft_dice(x, t, smooth=0.0).item() == pytest.approx(0.5)
    assert L.soft_dice(x, t, smooth=1.0).item() == pytest.approx(1 - 2.0 / 3.0)


def test_perfect_logits_give_near_zero_dice() -> None:
    _, t = _batch(4)
    x = (2 * t - 1) * 50.0  # saturated, matching the target (including the empty channel)
    assert L.soft_dice(x, t).item() < 1e-6
    assert L.focal(x, t).item() < 1e-6


@pytest.mark.parametrize("name", L.NAMES)
def test_gradients_flow_and_bf16_gives_float32(name: str) -> None:
    x, t = _batch(5)
    fn = L.make_loss(name, gamma=2.0, alpha=0.25)
    x32 = x.clone().requires_grad_(True)
    loss = fn(x32, t)
    loss.backward()
    assert loss.ndim == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert x32.grad is not None and torch.isfinite(x32.grad).all() and x32.grad.abs().sum() > 0
    xb = x.to(torch.bfloat16).requires_grad_(True)
    lb = fn(xb, t)
    lb.backward()
    assert lb.dtype == torch.float32 and xb.grad is not None and xb.grad.dtype == torch.bfloat16
    assert lb.item() == pytest.approx(loss.item(), rel=0.05)  # bf16 only rounds the inputs


def test_make_loss_sums_and_unknown_name() -> None:
    x, t = _batch(6)
    kw = dict(smooth=1e-3, gamma=1.5, alpha=0.3)
    d, b, f = L.soft_dice(x, t, 1e-3), L.bce(x, t), L.focal(x, t, 1.5, 0.3)
    assert torch.allclose(L.make_loss("bce+dice", **kw)(x, t), b + d)
    assert torch.allclose(L.make_loss("dice+focal", **kw)(x, t), d + f)
    assert torch.allclose(L.make_loss("dice", **kw)(x, t), d)
    assert torch.allclose(L.make_loss("focal", **kw)(x, t), f)
    with pytest.raises(ValueError, match="'tversky'"):
        L.make_loss("tversky")
    with pytest.raises(ValueError, match="shapes"):
        L.bce(x, t[:, :1])


@pytest.mark.parametrize("seed,shape,smooth", [(0, (2, 3, 8, 8), 1e-5), (1, (4, 1, 16, 12), 1.0),
                                               (2, (1, 2, 6, 5, 4), 1e-5)])
def test_soft_dice_matches_monai(seed: int, shape: tuple[int, ...], smooth: float) -> None:
    monai_losses = pytest.importorskip("monai.losses")
    x, t = _batch(seed, shape)
    t[0] = 0  # an empty slice, where per-slice and batch Dice differ most
    for batch in (False, True):
        want = monai_losses.DiceLoss(sigmoid=True, smooth_nr=smooth, smooth_dr=smooth, batch=batch)(x, t)
        assert torch.allclose(L.soft_dice(x, t, smooth, batch), want, atol=1e-6)
        assert torch.allclose(L.make_loss("dice", smooth=smooth, dice_batch=batch)(x, t), want, atol=1e-6)
    if shape[0] > 1:  # one slice: the batch is that slice
        assert not torch.allclose(L.soft_dice(x, t, smooth, True), L.soft_dice(x, t, smooth, False))


@pytest.mark.parametrize("gamma,alpha", [(2.0, None), (0.0, None), (3.5, 0.25), (1.0, 0.8)])
def test_focal_matches_monai(gamma: float, alpha: float | None) -> None:
    monai_losses = pytest.importorskip("monai.losses")
    for seed, scale in [(0, 3.0), (1, 15.0)]:
        x, t = _batch(seed, scale=scale)
        want = monai_losses.FocalLoss(gamma=gamma, alpha=alpha, use_softmax=False)(x, t)
        assert torch.allclose(L.focal(x, t, gamma, alpha), want, atol=1e-6)
