"""Importing diffusers' model modules without transformers, peft and accelerate (the `tadm` CLI only).

What diffusers imports (0.42.1; `python -X importtime` and the import stack) when the codec imports its
model modules (`diffusers.models.autoencoders.autoencoder_kl`, `...unets.unet_2d_condition`,
`...embeddings`, `diffusers.schedulers.scheduling_ddpm`):

- transformers: `diffusers.models.modeling_utils` imports `diffusers.quantizers`, whose
  `pipe_quant_config` tries `from transformers.utils.quantization_config import ...`;
- accelerate: `diffusers.models.autoencoders/__init__` imports every autoencoder, the first of
  which (`autoencoder_asym_kl`) imports `diffusers.utils.accelerate_utils`, which does
  `import accelerate` if `is_accelerate_available()`;
- peft: `diffusers.models.transformers/__init__` (imported by `unet_2d_blocks`) imports
  `diffusers.loaders.PeftAdapterMixin`; its module `diffusers.loaders.peft` imports
  `diffusers.hooks`, whose `layerwise_casting` imports `peft.helpers` if `is_peft_available()`;
- torch._dynamo: `diffusers.utils.torch_utils` (`from torch._dynamo import allow_in_graph`) and
  class bodies decorated with `@torch.compiler.disable` (`diffusers.hooks.first_block_cache`),
  which imports torch._dynamo itself. That one cannot be left out: hidden, diffusers fails to
  import.

diffusers has no setting to skip the three (its environment switches are USE_TORCH, USE_TF,
USE_SAFETENSORS and DIFFUSERS_SLOW_IMPORT); it decides once, at its first import, through
`diffusers.utils.import_utils._is_package_available`, which uses `importlib.util.find_spec`. A
name bound to None in `sys.modules` is not found, so diffusers takes the package for not
installed and leaves out the code that would use it, as it must for an install without them
(all three are optional to diffusers). None of that code is what the codec runs (it
builds its modules with `from_config` on the meta device and assigns the file's tensors, and
merged folders carry no adapters). `import_model_modules` does that for the first import only
and then removes the None entries again, so a later `import peft` works as usual: a folder
with adapter files, loaded after a merged one in the same process, still loads through peft.

What it costs is why it is left to the `tadm` command's own process: diffusers keeps those
decisions for the life of the process. Afterwards `is_transformers_available()` and
`is_peft_available()` stay False there, so `from diffusers import StableDiffusionPipeline`
gives a placeholder that asks for transformers, peft-backed LoRA loading (`USE_PEFT_BACKEND`,
`load_lora_weights`, `add_adapter`) refuses, and AutoencoderKL's methods run without
accelerate's offload hooks. A library user's process (`tadmcodec.encode`/`decode`, `Codec`)
may use all of those after decoding, so the library path imports diffusers as it is. Only
the `encode` and `decode` commands call `allow()`, and only when run through
`tadmcodec.cli.entry` (the `tadm` console script and `python -m tadmcodec`), where nothing but
the command runs in the process; `tadm train`, click's `main` invoked by another program or a
test, and `--engine ray` workers import diffusers as it is. A failure of the lean import is
raised, never retried another way.
"""

from __future__ import annotations

import importlib
import sys
import threading
from pathlib import Path

OPTIONAL = ("transformers", "peft", "accelerate")
"""What diffusers would import beside the codec's modules, and the codec does not need."""

MODEL_MODULES = (
    "diffusers.models.autoencoders.autoencoder_kl",
    "diffusers.models.unets.unet_2d_condition",
    "diffusers.models.embeddings",
    "diffusers.schedulers.scheduling_ddpm",
)
"""The diffusers modules a TADM model is built from (loader, scheduler)."""

_lock = threading.Lock()
_allowed = False


def allow() -> None:
    """Let this process's first model load import diffusers without the OPTIONAL packages.

    Only for a process that runs nothing but the codec after this (the `tadm` command's
    encode and decode): diffusers keeps treating the three as not installed for the rest
    of the process (see the module docstring).
    """
    global _allowed
    _allowed = True


def lean_possible() -> bool:
    """Whether an import now could leave the OPTIONAL packages out (allowed, and neither diffusers
    nor any of them imported yet: a diffusers imported in full, or a peft already loaded, are left
    as they are)."""
    return _allowed and not any(name in sys.modules for name in ("diffusers", *OPTIONAL))


def needs_peft(folder: Path) -> bool:
    """Whether the model folder keeps LoRA adapters (its model.json names a LoRA): loading it
    injects them through peft. Reads model.json only (no torch)."""
    from tadmcodec.tadm.spec import read_config

    config = read_config(folder)
    return config.lora_unet is not None or config.lora_vae is not None


def import_model_modules(folder: Path) -> bool:
    """Before loading the model folder `folder`: where `lean_possible()` and the folder needs no
    peft, import MODEL_MODULES without the OPTIONAL packages and return True; otherwise import
    nothing (the pipeline imports diffusers as it is) and return False.

    Decided and done under one lock, so no other thread's import sees the None entries.
    """
    with _lock:
        if not lean_possible() or needs_peft(folder):
            return False
        for name in OPTIONAL:
            sys.modules[name] = None  # type: ignore[assignment]  # find_spec: not installed
        try:
            for name in MODEL_MODULES:
                importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"importing diffusers without {', '.join(OPTIONAL)} failed ({exc}); this "
                              "diffusers version needs one of them at import, which the `tadm` command's "
                              "start-up (tadmcodec.tadm.diffusers_import) does not expect") from exc
        finally:
            for name in OPTIONAL:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]
        return True
