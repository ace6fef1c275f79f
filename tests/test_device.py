"""--device auto / --precision auto resolution, with CUDA availability mocked (CI has no GPU)."""

from __future__ import annotations

import pytest
import torch

from brats2d import device as D


def test_auto_device_follows_cuda_availability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert D.resolve_device("auto") == torch.device("cuda")
    assert D.resolve_device("cuda:1") == torch.device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        D.resolve_device("cuda")
    with pytest.raises(ValueError):
        D.resolve_device("mps")


def test_auto_precision_is_amp_on_cuda_and_bf16_only_with_native_support(monkeypatch: pytest.MonkeyPatch) -> None:
    assert D.resolve_precision(torch.device("cuda"), "auto") == "fp16"
    monkeypatch.setattr(D, "cpu_supports_bf16", lambda: True)
    assert D.resolve_precision(torch.device("cpu"), "auto") == "bf16"
    monkeypatch.setattr(D, "cpu_supports_bf16", lambda: False)
    assert D.resolve_precision(torch.device("cpu"), "auto") == "fp32"
    assert D.resolve_precision(torch.device("cpu"), "bf16") == "bf16"  # explicit wins
    with pytest.raises(ValueError, match="fp16 autocast is for CUDA"):
        D.resolve_precision(torch.device("cpu"), "fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tiny_training_step_on_cuda(tiny_cache, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from brats2d.config import TrainConfig
    from brats2d.train import train

    from .conftest import TINY

    hist = train(tiny_cache, tmp_path / "run", TrainConfig(**{**TINY, "precision": "auto", "epochs": 1}),
                 device="cuda", log=lambda m: None)
    assert hist and hist[0]["train_loss"] > 0
