"""Explanation maps for `brats2d predict --explain`: where the model's evidence for the predicted tumour comes from.

Method: Integrated Gradients (Sundararajan et al. 2017) computed by Captum, per slice and region k, of
the sum of region k's logits over the pixels the model predicts as k, from an all-zero baseline (the
value of background after normalization: "no signal"). The map is the positive part of the attribution
summed over input channels: the input voxels whose signal pushes the model towards the tumour it drew.
A slice with no predicted tumour gets a zero map. The slices go through exactly the preprocessing of
`Predictor.volume` (normalization, crop box, context, resize, planes), so the map lies on the scan's
voxels. Why not Grad-CAM on a decoder block: docs/viewer.md ("Explanation maps").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from .inference import Predictor


def _require_captum() -> None:
    try:
        import captum  # noqa: F401
    except ImportError as e:  # a clear message instead of a traceback deep in predict
        raise ImportError("--explain needs Captum: pip install 'captum>=0.7' (make install does)") from e


@dataclass
class Explainer(Predictor):
    """A Predictor whose `slices` returns attribution maps instead of probabilities (same shapes).

    `threshold`: the probability above which a pixel counts as predicted tumour (the run's threshold).
    `steps`: Riemann steps of the path integral (Captum's n_steps).
    """

    threshold: float = 0.5
    steps: int = 16

    @classmethod
    def of(cls, pred: Predictor, threshold: float, steps: int = 16) -> "Explainer":
        return cls(**{f.name: getattr(pred, f.name) for f in dataclasses.fields(Predictor)},
                   threshold=threshold, steps=steps)

    def slices(self, x: np.ndarray, batch_size: int = 16, **_: object) -> tuple[np.ndarray, None]:
        """Evidence maps (N, K, S, S) float32 >= 0 for normalized slices x (N, C, S, S), mean over members."""
        from captum.attr import IntegratedGradients

        self._eval()
        out = np.zeros((len(x), self.model.out_channels) + x.shape[2:], np.float32)
        for net in self.models:
            for k in range(net.out_channels):
                def score(inp: torch.Tensor, mask: torch.Tensor, net=net, k=k) -> torch.Tensor:
                    return (net(inp)[:, k].float() * mask).sum(dim=(1, 2))  # (B,) evidence for region k

                ig = IntegratedGradients(score)
                for i in range(0, len(x), batch_size):
                    xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)).to(self.device)
                    with torch.no_grad():
                        mask = (torch.sigmoid(net(xb)[:, k].float()) > self.threshold).float()
                    hit = mask.flatten(1).any(dim=1)  # only slices with predicted tumour cost a path integral
                    if not hit.any():
                        continue
                    xs, ms = xb[hit], mask[hit]
                    a = ig.attribute(xs, baselines=torch.zeros_like(xs), additional_forward_args=(ms,),
                                     n_steps=self.steps, internal_batch_size=batch_size * 4)
                    idx = i + hit.nonzero()[:, 0].cpu().numpy()
                    out[idx, k] += a.sum(dim=1).clamp_min(0).detach().cpu().numpy()
        self._eval()
        return out / len(self.models), None


def explain_volume(pred: Predictor, image: np.ndarray, threshold: float, steps: int = 16,
                   blank: tuple[int, ...] = ()) -> np.ndarray:
    """Explanation maps (K, X, Y, Z) float32 in [0, 1] for a raw volume (C, X, Y, Z) (`blank`: channels of
    modalities the scan lacks, as in Predictor.volume).

    Each region's map is scaled by its maximum over the volume (all zeros when nothing is predicted),
    so 1 marks the strongest evidence in this scan; values are not comparable across scans.
    """
    _require_captum()
    with torch.enable_grad():
        maps, _ = Explainer.of(pred, threshold, steps).volume(image, blank=blank)
    peak = maps.reshape(len(maps), -1).max(axis=1)
    scale = np.where(peak > 0, 1.0 / np.maximum(peak, 1e-12), 0.0).astype(np.float32)
    return np.ascontiguousarray(maps * scale[:, None, None, None], dtype=np.float32)
