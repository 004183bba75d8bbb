"""TadmModel: the whole TADM network as one torch module (training and inference share it).

    x --VAE enc (mode)--> z --DFRM Ge/F--> y (8-bit) --F^-1/Gd--> z^
    z^ --TPM--> t;  eps = UNet(z^ * sf, t | empty prompt);  z0 = S_fixed(t0) + S_learned(t)
    z0 / sf --VAE dec--> x^

Every method here is differentiable (no inference_mode inside) so the training
code uses these same modules; `pipeline.TadmRescaler` adds tiling, uint8 I/O
and inference mode on top.

Precision: the DFRM, TPM and refiner always run in float32 (they are small, and
the LR image must be rounded from float32 values); the UNet runs in `dtype`
(fp16/bf16 on CUDA); the VAE in `dtype` unless its config asks for
`force_upcast`, as Stable Diffusion's does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from tadmcodec.tadm.dfrm import DFRM
from tadmcodec.tadm.projection import project_onto_lr
from tadmcodec.tadm.scheduler import HybridScheduler, Refiner
from tadmcodec.tadm.spec import TadmConfig
from tadmcodec.tadm.tiling import pad_latent
from tadmcodec.tadm.tpm import TimeMapping

if TYPE_CHECKING:  # annotations only: the loader imports the diffusers modules it builds
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel


class TadmModel(nn.Module):
    """VAE + DFRM + TPM + UNet + hybrid scheduler, with the fixed empty-prompt embedding."""

    def __init__(self, config: TadmConfig, vae: AutoencoderKL, unet: UNet2DConditionModel,
                 prompt_embeds: torch.Tensor, dfrm: DFRM | None = None,
                 tpm: TimeMapping | None = None, refiner: Refiner | None = None) -> None:
        super().__init__()
        self.config = config
        lat = config.dfrm.latent_channels
        self.vae, self.unet = vae, unet
        self.dfrm = dfrm if dfrm is not None else DFRM(config.scale, config.dfrm)
        self.tpm = tpm if tpm is not None else TimeMapping(config.tpm, lat)
        self.refiner = refiner if refiner is not None else Refiner(config.refiner, lat)
        self.scheduler = HybridScheduler(config.scheduler, config.t0, self.refiner)
        self.register_buffer("prompt_embeds", prompt_embeds.detach().clone(), persistent=False)
        self.lora_merged = False
        # The optional implicit decoder (tadm.implicit), set by the loader; `implicit_note` says
        # why a folder's implicit decoder is not used (e.g. trained on other VAE weights).
        self.implicit: nn.Module | None = None
        self.implicit_note = ""

    # ------------------------------------------------------------ properties
    @property
    def scaling_factor(self) -> float:
        """The VAE latent scale (from the VAE's config)."""
        return float(self.vae.config.scaling_factor)

    @property
    def unet_multiple(self) -> int:
        """Latent sides must be multiples of this for the UNet's down/up sampling."""
        return 2 ** (len(self.unet.config.down_block_types) - 1)

    @property
    def unet_dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def to_device(self, device: torch.device, dtype: torch.dtype) -> "TadmModel":
        """Move to a device: backbone in `dtype` (VAE in fp32 if it asks to be upcast), heads in fp32."""
        vae_dtype = torch.float32 if getattr(self.vae.config, "force_upcast", False) else dtype
        self.vae.to(device=device, dtype=vae_dtype)
        self.unet.to(device=device, dtype=dtype)
        for m in (self.dfrm, self.tpm, self.refiner):
            m.to(device=device, dtype=torch.float32)
        if self.implicit is not None:  # runs after the VAE's blocks, in the VAE's dtype
            self.implicit.to(device=device, dtype=vae_dtype)
        self.prompt_embeds = self.prompt_embeds.to(device=device, dtype=dtype)
        return self

    # ----------------------------------------------------------- the stages
    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """VAE posterior mode (mean), unscaled, float32. x: (B, 3, H, W) in [-1, 1], H, W multiples of 8.

        Deterministic: the mode, never a sample.
        """
        return self.vae.encode(x.to(self.vae_dtype)).latent_dist.mode().float()

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """VAE decoder on an unscaled latent -> image in about [-1, 1] (float32)."""
        return self.vae.decode(z.to(self.vae_dtype)).sample.float()

    def project(self, x_hat: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """The decoded image back-projected onto the LR image (both [-1, 1]) if the model says so."""
        return project_onto_lr(x_hat, lr, self.config.scale) if self.config.lr_projection else x_hat

    def predict_timestep(self, z_hat: torch.Tensor) -> torch.Tensor:
        """TPM on the rescaled latent (unscaled, or scaled if the config says so) -> (B,) t."""
        z = z_hat * self.scaling_factor if self.config.tpm.input_scaled else z_hat
        return self.tpm(z.float())

    def enhance(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One denoising step (Eq. 9-10) with the predicted t, one t per batch item.

        z_hat: (B, 4, h, w) unscaled; padded (reflect) to the UNet's multiple and cropped back.
        Returns (z0 unscaled float32, t (B,) float32).
        """
        h, w = z_hat.shape[-2:]
        t = self.predict_timestep(z_hat)
        scaled = pad_latent(z_hat.float() * self.scaling_factor, self.unet_multiple)
        cond = self.prompt_embeds.to(self.unet_dtype).expand(scaled.shape[0], -1, -1)
        # t stays float32: the UNet's sinusoidal embedding is computed in float32 anyway
        eps = self.unet(scaled.to(self.unet_dtype), t, encoder_hidden_states=cond).sample
        z0 = self.scheduler(scaled, eps.float(), t)
        return z0[..., :h, :w] / self.scaling_factor, t

    def forward(self, x: torch.Tensor, latent: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The full training pass on a batch of images (sides multiples of the scale).

        Returns the DFRM outputs (see `DFRM.forward`), `z` (the VAE latent, computed
        without gradient unless given), `t`, `z0` and `x_hat` (decoded from z0,
        which comes from the quantised chain z_hat, then back-projected onto y_q when
        the config's lr_projection is on).
        """
        if latent is None:
            with torch.no_grad():
                latent = self.encode_latent(x)
        out = self.dfrm(x.float(), latent.float())
        z0, t = self.enhance(out["z_hat"])
        out.update(z=latent, t=t, z0=z0, x_hat=self.project(self.decode_latent(z0), out["y_q"]))
        return out

    # ------------------------------------------------------------------ LoRA
    def add_lora(self) -> "TadmModel":
        """Inject the LoRA adapters the config asks for (UNet rank 48, VAE decoder rank 16 officially)."""
        from tadmcodec.tadm.lora import add_lora

        if self.config.lora_unet is not None:
            add_lora(self.unet, self.config.lora_unet)
        if self.config.lora_vae is not None:
            add_lora(self.vae, self.config.lora_vae)
        return self

    def merge_lora(self) -> "TadmModel":
        """Fold the adapters into the base weights (inference); the model can no longer be saved as adapters."""
        if self.config.lora_unet is None and self.config.lora_vae is None:
            return self  # nothing injected (a merged export): no need to import peft to find that out
        from tadmcodec.tadm.lora import has_lora, merge_lora

        for m in (self.unet, self.vae):
            if has_lora(m):
                merge_lora(m)
                self.lora_merged = True
        return self
