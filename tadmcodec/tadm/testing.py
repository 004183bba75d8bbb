"""Random-initialised tiny TADM model folders for tests (seconds on a CPU).

`make_random_model_dir(path, scale)` writes a complete model folder (inline
micro backbone, DFRM, TPM, refiner, empty-prompt embedding, unmerged LoRA
adapters: the older layout, loaded through peft; `adapters=False` merges them
into the backbone weights as `tadm train --export` does) that
`registry.with_weights_dir(registry.get("tadm-tiny-x16"), path)`
loads through the normal code path. Every weight is random and non-zero -
including the zero-initialised ones (INN output convs, the refiner's zero conv,
LoRA B matrices) - so tests of invertibility, merging and tiling cannot pass
trivially. The output images are noise-like; only the mechanics are real.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from tadmcodec.tadm.spec import (
    UNET_LORA_TARGETS, VAE_LORA_TARGETS, DfrmConfig, ImplicitDecoderConfig, LoraSpec, RefinerConfig, TilingConfig,
    TpmConfig,
)


def micro_vae_config() -> dict[str, Any]:
    """An AutoencoderKL with latent = image/8, 4 channels, no mid-block attention (like backbone.py)."""
    return {
        "in_channels": 3, "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "latent_channels": 4,
        "norm_num_groups": 4, "sample_size": 64, "scaling_factor": 0.5, "force_upcast": False,
        "mid_block_add_attention": False,  # as the shipped tiny backbone
    }


def micro_unet_config() -> dict[str, Any]:
    """A 2-level UNet2DConditionModel with cross-attention (latent multiple 2)."""
    return {
        "sample_size": 16, "in_channels": 4, "out_channels": 4,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [16, 32], "layers_per_block": 1, "attention_head_dim": 8,
        "cross_attention_dim": 16, "norm_num_groups": 8,
    }


MICRO_DFRM = DfrmConfig(pixel_width=4, pixel_out=4, latent_width=16, latent_blocks=1, fuse_blocks=1,
                        final_blocks=1, inv_blocks=2, dense_width=8)
MICRO_TPM = TpmConfig(width=8, blocks=1, mlp_hidden=16, mlp_layers=1)
MICRO_REFINER = RefinerConfig(width=8, blocks=1, embed_dim=8)


MICRO_IMPLICIT = ImplicitDecoderConfig(hidden=16, layers=1, feature_tile=8, feature_halo=16, untiled_area=0,
                                       render_pixels=256)
"""A micro implicit decoder whose features are tiled as soon as the latent exceeds 40 cells a side."""


def micro_config(scale: int, name: str | None = None, tiling: TilingConfig | None = None, lora: bool = True,
                 dfrm: DfrmConfig = MICRO_DFRM, implicit: ImplicitDecoderConfig | None = None,
                 lr_projection: bool = False):
    """The TadmConfig of the micro test model (`implicit`: with that implicit decoder, random)."""
    from tadmcodec.tadm.loader import new_config

    return new_config(
        name or f"random-micro-x{scale}", scale, micro_vae_config(), micro_unet_config(),
        dfrm=dfrm, tpm=MICRO_TPM, refiner=MICRO_REFINER, text_len=8,
        lora_unet=LoraSpec(rank=2, alpha=4.0, targets=UNET_LORA_TARGETS, extra_modules=("conv_in",)) if lora else None,
        lora_vae=LoraSpec(rank=2, alpha=4.0, targets=VAE_LORA_TARGETS, adapter_name="vae_skip") if lora else None,
        tiling=tiling or TilingConfig(), implicit_decoder=implicit, lr_projection=lr_projection,
    )


def randomize(module: torch.nn.Module, generator: torch.Generator, std: float = 0.05) -> None:
    """Give every all-zero parameter random values (zero-inits would make tests trivial)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point() and not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * std)


def make_random_model(scale: int, seed: int = 0, **kwargs: Any):
    """A random micro TadmModel in memory (LoRA injected, unmerged), float32 on CPU."""
    from tadmcodec.tadm.loader import build_model, quiet

    config = micro_config(scale, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with quiet():
            model = build_model(config, load_weights=False)
        g = torch.Generator().manual_seed(seed + 1)
        implicit, model.implicit = model.implicit, None  # the rest is the same with or without one
        randomize(model, g)
        model.prompt_embeds = torch.randn(1, config.text_len, micro_unet_config()["cross_attention_dim"], generator=g)
        if implicit is not None:
            randomize(implicit, g)
            model.implicit = implicit
    return model.eval()


def make_random_model_dir(path: str | Path, scale: int, seed: int = 0, adapters: bool = True,
                          **kwargs: Any) -> Path:
    """Write a random micro model folder for `scale` (8, 16 or 32) to `path`; returns it.

    Adapter files by default, so the many tests built on this folder keep
    exercising the injection and merge on load; `adapters=False` writes the
    merged layout that export produces. kwargs go to `micro_config` (e.g.
    `tiling=TilingConfig(...)`, `lora=False`).
    """
    from tadmcodec.tadm.loader import save_model_dir

    model = make_random_model(scale, seed, **kwargs)
    return save_model_dir(path, model, fp32=True, adapters=adapters)


def with_tiling(config_tiling: TilingConfig | None = None, **changes: Any) -> TilingConfig:
    """A TilingConfig with some fields changed (tests shrink tiles to exercise tiling cheaply)."""
    return dataclasses.replace(config_tiling or TilingConfig(), **changes)
