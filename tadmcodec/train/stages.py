"""Training stages 1-3 of TADM, the held-out validation R-D check, and export.

    Stage 1 (Eq. 6-8): the DFRM alone, VAE frozen:
        L = l_rec * (|Gd(z_lr) - z| + |Gd(F^-1(Q(y))) - z|) + l_gui * |y - bicubic(x)|
    Stage 2 (Eq. 11): DFRM frozen; LoRA (UNet + VAE decoder), TPM and the learned scheduler:
        L = |x^ - x| + l_pec * (LPIPS(x^, x) + DISTS(x^, x))
    Stage 3: everything of stages 1 and 2 together at a low learning rate (Eq. 8 + Eq. 11).

Why the loop is not stage 0's `_Trainer`: these stages train a *subset* of one model
(the backbone stays frozen), step-halving schedules as in the paper's supplement,
a validation check every N steps, and checkpoints that hold only the trainable
weights (an SD-2.1 backbone is GBs and never changes here). The checkpoint and RNG
helpers are shared with stage 0.

Multi-GPU: the same command runs under `accelerate launch`; every process draws disjoint
crops (`PhotoCrops.batch(step, bs, rank, world)`) and gradients are averaged across
processes before each step (no DDP wrapper, because the losses call sub-modules of
the model directly, which DDP would not see).

Precision: on CUDA (and on a CPU with config key `cpu_bf16`) the VAE/UNet run under
bf16 autocast; the DFRM always runs in
float32 (the LR image is rounded from its output, and bf16 cannot represent the
8-bit grid near +-1).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tadmcodec.errors import InputError, ModelError, TadmError
from tadmcodec.tadm import backbone as bb
from tadmcodec.tadm.dfrm import quantize
from tadmcodec.tadm.lora import adapter_state_dict
from tadmcodec.tadm.spec import (
    UNET_LORA_TARGETS, VAE_LORA_TARGETS, DfrmConfig, LoraSpec, RefinerConfig, TadmConfig,
    TilingConfig, TpmConfig,
)
from tadmcodec.train.data import PhotoCrops, list_photos, load_rgb, to_model_range
from tadmcodec.train.stage0 import (
    _load, merge_config, save_checkpoint, _set_rng_state, latest_checkpoint, seed_everything, trains_on_cpu,
)

STAGES = ("stage1", "stage2", "stage3")

DEFAULTS: dict[str, Any] = {
    "name": "tadm",
    "seed": 0,
    "cpu_bf16": False,  # bf16 autocast for the VAE/UNet when training on a CPU (needs AVX512-BF16 to pay)
    "scale": 16,
    # inline: a stage-0 backbone folder (backbone.json, vae/unet.safetensors);
    # diffusers: a local SD-2.1 folder + a safetensors holding the empty-prompt embedding.
    "backbone": {"kind": "inline", "dir": "runs/stage0", "sd_dir": None, "vae_dir": None,
                 "prompt_file": None},
    "model": {
        "dfrm": {}, "tpm": {}, "refiner": {}, "tiling": {}, "t0": 50,
        "lora_unet": {"rank": 48, "alpha": 8.0}, "lora_vae": {"rank": 16, "alpha": 8.0},
        # back-project the decode onto the LR image in stages 2-3 and in the exported model
        # (TadmConfig.lr_projection); stage 3's losses then score the image `tadm decode` gives
        "lr_projection": False,
    },
    # cached_latents: encode each photo (and its mirror image) once and cut crop latents from it
    # (`latent_cache.LatentCrops`) instead of encoding every crop at every step; crops then start
    # on the 8-pixel latent grid. The VAE encoder is frozen in stages 1-3, so this only saves time.
    "data": {"train_dir": "../shared/data/train", "val_count": 8, "cached_latents": False},
    "checkpoint": {"every_steps": 5000, "every_minutes": 10.0, "keep": 2},
    "log_every": 50,
    "val": {"every_steps": 5000, "crop": 256, "lpips": True},
    # Supplement section 1: 200K / 50K / 10K iterations; Adam 2e-4 halved every 50K;
    # AdamW 3e-4 halved every 15K; 1e-5.
    # pix_weight (0 in the paper): L1 of the frozen VAE decoder's image of Gd(F^-1(Q(y))) on the
    # first pix_samples crops of each batch (see `decoded_l1`). mse_weight (0 in the paper): the
    # squared error of the decoded image beside its L1 in stages 2-3, since PSNR is an MSE.
    "stage1": {"steps": 200000, "max_minutes": None, "batch_size": 8, "crop": 256,
               "optimizer": "adam", "lr": 2e-4, "schedule": "halve", "halve_every": 50000,
               "weight_decay": 0.0, "grad_clip": 1.0, "rec_weight": 1.0, "gui_weight": 1.0,
               "pix_weight": 0.0, "pix_samples": 2},
    "stage2": {"steps": 50000, "max_minutes": None, "batch_size": 4, "crop": 256,
               "optimizer": "adamw", "lr": 3e-4, "schedule": "halve", "halve_every": 15000,
               "weight_decay": 0.01, "grad_clip": 1.0, "l1_weight": 1.0, "mse_weight": 0.0,
               "lpips_weight": 1.0, "dists_weight": 1.0},
    "stage3": {"steps": 10000, "max_minutes": None, "batch_size": 4, "crop": 256,
               "optimizer": "adamw", "lr": 1e-5, "schedule": "constant", "halve_every": 0,
               "weight_decay": 0.01, "grad_clip": 1.0, "rec_weight": 1.0, "gui_weight": 1.0,
               "l1_weight": 1.0, "mse_weight": 0.0, "lpips_weight": 1.0, "dists_weight": 1.0},
}


# ----------------------------------------------------------------------------- config


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULTS, then the JSON file, then `overrides` (nested dicts merge key by key)."""
    cfg = merge_config(DEFAULTS, path, overrides)
    if cfg["scale"] not in (8, 16, 32):
        raise InputError(f"config: scale must be 8, 16 or 32, not {cfg['scale']}")
    for s in STAGES:
        if cfg[s]["crop"] % cfg["scale"]:
            raise InputError(f"config: {s}.crop must be a multiple of the scale {cfg['scale']}")
    return cfg


def _lora(d: dict[str, Any] | None, targets: Any, **kw: Any) -> LoraSpec | None:
    if not d:
        return None
    return LoraSpec(rank=int(d["rank"]), alpha=float(d.get("alpha", 8.0)), targets=targets, **kw)


def tadm_config(cfg: dict[str, Any], vae_config: dict[str, Any] | None, unet_config: dict[str, Any] | None,
                text_len: int, backbone_spec: Any = None) -> TadmConfig:
    """The model.json config a training config describes, on the given backbone."""
    from tadmcodec.tadm.loader import new_config

    m = cfg["model"]
    kwargs = dict(
        dfrm=DfrmConfig(**m["dfrm"]), tpm=TpmConfig(**m["tpm"]), refiner=RefinerConfig(**m["refiner"]),
        tiling=TilingConfig(**m["tiling"]), t0=int(m["t0"]), text_len=text_len,
        # the official recipe also trains the UNet's conv_in with the adapter
        lora_unet=_lora(m["lora_unet"], UNET_LORA_TARGETS, extra_modules=("conv_in",)),
        lora_vae=_lora(m["lora_vae"], VAE_LORA_TARGETS, adapter_name="vae_skip"),
        lr_projection=bool(m["lr_projection"]),
    )
    try:
        if backbone_spec is None:
            return new_config(cfg["name"], cfg["scale"], vae_config, unet_config, **kwargs)
        c = TadmConfig(name=cfg["name"], scale=cfg["scale"], backbone=backbone_spec, **kwargs)
        return TadmConfig.from_dict(c.to_dict())
    except TypeError as exc:
        raise InputError(f"config: bad model section: {exc}") from None


# ----------------------------------------------------------------------------- model


def build_training_model(cfg: dict[str, Any]):
    """A TadmModel on the configured (frozen) backbone, LoRA injected, heads freshly initialised."""
    from tadmcodec.tadm.loader import quiet
    from tadmcodec.tadm.model import TadmModel

    b = cfg["backbone"]
    torch.manual_seed(cfg["seed"])  # head initialisation is part of the run's seed
    with quiet():
        if b["kind"] == "inline":
            back = bb.load_backbone(b["dir"])
            tcfg = tadm_config(cfg, back.config["vae"], back.config["unet"], back.empty_prompt.shape[1])
            vae, unet, prompt = back.vae, back.unet, back.empty_prompt
        elif b["kind"] == "diffusers":
            vae, unet, prompt, tcfg = _diffusers_backbone(cfg)
        else:
            raise InputError(f"config: backbone.kind must be 'inline' or 'diffusers', not {b['kind']!r}")
        model = TadmModel(tcfg, vae, unet, prompt.float())
        model.add_lora()
    model.requires_grad_(False)
    return model


def _diffusers_backbone(cfg: dict[str, Any]):
    """SD 2.1 from a local diffusers folder; the empty-prompt embedding from a safetensors file."""
    from safetensors.torch import load_file

    from tadmcodec.tadm.loader import PROMPT_KEY, _backbone, describe_diffusers_backbone

    b = cfg["backbone"]
    if not b.get("sd_dir") or not b.get("prompt_file"):
        raise InputError("config: a diffusers backbone needs backbone.sd_dir and backbone.prompt_file "
                         "(a safetensors with the (1, 77, 1024) 'prompt_embeds' of the empty prompt)")
    spec = describe_diffusers_backbone(b["sd_dir"], b.get("vae_dir"))
    try:
        prompt = load_file(str(b["prompt_file"]))[PROMPT_KEY]
    except (OSError, KeyError) as exc:
        raise InputError(f"cannot read the empty-prompt embedding {b['prompt_file']}: {exc}") from None
    tcfg = tadm_config(cfg, None, None, int(prompt.shape[1]), backbone_spec=spec)
    vae, unet = _backbone(tcfg, None, b["sd_dir"], b.get("vae_dir"), True, False)
    return vae, unet, prompt, tcfg


def trainable_parameters(model, stage: str) -> list[tuple[str, torch.nn.Parameter]]:
    """The (name, parameter) pairs a stage trains; everything else stays frozen."""
    if stage == "stage1":
        prefixes: tuple[str, ...] = ("dfrm.",)
    elif stage == "stage2":
        prefixes = ("tpm.", "refiner.")
    elif stage == "stage3":
        prefixes = ("dfrm.", "tpm.", "refiner.")
    else:
        raise ValueError(stage)
    adapter_stage = stage in ("stage2", "stage3")
    extra = tuple(f"unet.{m}." for m in (model.config.lora_unet.extra_modules if model.config.lora_unet else ()))
    out = []
    for name, p in model.named_parameters():
        if name.startswith(prefixes) or (adapter_stage and (".lora_" in name or name.startswith(extra))):
            out.append((name, p))
    return out


def checkpoint_state(model) -> dict[str, torch.Tensor]:
    """Everything any stage trains (heads + adapters); the frozen backbone is not saved."""
    state = {f"{k}.{n}": v for k in ("dfrm", "tpm", "refiner") for n, v in getattr(model, k).state_dict().items()}
    for lspec, module, prefix in ((model.config.lora_unet, model.unet, "unet."),
                                  (model.config.lora_vae, model.vae, "vae.")):
        if lspec is not None:
            state.update({prefix + k: v for k, v in adapter_state_dict(module, lspec).items()})
    return {k: v.detach().cpu().clone() for k, v in state.items()}


# Modules that start as the identity: a file trained without them means the same model.
IDENTITY_START = ("dfrm.tail_module.",)


def load_checkpoint_state(model, state: dict[str, torch.Tensor], where: Path,
                          allow_new: bool = False) -> list[str]:
    """Load `checkpoint_state` output back; every key must exist in the model.

    With `allow_new`, tensors of IDENTITY_START modules may be absent from `state` (they keep
    their initialisation); the absent keys are returned so the caller can say so.
    """
    own = model.state_dict()
    bad = [k for k in state if k not in own]
    if bad:
        raise ModelError(f"{where} does not match the config ({len(bad)} unknown tensors, e.g. {bad[0]})")
    missing = [k for k in checkpoint_state(model) if k not in state]
    new = [k for k in missing if allow_new and k.startswith(IDENTITY_START)]
    missing = [k for k in missing if k not in new]
    if missing:
        raise ModelError(f"{where} lacks {len(missing)} tensors, e.g. {missing[0]}")
    own_shapes = {k: tuple(v.shape) for k, v in own.items()}
    wrong = [k for k, v in state.items() if tuple(v.shape) != own_shapes[k]]
    if wrong:
        k = wrong[0]
        raise ModelError(f"{where} does not match the config: {k} is {tuple(state[k].shape)}, "
                         f"the model's is {own_shapes[k]} ({len(wrong)} tensors differ)")
    model.load_state_dict(state, strict=False)
    return new


HEAD_MODULES = ("dfrm", "tpm", "refiner")
TRAIN_ADAPTERS_FILE = "train_adapters.safetensors"
"""In an exported model folder: the trained tensors that are not in a head's own file (LoRA
factors, the UNet modules LoRA trains in full), unmerged. With the heads' files they are the
`checkpoint_state`, so a model folder (a packaged model) can be continued with `--init DIR` even
when its LoRA is merged into the backbone for inference."""


def _read_model_dir_trainable(folder: Path) -> dict[str, torch.Tensor]:
    """`checkpoint_state` rebuilt from an exported model folder (heads' files + TRAIN_ADAPTERS_FILE)."""
    from safetensors.torch import load_file

    from tadmcodec.tadm import spec as TS

    files = {"dfrm": TS.DFRM_FILE, "tpm": TS.TPM_FILE, "refiner": TS.REFINER_FILE}
    need = [folder / f for f in (*files.values(), TRAIN_ADAPTERS_FILE)]
    missing = [p for p in need if not p.is_file()]
    if missing:
        raise InputError(f"{folder} is not a model folder that training can continue: missing {missing[0].name} "
                         "(export it again with `tadm train --export`)")
    try:
        state = {f"{k}.{n}": v for k, f in files.items() for n, v in load_file(str(folder / f)).items()}
        state.update(load_file(str(folder / TRAIN_ADAPTERS_FILE)))
    except Exception as exc:  # noqa: BLE001 - SafetensorError is neither OSError nor ValueError
        raise InputError(f"cannot read {folder}: {str(exc).splitlines()[0]}") from None
    return {k: v.float() for k, v in state.items()}


def read_trainable(path: Path) -> dict[str, torch.Tensor]:
    """Trainable weights from a `save_trainable` safetensors, a stage checkpoint (.pt) or an
    exported model folder (such as `tadmcodec/weights/<model>/`)."""
    from safetensors.torch import load_file

    if path.is_dir():
        return _read_model_dir_trainable(path)
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist")
    if path.suffix == ".pt":
        try:  # weights_only: a file named on the command line must not run code
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
            raise InputError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
        if not isinstance(state, dict) or "weights" not in state:
            raise InputError(f"{path} is not a stage checkpoint (no weights in it)")
        return state["weights"]
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - SafetensorError is neither OSError nor ValueError
        raise InputError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None


# ----------------------------------------------------------------------------- losses


def bicubic_down(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic(x) of Eq. 7: antialiased bicubic downscaling by `scale`, clamped to [-1, 1]."""
    h, w = x.shape[-2] // scale, x.shape[-1] // scale
    return F.interpolate(x.float(), size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)


def rescaling_loss(out: dict[str, torch.Tensor], z: torch.Tensor, x: torch.Tensor, scale: int,
                   w: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 8: l_rec * (Eq. 6 over both chains) + l_gui * Eq. 7."""
    rec = (out["z_hat_direct"] - z).abs().mean() + (out["z_hat"] - z).abs().mean()
    gui = (out["y"] - bicubic_down(x, scale)).abs().mean()
    loss = w["rec_weight"] * rec + w["gui_weight"] * gui
    return loss, {"rec": rec.item(), "gui": gui.item()}


def decoded_l1(model, z_hat: torch.Tensor, x: torch.Tensor, n: int, autocast: Callable) -> torch.Tensor:
    """|D(z_hat) - x|_1 through the frozen VAE decoder, on the first `n` crops of the batch.

    Not in the paper's stage 1, which is latent-only. On the tiny backbone the DFRM's latents are as
    near to z as the bicubic image's latents (x16), or nearer (x32), and still decode worse than
    them (benchmarks/results/psnr_budget/): latent distance alone does not buy PSNR. Gradients reach
    the DFRM only (the decoder is frozen in stage 1).
    """
    with autocast():
        x_hat = model.decode_latent(z_hat[:n])
    return (x_hat.float() - x[:n]).abs().mean()


class Perceptual(torch.nn.Module):
    """l_pec * (LPIPS-Alex + DISTS) of Eq. 11, each term skipped when its weight is 0."""

    def __init__(self, lpips_weight: float, dists_weight: float) -> None:
        super().__init__()
        from tadmcodec.metrics import DISTS, LPIPS

        self.lw, self.dw = float(lpips_weight), float(dists_weight)
        self.lpips = LPIPS(net="alex") if self.lw else None
        self.dists = DISTS() if self.dw else None
        self.requires_grad_(False).eval()

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        total, parts = x.new_zeros(()), {}
        if self.lpips is not None:
            lp = self.lpips(x_hat, x).mean()
            total, parts["lpips"] = total + self.lw * lp, lp.item()
        if self.dists is not None:
            ds = self.dists((x_hat + 1) / 2, (x + 1) / 2).mean()
            total, parts["dists"] = total + self.dw * ds, ds.item()
        return total, parts


# ----------------------------------------------------------------------------- validation


def validation_images(cfg: dict[str, Any]) -> list[np.ndarray]:
    """Centre crops of the held-out photos (the last `val_count` of the sorted training folder)."""
    n, crop = int(cfg["data"]["val_count"]), int(cfg["val"]["crop"])
    if n <= 0:
        return []
    out = []
    for p in list_photos(cfg["data"]["train_dir"])[-n:]:
        img = load_rgb(p)
        h, w = img.shape[:2]
        c = min(crop, h, w) // cfg["scale"] * cfg["scale"]
        y, x = (h - c) // 2, (w - c) // 2
        out.append(np.ascontiguousarray(img[y:y + c, x:x + c]))
    return out


def _png_bits(lr: np.ndarray) -> int:
    buf = io.BytesIO()
    Image.fromarray(lr).save(buf, format="PNG", compress_level=9)
    return 8 * len(buf.getvalue())


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of two [-1, 1] images after rounding both to 8 bits."""
    qa, qb = quantize(a).double(), quantize(b).double()
    mse = float(((qa - qb) ** 2).mean())
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


@torch.no_grad()
def validate(model, images: list[np.ndarray], device: torch.device, autocast: Callable,
             lpips: torch.nn.Module | None) -> dict[str, float]:
    """The R-D point on held-out crops: LR bpp (PNG), PSNR/LPIPS of TADM and of bicubic upscaling.

    Runs the training-time (untiled) forward pass, so it is a check of learning progress,
    not the codec's exact numbers (`tadm bench` gives those).
    """
    if not images:
        return {}
    scale = model.config.scale
    rows: dict[str, list[float]] = {k: [] for k in ("bpp", "psnr", "psnr_rec", "psnr_bicubic", "lpips",
                                                     "lpips_bicubic", "t")}
    was_training = model.training
    model.eval()
    for img in images:
        x = to_model_range(torch.from_numpy(img).permute(2, 0, 1)[None].to(device))
        with autocast():
            z = model.encode_latent(x)
        out = model.dfrm(x, z)
        lr = quantize(out["y"])
        rows["bpp"].append(_png_bits(lr[0].permute(1, 2, 0).cpu().numpy()) / (img.shape[0] * img.shape[1]))
        with autocast():
            z0, t = model.enhance(out["z_hat"])
            x_hat = model.project(model.decode_latent(z0), out["y_q"]).clamp(-1, 1)
            x_rec = model.decode_latent(out["z_hat"]).clamp(-1, 1)
        bic = F.interpolate(bicubic_down(x, scale), size=x.shape[-2:], mode="bicubic",
                            align_corners=False).clamp(-1, 1)
        rows["psnr"].append(_psnr(x_hat, x))
        rows["psnr_rec"].append(_psnr(x_rec, x))
        rows["psnr_bicubic"].append(_psnr(bic, x))
        rows["t"].append(float(t.mean()))
        if lpips is not None:
            rows["lpips"].append(float(lpips(x_hat.float(), x).mean()))
            rows["lpips_bicubic"].append(float(lpips(bic, x).mean()))
    model.train(was_training)
    return {f"val_{k}": round(float(np.mean(v)), 5) for k, v in rows.items() if v}


# ----------------------------------------------------------------------------- loop


def lr_factor(scfg: dict[str, Any], step: int, elapsed_s: float) -> float:
    """Learning-rate multiplier: 'halve' every N steps (the paper), 'constant', or 'cosine'.

    'cosine' decays to 5% over the run's progress, the larger of step/steps and
    elapsed/max_minutes, so a time-boxed run still ends at a low learning rate.
    """
    kind = scfg.get("schedule", "constant")
    if kind == "halve":
        every = int(scfg["halve_every"])
        return 0.5 ** (step // every) if every > 0 else 1.0
    if kind == "cosine":
        p = step / max(1, int(scfg["steps"]))
        if scfg.get("max_minutes"):
            p = max(p, elapsed_s / (60 * float(scfg["max_minutes"])))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))
    if kind == "constant":
        return 1.0
    raise InputError(f"config: unknown schedule {kind!r} (halve, cosine, constant)")


def _accelerator(cpu: bool):
    from accelerate import Accelerator

    use_cuda = not trains_on_cpu(cpu)
    if use_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return Accelerator(cpu=not use_cuda, mixed_precision="no")


def _autocast_for(device: torch.device, cpu_bf16: bool = False) -> Callable:
    """bf16 autocast for the VAE/UNet (and perceptual trunks): always on CUDA, on a CPU if asked."""
    if device.type == "cuda" or (device.type == "cpu" and cpu_bf16):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


class StageRunner:
    """One stage of one model: optimiser, checkpoints (weights, optimiser, step, RNG), validation."""

    def __init__(self, stage: str, cfg: dict[str, Any], run_dir: Path, model, accelerator,
                 resume: bool, log: Callable[[str], None]) -> None:
        self.stage, self.cfg, self.acc, self.model, self.log = stage, cfg, accelerator, model, log
        self.scfg = cfg[stage]
        self.dir = run_dir / stage
        self.dir.mkdir(parents=True, exist_ok=True)
        self.device = accelerator.device
        self.step, self.elapsed = 0, 0.0
        self.last_val: dict[str, float] = {}
        self.last_val_step = -1
        named = trainable_parameters(model, stage)
        self.params = [p for _, p in named]
        for p in self.params:
            p.requires_grad_(True)
        opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(self.scfg["optimizer"])
        if opt_cls is None:
            raise InputError(f"config: {stage}.optimizer must be adam or adamw")
        self.opt = opt_cls(self.params, lr=self.scfg["lr"], weight_decay=self.scfg["weight_decay"])
        ckpt = latest_checkpoint(self.dir) if resume else None
        if ckpt is not None:
            state = _load(ckpt)
            load_checkpoint_state(model, state["weights"], ckpt)
            self.opt.load_state_dict(state["optimizer"])
            self.step, self.elapsed = int(state["step"]), float(state["elapsed_s"])
            rng = self.dir / f"rng-{self.step:08d}-rank{accelerator.process_index}.pt"
            if rng.is_file():
                _set_rng_state(_load(rng))
            else:
                seed_everything(cfg["seed"] + 7919 * accelerator.process_index + self.step)
            log(f"[{stage}] resumed from {ckpt} at step {self.step}")
        else:
            seed_everything(cfg["seed"] + 7919 * accelerator.process_index + 101 * STAGES.index(stage))

    def save(self) -> Path:
        return save_checkpoint(self.acc, self.dir, self.step, int(self.cfg["checkpoint"]["keep"]), lambda: {
            "weights": checkpoint_state(self.model), "optimizer": self.opt.state_dict(),
            "step": self.step, "elapsed_s": self.elapsed, "stage": self.stage, "config": self.cfg})

    def run(self, loss_fn: Callable[[int], tuple[torch.Tensor, dict[str, float]]],
            val_fn: Callable[[], dict[str, float]] | None) -> dict[str, float]:
        """Train to `steps` or `max_minutes`; log, validate and checkpoint on the way."""
        from tqdm.auto import tqdm

        acc, ck, scfg = self.acc, self.cfg["checkpoint"], self.scfg
        total, max_min = int(scfg["steps"]), scfg.get("max_minutes")
        start, last_ckpt = time.monotonic(), time.monotonic()
        base_elapsed = self.elapsed
        window: dict[str, float] = {}
        n_window, last = 0, {}
        t_log, step_log = time.monotonic(), self.step
        bar = tqdm(total=total, initial=self.step, desc=f"{self.cfg['name']} {self.stage}",
                   disable=not acc.is_local_main_process, dynamic_ncols=True,
                   mininterval=1.0 if sys.stderr.isatty() else 20.0)
        log_path = self.dir / "log.jsonl"
        self.model.train()
        while self.step < total:
            # the box counts the stage's time over all resumed runs, as the cosine schedule does
            self.elapsed = base_elapsed + time.monotonic() - start
            if max_min is not None and self.elapsed >= 60 * float(max_min):  # a 0-minute stage: no step
                self.log(f"[{self.stage}] time limit of {max_min} min reached at step {self.step}")
                break
            for g in self.opt.param_groups:
                g["lr"] = scfg["lr"] * lr_factor(scfg, self.step, self.elapsed)
            loss, parts = loss_fn(self.step)
            if not torch.isfinite(loss):
                raise TadmError(f"[{self.stage}] loss is {loss.item()} at step {self.step}; stopping")
            loss.backward()
            if acc.num_processes > 1:
                for p in self.params:
                    if p.grad is not None:
                        p.grad = acc.reduce(p.grad, reduction="mean")
            if scfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(self.params, scfg["grad_clip"])
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.step += 1
            parts = {"loss": loss.item(), **parts}
            for k, v in parts.items():
                window[k] = window.get(k, 0.0) + v
            n_window += 1
            bar.update(1)
            record: dict[str, Any] = {}
            if self.step % self.cfg["log_every"] == 0 or self.step == total:
                last = {k: v / n_window for k, v in window.items()}
                now = time.monotonic()
                record = {"it_s": round((self.step - step_log) / max(now - t_log, 1e-9), 3), **last}
                t_log, step_log, window, n_window = now, self.step, {}, 0
                bar.set_postfix({k: f"{v:.4f}" for k, v in last.items()}, refresh=False)
            if val_fn is not None and self.step % int(self.cfg["val"]["every_steps"]) == 0:
                self.last_val, self.last_val_step = val_fn(), self.step
                record.update(self.last_val)
                self.model.train()
            if record and acc.is_main_process:
                record = {"step": self.step, "lr": self.opt.param_groups[0]["lr"],
                          "elapsed_s": round(time.monotonic() - start + base_elapsed, 1), **record}
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            now = time.monotonic()
            if self.step % int(ck["every_steps"]) == 0 or now - last_ckpt > 60 * float(ck["every_minutes"]):
                self.save()
                last_ckpt = now
        bar.close()
        self.elapsed = base_elapsed + time.monotonic() - start
        if n_window:
            last = {k: v / n_window for k, v in window.items()}
        self.save()
        for p in self.params:
            p.requires_grad_(False)
        return last


def _start_weights(model, run_dir: Path, stage: str, log: Callable[[str], None],
                   init: Path | None = None) -> None:
    """A stage starts from `init` if given, else from the final weights of the stage before it
    (if that stage ran)."""
    if init is not None:
        new = load_checkpoint_state(model, read_trainable(init), init, allow_new=True)
        log(f"[{stage}] starting from {init}")
        if new:
            modules = sorted(p.rstrip(".") for p in IDENTITY_START if any(k.startswith(p) for k in new))
            log(f"[{stage}] {len(new)} tensors ({', '.join(modules)}) are not in {init}: "
                "they start as the identity")
        return
    i = STAGES.index(stage)
    for prev in reversed(STAGES[:i]):
        ckpt = latest_checkpoint(run_dir / prev)
        if ckpt is not None:
            load_checkpoint_state(model, _load(ckpt)["weights"], ckpt)
            log(f"[{stage}] starting from {ckpt}")
            return
    if i > 0:
        log(f"[{stage}] no earlier stage in {run_dir}: starting from freshly initialised heads")


def train_stage(stage: str, cfg: dict[str, Any], run_dir: Path, resume: bool = False,
                accelerator=None, model=None, log: Callable[[str], None] = print,
                init: Path | None = None) -> dict[str, float]:
    """Run one stage (stage1/stage2/stage3) of one model; returns the last logged losses.

    `init` (trainable weights: `save_trainable` output or a stage checkpoint) is where a stage
    that does not resume starts, instead of the previous stage's weights: it continues a model
    trained elsewhere (a CPU run on the GPU, another run folder) with a fresh optimiser and schedule.
    """
    if stage not in STAGES:
        raise InputError(f"unknown stage {stage!r}")
    acc = accelerator or _accelerator(cpu=False)
    device = acc.device
    model = model or build_training_model(cfg)
    if not (resume and latest_checkpoint(run_dir / stage) is not None):
        _start_weights(model, run_dir, stage, log, init)
    elif init is not None:
        log(f"[{stage}] resuming its own checkpoint: {init} is not used")
    model.to_device(device, torch.float32)
    scfg = cfg[stage]
    scale = cfg["scale"]
    n_photos = len(list_photos(cfg["data"]["train_dir"]))
    n_train = n_photos - int(cfg["data"]["val_count"])
    if n_train < 1:
        raise InputError(f"{cfg['data']['train_dir']} has {n_photos} photos: none left after the "
                         f"{cfg['data']['val_count']} held out for validation")
    data = PhotoCrops(cfg["data"]["train_dir"], crop=scfg["crop"], seed=cfg["seed"] + STAGES.index(stage),
                      limit=n_train)
    latents = None
    if cfg["data"].get("cached_latents"):
        from tadmcodec.train.latent_cache import LatentCrops, cache_key

        enc_autocast = _autocast_for(device, bool(cfg["cpu_bf16"]))

        def encode_one(x: torch.Tensor) -> torch.Tensor:
            with enc_autocast():
                return model.encode_latent(x.to(device))

        latents = LatentCrops(data, encode_one, cache_key(data, model.vae),
                              run_dir / f"latents-crop{scfg['crop']}.pt", log=log)
    autocast = _autocast_for(device, bool(cfg["cpu_bf16"]))
    runner = StageRunner(stage, cfg, run_dir, model, acc, resume, log)
    perceptual = None
    if stage in ("stage2", "stage3") and (scfg["lpips_weight"] or scfg["dists_weight"]):
        perceptual = Perceptual(scfg["lpips_weight"], scfg["dists_weight"]).to(device)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's crops in [-1, 1] and their latents (cut from the cache, or encoded now)."""
        if latents is not None:
            xb, zb = latents.batch(step, scfg["batch_size"], acc.process_index, acc.num_processes)
            return to_model_range(xb.to(device, non_blocking=True)), zb.to(device, non_blocking=True)
        xb = data.batch(step, scfg["batch_size"], acc.process_index, acc.num_processes)
        x = to_model_range(xb.to(device, non_blocking=True))
        with torch.no_grad(), autocast():
            return x, model.encode_latent(x)

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x, z = batch(step)
        if stage == "stage1":
            out = model.dfrm(x, z)
            loss, parts = rescaling_loss(out, z, x, scale, scfg)
            if scfg["pix_weight"]:
                pix = decoded_l1(model, out["z_hat"], x, int(scfg["pix_samples"]), autocast)
                loss, parts = loss + scfg["pix_weight"] * pix, {**parts, "pix": pix.item()}
            return loss, parts
        if stage == "stage2":
            with torch.no_grad():
                out = model.dfrm(x, z)
        else:
            out = model.dfrm(x, z)
        with autocast():
            z0, t = model.enhance(out["z_hat"])
            x_hat = model.decode_latent(z0)
        x_hat = model.project(x_hat, out["y_q"])  # the image `tadm decode` gives, when the model projects
        err = x_hat.float() - x
        l1 = err.abs().mean()
        loss = scfg["l1_weight"] * l1
        parts = {"l1": l1.item(), "t": t.detach().mean().item()}
        if scfg["mse_weight"]:
            mse = err.square().mean()
            loss, parts["mse"] = loss + scfg["mse_weight"] * mse, mse.item()
        if perceptual is not None:
            with autocast():
                p, pp = perceptual(x_hat.float(), x)
            loss, parts = loss + p.float(), {**parts, **pp}
        if stage == "stage3":
            r, rp = rescaling_loss(out, z, x, scale, scfg)
            loss, parts = loss + r, {**parts, **rp}
        return loss, parts

    val_fn = None
    if acc.is_main_process and int(cfg["data"]["val_count"]) > 0:
        images = validation_images(cfg)
        val_lpips = None
        if cfg["val"].get("lpips"):
            if perceptual is not None and perceptual.lpips is not None:
                val_lpips = perceptual.lpips
            else:
                try:
                    from tadmcodec.metrics import LPIPS
                    val_lpips = LPIPS(net="alex").to(device).eval()
                except TadmError as exc:  # weights not in the cache: validate without LPIPS
                    log(f"[{stage}] validation without LPIPS: {exc}")
        val_fn = lambda: validate(model, images, device, autocast, val_lpips)  # noqa: E731
    result = runner.run(loss_fn, val_fn)
    if val_fn is not None:
        if runner.last_val_step != runner.step:  # the end of a stage always has a validation point
            v = val_fn()
            with open(runner.dir / "log.jsonl", "a") as f:
                f.write(json.dumps({"step": runner.step, "final": True, **v}) + "\n")
        result.update(runner.last_val if runner.last_val_step == runner.step else v)
    log(f"[{stage}] step {runner.step}: {json.dumps({k: round(v, 5) for k, v in result.items()})}")
    return result


# ----------------------------------------------------------------------------- export


def latest_stage_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of the latest stage that has one (stage3, else 2, else 1)."""
    for stage in reversed(STAGES):
        ckpt = latest_checkpoint(run_dir / stage)
        if ckpt is not None:
            return ckpt
    return None


def save_trainable(cfg: dict[str, Any], run_dir: Path, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """The latest stage's trainable weights as one safetensors (small: no backbone).

    float16 halves the file (5.5 MB for tadm-tiny), which is what lets two models' weights travel
    to the GPU machine beside the photos and the backbone. Written atomically (temp file +
    rename), so a crash never leaves a half file to --init from."""
    from safetensors.torch import save

    from tadmcodec.files import write_target

    ckpt = latest_stage_checkpoint(run_dir)
    if ckpt is None:
        raise TadmError(f"nothing to save: no stage 1-3 checkpoint in {run_dir}")
    state = _load(ckpt)
    data = save({k: v.to(dtype).contiguous() for k, v in state["weights"].items()},
                metadata={"stage": str(state["stage"]), "step": str(state["step"]), "name": cfg["name"]})
    write_target(str(path), data, force=True)
    return path


def export(cfg: dict[str, Any], run_dir: Path, out_dir: Path, fp32: bool = False,
           weights: Path | None = None) -> Path:
    """Write a model folder (model.json + fp16 safetensors) from the latest stage checkpoint,
    or from a `save_trainable` file (`weights`) on the configured backbone."""
    from tadmcodec.tadm.loader import save_model_dir

    model = build_training_model(cfg)
    if weights is not None:
        load_checkpoint_state(model, read_trainable(weights), weights)
    else:
        ckpt = latest_stage_checkpoint(run_dir)
        if ckpt is None:
            raise TadmError(f"nothing to export: no stage 1-3 checkpoint in {run_dir}")
        load_checkpoint_state(model, _load(ckpt)["weights"], ckpt)
    model.config = replace(model.config, name=cfg["name"])
    trained = {k: v for k, v in checkpoint_state(model).items() if not k.startswith(tuple(f"{h}." for h in HEAD_MODULES))}
    folder = save_model_dir(out_dir, model, fp32=fp32)
    from safetensors.torch import save_file

    dtype = torch.float32 if fp32 else torch.float16
    save_file({k: v.to(dtype).contiguous() for k, v in trained.items()}, str(Path(folder) / TRAIN_ADAPTERS_FILE))
    return folder
