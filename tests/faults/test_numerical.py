"""Numerical faults: a NaN/inf loss stops training with one clear line; the last good checkpoint stays."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import brats2d.checkpoint as ckmod
import brats2d.train as T
from brats2d import cache, checkpoint
from brats2d.cli.main import cli

from .conftest import TINY_CLI, assert_one_line_error


def _invoke(*args) -> tuple[int, str]:
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return r.exit_code, r.output


def _all_finite(ck: dict) -> bool:
    tensors = list(ck["model"].values())
    if "optimizer" in ck:
        tensors += [v for st in ck["optimizer"]["state"].values() for v in st.values() if isinstance(v, torch.Tensor)]
    return all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
def test_non_finite_loss_stops_training_keeping_last_good_checkpoint(tiny_cache: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch, bad: float) -> None:
    steps_per_epoch = -(-cache.read_meta(tiny_cache).counts["train"] // 4)
    poisoned = steps_per_epoch + 4  # epoch 2, step 4: epoch 1's best/latest and epoch 2's step-3 save are good
    real_make_loss, n = T.make_loss, [0]

    def make_loss(*a, **kw):
        fn = real_make_loss(*a, **kw)

        def loss(logits, y):
            out = fn(logits, y)
            if torch.is_grad_enabled():  # training steps only, not validation
                n[0] += 1
                if n[0] == poisoned:
                    return out * bad
            return out
        return loss

    monkeypatch.setattr(T, "make_loss", make_loss)
    saved: dict[str, dict] = {}
    real_save = ckmod.save

    def recording_save(obj, path):
        real_save(obj, path)
        saved[Path(path).name] = {"epoch": obj["epoch"], "step": obj.get("step"),
                                  "model": {k: v.clone() for k, v in obj["model"].items()}}

    monkeypatch.setattr(ckmod, "save", recording_save)
    run = tmp_path / "run"
    code, out = _invoke("train", "--cache", tiny_cache, "--run-dir", run, *TINY_CLI, "--epochs", 2)
    assert_one_line_error(out, code, "non-finite training loss", "epoch 2")
    latest, best = checkpoint.load(run / "latest_checkpoint.pth"), checkpoint.load(run / "best_model.pth")
    assert (latest["epoch"], latest["step"]) == (1, 3) == (saved["latest_checkpoint.pth"]["epoch"],
                                                            saved["latest_checkpoint.pth"]["step"])
    assert best["epoch"] == 1
    for ck, name in ((latest, "latest_checkpoint.pth"), (best, "best_model.pth")):
        assert _all_finite(ck), name
        assert all(torch.equal(ck["model"][k], v) for k, v in saved[name]["model"].items()), name


def test_nan_voxels_in_a_cache_stop_training(tiny_cache: Path, tmp_path: Path) -> None:
    """A cache that is intact (checksums match) but whose content is NaN, written through CacheWriter."""
    meta = cache.read_meta(tiny_cache)
    bad = tmp_path / "nan.h5"
    with cache.CacheWriter(bad, meta.image_shape, meta.mask_channels, meta.image_dtype) as w:
        for split in cache.SPLITS:
            images, masks = (np.array(a) for a in cache.open_arrays(tiny_cache, split))
            patients, slices = cache.read_index(tiny_cache, split)
            if split == "train":
                images[::7] = np.nan
            for case in dict.fromkeys(patients.tolist()):
                sel = patients == case
                w.add(split, case, images[sel], masks[sel], slices[sel])
        w.finish({"config": meta.config, "source": meta.source, "patients": meta.patients, "splits": meta.splits})
    cache.verify(bad)
    run = tmp_path / "run"
    code, out = _invoke("train", "--cache", bad, "--run-dir", run, *TINY_CLI, "--epochs", 1)
    assert_one_line_error(out, code, "non-finite training loss")
    assert not (run / "best_model.pth").exists()
    if (run / "latest_checkpoint.pth").exists():
        assert _all_finite(checkpoint.load(run / "latest_checkpoint.pth"))
