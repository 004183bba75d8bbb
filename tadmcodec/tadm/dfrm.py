"""DFRM, the decoupled feature rescaling module (Eq. 3-5), and the 8-bit quantiser.

    z_lr = Ge(x, z)       CNN encoder: latent branch + pixel-guidance branch fed from the image
    y    = Q(F(z_lr))     invertible net to the pixel domain, rounded to 8 bits
    z^   = Gd(F^-1(y))    inverse net, then the CNN decoder back to the latent size

The latent z is the VAE posterior's mean, unscaled (the official DFRM divides
the scaled latent by 0.18215 first). Images and y are in [-1, 1].

Module attribute names and Sequential indices follow the official code
(`down_module`, `latent_module`, `fusing_module`, `final_module`, `inv_module`)
so its checkpoints map key for key; widths and depths are configurable. The optional
`tail_module` (config `tail_blocks`, 0 = absent, as in the official code) is ours.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tadmcodec.tadm.blocks import ConvBlock, Downsample, Resblock
from tadmcodec.tadm.inn import build_inv_module, inn_forward, inn_inverse
from tadmcodec.tadm.spec import DfrmConfig


def quantize(y: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 by rounding (never noise): the LR image stored in a file."""
    return torch.round((y.float() + 1.0) * 127.5).clamp_(0, 255).to(torch.uint8)


def dequantize(q: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 LR image -> [-1, 1] float, the inverse of `quantize` on its grid."""
    return q.to(dtype) / 127.5 - 1.0


def quantize_ste(y: torch.Tensor) -> torch.Tensor:
    """Rounding to the 8-bit grid in the forward pass, identity gradient (straight-through)."""
    q = dequantize(quantize(y), y.dtype)
    return y + (q - y).detach()


class DFRM(nn.Module):
    """Ge (with pixel guidance), the INN F, and Gd for one scale (8, 16 or 32)."""

    def __init__(self, scale: int, cfg: DfrmConfig = DfrmConfig()) -> None:
        super().__init__()
        if scale not in (8, 16, 32):
            raise ValueError(f"DFRM scale must be 8, 16 or 32, not {scale}")
        self.scale, self.cfg = scale, cfg
        lat, w = cfg.latent_channels, cfg.latent_width

        # (1) pixel-guidance branch: image -> LR size, one factor-2 step at a time
        down: list[nn.Module] = [ConvBlock(3, cfg.pixel_width)]
        ch = cfg.pixel_width
        for _ in range(int(math.log2(scale))):
            down += [Downsample(ch), Resblock(ch * 2)]
            ch *= 2
        down.append(ConvBlock(ch, cfg.pixel_out))
        self.down_module = nn.Sequential(*down)

        # (2) latent branch: latent (image/8) -> LR size by space-to-depth
        latent: list[nn.Module] = [ConvBlock(lat, w)] + [Resblock(w) for _ in range(cfg.latent_blocks)]
        if scale == 8:
            latent.append(ConvBlock(w, w))
        for _ in range(int(math.log2(scale // 8))):
            latent += [nn.PixelUnshuffle(2), ConvBlock(4 * w, w)]
        self.latent_module = nn.Sequential(*latent)

        # (3) fusion of both branches -> z_lr (lr_channels)
        fuse = w + cfg.pixel_out
        self.fusing_module = nn.Sequential(
            *[Resblock(fuse) for _ in range(cfg.fuse_blocks)], ConvBlock(fuse, cfg.lr_channels)
        )

        # (4) Gd: z_lr -> latent size
        final: list[nn.Module] = [ConvBlock(cfg.lr_channels, w)]
        final += [Resblock(w) for _ in range(cfg.final_blocks)]
        if scale == 8:
            final.append(ConvBlock(w, lat))
        elif scale == 16:
            final += [nn.PixelShuffle(2), ConvBlock(w // 4, lat)]
        else:
            final += [nn.PixelShuffle(2), ConvBlock(w // 4, w // 4),
                      nn.PixelShuffle(2), ConvBlock(w // 16, lat)]
        self.final_module = nn.Sequential(*final)

        # (4b) optional tail at the latent size, residual with a zero-initialised last conv:
        # it starts as the identity, so weights trained without it load unchanged
        if cfg.tail_blocks:
            last = nn.Conv2d(cfg.tail_width, lat, 3, 1, 1)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.tail_module = nn.Sequential(
                ConvBlock(lat, cfg.tail_width), *[Resblock(cfg.tail_width) for _ in range(cfg.tail_blocks)], last
            )
        else:
            self.tail_module = None

        # (5) F: invertible map between z_lr and the LR image
        self.inv_module = build_inv_module(
            cfg.inv_blocks, cfg.lr_channels, cfg.inv_split, cfg.inv_clamp, cfg.dense_width
        )

    # --- the pieces, each usable on its own (tiled inference calls them per tile) ---
    def encode_features(self, image: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Ge(x, z) -> z_lr. image: (B,3,H,W) in [-1,1]; latent: (B,4,H/8,W/8) unscaled."""
        fused = torch.cat([self.down_module(image), self.latent_module(latent)], dim=1)
        return self.fusing_module(fused)

    def to_lr(self, z_lr: torch.Tensor) -> torch.Tensor:
        """F(z_lr) -> y (float, before quantisation)."""
        return inn_forward(self.inv_module, z_lr)

    def from_lr(self, y: torch.Tensor) -> torch.Tensor:
        """F^-1(y) -> z_lr."""
        return inn_inverse(self.inv_module, y)

    def decode_features(self, z_lr: torch.Tensor) -> torch.Tensor:
        """Gd(z_lr) -> z^ (unscaled latent)."""
        z = self.final_module(z_lr)
        return z if self.tail_module is None else z + self.tail_module(z)

    def gd_modules(self) -> list[nn.Module]:
        """The modules of Gd, in order (for its tiling halo)."""
        return [self.final_module] + ([] if self.tail_module is None else [self.tail_module])

    def forward(self, image: torch.Tensor, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training pass with both chains of Eq. 6 and the straight-through quantiser.

        Returns z_lr, y (float), y_q (quantised, STE), z_hat_direct = Gd(z_lr) and
        z_hat = Gd(F^-1(y_q)); Eq. 6 is |z_hat_direct - z| + |z_hat - z|, Eq. 7 |y - bicubic(x)|.
        """
        z_lr = self.encode_features(image, latent)
        y = self.to_lr(z_lr)
        y_q = quantize_ste(y)
        return {
            "z_lr": z_lr,
            "y": y,
            "y_q": y_q,
            "z_hat_direct": self.decode_features(z_lr),
            "z_hat": self.decode_features(self.from_lr(y_q)),
        }
