"""CUDA check of an exported model: decode a 768x512 and a 4096x4096 photo on the GPU.

fp16 twice (is the repeat bit-exact?) and fp32 once, timing each and recording the
peak GPU memory; the JSON goes to benchmarks/results/cuda_check.json. Run on a GPU machine:

    python -m tadmcodec.train.cuda_check MODEL_DIR PHOTO OUT.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


def _photo(path: Path, size: tuple[int, int]) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize(size, Image.Resampling.BICUBIC))


def check(model_dir: Path, photo: Path, sizes: tuple[tuple[int, int], ...] = ((768, 512), (4096, 4096))) -> dict[str, Any]:
    """Encode once (fp32) and decode in fp16 twice and fp32 once for each size."""
    from tadmcodec.tadm.devices import make_deterministic
    from tadmcodec.tadm.loader import load_model_dir
    from tadmcodec.tadm.pipeline import TadmRescaler

    dev = torch.device("cuda")
    make_deterministic(dev)
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                              "model": str(model_dir), "runs": []}
    models = {d: TadmRescaler(load_model_dir(model_dir, device=dev, dtype=d)) for d in (torch.float16, torch.float32)}
    scale = models[torch.float32].scales[0]
    for w, h in sizes:
        img = _photo(photo, (w, h))
        torch.cuda.synchronize()
        t = time.perf_counter()
        lr = models[torch.float32].downscale(img, scale)
        torch.cuda.synchronize()
        enc_s = time.perf_counter() - t
        outs = {}
        for tag, dtype in (("fp16_a", torch.float16), ("fp16_b", torch.float16), ("fp32", torch.float32)):
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
            t = time.perf_counter()
            outs[tag] = models[dtype].upscale(lr, scale, (w, h))
            torch.cuda.synchronize()
            report["runs"].append({"size": f"{w}x{h}", "what": f"decode {tag}", "seconds": round(time.perf_counter() - t, 4),
                                   "max_memory_allocated_MiB": round(torch.cuda.max_memory_allocated() / 2**20, 1)})
        diff = np.abs(outs["fp16_a"].astype(int) - outs["fp32"].astype(int))
        report["runs"].append({
            "size": f"{w}x{h}", "encode_fp32_seconds": round(enc_s, 4),
            "fp16_repeat_bit_exact": bool(np.array_equal(outs["fp16_a"], outs["fp16_b"])),
            "fp16_vs_fp32_max_abs_diff": int(diff.max()), "fp16_vs_fp32_mean_abs_diff": round(float(diff.mean()), 4),
        })
    return report


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 3:
        print("usage: python -m tadmcodec.train.cuda_check MODEL_DIR PHOTO OUT.json", file=sys.stderr)
        return 2
    try:
        report = check(Path(args[0]), Path(args[1]))
    except Exception as exc:  # noqa: BLE001 - the check must always leave a report behind
        report = {"error": f"{type(exc).__name__}: {exc}"}
    Path(args[2]).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
