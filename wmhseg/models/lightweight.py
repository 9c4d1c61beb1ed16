"""The light-weight (LW) network: a plain stack of dilated 3×3 convolutions.

It has no pooling and no skip connections, so every layer keeps the input's resolution; growing
dilation rates (1, 2, 4, 8, ...) give it a receptive field of about 60 voxels with few
parameters. With the defaults it has about 3% of the parameters of the default :class:`UNet`.
"""

from __future__ import annotations

import torch
from torch import nn

from wmhseg.models.unet import _group_count

DEFAULT_DILATIONS = (1, 1, 2, 4, 8, 16, 1)


class LightweightNet(nn.Module):
    """Dilated fully convolutional network; any input height and width work."""

    size_divisor = 1

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int = 1,
        width: int = 32,
        dilations: tuple[int, ...] | list[int] = DEFAULT_DILATIONS,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be at least 1, got {width}")
        layers: list[nn.Module] = []
        previous = in_channels
        for dilation in dilations:
            layers += [
                nn.Conv2d(previous, width, 3, padding=dilation, dilation=dilation, bias=False),
                nn.GroupNorm(_group_count(width), width),
                nn.ReLU(inplace=True),
            ]
            previous = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
