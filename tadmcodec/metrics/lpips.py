"""LPIPS v0.1 (Zhang et al., CVPR 2018) with the AlexNet or the VGG16 trunk.

Per the reference implementation: inputs in [-1, 1] are shifted/scaled by the
fixed "scaling layer"; each tapped feature map is unit-normalised along
channels (x / (||x||_2 + 1e-10)); the squared difference of the two images'
normalised features is weighted per channel by the learned v0.1 linear head
(a bias-free 1x1 conv, dropout inactive at eval), averaged over space, and
the five layer scores are summed. Full resolution, no resizing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from tadmcodec.errors import ModelError
from tadmcodec.metrics.arch import LPIPS_TRUNKS
from tadmcodec.metrics.trunk import FeatureTrunk, max_pool_for
from tadmcodec.metrics.weights import SETUP_HINT, ensure

# Scaling layer constants of LPIPS (the ImageNet mean/std mapped to [-1, 1] inputs).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_POOL_KERNEL = {"alex": 3, "vgg": 2}


def unit_normalise(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Divide each spatial feature vector by its L2 norm over channels (+eps, as LPIPS does)."""
    return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS distance; `forward(x, y)` takes float (N, 3, H, W) in [-1, 1] and returns (N,).

    Frozen weights, differentiable with respect to the inputs (usable as a loss).
    `normalize=True` in forward accepts [0, 1] inputs instead, like the reference.
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in LPIPS_TRUNKS:
            raise ModelError(f"unknown LPIPS trunk {net!r} (choose alex or vgg)")
        self.net = net
        stages = LPIPS_TRUNKS[net]
        self.trunk = FeatureTrunk(stages, max_pool_for(_POOL_KERNEL[net]))
        self.heads = nn.ParameterList(
            nn.Parameter(torch.zeros(1, s.channels, 1, 1), requires_grad=False) for s in stages
        )
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        tensors = load_file(str(ensure(f"lpips_{net}")))
        self.trunk.load_converted(tensors)
        for k, head in enumerate(self.heads):
            key = f"lin.{k}.weight"
            if key not in tensors or tensors[key].shape != head.shape:
                raise ModelError(f"LPIPS-{net} weight file lacks a fitting {key}; {SETUP_HINT} --force")
            head.data.copy_(tensors[key])
        self.eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The unit-normalised taps of `x` in [-1, 1]: what `distance` compares (reusable per image)."""
        return [unit_normalise(f) for f in self.trunk((x - self.shift) / self.scale)]

    def distance(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        """LPIPS from two images' `features`, shape (N,); float32 with autocast off, like DISTS."""
        with torch.autocast(fx[0].device.type, enabled=False):
            total = fx[0].new_zeros(fx[0].shape[0], dtype=torch.float32)
            for head, a, b in zip(self.heads, fx, fy):
                total = total + F.conv2d((a.float() - b.float()) ** 2, head.float()).mean(dim=(1, 2, 3))
        return total

    def forward(self, x: torch.Tensor, y: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if normalize:  # [0, 1] -> [-1, 1]
            x, y = 2 * x - 1, 2 * y - 1
        return self.distance(self.features(x), self.features(y))
