"""`evaluate`: every metric of one image pair, with the networks loaded once per process."""

from __future__ import annotations

import functools
from typing import Iterable

import numpy as np
import torch
from torch import nn

from tadmcodec.metrics import METRICS, check_metric_names
from tadmcodec.metrics.psnr_ssim import check_pair, psnr, ssim


@functools.lru_cache(maxsize=None)
def network(name: str, device: str) -> nn.Module:
    """The frozen metric network `name` ("lpips_alex", "lpips_vgg", "dists") on `device`, cached."""
    if name == "dists":
        from tadmcodec.metrics.dists import DISTS

        return DISTS().to(device)
    from tadmcodec.metrics.lpips import LPIPS

    return LPIPS(net=name.removeprefix("lpips_")).to(device)


def _to_tensor(img: np.ndarray, device: str) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (1, 3, H, W) in [0, 1], computed as torchvision's ToTensor does."""
    return torch.from_numpy(np.require(img, requirements=["C", "W"])).to(device).permute(2, 0, 1)[None].float().div(255)


def _to_signed(img: np.ndarray, device: str) -> torch.Tensor:
    """uint8 -> float32 in [-1, 1] as LPIPS's `im2tensor` does (x / 127.5 - 1 in float64, then float32)."""
    arr = (img.astype(np.float64) / 127.5 - 1.0).astype(np.float32)
    return torch.from_numpy(arr).to(device).permute(2, 0, 1)[None]


class Evaluator:
    """Every metric of many test images against one reference, at full resolution.

    The reference's network features are computed once, on first use, and kept:
    a rate sweep compares dozens of decodings with the same original, and the
    reference half of LPIPS-VGG and DISTS is the costliest part of each
    comparison (about 3 s per VGG16 pass on a 0.66-MP image on 2 CPU cores).
    The kept features of all three networks take about 1 KB per pixel, so
    references over `KEEP_MAX_PIXELS` are recomputed instead of kept.
    """

    KEEP_MAX_PIXELS = 4_000_000

    def __init__(self, ref: np.ndarray, metrics: Iterable[str] = METRICS, device: str | torch.device = "cpu") -> None:
        self.names = check_metric_names(metrics)
        self.ref = ref
        self.device = str(torch.device(device))
        self._ref_features: dict[str, list[torch.Tensor]] = {}

    def __call__(self, test: np.ndarray, only: Iterable[str] | None = None) -> dict[str, float]:
        """{name: value} in the order asked: PSNR dB and SSIM (higher is better), LPIPS and DISTS (lower).

        `only` restricts this call to some of the evaluator's metrics (skipping costly ones where
        they are not needed).
        """
        check_pair(self.ref, test)
        wanted = set(self.names if only is None else only)
        out: dict[str, float] = {}
        for name in (n for n in self.names if n in wanted):
            if name == "psnr":
                out[name] = psnr(self.ref, test)
            elif name == "ssim":
                out[name] = ssim(self.ref, test)
            else:
                net = network(name, self.device)
                convert = _to_tensor if name == "dists" else _to_signed
                with torch.inference_mode():
                    ref_features = self._ref_features.get(name) or net.features(convert(self.ref, self.device))
                    if self.ref.shape[0] * self.ref.shape[1] <= self.KEEP_MAX_PIXELS:
                        self._ref_features[name] = ref_features
                    value = net.distance(ref_features, net.features(convert(test, self.device)))
                out[name] = float(value[0])
        return out


def evaluate(
    ref: np.ndarray,
    test: np.ndarray,
    metrics: Iterable[str] = METRICS,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Metrics of `test` against `ref` (uint8 (H, W, 3), same shape, H, W >= 32), at full resolution.

    Returns {name: value} in the order asked. PSNR in dB (higher is better),
    SSIM (higher is better), LPIPS and DISTS distances (lower is better).
    For many tests against one reference, use `Evaluator`.
    """
    return Evaluator(ref, metrics, device)(test)
