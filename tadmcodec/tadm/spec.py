"""The `model.json` schema of a TADM model folder (no torch here).

A model folder holds `model.json` (this schema) and `*.safetensors` weights.
The registry hashes both into the digest that `.tadm` files record, so every
number that changes what the decoder computes lives in this file: backbone
configs (or, for a backbone outside the folder, the SHA-256 of each of its
files), DFRM/TPM/refiner sizes, LoRA ranks and targets, t0, t limits and tile
sizes. Defaults are the official TADM sizes; tiny models override them.

Kept torch-free so `tadm models` can report availability instantly.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tadmcodec.errors import ModelError

FORMAT = "tadm-model"
VERSION = 1

# Weight files of a model folder (all safetensors; nothing is ever unpickled).
DFRM_FILE = "dfrm.safetensors"
TPM_FILE = "tpm.safetensors"
REFINER_FILE = "refiner.safetensors"
PROMPT_FILE = "prompt.safetensors"  # key "prompt_embeds": the fixed empty-prompt embedding
VAE_FILE = "vae.safetensors"  # full VAE weights (inline backbone only)
UNET_FILE = "unet.safetensors"  # full UNet weights (inline backbone only)
UNET_ADAPTER_FILE = "unet_adapter.safetensors"  # LoRA (+ extra trained base modules)
VAE_ADAPTER_FILE = "vae_adapter.safetensors"
IMPLICIT_FILE = "implicit_decoder.safetensors"  # optional: the implicit (any-size) decoder's own weights
IMPLICIT_KEY = "implicit_decoder"
"""model.json key of the optional implicit decoder. Neither it nor IMPLICIT_FILE is part of the
weights digest that `.tadm` files record (docs/models.md): they change no decode at the original size."""

# The Stable Diffusion noise schedule (DDPMScheduler, scaled_linear).
SD_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}

# LoRA targets of the official code: peft suffix matches on the UNet, a regex on the VAE decoder.
UNET_LORA_TARGETS: tuple[str, ...] = (
    "to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_shortcut",
    "conv_out", "proj_in", "proj_out", "ff.net.2", "ff.net.0.proj",
)
VAE_LORA_TARGETS = (
    r"^decoder\..*(conv1|conv2|conv_in|conv_shortcut|conv|conv_out|to_k|to_q|to_v|to_out\.0)$"
)


@dataclass(frozen=True)
class DfrmConfig:
    """Sizes of the DFRM (Ge with pixel guidance, INN F, Gd); defaults = official."""

    latent_channels: int = 4
    lr_channels: int = 3
    pixel_width: int = 16  # first conv of the pixel-guidance branch
    pixel_out: int = 16  # channels the pixel branch hands to the fusion
    latent_width: int = 128  # latent branch and Gd width
    latent_blocks: int = 8
    fuse_blocks: int = 8
    final_blocks: int = 8
    inv_blocks: int = 12
    inv_split: int = 1  # channels of the first coupling half (official: 1 | 2)
    inv_clamp: float = 1.0
    dense_width: int = 32
    # Not in the official code: residual blocks at the latent resolution after Gd's pixel
    # shuffles (0 = none, as official). At x32 Gd's last conv sees only latent_width/16
    # channels, too few to join the 4x4 latent blocks each LR pixel unfolds into.
    tail_blocks: int = 0
    tail_width: int = 32


@dataclass(frozen=True)
class TpmConfig:
    """Time-step prediction module; t is limited to [t_min, t_max]."""

    width: int = 32
    blocks: int = 6
    mlp_hidden: int = 512
    mlp_layers: int = 4
    t_min: float = 10.0
    t_max: float = 200.0
    # The official training feeds the TPM the unscaled latent (its tiled inference
    # feeds the scaled one); the weights decide, so the choice is recorded.
    input_scaled: bool = False


@dataclass(frozen=True)
class RefinerConfig:
    """Learned branch of the hybrid scheduler (output conv starts at zero)."""

    width: int = 64
    blocks: int = 6
    embed_dim: int = 64


@dataclass(frozen=True)
class LoraSpec:
    """One peft LoRA: rank, alpha (peft's default 8, as the official code used), targets."""

    rank: int
    targets: str | tuple[str, ...]
    alpha: float = 8.0
    adapter_name: str = "default"
    # Base modules trained alongside the adapter and saved in the adapter file
    # (the official code also trains the UNet's conv_in).
    extra_modules: tuple[str, ...] = ()


OFFICIAL_LORA_UNET = LoraSpec(rank=48, targets=UNET_LORA_TARGETS, extra_modules=("conv_in",))
"""The paper's UNet LoRA (rank 48; the official code also trains conv_in)."""
OFFICIAL_LORA_VAE = LoraSpec(rank=16, targets=VAE_LORA_TARGETS, adapter_name="vae_skip")
"""The paper's VAE-decoder LoRA (rank 16; adapter name as in the official checkpoints)."""


@dataclass(frozen=True)
class TilingConfig:
    """Tile sizes; all change decoded bytes, so all are part of the digest."""

    latent_tile: int = 96  # Algorithm 1: latent patch
    latent_stride: int = 64
    tile_sigma: float = 0.1  # Gaussian merge weight, sigma as a fraction of the tile
    tile_batch: int = 4  # UNet tiles per batch
    vae_decode_tile: int = 64  # latent px per decoder tile (core)
    vae_decode_halo: int = 16  # latent px of context around it
    vae_decode_untiled_area: int = 128 * 128  # latent px: latents up to this area (1 MP) decode whole
    vae_encode_tile: int = 512  # image px per encoder tile (core)
    vae_encode_halo: int = 64
    vae_encode_untiled_area: int = 128 * 128  # latent px: images up to this area (1 MP) encode whole
    vae_blend: float = 0.5  # fraction of the halo used for the feathered seam
    stats_grid: int = 3  # grid x grid sample tiles estimate the shared GroupNorm statistics
    dfrm_tile: int = 128  # LR px per DFRM conv tile (exact: halo = receptive field)


@dataclass(frozen=True)
class ImplicitDecoderConfig:
    """The optional implicit decoder (after Kim & Kim): renders the final latent at any size.

    The VAE decoder's first blocks at latent resolution (`post_quant_conv`, `conv_in`, the mid
    block and the first `shared_blocks` up blocks without their upsamplers), used as they are with
    the VAE's own weights; then `own_blocks` further up blocks, copied from the VAE and trained at
    latent resolution; then a LIIF head: 3x3 feature unfolding (folded into the first layer, a
    3x3 conv to `hidden` channels), the query's offset from the latent cell and its cell size,
    `layers` hidden layers of `hidden` units, RGB out, and the local ensemble over the four nearest
    cells. Only the own blocks and the head are in `implicit_decoder.safetensors`.
    """

    shared_blocks: int = 1
    own_blocks: int = 1
    hidden: int = 128
    layers: int = 2
    vae_sha256: str = ""  # SHA-256 over the shared VAE tensors it was trained on ("" = not checked)
    feature_tile: int = 64  # latent cells per tile core (features are computed tile by tile)
    feature_halo: int = 16  # latent cells of context around a core (>= receptive radius + 1: exact)
    untiled_area: int = 128 * 128  # latents up to this area are computed whole
    stats_grid: int = 3  # sample tiles per side for the shared GroupNorm statistics, as the VAE's
    render_pixels: int = 16384  # output pixels rendered at once (bounds the MLP's memory)
    trained_zoom: tuple[float, float] = (0.125, 2.0)  # output/latent-image size ratios seen in training


@dataclass(frozen=True)
class BackboneSpec:
    """Where the VAE and UNet come from.

    kind "inline": `vae`/`unet` are diffusers configs; weights are vae.safetensors
    and unet.safetensors in the folder. kind "diffusers": a local diffusers folder
    of Stable Diffusion (env var `sd_env`), the VAE optionally from a separate
    folder (env var `vae_env`); `files` maps "sd:<relpath>" / "vae:<relpath>" to
    the SHA-256 each file must have, so the digest still covers the weights.
    """

    kind: str = "inline"
    vae: dict[str, Any] | None = None
    unet: dict[str, Any] | None = None
    sd_env: str = "TADM_SD21_DIR"
    vae_env: str | None = None
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TadmConfig:
    """Everything in model.json."""

    name: str
    scale: int
    backbone: BackboneSpec
    dfrm: DfrmConfig = DfrmConfig()
    tpm: TpmConfig = TpmConfig()
    refiner: RefinerConfig = RefinerConfig()
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SD_SCHEDULER))
    t0: int = 50
    lora_unet: LoraSpec | None = None
    lora_vae: LoraSpec | None = None
    tiling: TilingConfig = TilingConfig()
    text_len: int = 77  # tokens of the stored empty-prompt embedding
    # One back-projection of the decoded image onto the LR image (`tadmcodec.lr_projection`):
    # the decode keeps its detail and takes the LR image's low band. Changes every decode, so it
    # is part of the model (and of the digest), and a model is trained with it on or off.
    lr_projection: bool = False
    implicit_decoder: ImplicitDecoderConfig | None = None  # optional; not part of the digest

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d = {"format": FORMAT, "version": VERSION, **d}
        if not d["lr_projection"]:  # written only when on: folders saved before it keep their digest
            del d["lr_projection"]
        return json.loads(json.dumps(d))  # tuples -> lists, so it equals what is read back

    @staticmethod
    def from_dict(d: dict[str, Any], where: str = "model.json") -> "TadmConfig":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ModelError(f"{where}: not a TADM model config (format must be {FORMAT!r})")
        if d.get("version") != VERSION:
            raise ModelError(f"{where}: unsupported model config version {d.get('version')!r}")
        body = {k: v for k, v in d.items() if k not in ("format", "version")}
        cfg = _build(TadmConfig, body, where)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "model.json") -> None:
        """Raise ModelError for values the networks cannot be built with."""

        def bad(msg: str) -> ModelError:
            return ModelError(f"{where}: {msg}")

        if self.scale not in (8, 16, 32):
            raise bad(f"scale must be 8, 16 or 32, not {self.scale}")
        if self.backbone.kind == "inline":
            if not self.backbone.vae or not self.backbone.unet:
                raise bad("an inline backbone needs both 'vae' and 'unet' configs")
        elif self.backbone.kind == "diffusers":
            if not self.backbone.files:
                raise bad("a diffusers backbone must record the SHA-256 of its files")
        else:
            raise bad(f"unknown backbone kind {self.backbone.kind!r}")
        if not 0 <= self.t0 < int(self.scheduler.get("num_train_timesteps", 1000)):
            raise bad(f"t0 {self.t0} outside the noise schedule")
        if not 0 <= self.tpm.t_min < self.tpm.t_max:
            raise bad("tpm.t_min must be below tpm.t_max")
        if not 0 < self.dfrm.inv_split < self.dfrm.lr_channels:
            raise bad("dfrm.inv_split must split the LR channels in two")
        t = self.tiling
        if t.latent_stride <= 0 or t.latent_stride > t.latent_tile or t.latent_tile % 8:
            raise bad("tiling: need 0 < latent_stride <= latent_tile, latent_tile a multiple of 8")
        if t.vae_encode_tile % 8 or t.vae_encode_halo % 8:
            raise bad("tiling: vae_encode_tile and vae_encode_halo must be multiples of 8")
        if min(t.tile_batch, t.vae_decode_tile, t.vae_encode_tile, t.stats_grid, t.dfrm_tile) < 1 \
                or min(t.vae_decode_untiled_area, t.vae_encode_untiled_area) < 0:
            raise bad("tiling: sizes must be positive")
        if not 0.0 <= t.vae_blend <= 1.0:
            raise bad("tiling: vae_blend must be in [0, 1]")
        d = self.implicit_decoder
        if d is not None:
            if d.shared_blocks < 0 or d.own_blocks < 1 or d.hidden < 1 or d.layers < 0:
                raise bad("implicit_decoder: need shared_blocks >= 0, own_blocks >= 1, hidden >= 1, layers >= 0")
            if min(d.feature_tile, d.stats_grid, d.render_pixels) < 1 or d.feature_halo < 0 or d.untiled_area < 0:
                raise bad("implicit_decoder: tile sizes must be positive")


def _build(cls: type, data: Any, where: str) -> Any:
    """Build a (nested) dataclass from JSON, refusing unknown or missing keys."""
    if not isinstance(data, dict):
        raise ModelError(f"{where}: {cls.__name__} must be an object")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ModelError(f"{where}: unknown key(s) {', '.join(unknown)} in {cls.__name__}")
    nested = {
        "backbone": BackboneSpec, "dfrm": DfrmConfig, "tpm": TpmConfig,
        "refiner": RefinerConfig, "tiling": TilingConfig,
        "lora_unet": LoraSpec, "lora_vae": LoraSpec, "implicit_decoder": ImplicitDecoderConfig,
    }
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name in nested and cls in (TadmConfig,) and value is not None:
            value = _build(nested[name], value, f"{where}: {name}")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ModelError(f"{where}: {cls.__name__}: {exc}") from None


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; ModelError names the file on any problem."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"missing {path}") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


def read_config(folder: Path) -> TadmConfig:
    """Parse `folder/model.json`; ModelError names the file on any problem."""
    path = folder / "model.json"
    return TadmConfig.from_dict(read_json_object(path), where=str(path))


def write_config(folder: Path, config: TadmConfig) -> Path:
    path = folder / "model.json"
    path.write_text(json.dumps(config.to_dict(), indent=1, sort_keys=True) + "\n")
    return path


def required_files(config: TadmConfig) -> list[str]:
    """The weight files a folder with this config must contain."""
    names = [DFRM_FILE, TPM_FILE, REFINER_FILE, PROMPT_FILE]
    if config.backbone.kind == "inline":
        names += [VAE_FILE, UNET_FILE]
    if config.lora_unet is not None:
        names.append(UNET_ADAPTER_FILE)
    if config.lora_vae is not None:
        names.append(VAE_ADAPTER_FILE)
    if config.implicit_decoder is not None:
        names.append(IMPLICIT_FILE)
    return names


def backbone_dirs(backbone: BackboneSpec, sd_dir: str | os.PathLike | None = None,
                  vae_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(Stable Diffusion folder, VAE folder) from the arguments or the env vars.

    The VAE folder is the SD folder's `vae/` unless the config names a separate
    VAE (vae_env), which must then be given.
    """
    sd = sd_dir or os.environ.get(backbone.sd_env)
    if not sd:
        raise ModelError(f"no Stable Diffusion folder: set {backbone.sd_env} (or pass --sd-dir)")
    sd_path = Path(sd).expanduser()
    if backbone.vae_env is None:
        return sd_path, sd_path / "vae"
    v = vae_dir or os.environ.get(backbone.vae_env)
    if not v:
        raise ModelError(f"no VAE folder: set {backbone.vae_env} (or pass --vae-dir)")
    return sd_path, Path(v).expanduser()


def resolve_backbone_file(key: str, sd_path: Path, vae_path: Path) -> Path:
    """Map a `files` key ("sd:unet/x" or "vae:x") to a path."""
    root, _, rel = key.partition(":")
    if root == "sd":
        return sd_path / rel
    if root == "vae":
        return vae_path / rel
    raise ModelError(f"model.json: bad backbone file key {key!r} (want 'sd:' or 'vae:')")


def check_available(folder: Path) -> tuple[bool, str]:
    """(available, reason) without torch: config parses, weight files and backbone exist."""
    try:
        config = read_config(folder)
    except ModelError as exc:
        return False, str(exc)
    for name in required_files(config):
        if not (folder / name).is_file():
            return False, f"missing {folder / name}"
    if config.backbone.kind == "diffusers":
        try:
            sd_path, vae_path = backbone_dirs(config.backbone)
        except ModelError as exc:
            return False, str(exc)
        for key in config.backbone.files:
            p = resolve_backbone_file(key, sd_path, vae_path)
            if not p.is_file():
                return False, f"missing {p}"
    return True, str(folder)
