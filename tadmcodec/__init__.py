"""tadmcodec: an extreme-ratio image codec built on TADM (ICCV 2025).

The encoder rescales a photo 8x/16x/32x into a tiny 8-bit image and stores it
losslessly in a `.tadm` container; the decoder restores full size through the
TADM upscaling path. Importing this package is cheap: torch is only imported by
the modules that run a neural network.

Python API: `tadmcodec.encode(image, ...) -> bytes` and `tadmcodec.decode(data)`
(see `tadmcodec.api`); `import tadmcodec.pillow` lets Pillow open and save
`.tadm` files. The API is loaded on first use, so `import tadmcodec` (and
`tadm info`) does not pay for numpy, Pillow or the codec.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; resolved by __getattr__ on first access (PEP 562).
_LAZY = {
    "encode": "tadmcodec.api",
    "decode": "tadmcodec.api",
    "clear_cache": "tadmcodec.api",
    "TadmError": "tadmcodec.errors",
    "InputError": "tadmcodec.errors",
    "FormatError": "tadmcodec.errors",
    "ModelError": "tadmcodec.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # AttributeError, not ImportError: `from tadmcodec import pillow` relies on it to import the submodule.
        raise AttributeError(f"module 'tadmcodec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
