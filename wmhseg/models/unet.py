"""A standard 2D U-Net with configurable depth and width."""

from __future__ import annotations

import torch
from torch import nn


def _group_count(channels: int) -> int:
    # Groups of at least 4 channels; GroupNorm needs the channel count divisible by the groups.
    for groups in (8, 4, 2):
        if channels % groups == 0 and channels // groups >= 4:
            return groups
    return 1


class ConvBlock(nn.Sequential):
    """Two 3×3 convolutions, each followed by GroupNorm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(_group_count(out_channels), out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(_group_count(out_channels), out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """2D U-Net: ``depth`` 2×2 max-pooling steps, channels doubling from ``width``.

    Input ``(N, in_channels, H, W)`` with H and W multiples of :attr:`size_divisor`
    (``2 ** depth``); output logits ``(N, out_channels, H, W)``.
    """

    def __init__(
        self, *, in_channels: int = 1, out_channels: int = 1, width: int = 16, depth: int = 4
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if width < 1:
            raise ValueError(f"width must be at least 1, got {width}")
        self.size_divisor = 2**depth
        channels = [width * 2**level for level in range(depth + 1)]

        self.encoders = nn.ModuleList()
        previous = in_channels
        for count in channels[:-1]:
            self.encoders.append(ConvBlock(previous, count))
            previous = count
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(channels[-2], channels[-1])

        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            self.upsamplers.append(
                nn.ConvTranspose2d(channels[level + 1], channels[level], 2, stride=2)
            )
            self.decoders.append(ConvBlock(2 * channels[level], channels[level]))
        self.head = nn.Conv2d(channels[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for upsample, decoder, skip in zip(
            self.upsamplers, self.decoders, reversed(skips), strict=True
        ):
            x = decoder(torch.cat([upsample(x), skip], dim=1))
        return self.head(x)
