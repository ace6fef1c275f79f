"""Training losses on raw logits for multi-label (sigmoid, one channel per region) segmentation.

Every loss takes logits (B, K, H, W) of any float dtype and targets (B, K, H, W) float 0/1 of the
same shape (extra spatial dims also work: sums/means run over dims 2..), and returns a 0-d float32
tensor. Logits are cast to float32 first so bf16/fp16 autocast never degrades the loss itself.

Definitions match MONAI (checked in tests/test_losses.py, MONAI being a dev-only dependency):
  soft_dice == monai.losses.DiceLoss(sigmoid=True, smooth_nr=smooth, smooth_dr=smooth, batch=batch)
  focal     == monai.losses.FocalLoss(gamma=gamma, alpha=alpha, use_softmax=False)
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]
NAMES = ("bce", "dice", "bce+dice", "focal", "dice+focal")


def _prep(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """float32 copies of logits and target after a shape check (silent broadcasting would hide bugs)."""
    if logits.shape != target.shape:
        raise ValueError(f"logits and target shapes differ: {tuple(logits.shape)} vs {tuple(target.shape)}")
    if logits.ndim < 3:
        raise ValueError(f"expected (B, K, H, W) tensors, got shape {tuple(logits.shape)}")
    return logits.float(), target.float()


def bce(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy with logits, mean over all B*K*H*W elements (nats). Scalar float32.

    Uses the log-sum-exp form, stable for any logit magnitude (unlike sigmoid followed by log).
    """
    x, t = _prep(logits, target)
    return F.binary_cross_entropy_with_logits(x, t)


def soft_dice(logits: Tensor, target: Tensor, smooth: float = 1e-5, batch: bool = False) -> Tensor:
    """Soft Dice loss in [0, 1]: mean over (B, K) of 1 - (2*sum(p*t) + smooth) / (sum(p) + sum(t) + smooth).

    p = sigmoid(logits); sums run over the spatial dims of each sample and channel (MONAI batch=False),
    so smooth in numerator and denominator makes an empty target with an empty prediction score ~0.
    batch=True sums over the batch too, one Dice per channel (MONAI batch=True, nnU-Net's "batch
    Dice"): a slice's weight then grows with its tumour area instead of every slice weighing the same.
    """
    x, t = _prep(logits, target)
    p = torch.sigmoid(x)
    dims = (0, *range(2, x.ndim)) if batch else tuple(range(2, x.ndim))
    inter = (p * t).sum(dims)
    denom = p.sum(dims) + t.sum(dims)
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).mean()


def focal(logits: Tensor, target: Tensor, gamma: float = 2.0, alpha: float | None = None) -> Tensor:
    """Sigmoid focal loss, mean over all elements (nats). Scalar float32.

    FL = a_t * (1 - p_t)**gamma * BCE, p_t = p where t = 1 else 1 - p; a_t = alpha where t = 1 else
    1 - alpha (no weighting when alpha is None). Same formula and mean reduction as MONAI's FocalLoss.
    """
    x, t = _prep(logits, target)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    # (1 - p_t)**gamma in log space, as MONAI does: 1 - sigmoid(x) would cancel to 0 for large x.
    modulator = torch.exp(gamma * F.logsigmoid(-x * (2.0 * t - 1.0)))
    loss = modulator * ce
    if alpha is not None:
        loss = (t * alpha + (1.0 - t) * (1.0 - alpha)) * loss
    return loss.mean()


def make_loss(name: str, *, smooth: float = 1e-5, gamma: float = 2.0, alpha: float | None = None,
              dice_batch: bool = False) -> LossFn:
    """The training loss called `name` (one of NAMES; "a+b" is the unweighted sum) as fn(logits, target).

    smooth/dice_batch: soft-Dice smoothing and batch Dice; gamma/alpha: focal parameters. Unknown name
    -> ValueError.
    """

    def dice_fn(x: Tensor, t: Tensor) -> Tensor:
        return soft_dice(x, t, smooth, dice_batch)

    def focal_fn(x: Tensor, t: Tensor) -> Tensor:
        return focal(x, t, gamma, alpha)

    def bce_dice(x: Tensor, t: Tensor) -> Tensor:
        return bce(x, t) + dice_fn(x, t)

    def dice_focal(x: Tensor, t: Tensor) -> Tensor:
        return dice_fn(x, t) + focal(x, t, gamma, alpha)

    table: dict[str, LossFn] = {"bce": bce, "dice": dice_fn, "bce+dice": bce_dice,
                                "focal": focal_fn, "dice+focal": dice_focal}
    if name not in table:
        raise ValueError(f"unknown loss {name!r} (choose from {', '.join(NAMES)})")
    return table[name]
