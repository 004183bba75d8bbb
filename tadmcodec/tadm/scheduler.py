"""The hybrid time scheduler (Eq. 9-10): fixed DDPM step at t0 plus a learned branch.

    z0 = S_fixed(z^, eps, t0) + S_learned(z^, eps, t)

S_fixed is Eq. 9 at the fixed t0 (official: 50) with Stable Diffusion's
scaled_linear schedule, computed in closed form: it is exactly what
`DDPMScheduler.step(eps, t0, z)` returns after `set_timesteps(1)` (the previous
step is the clean sample), minus the 1e-10-scaled random variance term that
diffusers adds, so it is deterministic. v-prediction backbones are supported.

S_learned (`Refiner`) makes the step differentiable in the predicted t; its
output conv starts at zero so training begins from the fixed step.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from torch import nn

from tadmcodec.tadm.blocks import ConvBlock, ResidualBlockNoBN
from tadmcodec.tadm.spec import RefinerConfig


def alphas_cumprod(scheduler_config: dict[str, Any]) -> torch.Tensor:
    """alpha-bar_t of the DDPM noise schedule described by the config (float64)."""
    sched = DDPMScheduler(**{k: v for k, v in scheduler_config.items() if k != "prediction_type"})
    return sched.alphas_cumprod.to(torch.float64)


class FixedStep(nn.Module):
    """Eq. 9 at a fixed t0: z0 = (z - sqrt(1 - a) eps) / sqrt(a) (epsilon prediction)."""

    def __init__(self, scheduler_config: dict[str, Any], t0: int) -> None:
        super().__init__()
        a = alphas_cumprod(scheduler_config)[t0]
        self.prediction_type = scheduler_config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")
        self.t0 = t0
        self.sqrt_a = float(a.sqrt())
        self.sqrt_1ma = float((1 - a).sqrt())

    def forward(self, z: torch.Tensor, model_out: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return (z - self.sqrt_1ma * model_out) / self.sqrt_a
        if self.prediction_type == "v_prediction":
            return self.sqrt_a * z - self.sqrt_1ma * model_out
        return model_out


class Refiner(nn.Module):
    """S_learned: conv net on [z^, eps] with the time embedding of t added after each block.

    Attribute names follow the official `Refiner` (`time_proj`, `time_embedding`,
    `resnet_blocks`, `zero_conv_out`).
    """

    def __init__(self, cfg: RefinerConfig = RefinerConfig(), latent_channels: int = 4) -> None:
        super().__init__()
        self.time_proj = Timesteps(cfg.embed_dim, flip_sin_to_cos=False, downscale_freq_shift=1)
        self.time_embedding = TimestepEmbedding(cfg.embed_dim, cfg.width)
        self.resnet_blocks = nn.ModuleList(
            [ConvBlock(2 * latent_channels, cfg.width)] + [ResidualBlockNoBN(cfg.width) for _ in range(cfg.blocks)]
        )
        self.zero_conv_out = ConvBlock(cfg.width, latent_channels, zero=True)

    def forward(self, z: torch.Tensor, model_out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embedding(self.time_proj(t).to(z.dtype))[:, :, None, None]
        feats = self.resnet_blocks[0](torch.cat([z, model_out], dim=1))
        for block in self.resnet_blocks[1:]:
            feats = block(feats) + emb
        return self.zero_conv_out(feats)


class HybridScheduler(nn.Module):
    """Eq. 10: the fixed step at t0 plus the learned correction conditioned on t."""

    def __init__(self, scheduler_config: dict[str, Any], t0: int, refiner: Refiner) -> None:
        super().__init__()
        self.fixed = FixedStep(scheduler_config, t0)
        self.refiner = refiner

    def forward(self, z: torch.Tensor, model_out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.fixed(z, model_out) + self.refiner(z, model_out, t)
