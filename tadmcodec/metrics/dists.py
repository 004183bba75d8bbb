"""DISTS (Ding et al., TPAMI 2020): deep image structure and texture similarity.

Per the reference implementation: inputs in [0, 1] are normalised with the
ImageNet mean/std and run through VGG16 whose max pools are replaced by L2
pooling. For the input itself and the five taps (relu1_2 ... relu5_3), per
channel, a "texture" term compares global means and a "structure" term the
global (co)variances, each (2ab + c) / (a^2 + b^2 + c) with c = 1e-6; the
terms are weighted by the learned alpha/beta (normalised to sum 1 together)
and DISTS = 1 - sum. Full resolution, no resizing.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from torch import nn

from tadmcodec.errors import ModelError
from tadmcodec.metrics.arch import DISTS_CHANNELS, VGG16_STAGES
from tadmcodec.metrics.trunk import FeatureTrunk, L2Pool
from tadmcodec.metrics.weights import SETUP_HINT, ensure

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_C1 = 1e-6
_C2 = 1e-6


class DISTS(nn.Module):
    """DISTS distance; `forward(x, y)` takes float (N, 3, H, W) in [0, 1] and returns (N,).

    Frozen weights (VGG16 trunk shared with LPIPS-VGG, alpha/beta from DISTS),
    differentiable with respect to the inputs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trunk = FeatureTrunk(VGG16_STAGES, L2Pool)
        n = sum(DISTS_CHANNELS)
        self.alpha = nn.Parameter(torch.zeros(1, n, 1, 1), requires_grad=False)
        self.beta = nn.Parameter(torch.zeros(1, n, 1, 1), requires_grad=False)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1))
        self.trunk.load_converted(load_file(str(ensure("lpips_vgg"))))
        ab = load_file(str(ensure("dists")))
        for name in ("alpha", "beta"):
            if name not in ab or ab[name].shape != (1, n, 1, 1):
                raise ModelError(f"DISTS weight file lacks a fitting {name}; {SETUP_HINT} --force")
            getattr(self, name).data.copy_(ab[name])
        self.eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The input itself followed by the five VGG16 taps."""
        return [x] + self.trunk((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.distance(self.features(x), self.features(y))

    def distance(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        """DISTS from two images' `features`, shape (N,).

        In float32 with autocast off, whatever precision the trunk ran in: the covariance
        E[ab]−E[a]E[b] cancels catastrophically in bf16 (training runs the trunk under autocast).
        """
        with torch.autocast(fx[0].device.type, enabled=False):
            return self._distance([f.float() for f in fx], [f.float() for f in fy])

    def _distance(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        x = fx[0]
        w_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / w_sum, list(DISTS_CHANNELS), dim=1)
        betas = torch.split(self.beta / w_sum, list(DISTS_CHANNELS), dim=1)
        texture = x.new_zeros(x.shape[0])
        structure = x.new_zeros(x.shape[0])
        for a, b, alpha, beta in zip(fx, fy, alphas, betas):
            a_mean = a.mean(dim=(2, 3), keepdim=True)
            b_mean = b.mean(dim=(2, 3), keepdim=True)
            s_tex = (2 * a_mean * b_mean + _C1) / (a_mean**2 + b_mean**2 + _C1)
            texture = texture + (alpha * s_tex).sum(dim=(1, 2, 3))
            a_var = ((a - a_mean) ** 2).mean(dim=(2, 3), keepdim=True)
            b_var = ((b - b_mean) ** 2).mean(dim=(2, 3), keepdim=True)
            cov = (a * b).mean(dim=(2, 3), keepdim=True) - a_mean * b_mean
            s_str = (2 * cov + _C2) / (a_var + b_var + _C2)
            structure = structure + (beta * s_str).sum(dim=(1, 2, 3))
        return 1 - (texture + structure)
