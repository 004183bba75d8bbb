"""Import the official TADM checkpoints (github.com/wwangcece/TADM) into a tadmcodec model folder.

The authors publish, per scale (x16, x32), two files written with `torch.save`:

- a DFRM checkpoint: the DFRM state dict, either flat (what their inference
  script loads with `load_state_dict(..., strict=True)`) or wrapped as
  `{"state_dict": ...}` (what `DFRM.save_model` writes). Both are accepted;
  nothing else may sit beside `state_dict`.
- a TADM checkpoint (`TADM.save_model`): exactly the entries in
  `TADM_ENTRIES`: the LoRA ranks and target modules of the UNet and the VAE
  decoder, and four state dicts: the UNet's peft LoRA matrices (adapter
  "default") plus its retrained `conv_in`, the VAE's LoRA (adapter
  "vae_skip"), the TPM (`TimeMapping`) and the learned scheduler (`Refiner`).

Our modules keep the official attribute names and peft adapter names, so
every official key is also our key; this module only checks that the two
layouts agree tensor by tensor (any missing or unexpected key, or wrong shape,
is a one-line ModelError naming it) and writes our format: safetensors files,
`model.json` (with the SHA-256 of each backbone file) and the empty-prompt
embedding, computed here once from the base model's text encoder so decoding
never needs a text encoder.

This is the only place the codec's models are read from a pickle-based format
(model folders are safetensors only). It uses torch's weights-only unpickler
(tensors, numbers, strings and plain containers only) and refuses any file
that unpickler rejects.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from tadmcodec.errors import ModelError
from tadmcodec.tadm import spec as S
from tadmcodec.tadm.spec import DfrmConfig, LoraSpec, RefinerConfig, TadmConfig, TilingConfig, TpmConfig

TADM_ENTRIES = (
    "unet_lora_target_modules", "vae_lora_target_modules", "rank_vae", "rank_unet",
    "state_dict_vae", "state_dict_unet", "state_dict_timemapping", "state_dict_refiner",
)
"""Top-level entries of the official TADM checkpoint (`TADM.save_model`), no more, no fewer."""

UNET_ADAPTER = "default"  # diffusers' `unet.add_adapter(config)` default name
VAE_ADAPTER = "vae_skip"  # the official `vae.add_adapter(config, adapter_name="vae_skip")`
PEFT_LORA_ALPHA = 8.0
"""The official LoraConfig sets no lora_alpha, so peft's default (8) scales each LoRA by 8 / rank."""

UNET_EXTRA_MODULES = ("conv_in",)
"""Base UNet modules the official training retrains and saves beside the LoRA matrices."""

SCALES = (16, 32)  # the registry has tadm-sd21-x16 and tadm-sd21-x32
SCHEDULER_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
PROMPT = ""  # the official code conditions on the empty prompt
MODEL_FILES = (S.DFRM_FILE, S.TPM_FILE, S.REFINER_FILE, S.PROMPT_FILE, S.UNET_ADAPTER_FILE, S.VAE_ADAPTER_FILE)


# ------------------------------------------------------------ reading files


def load_weights_only(path: Path) -> Any:
    """`torch.load` with the weights-only unpickler; anything it rejects is refused in one line."""
    if not path.exists():
        raise ModelError(f"missing {path}")
    if not path.is_file():
        raise ModelError(f"{path} is not a file")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol ...": errors stay one line
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        why = _reason(exc)
        if why.startswith("Unsupported global"):
            raise ModelError(f"{path}: refused: torch's weights-only loader rejects it ({why}); "
                             "only plain tensor checkpoints are imported") from None
        raise ModelError(f"{path}: refused: torch's weights-only loader cannot read it ({why}); "
                         "is it a torch.save checkpoint?") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot read {path} as a torch checkpoint: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (library messages run to paragraphs)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0].split(". ")[0]


def _reason(exc: BaseException) -> str:
    """The part of torch's long weights-only message that names what was refused."""
    m = re.search(r"Unsupported (?:global|operand)[^\n]*?(?=\. |\n|$)", str(exc))
    return m.group(0).strip() if m else _first_line(exc)


def _tensor_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """A mapping of str -> floating tensor, as float32 CPU tensors; ModelError names the first bad entry."""
    if not isinstance(obj, Mapping):
        raise ModelError(f"{where}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ModelError(f"{where}: state dict key {key!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"{where}: entry {key!r} is a {type(value).__name__}, not a tensor")
        if not value.is_floating_point():
            raise ModelError(f"{where}: tensor {key!r} has dtype {value.dtype}, expected floating point")
        out[key] = value.detach().to("cpu", torch.float32).contiguous()
    return out


def read_dfrm(path: Path) -> dict[str, torch.Tensor]:
    """The DFRM state dict from a flat file or a `{"state_dict": ...}` wrapper (nothing else beside it)."""
    obj = load_weights_only(path)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        others = sorted(str(k) for k in obj if k != "state_dict")
        if others:
            raise ModelError(f"{path}: unexpected entry {others[0]!r} beside 'state_dict' "
                             "(a DFRM checkpoint holds only the DFRM state dict)")
        obj = obj["state_dict"]
    return _tensor_dict(obj, str(path))


def dfrm_scale(state: Mapping[str, torch.Tensor], where: str) -> int:
    """The scale a DFRM was built for: its pixel branch has one space-to-depth step per factor 2."""
    pattern = re.compile(r"down_module\.(\d+)\.downsample\.1\.weight")
    steps = {m.group(1) for k in state if (m := pattern.fullmatch(k))}
    if not steps:
        raise ModelError(f"{where}: no down_module.N.downsample.1.weight tensors: not a TADM DFRM checkpoint")
    scale = 2 ** len(steps)
    if scale not in SCALES:
        raise ModelError(f"{where}: this DFRM rescales x{scale}; tadmcodec has sd21 models for "
                         f"{' and '.join(f'x{s}' for s in SCALES)} only")
    return scale


@dataclass(frozen=True)
class TadmCheckpoint:
    """The parts of an official TADM checkpoint, as float32 state dicts and LoRA specs."""

    unet_lora: LoraSpec
    vae_lora: LoraSpec
    unet: dict[str, torch.Tensor]
    vae: dict[str, torch.Tensor]
    tpm: dict[str, torch.Tensor]
    refiner: dict[str, torch.Tensor]


def _targets(value: Any, where: str) -> str | tuple[str, ...]:
    """peft target_modules: a regex string or a list of module-name suffixes."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise ModelError(f"{where}: expected a regex or a list of module names, found {value!r:.80}")


def _rank(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{where}: expected a positive integer LoRA rank, found {value!r:.40}")
    return value


def read_tadm(path: Path) -> TadmCheckpoint:
    """Parse the official TADM checkpoint; every entry of TADM_ENTRIES must be there, and nothing else."""
    obj = load_weights_only(path)
    if not isinstance(obj, Mapping):
        raise ModelError(f"{path}: expected the dict written by TADM.save_model, found {type(obj).__name__}")
    missing = [k for k in TADM_ENTRIES if k not in obj]
    if missing:
        raise ModelError(f"{path}: missing entry {missing[0]!r} (a TADM checkpoint holds {', '.join(TADM_ENTRIES)})")
    extra = sorted(str(k) for k in obj if k not in TADM_ENTRIES)
    if extra:
        raise ModelError(f"{path}: unexpected entry {extra[0]!r} (a TADM checkpoint holds {', '.join(TADM_ENTRIES)})")
    return TadmCheckpoint(
        unet_lora=LoraSpec(
            rank=_rank(obj["rank_unet"], f"{path}: rank_unet"),
            targets=_targets(obj["unet_lora_target_modules"], f"{path}: unet_lora_target_modules"),
            alpha=PEFT_LORA_ALPHA, adapter_name=UNET_ADAPTER, extra_modules=UNET_EXTRA_MODULES,
        ),
        vae_lora=LoraSpec(
            rank=_rank(obj["rank_vae"], f"{path}: rank_vae"),
            targets=_targets(obj["vae_lora_target_modules"], f"{path}: vae_lora_target_modules"),
            alpha=PEFT_LORA_ALPHA, adapter_name=VAE_ADAPTER,
        ),
        unet=_tensor_dict(obj["state_dict_unet"], f"{path}: state_dict_unet"),
        vae=_tensor_dict(obj["state_dict_vae"], f"{path}: state_dict_vae"),
        tpm=_tensor_dict(obj["state_dict_timemapping"], f"{path}: state_dict_timemapping"),
        refiner=_tensor_dict(obj["state_dict_refiner"], f"{path}: state_dict_refiner"),
    )


# ------------------------------------------------------------ layout checks


def shapes_of(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def check_layout(expected: Mapping[str, tuple[int, ...]], got: Mapping[str, torch.Tensor], where: str) -> None:
    """Same keys and shapes, or a one-line ModelError naming the first difference (and how many there are)."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    counts = f"{len(missing)} missing, {len(extra)} unexpected"
    if missing:
        raise ModelError(f"{where}: missing tensor {missing[0]!r} ({counts})")
    if extra:
        raise ModelError(f"{where}: unexpected tensor {extra[0]!r} ({counts})")
    bad = [k for k in sorted(expected) if tuple(got[k].shape) != tuple(expected[k])]
    if bad:
        k = bad[0]
        raise ModelError(f"{where}: tensor {k!r} has shape {tuple(got[k].shape)}, "
                         f"expected {tuple(expected[k])} ({len(bad)} tensors differ)")


def head_layouts(scale: int, dfrm: DfrmConfig = DfrmConfig(), tpm: TpmConfig = TpmConfig(),
                 refiner: RefinerConfig = RefinerConfig()) -> dict[str, dict[str, tuple[int, ...]]]:
    """Key -> shape of our DFRM, TPM and refiner (official sizes by default), built on the meta device."""
    from tadmcodec.tadm.dfrm import DFRM
    from tadmcodec.tadm.scheduler import Refiner
    from tadmcodec.tadm.tpm import TimeMapping

    lat = dfrm.latent_channels
    with torch.device("meta"):
        return {
            "dfrm": shapes_of(DFRM(scale, dfrm).state_dict()),
            "tpm": shapes_of(TimeMapping(tpm, lat).state_dict()),
            "refiner": shapes_of(Refiner(refiner, lat).state_dict()),
        }


def adapter_layout(module_config: Mapping[str, Any], kind: str, lora: LoraSpec) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the adapter file for a UNet or VAE of this config with this LoRA (meta device)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from tadmcodec.tadm.loader import quiet
    from tadmcodec.tadm.lora import adapter_state_dict, add_lora

    cls = UNet2DConditionModel if kind == "unet" else AutoencoderKL
    with quiet(), torch.device("meta"):
        module: nn.Module = cls.from_config(dict(module_config))
        add_lora(module, lora)
    return shapes_of(adapter_state_dict(module, lora))


# ------------------------------------------------------- base model pieces


def scheduler_config(base_model: Path) -> dict[str, Any]:
    """The noise schedule of the base model (the official fixed step reads the same file)."""
    cfg = S.read_json_object(base_model / "scheduler" / "scheduler_config.json")
    where = base_model / "scheduler" / "scheduler_config.json"
    if cfg.get("trained_betas") is not None:
        raise ModelError(f"{where}: explicit trained_betas are not supported (Stable Diffusion uses scaled_linear)")
    out = {k: cfg[k] for k in SCHEDULER_KEYS if k in cfg}
    absent = [k for k in SCHEDULER_KEYS if k not in out and k != "prediction_type"]
    if absent:
        raise ModelError(f"{where}: no {absent[0]!r}")
    out.setdefault("prediction_type", "epsilon")  # diffusers' default when the file omits it
    return out


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers draws a weight-loading bar on stderr; errors must stay one line."""
    from transformers.utils import logging as tf_logging

    was = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            tf_logging.enable_progress_bar()


def empty_prompt_embedding(base_model: Path) -> torch.Tensor:
    """Text-encoder output for "" padded to the tokenizer's length: (1, 77, 1024) for SD 2.1.

    Loaded from the local folder only, and only from safetensors (no second pickle).
    """
    from transformers import AutoTokenizer, CLIPTextModel

    from tadmcodec.tadm.loader import quiet

    tok_dir, enc_dir = base_model / "tokenizer", base_model / "text_encoder"
    for d in (tok_dir, enc_dir):
        if not d.is_dir():
            raise ModelError(f"missing {d} (the base model's text encoder is needed once, at import)")
    if not (enc_dir / "model.safetensors").is_file():
        raise ModelError(f"missing {enc_dir / 'model.safetensors'} (only safetensors text encoders are loaded)")
    try:
        with quiet(), _no_progress_bars():
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
            encoder = CLIPTextModel.from_pretrained(str(enc_dir), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the text encoder from {base_model}: {_first_line(exc)}") from None
    encoder = encoder.float().eval()
    ids = tokenizer(PROMPT, max_length=tokenizer.model_max_length, padding="max_length",
                    truncation=True, return_tensors="pt").input_ids
    with torch.inference_mode():
        emb = encoder(ids).last_hidden_state
    return emb.detach().float().contiguous()


# ----------------------------------------------------------------- import


@dataclass
class ImportReport:
    """What an import wrote (the CLI prints it)."""

    out: Path
    name: str
    scale: int
    tensors: dict[str, int]
    unet_rank: int
    vae_rank: int
    prompt_shape: tuple[int, ...]
    prediction_type: str
    digest: str = ""
    warnings: list[str] = field(default_factory=list)


def build_config(scale: int, backbone: S.BackboneSpec, ckpt: TadmCheckpoint, scheduler: dict[str, Any],
                 text_len: int, tpm_input_scaled: bool) -> TadmConfig:
    """Our model.json for the official model: official sizes (the spec's defaults), ranks/targets from the file."""
    cfg = TadmConfig(
        name=f"tadm-sd21-x{scale}", scale=scale, backbone=backbone,
        dfrm=DfrmConfig(), tpm=TpmConfig(input_scaled=tpm_input_scaled), refiner=RefinerConfig(),
        scheduler=scheduler, t0=50, lora_unet=ckpt.unet_lora, lora_vae=ckpt.vae_lora, text_len=text_len,
        # SD's VAE needs several GB for a whole 1-MP latent: tile anything over one tile.
        tiling=TilingConfig(vae_decode_untiled_area=0, vae_encode_untiled_area=0),
    )
    return TadmConfig.from_dict(cfg.to_dict(), where="imported model.json")  # normalise and validate


@contextlib.contextmanager
def _env(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block only (the registry reads backbone folders from them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _prepare_out(out: Path, force: bool) -> None:
    """Refuse to mix an import with other files: `out` must be absent, empty, or (with force) a model folder."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ModelError(f"{out} exists and is not a folder")
    entries = list(out.iterdir())
    if not entries:
        return
    if not force:
        raise ModelError(f"{out} is not empty (use --force to replace a model folder)")
    foreign = [p.name for p in entries if not (p.is_file() and (p.name == "model.json" or p.suffix == ".safetensors"))]
    if foreign:
        raise ModelError(f"{out} holds {foreign[0]!r}, which is not part of a model folder: not replacing it")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _save(state: Mapping[str, torch.Tensor], path: Path, dtype: torch.dtype) -> None:
    save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(path))


def import_official(dfrm_path: str | os.PathLike, tadm_path: str | os.PathLike, base_model: str | os.PathLike,
                    out: str | os.PathLike, *, vae: str | os.PathLike | None = None, scale: int | None = None,
                    tpm_input_scaled: bool = False, half: bool = False, force: bool = False,
                    verify: bool = True) -> ImportReport:
    """Convert the official x16/x32 checkpoints into a `tadm-sd21-x{scale}` model folder at `out`.

    `base_model` is a local Stable Diffusion 2.1(-base) diffusers folder, `vae` an
    optional separate VAE folder (the official code uses sd-vae-ft-mse). Nothing
    is written unless every tensor maps; with `verify` the written folder is then
    loaded through the normal loader before it is moved into place.
    """
    from tadmcodec.tadm.loader import PROMPT_KEY, describe_diffusers_backbone, load_model_dir

    dfrm_file, tadm_file = Path(dfrm_path).expanduser(), Path(tadm_path).expanduser()
    base = Path(base_model).expanduser()
    vae_dir = Path(vae).expanduser() if vae is not None else None
    out_dir = Path(out).expanduser()
    if not base.is_dir():
        raise ModelError(f"base model folder {base} does not exist")
    if vae_dir is not None and not vae_dir.is_dir():
        raise ModelError(f"VAE folder {vae_dir} does not exist")
    _prepare_out(out_dir, force)

    # 1. the checkpoints, and every tensor against our layout (cheap: configs and the meta device only)
    dfrm = read_dfrm(dfrm_file)
    found = dfrm_scale(dfrm, str(dfrm_file))
    if scale is not None and scale != found:
        raise ModelError(f"{dfrm_file} is a x{found} DFRM, but --scale {scale} was asked for")
    ckpt = read_tadm(tadm_file)
    heads = head_layouts(found)
    check_layout(heads["dfrm"], dfrm, f"{dfrm_file} (DFRM x{found})")
    check_layout(heads["tpm"], ckpt.tpm, f"{tadm_file}: state_dict_timemapping")
    check_layout(heads["refiner"], ckpt.refiner, f"{tadm_file}: state_dict_refiner")
    unet_json, vae_json = base / "unet" / "config.json", (vae_dir or base / "vae") / "config.json"
    unet_cfg, vae_cfg = S.read_json_object(unet_json), S.read_json_object(vae_json)
    lat = DfrmConfig().latent_channels
    if (unet_cfg.get("in_channels"), unet_cfg.get("out_channels")) != (lat, lat):
        raise ModelError(f"{unet_json}: TADM needs a UNet on {lat}-channel latents")
    if vae_cfg.get("latent_channels") != lat:
        raise ModelError(f"{vae_json}: TADM needs a VAE with {lat} latent channels")
    check_layout(adapter_layout(unet_cfg, "unet", ckpt.unet_lora), ckpt.unet, f"{tadm_file}: state_dict_unet")
    check_layout(adapter_layout(vae_cfg, "vae", ckpt.vae_lora), ckpt.vae, f"{tadm_file}: state_dict_vae")

    # 2. the base model: schedule, backbone file hashes, the empty-prompt embedding
    notes: list[str] = []
    sched = scheduler_config(base)
    if sched["prediction_type"] != "epsilon":
        notes.append(f"{base} predicts {sched['prediction_type']}; the official checkpoints were trained on "
                     "Stable Diffusion 2.1-base (epsilon): use that folder for the paper's results")
    backbone = describe_diffusers_backbone(base, vae_dir)
    prompt = empty_prompt_embedding(base)
    cross = unet_cfg.get("cross_attention_dim")
    if prompt.dim() != 3 or prompt.shape[0] != 1 or prompt.shape[2] != cross:
        raise ModelError(f"{base}: the text encoder gives {tuple(prompt.shape)} embeddings, "
                         f"but the UNet attends to width {cross}")
    config = build_config(found, backbone, ckpt, sched, int(prompt.shape[1]), tpm_input_scaled)

    # 3. write beside the target, load once through the normal loader, then move into place
    dtype = torch.float16 if half else torch.float32
    tmp = out_dir.parent / f".{out_dir.name}.importing-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        parts = {
            S.DFRM_FILE: dfrm, S.TPM_FILE: ckpt.tpm, S.REFINER_FILE: ckpt.refiner,
            S.UNET_ADAPTER_FILE: ckpt.unet, S.VAE_ADAPTER_FILE: ckpt.vae,
        }
        for name, state in parts.items():
            _save(state, tmp / name, dtype)
        _save({PROMPT_KEY: prompt}, tmp / S.PROMPT_FILE, torch.float32)  # tiny; keep it exact
        S.write_config(tmp, config)
        mode = 0o666 & ~_umask()  # safetensors writes 0600; a model folder is meant to be shared
        for p in tmp.iterdir():
            p.chmod(mode)
        if verify:  # the folder must load through the same code path `tadm decode` uses
            load_model_dir(tmp, sd_dir=base, vae_dir=vae_dir, merge=False)
        if out_dir.exists():
            for p in out_dir.iterdir():  # _prepare_out allowed only model.json and *.safetensors here
                p.unlink()
            out_dir.rmdir()
        tmp.rename(out_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"cannot write the model folder {out_dir}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    from tadmcodec import registry

    env = {backbone.sd_env: str(base)}
    if backbone.vae_env is not None and vae_dir is not None:
        env[backbone.vae_env] = str(vae_dir)
    with _env(env):
        digest = registry.with_weights_dir(registry.get(config.name), out_dir).digest().hex()
    return ImportReport(
        out=out_dir, name=config.name, scale=found,
        tensors={"dfrm": len(dfrm), "tpm": len(ckpt.tpm), "refiner": len(ckpt.refiner),
                 "unet_adapter": len(ckpt.unet), "vae_adapter": len(ckpt.vae)},
        unet_rank=ckpt.unet_lora.rank, vae_rank=ckpt.vae_lora.rank, prompt_shape=tuple(prompt.shape),
        prediction_type=sched["prediction_type"], digest=digest, warnings=notes,
    )
