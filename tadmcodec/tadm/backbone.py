"""The tiny diffusion backbone: a small SD-style VAE, a small ε-prediction UNet, SD's noise schedule.

Stable Diffusion cannot be downloaded here, so the shipped `tadm-tiny-*` models sit on a
backbone this project trains itself (stage 0, `tadmcodec.train.stage0`). It keeps SD's
interfaces so the TADM modules do not care which backbone they run on:

- the VAE maps an RGB image in [-1, 1] to a 4-channel latent of 1/8 the size (like SD's), so
  the paper's 96/64 latent tiling covers the same pixels;
- the UNet is a diffusers `UNet2DConditionModel` predicting ε under SD's scaled-linear
  schedule (β 0.00085–0.012, 1000 steps);
- there is no text encoder: the UNet is conditioned on a fixed "empty prompt" embedding of
  shape (1, L, cross_attention_dim), stored beside the UNet weights so inference is
  reproducible bit for bit.

Sizes were chosen by measuring on the 2-core CPU the codec targets (see docs/training.md):
VAE ≈ 3.1M and UNet ≈ 5.6M parameters.

Files written by `save_backbone` (and read by `load_backbone`):
`backbone.json` (configs, VAE scaling factor, schedule), `vae.safetensors`,
`unet.safetensors` (UNet weights plus the `empty_prompt_embedding` tensor), fp16 by default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file

from tadmcodec.errors import ModelError

BACKBONE_JSON = "backbone.json"
VAE_FILE = "vae.safetensors"
UNET_FILE = "unet.safetensors"
EMPTY_PROMPT_KEY = "empty_prompt_embedding"
"""Key of the fixed conditioning tensor inside unet.safetensors."""

LATENT_CHANNELS = 4
LATENT_FACTOR = 8
"""Pixels per latent cell along each axis (3 downsamplings, as in SD)."""

SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
"""Stable Diffusion's training schedule; TADM's time-steps (10..200, t0 = 50) refer to it."""


def tiny_vae_config() -> dict[str, Any]:
    """kwargs for diffusers `AutoencoderKL`: 4 blocks (3 downsamplings) → latent = image/8, 4 ch.

    Narrow full-resolution stages (16/48 channels) keep the decoder at ≈1 s for 768×512 on
    two CPU cores: the decoder's last upsampler and final block run at full resolution, so
    their widths dominate the cost. No mid-block attention (at 96×64 latents it costs more
    than it helps a model this small). `scaling_factor` is a placeholder until stage 0a
    measures it.
    """
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [16, 48, 96, 128],
        "layers_per_block": 1,
        "act_fn": "silu",
        "latent_channels": LATENT_CHANNELS,
        # 8 groups (2 channels each at 16 ch): one group per channel would instance-normalise
        # every full-resolution feature, erasing each crop's colour and contrast before
        # conv_out; the first GPU run with 16 groups got stuck at L1 ≈ 0.45.
        "norm_num_groups": 8,
        "sample_size": 256,
        "scaling_factor": 1.0,
        "force_upcast": False,
        "mid_block_add_attention": False,
    }


def tiny_unet_config() -> dict[str, Any]:
    """kwargs for diffusers `UNet2DConditionModel`: 3 levels, attention only at 1/2 and 1/4.

    Self-attention at full latent resolution (6144 tokens for a 96×64 tile) would dominate
    the CPU time, so the first level is convolution only; cross-attention attends to the
    fixed empty-prompt tokens.
    """
    return {
        "sample_size": 48,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [64, 96, 128],
        "layers_per_block": 1,
        "attention_head_dim": 32,
        "cross_attention_dim": 128,
        "norm_num_groups": 16,
    }


EMPTY_PROMPT_LENGTH = 8
"""Tokens in the fixed conditioning sequence."""


def build_vae(cfg: dict[str, Any] | None = None) -> AutoencoderKL:
    """A freshly initialised VAE from a config dict (default: `tiny_vae_config()`)."""
    cfg = dict(cfg or tiny_vae_config())
    if len(cfg.get("block_out_channels", ())) != 4 or cfg.get("latent_channels") != LATENT_CHANNELS:
        raise ModelError("the backbone VAE needs 4 blocks (latent = image/8) and 4 latent channels")
    return AutoencoderKL(**cfg)


def build_unet(cfg: dict[str, Any] | None = None) -> UNet2DConditionModel:
    """A freshly initialised UNet from a config dict (default: `tiny_unet_config()`)."""
    cfg = dict(cfg or tiny_unet_config())
    if cfg.get("in_channels") != LATENT_CHANNELS or cfg.get("out_channels") != LATENT_CHANNELS:
        raise ModelError("the backbone UNet must map 4-channel latents to 4-channel ε")
    return UNet2DConditionModel(**cfg)


def make_noise_scheduler() -> DDPMScheduler:
    """SD's noise schedule (scaled-linear β 0.00085–0.012, 1000 steps, ε-prediction)."""
    return DDPMScheduler(**SCHEDULE)


def empty_prompt_embedding(dim: int, length: int = EMPTY_PROMPT_LENGTH, seed: int = 0) -> torch.Tensor:
    """The fixed conditioning tensor (1, length, dim): seeded unit-variance noise.

    Fixed rather than learned: the cross-attention key/value projections are trained and can
    map any fixed, full-rank token set to whatever bias the UNet needs, and a seeded tensor
    keeps stage 0b free of an extra trainable that later stages might perturb. It is saved
    with the weights anyway, so the seed is only used once.
    """
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, length, dim, generator=g)


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters (what the fp16 size budget counts: 2 bytes each)."""
    return sum(p.numel() for p in module.parameters())


@dataclass
class Backbone:
    """A loaded backbone: the modules, the conditioning, and the latent scale."""

    vae: AutoencoderKL
    unet: UNet2DConditionModel
    empty_prompt: torch.Tensor
    scaling_factor: float
    config: dict[str, Any]

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Scaled latent (posterior mode: deterministic, as a codec needs) of an image in [-1, 1]."""
        return self.vae.encode(image).latent_dist.mode() * self.scaling_factor

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Image in about [-1, 1] from a scaled latent."""
        return self.vae.decode(latent / self.scaling_factor).sample

    def predict_noise(self, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """ε̂(z_t, t) with the fixed empty-prompt conditioning."""
        cond = self.empty_prompt.to(noisy.dtype).expand(noisy.shape[0], -1, -1)
        return self.unet(noisy, timesteps, encoder_hidden_states=cond).sample


def _half(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}


def save_backbone(
    folder: str | Path,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    empty_prompt: torch.Tensor,
    scaling_factor: float,
    dtype: torch.dtype = torch.float16,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write backbone.json + vae/unet safetensors (fp16 by default) into `folder`."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    vae_cfg = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    vae_cfg["scaling_factor"] = float(scaling_factor)
    unet_cfg = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    meta = {
        "format": "tadmcodec-backbone/1",
        "vae": _jsonable(vae_cfg),
        "unet": _jsonable(unet_cfg),
        "scaling_factor": float(scaling_factor),
        "schedule": SCHEDULE,
        "empty_prompt_shape": list(empty_prompt.shape),
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": {"vae": count_parameters(vae), "unet": count_parameters(unet)},
    }
    if extra:
        meta.update(extra)
    save_file(_half(vae.state_dict(), dtype), str(out / VAE_FILE))
    unet_state = _half(unet.state_dict(), dtype)
    unet_state[EMPTY_PROMPT_KEY] = empty_prompt.detach().to("cpu", dtype).contiguous()
    save_file(unet_state, str(out / UNET_FILE))
    (out / BACKBONE_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def _jsonable(cfg: dict[str, Any]) -> dict[str, Any]:
    """Config values as plain JSON types (diffusers keeps tuples and FrozenDicts)."""
    return json.loads(json.dumps(cfg, default=list))


def load_backbone(folder: str | Path, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> Backbone:
    """Load what `save_backbone` wrote; raises ModelError naming a missing or bad file."""
    d = Path(folder)
    try:
        meta = json.loads((d / BACKBONE_JSON).read_text())
        vae_state = load_file(str(d / VAE_FILE))
        unet_state = load_file(str(d / UNET_FILE))
    except FileNotFoundError as exc:
        raise ModelError(f"backbone folder {d} lacks {Path(exc.filename).name}") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read backbone in {d}: {exc}") from None
    if EMPTY_PROMPT_KEY not in unet_state:
        raise ModelError(f"{d / UNET_FILE} has no {EMPTY_PROMPT_KEY} tensor")
    empty = unet_state.pop(EMPTY_PROMPT_KEY)
    vae = build_vae(meta["vae"])
    unet = build_unet(meta["unet"])
    for name, module, state in (("vae", vae, vae_state), ("unet", unet, unet_state)):
        missing, unexpected = module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelError(
                f"backbone {name} weights do not match its config "
                f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)"
            )
        # Built in fp32; cast only when asked (diffusers warns on every dtype cast).
        module.to(device=device).eval().requires_grad_(False)
        if dtype != torch.float32:
            module.to(dtype=dtype)
    return Backbone(vae=vae, unet=unet, empty_prompt=empty.to(device=device, dtype=dtype),
                    scaling_factor=float(meta["scaling_factor"]), config=meta)
