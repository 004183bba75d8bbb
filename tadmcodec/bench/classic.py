"""The classic codecs the benchmark compares against, each with an optional pre-shrink.

At 0.01-0.2 bpp people shrink a photo before saving it as JPEG, so every codec
also runs as shrink -> encode -> decode -> enlarge. Both resizes use Pillow's
Lanczos filter (a = 3; Pillow widens it by the factor when shrinking, which
antialiases). The stored bytes are the encoded file exactly as the library
writes it (headers included); no bytes are added for the original size, which
a viewer needs to undo the pre-shrink (at most a few bytes, and none when the
size is a multiple of the factor, as for Urban100).

Libraries: JPEG through Pillow (libjpeg, `optimize=True` for optimised Huffman
tables, default 4:2:0 chroma); WebP lossy, AVIF and JPEG XL through imagecodecs.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Callable

import imagecodecs
import numpy as np
from PIL import Image

from tadmcodec.bench.settings import DEFAULT_AVIF_SPEED, DEFAULT_JXL_EFFORT, WEBP_METHOD, Setting
from tadmcodec.errors import TadmError


@dataclass(frozen=True)
class Coded:
    """The outcome of coding one image with one setting."""

    n_bytes: int
    decoded: np.ndarray  # (H, W, 3) uint8 at the original size
    encode_s: float  # shrink + encode
    decode_s: float  # decode + enlarge


def library_versions() -> str:
    """Versions that change classic results: part of every classic cache key."""
    return f"pillow{metadata.version('pillow')}+imagecodecs{metadata.version('imagecodecs')}"


def shrink(image: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def enlarge(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def encode(image: np.ndarray, s: Setting) -> bytes:
    """The file a user would store for `image` (already shrunk) under setting `s`."""
    try:
        if s.family == "jpeg":
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="JPEG", quality=int(s.param), optimize=True)
            return buf.getvalue()
        if s.family == "webp":
            return bytes(imagecodecs.webp_encode(image, level=s.param, lossless=False, method=WEBP_METHOD))
        if s.family == "avif":
            return bytes(imagecodecs.avif_encode(image, level=int(s.param), speed=s.option))
        if s.family == "jxl":
            return bytes(imagecodecs.jpegxl_encode(image, distance=s.param, effort=s.option))
    except (RuntimeError, ValueError) as exc:  # imagecodecs errors derive from RuntimeError
        raise TadmError(f"{s.label}: encoder failed: {exc}") from None
    raise TadmError(f"not a classic codec: {s.family}")


def decode(data: bytes, family: str) -> np.ndarray:
    if family == "jpeg":
        arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    elif family == "webp":
        arr = imagecodecs.webp_decode(data)
    elif family == "avif":
        arr = imagecodecs.avif_decode(data)
    elif family == "jxl":
        arr = imagecodecs.jpegxl_decode(data)
    else:
        raise TadmError(f"not a classic codec: {family}")
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] < 3:
        raise TadmError(f"{family} decoder returned {arr.dtype} {arr.shape}, expected 8-bit RGB")
    return np.ascontiguousarray(arr[:, :, :3])


def code(image: np.ndarray, s: Setting) -> Coded:
    """shrink -> encode -> decode -> enlarge, timed."""
    h, w = image.shape[:2]
    t0 = time.perf_counter()
    data = encode(np.ascontiguousarray(shrink(image, s.shrink)), s)
    t1 = time.perf_counter()
    out = enlarge(decode(data, s.family), w, h)
    t2 = time.perf_counter()
    return Coded(n_bytes=len(data), decoded=np.ascontiguousarray(out), encode_s=t1 - t0, decode_s=t2 - t1)


RATE_LADDERS: dict[str, tuple[float, ...]] = {
    "jpeg": tuple(range(1, 96)),
    "webp": tuple(range(0, 101)),
    "avif": tuple(range(0, 101)),
    "jxl": (25.0, 20.0, 16.0, 13.0, 11.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.5, 4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5),
}
"""Each codec's parameter values from the lowest rate to the highest (JPEG XL: distance falls)."""


def best_within(image: np.ndarray, n_bytes: int, family: str, factor: int) -> tuple[Setting, Coded] | None:
    """The highest-rate setting of `family` (pre-shrunk `factor`x) whose file has at most `n_bytes`.

    None when even the lowest rate is larger. Bisection along RATE_LADDERS: sizes grow with rate
    almost everywhere; where they do not, the answer may be a step below the best that fits, never
    over the budget. AVIF and JPEG XL use the benchmark's default speed/effort.
    """
    if family not in RATE_LADDERS:
        raise TadmError(f"not a classic codec: {family}")
    ladder = RATE_LADDERS[family]
    option = {"avif": DEFAULT_AVIF_SPEED, "jxl": DEFAULT_JXL_EFFORT}.get(family, 0)
    small = np.ascontiguousarray(shrink(image, factor))
    files: dict[int, bytes] = {}

    def data(i: int) -> bytes:
        if i not in files:
            files[i] = encode(small, Setting(family, ladder[i], shrink=factor, option=option))
        return files[i]

    if len(data(0)) > n_bytes:
        return None
    lo, hi = 0, len(ladder) - 1  # ladder[lo] fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(data(mid)) <= n_bytes:
            lo = mid
        else:
            hi = mid - 1
    h, w = image.shape[:2]
    out = enlarge(decode(data(lo), family), w, h)
    s = Setting(family, ladder[lo], shrink=factor, option=option)
    return s, Coded(len(data(lo)), np.ascontiguousarray(out), 0.0, 0.0)


def best_avif_within(image: np.ndarray, n_bytes: int,
                     lpips: Callable[[np.ndarray], float]) -> tuple[str, Coded] | None:
    """(label, file) of the AVIF a user would pick within `n_bytes`: of the best setting at each
    pre-shrink (1x, 2x, 4x), the one with the lowest `lpips` (LPIPS-Alex of the decoded pixels).

    None when even quality 0 at 4x is over the budget. What the crops and the demo show beside a model.
    """
    found = []
    for k in (1, 2, 4):
        hit = best_within(image, n_bytes, "avif", k)
        if hit is not None:
            s, c = hit
            found.append((lpips(c.decoded), f"AVIF {k}x q={int(s.param)}" if k > 1 else f"AVIF q={int(s.param)}", c))
    if not found:
        return None
    _, label, c = min(found, key=lambda f: f[0])
    return label, c
