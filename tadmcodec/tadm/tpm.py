"""TPM, the time-step prediction module: rescaled latent z^ -> time-step t.

The rescaling error is not uniform: the TPM reads a latent patch, pools the
mean and standard deviation of its features, and an MLP with a sigmoid maps
them to t in [t_min, t_max] (official: [10, 200]). A larger t gives the UNet
more generative freedom where the latent is worse. t stays a float so the
gradient reaches the TPM (through the learned scheduler and the UNet's time
embedding).

Attribute names follow the official `TimeMapping` (`noise_esti`, `time_predict.fuse_mlp`).
"""

from __future__ import annotations

import torch
from torch import nn

from tadmcodec.tadm.blocks import ConvBlock, ResidualBlockNoBN
from tadmcodec.tadm.spec import TpmConfig


class MlpBlock(nn.Module):
    """Linear, then `layers` x (ReLU, Linear), then Linear to 1 and a sigmoid."""

    def __init__(self, cin: int, hidden: int, layers: int) -> None:
        super().__init__()
        mlp: list[nn.Module] = [nn.Linear(cin, hidden)]
        for _ in range(layers):
            mlp += [nn.ReLU(True), nn.Linear(hidden, hidden)]
        mlp += [nn.Linear(hidden, 1), nn.Sigmoid()]
        self.fuse_mlp = nn.Sequential(*mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse_mlp(x)


class TimeMapping(nn.Module):
    """(B, 4, h, w) latent -> (B,) float time-steps in [t_min, t_max]."""

    def __init__(self, cfg: TpmConfig = TpmConfig(), latent_channels: int = 4) -> None:
        super().__init__()
        self.cfg = cfg
        self.noise_esti = nn.Sequential(
            ConvBlock(latent_channels, cfg.width), *[ResidualBlockNoBN(cfg.width) for _ in range(cfg.blocks)]
        )
        self.time_predict = MlpBlock(2 * cfg.width, cfg.mlp_hidden, cfg.mlp_layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        feats = self.noise_esti(z).float()  # pooled statistics in fp32 even under fp16
        pooled = torch.cat([feats.mean(dim=(-1, -2)), feats.std(dim=(-1, -2))], dim=1)
        s = self.time_predict(pooled.to(z.dtype))[:, 0]
        return s * (self.cfg.t_max - self.cfg.t_min) + self.cfg.t_min
