"""PSNR and SSIM on 8-bit RGB images, in numpy (no torch import).

PSNR: 10 log10(255^2 / MSE), the MSE taken over all pixels and all three RGB
channels together, in float64 (inf for identical images).

SSIM: Wang et al. (IEEE TIP 2004) with their reference settings: an 11x11
Gaussian window (sigma 1.5, normalised to sum 1), K1 = 0.01, K2 = 0.03,
L = 255, population (co)variances, computed over the "valid" region only (no
padding: the map is (H-10) x (W-10)). With `channel="rgb"` (default) the SSIM
map is computed on R, G and B separately and the mean is taken over all three
maps -- identical to scikit-image's `structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1)`.
With `channel="y"` it is computed once on the unrounded BT.601 luma in studio
range (Y = 16 + 65.481 R + 128.553 G + 24.966 B, R/G/B in [0, 1]), the
convention of SR papers' "Y-channel SSIM" (the TADM paper's tables used that).
"""

from __future__ import annotations

import math

import numpy as np

from tadmcodec.errors import InputError

_WIN = 11
_SIGMA = 1.5
_K1, _K2, _L = 0.01, 0.03, 255.0
MIN_SIDE = 32


def check_pair(ref: np.ndarray, test: np.ndarray) -> None:
    """Raise InputError unless both are uint8 (H, W, 3) arrays of one shape, H, W >= 32."""
    for name, img in (("reference", ref), ("test", test)):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise InputError(f"{name} image must be a uint8 (H, W, 3) RGB array, got {desc}")
    if ref.shape != test.shape:
        raise InputError(f"images differ in size: {ref.shape[1]}x{ref.shape[0]} vs {test.shape[1]}x{test.shape[0]}")
    if min(ref.shape[:2]) < MIN_SIDE:
        raise InputError(f"images must be at least {MIN_SIDE}x{MIN_SIDE} px, got {ref.shape[1]}x{ref.shape[0]}")


def psnr(ref: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB of 8-bit RGB images (MSE over all channels); inf when identical."""
    check_pair(ref, test)
    return psnr_unchecked(ref, test)


def psnr_unchecked(ref: np.ndarray, test: np.ndarray) -> float:
    """`psnr` without `check_pair`: any size (LR images, the encoder's trial decodes of tiny photos).

    The caller guarantees two uint8 arrays of one shape.
    """
    diff = ref.astype(np.float64) - test.astype(np.float64)
    mse = float(np.mean(diff * diff))
    return math.inf if mse == 0.0 else 10.0 * math.log10(_L * _L / mse)


def _gaussian_taps() -> np.ndarray:
    x = np.arange(_WIN, dtype=np.float64) - (_WIN - 1) / 2
    g = np.exp(-(x * x) / (2 * _SIGMA * _SIGMA))
    return g / g.sum()


def _filter_valid(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable correlation over axes 0 and 1 keeping only fully covered positions."""
    n = len(taps)
    h, w = img.shape[:2]
    rows = sum(taps[k] * img[k : h - n + 1 + k] for k in range(n))
    return sum(taps[k] * rows[:, k : w - n + 1 + k] for k in range(n))


def _ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM map of float64 arrays (H, W[, C]) on the 0..255 scale, valid region."""
    taps = _gaussian_taps()
    mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
    var_a = _filter_valid(a * a, taps) - mu_a * mu_a
    var_b = _filter_valid(b * b, taps) - mu_b * mu_b
    cov = _filter_valid(a * b, taps) - mu_a * mu_b
    c1, c2 = (_K1 * _L) ** 2, (_K2 * _L) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))


def _luma(img: np.ndarray) -> np.ndarray:
    rgb = img.astype(np.float64) / 255.0
    return 16.0 + rgb @ np.array([65.481, 128.553, 24.966])


def ssim(ref: np.ndarray, test: np.ndarray, channel: str = "rgb") -> float:
    """SSIM of 8-bit RGB images; `channel` is "rgb" (mean over R, G, B) or "y" (BT.601 luma)."""
    check_pair(ref, test)
    if channel == "rgb":
        a, b = ref.astype(np.float64), test.astype(np.float64)
    elif channel == "y":
        a, b = _luma(ref), _luma(test)
    else:
        raise InputError(f"unknown SSIM channel mode {channel!r} (choose rgb or y)")
    return float(np.mean(_ssim_map(a, b)))
