"""LoRA through peft on the UNet and the VAE decoder, and merging it for inference.

Training adds the adapters (`add_lora`) and saves only the adapter weights
(`adapter_state_dict`: the LoRA matrices plus any base modules trained with
them, e.g. the UNet's conv_in in the official recipe). Loading injects the same
adapters, loads those weights strictly (every key must match), and `merge_lora`
folds them into the base weights and removes the peft wrappers, so inference
runs plain convs and linears at no extra cost.

Export (`loader.save_model_dir`) does that merge once and saves the merged
backbone, so decoding an exported model never imports this module or peft;
only older folders that keep adapter files, and models on an external
backbone, are injected and merged at every load.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from tadmcodec.errors import ModelError
from tadmcodec.tadm.spec import LoraSpec


def add_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """Inject a LoRA adapter (rank, alpha, targets from the spec) into `model` in place."""
    targets = spec.targets if isinstance(spec.targets, str) else list(spec.targets)
    config = LoraConfig(
        r=spec.rank, lora_alpha=spec.alpha, target_modules=targets, init_lora_weights="gaussian"
    )
    try:
        inject_adapter_in_model(config, model, adapter_name=spec.adapter_name)
    except ValueError as exc:  # peft's "target modules not found" is a ValueError
        raise ModelError(f"LoRA targets {spec.targets!r} match no layer of {type(model).__name__}: "
                         f"{str(exc).splitlines()[0][:200]}") from None
    if not any(isinstance(m, LoraLayer) for m in model.modules()):
        raise ModelError(f"LoRA targets {spec.targets!r} match no layer of {type(model).__name__}")
    return model


def _is_extra(key: str, spec: LoraSpec) -> bool:
    return any(key == m or key.startswith(m + ".") for m in spec.extra_modules)


def adapter_state_dict(model: nn.Module, spec: LoraSpec) -> dict[str, torch.Tensor]:
    """The weights an adapter file stores: LoRA matrices and the extra trained modules."""
    return {
        k: v for k, v in model.state_dict().items()
        if ".lora_" in k or _is_extra(k, spec)
    }


def load_adapter(model: nn.Module, spec: LoraSpec, state: dict[str, torch.Tensor], where: str) -> None:
    """Load adapter weights into an injected model; ModelError on any missing/extra key or shape."""
    own = model.state_dict()
    expected = set(adapter_state_dict(model, spec))
    missing = sorted(expected - set(state))
    extra = sorted(set(state) - expected)
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise ModelError(
            f"{where} does not match the LoRA config in model.json "
            f"({len(missing)} missing, {len(extra)} unexpected keys; {what})"
        )
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ModelError(f"{where}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=False)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA layer into its base weight and replace it by the plain base layer."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    return model


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoraLayer) for m in model.modules())
