"""`brats2d predict --explain`: Grad-CAM evidence must sit on the tumour when only the tumour explains the output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

pytest.importorskip("captum", reason="captum is not installed (make install adds it)")

from brats2d.config import PreprocessConfig, TrainConfig  # noqa: E402
from brats2d.explain import explain_volume  # noqa: E402
from brats2d.inference import Predictor  # noqa: E402
from brats2d.model import build_model  # noqa: E402

S = 32


def phantom(rng: np.random.Generator, tumour: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One slice (S, S) float32 in [0, 1]: a textured head disc, and (optionally) a bright round tumour.

    The label is the tumour and nothing else, so the only evidence for a predicted tumour is the tumour.
    """
    yy, xx = np.mgrid[:S, :S]
    head = (yy - S / 2) ** 2 + (xx - S / 2) ** 2 < (S / 2 - 2) ** 2
    img = np.where(head, 0.35 + 0.08 * rng.standard_normal((S, S)), 0.0).astype(np.float32)
    lab = np.zeros((S, S), bool)
    if tumour:
        r = rng.uniform(3, 5)
        cy, cx = rng.uniform(10, S - 10, 2)
        lab = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) & head
        img[lab] = rng.uniform(0.85, 0.95)
    img = np.clip(img, 0, 1)
    img[0, 0], img[-1, -1] = 0.0, 1.0  # fixes min and max, so the minmax normalization is the identity
    return img, lab


@pytest.fixture(scope="module")
def trained() -> Predictor:
    """A small U-Net trained for a few hundred steps to segment the bright disc (seconds on one core)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = build_model(1, 1, base_channels=8, depth=2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(250):
        xs, ys = zip(*(phantom(rng, tumour=rng.random() < 0.8) for _ in range(16)))
        x = torch.from_numpy(np.stack(xs)[:, None])
        y = torch.from_numpy(np.stack(ys)[:, None].astype(np.float32))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return Predictor([net], TrainConfig(base_channels=8, depth=2, precision="fp32"), PreprocessConfig(size=S),
                     torch.device("cpu"), "fp32", Path("."), "")


def test_evidence_sits_on_the_tumour(trained: Predictor) -> None:
    rng = np.random.default_rng(42)
    slices = [phantom(rng, tumour=z != 3) for z in range(8)]  # slice 3 has no tumour
    image = np.stack([s[0] for s in slices], axis=-1)[None]  # (1, X, Y, Z)
    truth = np.stack([s[1] for s in slices], axis=-1)
    prob, _ = trained.volume(image)
    assert ((prob[0] > 0.5) == truth).mean() > 0.98, "the phantom model did not learn the tumour"

    maps = explain_volume(trained, image, threshold=0.5)
    assert maps.shape == (1,) + image.shape[1:] and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() == pytest.approx(1.0)
    near = ndimage.binary_dilation(truth, iterations=2, structure=np.ones((3, 3, 1), bool))
    mass = maps[0].sum()
    inside = maps[0][near].sum() / mass
    area = near.mean()
    assert inside > 0.85, f"only {inside:.0%} of the evidence lies on the tumour (which covers {area:.0%} of the scan)"
    assert maps[0][..., 3].max() == 0.0, "a slice with no predicted tumour must have no evidence"
    for z in (0, 1, 2, 4):  # each tumour slice's strongest evidence is on its tumour
        peak = np.unravel_index(np.argmax(maps[0][..., z]), (S, S))
        assert near[peak + (z,)], f"slice {z}: the peak evidence {peak} is off the tumour"


def test_nothing_predicted_gives_an_all_zero_map(trained: Predictor) -> None:
    rng = np.random.default_rng(7)
    image = np.stack([phantom(rng, tumour=False)[0] for _ in range(4)], axis=-1)[None]
    maps = explain_volume(trained, image, threshold=0.5)
    assert not maps.any()
