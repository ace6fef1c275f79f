"""Loading a trained run for inference, and batched prediction of slices and whole volumes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .augment import apply_batch, invert_one
from .config import CHECKPOINTS, PreprocessConfig, TrainConfig, from_dict
from .crop import paste
from .model import UNet, build_model
from .ood import Profile
from .slicing import Prepared, prepare, resize_slices, with_context
from .device import autocast_context, keep_freed_memory, resolve_device, resolve_precision
from .views import VIEWS, from_view, to_view

# The 8 distinct transforms of the training augmentation (k quarter-turns, with and without hflip).
TTA_CODES = (0, 1, 2, 3, 8, 9, 10, 11)


@dataclass
class Predictor:
    """One trained model, or an ensemble of models that share a preprocessing, with their settings.

    An ensemble averages the members' sigmoid probabilities (as nnU-Net does across its folds);
    `train_cfg` and `run_dir` are the first member's. With `train_mode` the models predict in training
    mode: BatchNorm normalizes with each batch's statistics and updates its running ones (e.g. to
    re-estimate them on one scan, AdaBN) and dropout is on; off (the default), evaluation mode.
    """

    models: list[UNet]
    train_cfg: TrainConfig
    prep_cfg: PreprocessConfig
    device: torch.device
    precision: str
    run_dir: Path
    cache_path: str
    profile: Profile | None = None  # the training scans' properties (brats2d.ood), None for older runs
    train_mode: bool = False

    @property
    def model(self) -> UNet:
        """The first member (the only one unless an ensemble)."""
        return self.models[0]

    @property
    def regions(self) -> list[str]:
        return ["wt", "tc", "et"] if self.prep_cfg.region == "all" else [self.prep_cfg.region]

    @torch.inference_mode()
    def slices(self, x: np.ndarray, batch_size: int = 64, tta: bool = False, mc_dropout: int = 0,
               codes: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (N, K, S, S) float32 for normalized slices x (N, C, S, S) float.

        With `tta` (8 symmetric views) or `mc_dropout` = T > 0 (T stochastic passes with dropout on),
        also returns the per-pixel variance of the samples (N, K, S, S) as an uncertainty map. `codes`
        (transform codes of brats2d.augment, e.g. (8,) for a flip alone) replaces TTA's eight views: an
        ablation of which views TTA needs (experiments/prediction_cost.py).
        """
        self._eval()
        if mc_dropout:
            for m in (m for net in self.models for m in net.modules()):
                if isinstance(m, torch.nn.Dropout2d):
                    m.train()  # dropout stays stochastic; BatchNorm keeps its running statistics
        codes = codes if codes is not None else TTA_CODES if tta else (0,)
        reps = max(mc_dropout, 1)
        mean = np.zeros((len(x), self.model.out_channels) + x.shape[2:], np.float32)
        sq = np.zeros_like(mean) if (len(codes) > 1 or mc_dropout) else None
        for i in range(0, len(x), batch_size):
            xb = np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)
            for code in codes:
                xin = apply_batch(xb, np.full(len(xb), code)) if code else xb
                for _ in range(reps):
                    p = self._forward(torch.from_numpy(np.ascontiguousarray(xin)))
                    p = np.ascontiguousarray(invert_one(p, code)) if code else p
                    mean[i:i + len(xb)] += p
                    if sq is not None:
                        sq[i:i + len(xb)] += p * p
        n = len(codes) * reps
        mean /= n
        var = None if sq is None else np.maximum(sq / n - mean * mean, 0.0)
        self._eval()
        return mean, var

    def _eval(self) -> None:
        for net in self.models:
            net.train(self.train_mode)

    def _forward(self, x: torch.Tensor) -> np.ndarray:
        """Sigmoid probabilities (B, K, S, S) float32, averaged over the members."""
        x = x.to(self.device)
        if self.train_cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        p = None
        with autocast_context(self.device, self.precision):
            for net in self.models:
                q = torch.sigmoid(net(x).float())
                p = q if p is None else p.add_(q)
        assert p is not None
        return p.div_(len(self.models)).cpu().numpy()

    def volume(self, image: np.ndarray, views: tuple[str, ...] | None = None, blank: tuple[int, ...] = (), **kw
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (K, X, Y, Z) float32 for a raw scan (C, X, Y, Z), every slice.

        Shorthand for `volume_prepared(prepare(image, prep_cfg, blank=blank))`: the scan is normalized
        exactly as the cache was (brats2d.slicing.prepare); `blank` channels are modalities it lacks.
        """
        if image.ndim != 4:
            raise ValueError(f"expected a (C, X, Y, Z) volume, got shape {image.shape}")
        return self.volume_prepared(prepare(image, self.prep_cfg, blank=blank), views, **kw)

    def volume_prepared(self, prep: Prepared, views: tuple[str, ...] | None = None, **kw
                        ) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (K, X, Y, Z) float32 for a scan prepared as the cache was (brats2d.slicing.prepare).

        Slices are resized to the training size (after cropping to the head box, crop 'brain'),
        predicted in batches, and the probabilities resized back (bilinear; 0 outside the box). Slices
        with no head voxel (~20 % of a BraTS volume) are not run through the model; their probability
        (and uncertainty) is 0. With several planes in the preprocess config's `views`, the model
        predicts along each plane and the probability (and uncertainty) volumes are averaged; `views`
        overrides which planes (an ablation: e.g. ("axial",) for a multi-view run's axial view).
        """
        image, head, box = prep.image, prep.head.mask[None], prep.box
        shape = image.shape[1:]
        views = self.prep_cfg.views if views is None else tuple(views)
        if not views or any(v not in VIEWS for v in views):
            raise ValueError(f"views: need planes from {', '.join(VIEWS)}, got {views}")
        p, v = None, None
        for view in views:
            pv, vv = self._plane(to_view(image, view), to_view(head, view)[0], box if view == "axial" else None, **kw)
            pv = from_view(pv, view, shape)
            p = pv if p is None else p + pv
            if vv is not None:
                vv = from_view(vv, view, shape)
                v = vv if v is None else v + vv
        assert p is not None
        n = np.float32(len(views))
        return np.ascontiguousarray(p / n), None if v is None else np.ascontiguousarray(v / n)

    def _plane(self, image: np.ndarray, head_mask: np.ndarray, box: tuple[int, int, int, int] | None, **kw
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (K, H, W, D) of the slices along the last axis of a normalized (C, H, W, D)
        volume with head mask (H, W, D); `box` (x0, x1, y0, y1) is the part of each slice that is
        resized (None: all of it)."""
        H, W, D = image.shape[1:]
        head = np.flatnonzero(head_mask.any(axis=(0, 1)))  # slices with any head voxel
        x0, x1, y0, y1 = box if box is not None else (0, H, 0, W)
        x = resize_slices(with_context(image[:, x0:x1, y0:y1], head, self.prep_cfg.context), self.prep_cfg.size)
        p, v = self.slices(x, **kw)  # (n, K, S, S)

        def back(a: np.ndarray) -> np.ndarray:  # (n, K, S, S) -> (K, H, W, D), zeros where skipped or cropped
            out = np.zeros((a.shape[1], H, W, D), np.float32)
            out[..., head] = np.moveaxis(paste(resize_up(a, (x1 - x0, y1 - y0)), (x0, x1, y0, y1), (H, W)), 0, -1)
            return out

        return back(p), None if v is None else back(v)


def resize_up(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(n, K, s, s) float32 probabilities -> (n, K, *shape), bilinear (unchanged when already that size)."""
    import torch.nn.functional as F

    if a.shape[-2:] == shape:
        return a
    t = F.interpolate(torch.from_numpy(a), size=shape, mode="bilinear", align_corners=False)
    return t.numpy()


def load_predictor(run_dir: str | Path | list[str | Path], which: str = "best", device: str = "auto") -> Predictor:
    """Load best_model.pth (or latest_checkpoint.pth, or both as an ensemble) of a run, weights-only.

    `run_dir` may list several runs (e.g. the fold models of a cross-validation): every listed
    checkpoint of every run becomes an ensemble member. Members must share the preprocessing (the
    input they expect) and the output channels; ValueError names the run that differs.
    """
    if which not in CHECKPOINTS:
        raise ValueError(f"checkpoint: {which!r} (choose from {', '.join(CHECKPOINTS)})")
    runs = [Path(r) for r in (run_dir if isinstance(run_dir, (list, tuple)) else [run_dir])]
    if not runs:
        raise ValueError("load_predictor: no run folder given")
    dev = resolve_device(device)
    if dev.type == "cpu":
        keep_freed_memory()
    names = [{"best": "best_model.pth", "latest": "latest_checkpoint.pth"}[w] for w in which.split("+")]
    models: list[UNet] = []
    first: tuple[TrainConfig, PreprocessConfig, dict, str, Profile | None] | None = None
    for run in runs:
        own: list[dict] = []  # this run's state dicts: best == latest when the best epoch was the last
        for name in names:
            ck = checkpoint.load(run / name)
            if any(_same_weights(ck["model"], w) for w in own):
                continue  # the mean of identical members is that member: skip the second forward pass
            own.append(ck["model"])
            ident = json.loads(ck["identity"])
            tcfg = from_dict(TrainConfig, ident["train"])
            pcfg = from_dict(PreprocessConfig, ident["cache"]["config"])
            if first is None:
                inputs = ident.get("inputs")
                first = (tcfg, pcfg, ident["model"], ident.get("cache_path", ""),
                         Profile.from_dict(inputs) if inputs else None)
            elif (pcfg, ident["model"]["out_channels"]) != (first[1], first[2]["out_channels"]):
                raise ValueError(f"{run / name}: was trained on other preprocessing settings or regions than "
                                 f"{runs[0]} (an ensemble needs the same input and output)")
            model = build_model(ident["model"]["in_channels"], ident["model"]["out_channels"], tcfg.base_channels,
                                tcfg.depth, tcfg.dropout, tcfg.norm_layer)
            model.load_state_dict(ck["model"])
            model = model.to(dev).eval()
            if tcfg.channels_last:
                model = model.to(memory_format=torch.channels_last)
            models.append(model)
    assert first is not None
    tcfg, pcfg, _, cache_path, profile = first
    return Predictor(models, tcfg, pcfg, dev, resolve_precision(dev, tcfg.precision), runs[0], cache_path, profile)


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
