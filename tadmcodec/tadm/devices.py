"""Device and precision choice, and the switches that make decoding repeatable.

`auto` = CUDA if available, else Apple MPS, else CPU. Precision: fp16 on CUDA
by default (bf16 on request), fp32 on CPU and MPS.

Repeatability: the same input on the same device, dtype, torch build and
thread count decodes to the same bytes every time (the pipeline draws no
random numbers; CUDA runs with deterministic algorithms). Results are NOT
bit-exact across devices (CPU vs CUDA, different GPUs), dtypes, or torch /
oneDNN / cuDNN versions: convolution and matmul kernels sum in different
orders, which moves some output pixels by one code value.
"""

from __future__ import annotations

import os

import torch

from tadmcodec.errors import ModelError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    """A torch device for --device; ModelError if the requested one is not here."""
    name = (name or "auto").lower()
    base = name.split(":")[0]
    if base not in DEVICES:
        raise ModelError(f"unknown device {name!r} (choose from {', '.join(DEVICES)})")
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if has_mps else torch.device("cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA device is available here")
    if base == "mps" and not has_mps:
        raise ModelError("--device mps: Apple MPS is not available here")
    return torch.device(name)


def resolve_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """fp16 on CUDA unless bf16/fp32 is asked for; fp32 elsewhere (half on CPU is refused)."""
    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if device.type != "cuda":
        if precision in ("fp16", "bf16"):
            raise ModelError(f"{precision} runs only on CUDA; use fp32 on {device.type}")
        return torch.float32
    return {"auto": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16,
            "fp32": torch.float32}[precision]


def make_deterministic(device: torch.device) -> None:
    """Ask CUDA for deterministic kernels (no-op elsewhere: CPU kernels already are)."""
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)
