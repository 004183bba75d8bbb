"""Small conv layers shared by the DFRM, the TPM and the learned scheduler.

Attribute names (`conv_in`, `res_block`, `downsample`, `conv1`/`conv2`) follow
the official TADM code so its state-dict keys load 1:1 onto these modules.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Module):
    """3x3 conv then LeakyReLU(0.1). `zero=True` starts the conv at zero (zero-conv)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, zero: bool = False) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cin, cout, kernel, 1, kernel // 2)
        self.acti = nn.LeakyReLU(0.1, inplace=True)
        if zero:
            nn.init.zeros_(self.conv_in.weight)
            nn.init.zeros_(self.conv_in.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.acti(self.conv_in(x))


class Resblock(nn.Module):
    """conv-LeakyReLU-conv plus identity (the DFRM's residual block)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.res_block = nn.Sequential(
            nn.Conv2d(width, width, 3, 1, 1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(width, width, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_block(x)


class Downsample(nn.Module):
    """Space-to-depth by 2 then a 1x1 conv halving the channels (width -> 2 x width)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.downsample = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(width * 4, width * 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x)


class ResidualBlockNoBN(nn.Module):
    """conv-ReLU-conv plus identity, initialised small (x0.1) so it starts near identity."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, 1, 1)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1)
        self.relu = nn.ReLU()
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


def receptive_radius(module: nn.Module) -> int:
    """Upper bound on the receptive-field radius of a chain of convs, in input pixels
    of the coarsest resolution it runs at (each k x k conv adds at most (k-1)/2 there).

    Used to size tile halos so that tiled conv networks are exact.
    """
    return sum(
        (m.kernel_size[0] - 1) // 2 * m.dilation[0]
        for m in module.modules()
        if isinstance(m, nn.Conv2d)
    )
