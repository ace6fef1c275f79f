"""The seed U-Net (tiny sizes), the device/precision helpers, and one step of the training benchmark's core."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brats2d.model import UNet, build_model, count_parameters
from brats2d.device import autocast_context, cpu_supports_bf16

from .conftest import bench_script

TINY = dict(base_channels=4, depth=2)
S = 32


@pytest.mark.parametrize("cin", [1, 2, 4])
@pytest.mark.parametrize("cout", [1, 3])
def test_output_shapes(cin: int, cout: int) -> None:
    torch.manual_seed(0)
    model = build_model(cin, cout, dropout=0.0, **TINY)
    out = model(torch.rand(2, cin, S, S))
    assert out.shape == (2, cout, S, S) and out.dtype == torch.float32
    assert model.out_channels == cout and count_parameters(model) > 0


def test_predict_proba_is_a_probability() -> None:
    model = build_model(1, 3, dropout=0.0, **TINY).eval()
    p = model.predict_proba(5 * torch.randn(3, 1, S, S))
    assert p.shape == (3, 3, S, S) and not p.requires_grad
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0


@pytest.mark.parametrize("shape", [(1, 1, 30, 32), (1, 1, 32, 34), (1, 2, 32, 32), (1, 32, 32)])
def test_bad_input_raises_value_error(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        UNet(1, 1, **TINY)(torch.rand(*shape))


def test_count_parameters_matches_a_hand_count() -> None:
    b = 4  # depth 1: enc 1->b, bottleneck b->2b, dec (2b+b)->b, head b->1 (+bias); BN has 2 params/channel
    conv = lambda i, o: 9 * i * o  # noqa: E731
    dc = lambda i, o: conv(i, o) + conv(o, o) + 4 * o  # noqa: E731
    assert count_parameters(UNet(1, 1, b, 1)) == dc(1, b) + dc(b, 2 * b) + dc(3 * b, b) + b + 1


@pytest.mark.parametrize("norm,layer", [("batch", nn.BatchNorm2d), ("instance", nn.InstanceNorm2d), ("group", nn.GroupNorm)])
def test_norm_layer_is_the_one_asked_for(norm: str, layer: type) -> None:
    torch.manual_seed(0)
    model = build_model(1, 1, norm=norm, **TINY)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm))]
    assert len(norms) == 2 * (2 * TINY["depth"] + 1) and all(type(m) is layer for m in norms)
    assert count_parameters(model) == count_parameters(build_model(1, 1, **TINY))  # 2 affine params per channel
    if norm == "group":  # gcd(8, channels) groups: 4 at the 4-channel level, 8 from 8 channels on
        assert [m.num_groups for m in norms[:2]] == [4, 4] and norms[2].num_groups == 8
    x = torch.rand(3, 1, S, S) * torch.tensor([1.0, 5.0, 20.0]).view(3, 1, 1, 1)
    for train_mode in (True, False):
        model.train(train_mode)
        with torch.no_grad():
            alone, batched = model(x[:1]), model(x)[:1]
        # instance and group statistics are per sample: a slice's output does not depend on its batch
        # mates, in training or inference; BatchNorm's training output does
        assert torch.allclose(alone, batched, atol=1e-5) == (norm != "batch" or not train_mode)
    if norm == "instance":
        assert not any(b.numel() for n, b in model.named_buffers())  # no running statistics to drift


def test_unknown_norm_layer_is_refused() -> None:
    with pytest.raises(ValueError, match="layer"):
        build_model(1, 1, norm="layer", **TINY)


def test_no_dropout_layers_when_dropout_is_zero() -> None:
    assert not any(isinstance(m, nn.Dropout2d) for m in build_model(1, 1, dropout=0.0, **TINY).modules())


def test_dropout_is_stochastic_in_train_mode_only() -> None:
    torch.manual_seed(0)
    model = build_model(1, 1, dropout=0.5, **TINY)
    n_drop = sum(isinstance(m, nn.Dropout2d) for m in model.modules())
    assert n_drop == TINY["depth"] + 1  # bottleneck + one per decoder level
    x = torch.rand(2, 1, S, S)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


def test_channels_last_and_bf16_match_fp32_and_train() -> None:
    torch.manual_seed(0)
    ref = build_model(2, 1, **TINY)
    cl = build_model(2, 1, **TINY).to(memory_format=torch.channels_last)
    cl.load_state_dict(ref.state_dict())
    x = torch.rand(2, 2, S, S)
    out_ref = ref(x)
    out_ref.square().sum().backward()
    xc = x.contiguous(memory_format=torch.channels_last)
    with autocast_context(torch.device("cpu"), "fp32"):
        out_cl = cl(xc)
    out_cl.square().sum().backward()
    torch.testing.assert_close(out_cl, out_ref, rtol=1e-4, atol=1e-4)
    for p, q in zip(cl.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-3)
    with autocast_context(torch.device("cpu"), "bf16"):
        out_bf = cl(xc)
    assert out_bf.dtype == torch.bfloat16
    assert (out_bf.float() - out_ref).abs().max() < 0.1 * out_ref.abs().max() + 0.05


def test_autocast_context_on_cpu() -> None:
    cpu = torch.device("cpu")
    a, b = torch.rand(4, 4), torch.rand(4, 4)
    with autocast_context(cpu, "fp32"):
        assert (a @ b).dtype == torch.float32
    with autocast_context(cpu, "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast_context(cpu, "auto"):
        assert (a @ b).dtype == (torch.bfloat16 if cpu_supports_bf16() else torch.float32)
    with pytest.raises(ValueError):
        autocast_context(cpu, "fp16")
    with pytest.raises(ValueError):
        autocast_context(cpu, "fp64")
    assert isinstance(cpu_supports_bf16(), bool)


@pytest.mark.parametrize("variant", ["naive", "channels_last+bf16+no-sync"])
def test_benchmark_core_runs_one_variant(variant: str) -> None:
    bench = bench_script("train_variants")
    row = bench.measure_variant(variant, batch=2, steps=2, base=4, depth=2, size=S, warmup=0)
    assert row["name"] == variant and row["batch"] == 2 and row["images_per_s"] > 0


def test_benchmark_synthetic_task_is_balanced() -> None:
    x, y = bench_script("train_variants").synthetic_task(4, S)
    assert x.shape == y.shape == (4, 1, S, S) and 0.4 < float(y.mean()) < 0.6
