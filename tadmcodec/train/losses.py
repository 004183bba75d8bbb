"""Reconstruction losses for the stage-0a VAE that need no pretrained network.

L1 alone makes a small autoencoder blur edges (the mean of plausible textures); SSIM
rewards matching local contrast and structure, and a multi-scale gradient term rewards
edges at the right place and strength at 1×, 2× and 4× zoom. Neither needs downloaded
weights (LPIPS's trunks cannot be fetched when stage 0 is trained).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Mean SSIM (Gaussian 11×11, σ 1.5, per channel) of two (B, C, H, W) images.

    `data_range` is 2 for images in [-1, 1]. Valid-region filtering (no padding), as in
    the reference implementation. Always computed in float32 with autocast off: in bf16 the
    variances E[x²]−E[x]² cancel catastrophically and the ratio blows up to inf.
    """
    with torch.autocast(a.device.type, enabled=False):
        return _ssim_fp32(a.float(), b.float(), data_range)


def _ssim_fp32(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    c = a.shape[1]
    win = _gaussian_window(device=a.device).expand(c, 1, -1, -1).to(a.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a = F.conv2d(a, win, groups=c)
    mu_b = F.conv2d(b, win, groups=c)
    var_a = F.conv2d(a * a, win, groups=c) - mu_a**2
    var_b = F.conv2d(b * b, win, groups=c) - mu_b**2
    cov = F.conv2d(a * b, win, groups=c) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


def gradient_loss(a: torch.Tensor, b: torch.Tensor, scales: tuple[int, ...] = (1, 2, 4)) -> torch.Tensor:
    """Mean over `scales` of the L1 distance between horizontal and vertical finite differences."""
    total = a.new_zeros(())
    for s in scales:
        pa = F.avg_pool2d(a, s) if s > 1 else a
        pb = F.avg_pool2d(b, s) if s > 1 else b
        dx = (pa[..., :, 1:] - pa[..., :, :-1]) - (pb[..., :, 1:] - pb[..., :, :-1])
        dy = (pa[..., 1:, :] - pa[..., :-1, :]) - (pb[..., 1:, :] - pb[..., :-1, :])
        total = total + dx.abs().mean() + dy.abs().mean()
    return total / len(scales)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    """PSNR in dB of two tensors of the same range."""
    mse = F.mse_loss(a.float(), b.float()).item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(data_range**2 / mse)).item()
