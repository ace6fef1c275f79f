"""The seed 2D U-Net: double-conv encoder/decoder with bilinear upsampling and skip concatenation.

Shapes: input (B, C, S, S) float32 (or channels_last, or under bf16/fp16 autocast), S divisible by
2**depth; output raw logits (B, K, S, S) -- the losses take logits, `predict_proba` applies the sigmoid.
Channels at level i are base_channels * 2**i, i = 0..depth (level `depth` is the bottleneck).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import NORM_LAYERS


GROUPS = 8  # GroupNorm groups (Wu & He's default), fewer where a layer has fewer channels


def norm_layer(kind: str, channels: int) -> nn.Module:
    """The normalization after each convolution.

    batch: BatchNorm2d, the seed (running statistics at inference). instance: InstanceNorm2d with affine
    weights and no running statistics, nnU-Net's choice: each slice and channel normalized by itself, the
    same in training and inference. group: GroupNorm(gcd(8, channels) groups), batch-size independent.
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)
    if kind == "group":
        return nn.GroupNorm(math.gcd(GROUPS, channels), channels)
    raise ValueError(f"norm: unknown normalization layer {kind!r} (choose from {', '.join(NORM_LAYERS)})")


def double_conv(cin: int, cout: int, norm: str = "batch") -> nn.Sequential:
    """(Conv3x3(bias=False) -> norm -> ReLU) x 2: (B, cin, H, W) -> (B, cout, H, W)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm_layer(norm, cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), norm_layer(norm, cout), nn.ReLU(inplace=True),
    )


class _DenseGrad(torch.autograd.Function):
    """Identity whose backward hands on a dense channels_last gradient.

    The gradient of a `torch.cat` input is a channel slice of the cat's gradient; the channels_last
    bilinear-upsample backward kernel is ~6x slower on such a strided view than on a dense copy.
    """

    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: object, g: Tensor) -> Tensor:
        return g.contiguous(memory_format=torch.channels_last)


def _upsample_input_grad_dense(x: Tensor) -> Tensor:
    """x unchanged; in channels_last training its gradient is made dense (see _DenseGrad)."""
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return _DenseGrad.apply(x) if cl and x.requires_grad else x


class Up(nn.Module):
    """Upsample x2 (bilinear), concatenate the skip, optional Dropout2d, then double-conv."""

    def __init__(self, cin: int, cskip: int, cout: int, dropout: float = 0.0, norm: str = "batch") -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv = double_conv(cin + cskip, cout, norm)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """x (B, cin, H, W), skip (B, cskip, 2H, 2W) -> (B, cout, 2H, 2W)."""
        up = _upsample_input_grad_dense(self.up(x))
        return self.conv(self.drop(torch.cat([up, skip], dim=1)))


class UNet(nn.Module):
    """2D U-Net mapping (B, in_channels, S, S) images to (B, out_channels, S, S) logits.

    `dropout` > 0 adds nn.Dropout2d at the bottleneck and before every decoder double-conv (for
    MC-dropout uncertainty); 0 builds no dropout layers at all. `norm` picks the layer after every
    convolution (see `norm_layer`; "batch" is the seed).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 32, depth: int = 4,
                 dropout: float = 0.0, norm: str = "batch") -> None:
        super().__init__()
        if min(in_channels, out_channels, base_channels, depth) < 1:
            raise ValueError("in_channels, out_channels, base_channels and depth must all be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.base_channels, self.depth, self.dropout, self.norm = base_channels, depth, dropout, norm
        ch = [base_channels * 2 ** i for i in range(depth + 1)]
        self.downs = nn.ModuleList([double_conv(in_channels, ch[0], norm)]
                                   + [double_conv(ch[i - 1], ch[i], norm) for i in range(1, depth)])
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = double_conv(ch[depth - 1], ch[depth], norm)
        self.bottleneck_drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList([Up(ch[i + 1], ch[i], ch[i], dropout, norm) for i in reversed(range(depth))])
        self.head = nn.Conv2d(ch[0], out_channels, 1)

    def check_input(self, x: Tensor) -> None:
        """ValueError unless x is (B, in_channels, H, W) with H and W divisible by 2**depth."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, S, S), got shape {tuple(x.shape)}")
        m = 2 ** self.depth
        if x.shape[2] % m or x.shape[3] % m:
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must be divisible by 2**depth = {m} "
                             f"(depth={self.depth}); resize or pad the slices")

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, S, S) float -> logits (B, K, S, S) (float32, or the autocast dtype under autocast)."""
        self.check_input(x)
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck_drop(self.bottleneck(x))
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return self.head(x)

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        """x (B, C, S, S) -> sigmoid probabilities (B, K, S, S) in [0, 1], float32."""
        return torch.sigmoid(self.forward(x).float())


def build_model(in_channels: int = 1, out_channels: int = 1, base_channels: int = 32, depth: int = 4,
                dropout: float = 0.0, norm: str = "batch") -> UNet:
    """The seed U-Net with the given sizes (weights from PyTorch's default init under the global seed)."""
    return UNet(in_channels, out_channels, base_channels, depth, dropout, norm)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
