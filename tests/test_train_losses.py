"""Units for the stage-0 reconstruction losses, in float32 and under CPU bf16 autocast."""
from __future__ import annotations

import torch

from tadmcodec.train import losses


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(2, 3, 48, 48, generator=g) * 2 - 1
    b = (a + 0.2 * torch.randn(2, 3, 48, 48, generator=g)).clamp(-1, 1)
    return a, b


def test_ssim_is_one_for_identical_images_and_lower_for_noisy_ones() -> None:
    a, b = _pair()
    assert abs(losses.ssim(a, a).item() - 1.0) < 1e-5
    assert 0.0 < losses.ssim(a, b).item() < 0.9


def test_ssim_under_bf16_autocast_matches_float32() -> None:
    # Training on a CPU with cpu_bf16 runs the loss inside autocast; the bf16 variance
    # difference used to make SSIM inf and the whole run NaN.
    a, b = _pair(1)
    ref = losses.ssim(a, b).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = losses.ssim(a.bfloat16(), b)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    assert abs(got.item() - ref) < 5e-3


def test_gradient_loss_is_zero_for_identical_images_and_positive_otherwise() -> None:
    a, b = _pair(2)
    assert losses.gradient_loss(a, a).item() == 0.0
    assert losses.gradient_loss(a, b).item() > 0.01
