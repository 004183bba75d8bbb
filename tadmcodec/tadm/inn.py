"""The invertible network F of the DFRM: affine coupling blocks (Eq. 4).

F maps the compact latent z_lr (3 channels at the LR size) to the LR image y;
F^-1 maps a (quantised) LR image back. Each block splits the channels 1 | 2:

    forward:  y1 = x1 + F(x2);  s = c * (2 sigmoid(H(y1)) - 1);  y2 = x2 * exp(s) + G(y1)
    inverse:  s = c * (2 sigmoid(H(y1)) - 1);  x2 = (y2 - G(y1)) * exp(-s);  x1 = y1 - F(x2)

so the inverse is exact in exact arithmetic, and the clamp c bounds the scale.
"""

from __future__ import annotations

import torch
from torch import nn


class DenseBlock(nn.Module):
    """Five densely connected 3x3 convs; the last starts at zero so each block starts as identity."""

    def __init__(self, cin: int, cout: int, width: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, 1, 1)
        self.conv2 = nn.Conv2d(cin + width, width, 3, 1, 1)
        self.conv3 = nn.Conv2d(cin + 2 * width, width, 3, 1, 1)
        self.conv4 = nn.Conv2d(cin + 3 * width, width, 3, 1, 1)
        self.conv5 = nn.Conv2d(cin + 4 * width, cout, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            nn.init.xavier_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.conv5.weight)
        nn.init.zeros_(self.conv5.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        return self.conv5(torch.cat((x, x1, x2, x3, x4), 1))


class InvBlockExp(nn.Module):
    """One affine coupling block (channels split `split1 | split2`, scale clamped to +-clamp)."""

    def __init__(self, split1: int, split2: int, clamp: float = 1.0, width: int = 32) -> None:
        super().__init__()
        self.split1, self.split2, self.clamp = split1, split2, clamp
        self.F = DenseBlock(split2, split1, width)
        self.G = DenseBlock(split1, split2, width)
        self.H = DenseBlock(split1, split2, width)

    def _scale(self, y1: torch.Tensor) -> torch.Tensor:
        return self.clamp * (torch.sigmoid(self.H(y1)) * 2 - 1)

    def forward(self, x: torch.Tensor, rev: bool = False) -> torch.Tensor:
        a, b = x.narrow(1, 0, self.split1), x.narrow(1, self.split1, self.split2)
        if not rev:
            y1 = a + self.F(b)
            y2 = b * torch.exp(self._scale(y1)) + self.G(y1)
            return torch.cat((y1, y2), 1)
        x2 = (b - self.G(a)) * torch.exp(-self._scale(a))
        x1 = a - self.F(x2)
        return torch.cat((x1, x2), 1)


def build_inv_module(blocks: int, channels: int, split1: int, clamp: float, width: int) -> nn.ModuleList:
    """`blocks` coupling blocks (official: 12 on 3 channels split 1 | 2, clamp 1.0)."""
    return nn.ModuleList(
        InvBlockExp(split1, channels - split1, clamp, width) for _ in range(blocks)
    )


def inn_forward(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """F: feature domain -> pixel domain."""
    for block in blocks:
        x = block(x, rev=False)
    return x


def inn_inverse(blocks: nn.ModuleList, y: torch.Tensor) -> torch.Tensor:
    """F^-1: pixel domain -> feature domain (blocks in reverse order)."""
    for block in reversed(blocks):
        y = block(y, rev=True)
    return y
