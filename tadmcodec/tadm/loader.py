"""Model folders: build, load (`load_tadm`, `load_model_dir`) and save (`save_model_dir`).

A folder is `model.json` (see `spec.py`) plus safetensors only; nothing is ever
unpickled. Loading prints nothing on success; every failure is a ModelError
naming the file, key or option that is missing or wrong.

Backbones: "inline" (configs in model.json, weights in the folder: the tiny
models) or "diffusers" (a local Stable Diffusion 2.1 diffusers folder from
--sd-dir / $TADM_SD21_DIR, optionally a separate VAE folder such as
sd-vae-ft-mse; model.json records the SHA-256 of each backbone file, checked
on load, so the registry's digest of the folder still covers the weights).

Start-up cost is most of a one-file `tadm` call on a CPU, so loading does no work
it can skip: every module is built on the meta device and takes the safetensors
tensors as they are (no random init to overwrite); an exported inline model has
its LoRA merged into vae/unet.safetensors, so peft is neither imported nor run
(older folders with adapter files still load, through peft); and the diffusers
classes come from their own modules. What import time is left is mostly what
those modules import themselves (torch._dynamo, and transformers, peft and
accelerate when installed), which diffusers decides; in the `tadm` command's own
process `load_tadm` keeps the last three out for folders without adapters
(`diffusers_import`). benchmarks/startup.py measures both.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tadmcodec.errors import ModelError
from tadmcodec.tadm import spec as S
from tadmcodec.tadm.spec import BackboneSpec, TadmConfig

if TYPE_CHECKING:
    from tadmcodec.registry import ModelSpec
    from tadmcodec.tadm.model import TadmModel
    from tadmcodec.tadm.pipeline import TadmRescaler

PROMPT_KEY = "prompt_embeds"
HASH_CACHE = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "tadmcodec" / "sha256.json"


# ----------------------------------------------------------------- helpers


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence diffusers/peft logging and warnings while building models (loading prints nothing)."""
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file as a CPU state dict; ModelError names the file on failure."""
    try:
        return load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise ModelError(f"missing {path}") from None
    except (OSError, SafetensorError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None


def _check_state(module: nn.Module, state: dict[str, torch.Tensor], where: Path | str, against: str,
                 counts: bool) -> None:
    """ModelError naming the first missing/unexpected key or wrong shape of `state` for `module`."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        detail = f"{len(missing)} missing, {len(extra)} unexpected tensors; {what}" if counts else what
        raise ModelError(f"{where} does not match {against} ({detail})")
    implied = "model.json" if against == "model.json" else "config"
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ModelError(f"{where}: {k} has shape {tuple(v.shape)}, {implied} implies {tuple(own[k].shape)}")


def _load_assign(module: nn.Module, state: dict[str, torch.Tensor], where: Path | str,
                 against: str = "its config") -> None:
    """Load weights into a module built on the meta device: its tensors become the file's.

    Building on the meta device allocates and initialises nothing, so a load costs
    reading the file and nothing else (a random init that the file then overwrites
    was a second full pass over every weight). Any tensor the file does not fill
    would stay on the meta device; that is an error naming it.
    """
    _check_state(module, state, where, against, counts=against == "model.json")
    module.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if left:
        raise ModelError(f"{where}: no weights for {left[0]}")


def diffusers_classes() -> tuple[type, type]:
    """(AutoencoderKL, UNet2DConditionModel) from their own modules.

    `from diffusers import AutoencoderKL` resolves through diffusers' lazy
    top-level namespace; naming the modules skips that lookup and says which
    code the codec runs. It saves little: the package `__init__`s on the way
    still run, and the modules' own imports (which diffusers decides) are most
    of the import time; benchmarks/startup.py measures both.
    """
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    return AutoencoderKL, UNet2DConditionModel


def _hash_cache() -> dict[str, Any]:
    try:
        return json.loads(HASH_CACHE.read_text())
    except (OSError, ValueError):
        return {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, cached by (absolute path, size, mtime) across runs (backbones are GBs)."""
    st = path.stat()
    key = str(path.resolve())
    cache = _hash_cache()
    hit = cache.get(key)
    if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
        return hit[2]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    cache[key] = [st.st_size, st.st_mtime_ns, h.hexdigest()]
    try:
        HASH_CACHE.parent.mkdir(parents=True, exist_ok=True)
        tmp = HASH_CACHE.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(HASH_CACHE)
    except OSError:
        pass  # a read-only home only costs re-hashing next time
    return h.hexdigest()


def _weights_name(folder: Path) -> str:
    """The diffusers weight file in a component folder (safetensors only, fp32 preferred)."""
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        if (folder / name).is_file():
            return name
    raise ModelError(f"no diffusion_pytorch_model.safetensors in {folder} (only safetensors are loaded)")


def describe_diffusers_backbone(sd_dir: str | os.PathLike, vae_dir: str | os.PathLike | None = None,
                                sd_env: str = "TADM_SD21_DIR",
                                vae_env: str = "TADM_SD_VAE_DIR") -> BackboneSpec:
    """The model.json backbone entry for a local SD folder (and optional separate VAE).

    Records the SHA-256 of each file the loader will read; the importer of the
    official checkpoints calls this.
    """
    sd = Path(sd_dir).expanduser()
    vae = Path(vae_dir).expanduser() if vae_dir else sd / "vae"
    files: dict[str, str] = {}
    for root, folder in (("sd:unet/", sd / "unet"), ("vae:", vae)):
        for name in ("config.json", _weights_name(folder)):
            p = folder / name
            if not p.is_file():
                raise ModelError(f"missing {p}")
            files[root + name] = file_sha256(p)
    return BackboneSpec(kind="diffusers", sd_env=sd_env, vae_env=vae_env if vae_dir else None, files=files)


# ------------------------------------------------------------------ build


def new_config(name: str, scale: int, vae_config: dict[str, Any], unet_config: dict[str, Any],
               **overrides: Any) -> TadmConfig:
    """A TadmConfig on an inline backbone (what training starts from); overrides set other fields."""
    cfg = TadmConfig(name=name, scale=scale,
                     backbone=BackboneSpec(kind="inline", vae=_plain(vae_config), unet=_plain(unet_config)),
                     **overrides)
    cfg = TadmConfig.from_dict(cfg.to_dict())  # normalise (lists -> tuples) and validate
    return cfg


def _plain(cfg: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in dict(cfg).items() if not k.startswith("_")}, default=list))


def _backbone(config: TadmConfig, folder: Path | None, sd_dir: Any, vae_dir: Any,
              load_weights: bool, verify: bool) -> tuple[nn.Module, nn.Module]:
    AutoencoderKL, UNet2DConditionModel = diffusers_classes()

    b = config.backbone
    if b.kind == "inline":
        assert b.vae is not None and b.unet is not None
        if not load_weights:
            with quiet():
                return AutoencoderKL.from_config(b.vae), UNet2DConditionModel.from_config(b.unet)
        assert folder is not None
        vae_cfg, unet_cfg = b.vae, b.unet
        vae_path, unet_path = folder / S.VAE_FILE, folder / S.UNET_FILE
    else:
        sd_path, vae_root = S.backbone_dirs(b, sd_dir, vae_dir)
        paths = {k: S.resolve_backbone_file(k, sd_path, vae_root) for k in b.files}
        for key, p in paths.items():
            if not p.is_file():
                raise ModelError(f"missing {p} (backbone file {key} of the model)")
            if verify and file_sha256(p) != b.files[key]:
                raise ModelError(f"{p} is not the backbone file this model was made with (SHA-256 differs)")

        def pick(prefix: str, suffix: str) -> Path:
            found = [p for k, p in paths.items() if k.startswith(prefix) and k.endswith(suffix)]
            if len(found) != 1:
                raise ModelError(f"model.json: backbone files need one {prefix}*{suffix} entry")
            return found[0]

        unet_cfg = S.read_json_object(pick("sd:unet/", "config.json"))
        vae_cfg = S.read_json_object(pick("vae:", "config.json"))
        unet_path, vae_path = pick("sd:unet/", ".safetensors"), pick("vae:", ".safetensors")
    with quiet(), torch.device("meta"):
        vae = AutoencoderKL.from_config(vae_cfg)
        unet = UNet2DConditionModel.from_config(unet_cfg)
    _load_assign(vae, read_weights(vae_path), vae_path)
    _load_assign(unet, read_weights(unet_path), unet_path)
    return vae, unet


def build_model(config: TadmConfig, folder: Path | None = None, *, sd_dir: Any = None,
                vae_dir: Any = None, load_weights: bool = True, verify_backbone: bool = True) -> "TadmModel":
    """A TadmModel for the config: weights from `folder` (or random heads if load_weights is False).

    With load_weights=False an inline backbone is random too (tests, training from scratch).
    Loading builds every module on the meta device and assigns the file's tensors.
    LoRA adapters named by the config (older exports, and models on an external
    backbone) are injected through peft and filled from the adapter files; a
    config without LoRA never imports peft.
    """
    from tadmcodec.tadm.dfrm import DFRM
    from tadmcodec.tadm.model import TadmModel
    from tadmcodec.tadm.scheduler import Refiner
    from tadmcodec.tadm.tpm import TimeMapping

    vae, unet = _backbone(config, folder, sd_dir, vae_dir, load_weights, verify_backbone)
    lat = config.dfrm.latent_channels
    with torch.device("meta") if load_weights else contextlib.nullcontext():
        dfrm, tpm, refiner = DFRM(config.scale, config.dfrm), TimeMapping(config.tpm, lat), Refiner(config.refiner, lat)
    cross = unet.config.cross_attention_dim
    if load_weights:
        assert folder is not None
        for module, name in ((dfrm, S.DFRM_FILE), (tpm, S.TPM_FILE), (refiner, S.REFINER_FILE)):
            _load_assign(module, read_weights(folder / name), folder / name, against="model.json")
        prompts = read_weights(folder / S.PROMPT_FILE)
        if PROMPT_KEY not in prompts:
            raise ModelError(f"{folder / S.PROMPT_FILE} has no {PROMPT_KEY!r} tensor")
        prompt = prompts[PROMPT_KEY]
        if prompt.dim() != 3 or prompt.shape[0] != 1 or prompt.shape[2] != cross:
            raise ModelError(f"{folder / S.PROMPT_FILE}: prompt_embeds must be (1, L, {cross}), "
                             f"not {tuple(prompt.shape)}")
    else:
        prompt = torch.zeros(1, config.text_len, cross)
    model = TadmModel(config, vae, unet, prompt.float(), dfrm, tpm, refiner)
    if config.implicit_decoder is not None:
        attach_implicit(model, folder if load_weights else None)
    adapters = [(target, lspec, fname) for target, lspec, fname in (
        (unet, config.lora_unet, S.UNET_ADAPTER_FILE), (vae, config.lora_vae, S.VAE_ADAPTER_FILE))
        if lspec is not None]
    if adapters:
        from tadmcodec.tadm.lora import add_lora, load_adapter  # peft: only for folders that keep adapters

        with quiet():
            for target, lspec, fname in adapters:
                add_lora(target, lspec)
                if load_weights:
                    assert folder is not None
                    load_adapter(target, lspec, read_weights(folder / fname), str(folder / fname))
    return model


def attach_implicit(model: "TadmModel", folder: Path | None) -> None:
    """Build the config's implicit decoder on the model's VAE; weights from `folder` (else random).

    A decoder trained on other VAE weights than this model's (its `vae_sha256` differs)
    is not attached: `model.implicit_note` says so, and decoding at other sizes then
    resamples the full decode, as for a model without one.
    """
    from tadmcodec.tadm.implicit import ImplicitDecoder, shared_fingerprint

    cfg = model.config.implicit_decoder
    assert cfg is not None
    if cfg.vae_sha256 and shared_fingerprint(model.vae, cfg) != cfg.vae_sha256:
        model.implicit, model.implicit_note = None, (
            "its implicit decoder was trained on other VAE weights (vae_sha256 differs): not used")
        return
    with quiet():
        dec = ImplicitDecoder(cfg, model.vae)
    if folder is not None:
        path = folder / S.IMPLICIT_FILE
        state = read_weights(path)
        _check_state(dec, state, path, "model.json", counts=True)
        dec.load_state_dict(state, strict=True)
    model.implicit = dec.float()


def load_model_dir(folder: str | os.PathLike, *, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, merge: bool = True, sd_dir: Any = None,
                   vae_dir: Any = None) -> "TadmModel":
    """Load a model folder onto a device, in eval mode without gradients; LoRA merged unless merge=False."""
    folder = Path(folder).expanduser()
    config = S.read_config(folder)
    for name in S.required_files(config):
        if not (folder / name).is_file():
            raise ModelError(f"missing {folder / name}")
    model = build_model(config, folder, sd_dir=sd_dir, vae_dir=vae_dir)
    with quiet():
        if merge:
            model.merge_lora()
        model.to_device(torch.device(device), dtype)
    model.eval().requires_grad_(False)
    return model


def load_tadm(spec: "ModelSpec", device: str = "auto", precision: str = "auto", *,
              sd_dir: Any = None, vae_dir: Any = None) -> "TadmRescaler":
    """The runnable codec model for a registry spec (a `Rescaler`).

    In the `tadm` command's own process the first load imports diffusers without
    transformers, peft and accelerate when model.json names no LoRA (read before
    diffusers is imported; see `diffusers_import`); elsewhere diffusers is imported as is.
    """
    from tadmcodec.tadm import diffusers_import
    from tadmcodec.tadm.devices import make_deterministic, resolve_device, resolve_dtype

    folder = spec.weights_dir()
    if folder is None:
        raise ModelError(f"model {spec.name} is not available: {spec.needs}")
    diffusers_import.import_model_modules(Path(folder).expanduser())  # before pipeline imports diffusers
    from tadmcodec.tadm.pipeline import TadmRescaler

    dev = resolve_device(device)
    dtype = resolve_dtype(dev, precision)
    make_deterministic(dev)
    model = load_model_dir(folder, device=dev, dtype=dtype, sd_dir=sd_dir, vae_dir=vae_dir)
    if spec.scale is not None and model.config.scale != spec.scale:
        raise ModelError(f"{folder / 'model.json'} is a x{model.config.scale} model, "
                         f"but {spec.name} is x{spec.scale}")
    rescaler = TadmRescaler(model, name=spec.name)
    if dev.type == "cpu":
        rescaler.enable_channels_last()
    return rescaler


# ------------------------------------------------------------------- save


def _cpu(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
            for k, v in state.items()}


def _base_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Base weights of a possibly LoRA-injected module, under the plain (un-injected) key names."""
    out = {}
    for k, v in module.state_dict().items():
        if ".lora_" in k:
            continue
        out[k.replace(".base_layer.", ".")] = v
    return out


def _merged_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of `module` with its LoRA folded in, under the plain key names.

    Merges a float32 copy, so the training model the caller holds keeps its
    adapters (export may run mid-training) and the sum is not rounded to a
    low-precision training dtype before the final cast.
    """
    from tadmcodec.tadm.lora import has_lora, merge_lora

    if not has_lora(module):
        return _base_state(module)
    with quiet():
        merged = merge_lora(copy.deepcopy(module).float())
    return _base_state(merged)


def save_model_dir(folder: str | os.PathLike, model: "TadmModel", *, fp32: bool = False,
                   adapters: bool = False) -> Path:
    """Write `model.json` and the safetensors of a TadmModel (fp16 unless fp32=True).

    Training export and the official-checkpoint importer use this. On an inline
    backbone the LoRA is merged into vae/unet.safetensors and model.json names
    no LoRA, so loading needs no peft and no merge: merging the tiny model's
    adapters took longer than the rest of its load. The model passed in is not
    changed. With `adapters=True` (or on a "diffusers" backbone, whose weights
    stay outside the folder: merging would copy the whole UNet into it) the
    adapters are saved unmerged and the LoRA config stays in model.json; an
    already merged model cannot be saved that way. Returns the folder.
    """
    out = Path(folder).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    dtype = torch.float32 if fp32 else torch.float16
    lora = [(lspec, module, what, name) for lspec, module, what, name in (
        (cfg.lora_unet, model.unet, "UNet", S.UNET_ADAPTER_FILE),
        (cfg.lora_vae, model.vae, "VAE", S.VAE_ADAPTER_FILE)) if lspec is not None]
    merge = cfg.backbone.kind == "inline" and not adapters
    if lora:
        from tadmcodec.tadm.lora import adapter_state_dict, has_lora

        for lspec, module, what, _ in lora:
            if not has_lora(module) and not (merge and model.lora_merged):
                raise ModelError(f"model.json asks for a {what} LoRA but the model has none "
                                 "(merged models cannot be saved as adapters)")
    files: dict[str, dict[str, torch.Tensor]] = {
        S.DFRM_FILE: model.dfrm.state_dict(),
        S.TPM_FILE: model.tpm.state_dict(),
        S.REFINER_FILE: model.refiner.state_dict(),
        S.PROMPT_FILE: {PROMPT_KEY: model.prompt_embeds.reshape(1, -1, model.prompt_embeds.shape[-1])},
    }
    if merge:
        files[S.VAE_FILE] = _merged_state(model.vae) if cfg.lora_vae is not None else _base_state(model.vae)
        files[S.UNET_FILE] = _merged_state(model.unet) if cfg.lora_unet is not None else _base_state(model.unet)
        cfg = replace(cfg, lora_unet=None, lora_vae=None)
    else:
        if cfg.backbone.kind == "inline":
            files[S.VAE_FILE] = _base_state(model.vae)
            files[S.UNET_FILE] = _base_state(model.unet)
        for lspec, module, _, name in lora:
            files[name] = adapter_state_dict(module, lspec)
    if cfg.implicit_decoder is not None:
        if model.implicit is not None:
            files[S.IMPLICIT_FILE] = model.implicit.state_dict()
        else:  # not attached (other VAE weights): the folder does not promise one
            cfg = replace(cfg, implicit_decoder=None)
    known = {S.DFRM_FILE, S.TPM_FILE, S.REFINER_FILE, S.PROMPT_FILE, S.VAE_FILE, S.UNET_FILE,
             S.UNET_ADAPTER_FILE, S.VAE_ADAPTER_FILE, S.IMPLICIT_FILE}
    for stale in known - set(files):
        (out / stale).unlink(missing_ok=True)  # the digest hashes every .safetensors here
    for name, state in files.items():
        save_file(_cpu(state, dtype), str(out / name))
    S.write_config(out, cfg)
    return out
