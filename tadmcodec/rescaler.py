"""The interface every model implements, and the `bicubic` baseline.

A rescaler turns an 8-bit RGB image of W x H into an 8-bit RGB LR image of
exactly `lr_size(W, H, scale)` and back. The codec stores only the LR image, so
this contract (LR size derived from the original size and the scale) is what
lets the container omit the LR dimensions and check them on decode.

Images are numpy arrays, uint8, shape (H, W, 3), C-contiguous.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from tadmcodec.sizes import SCALES, lr_size  # re-exported: defined there without numpy


def pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Edge-reflect-pad an (H, W, C) image on the bottom/right up to a multiple.

    Reflection (not zeros) keeps the padded border statistically like the image,
    so neither the downscaler nor a learned network sees an artificial edge.
    Falls back to edge replication where the image is too small to reflect.
    """
    h, w = image.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return image
    mode = "reflect" if (ph < h and pw < w) else "edge"
    return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode=mode)


def lanczos(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W, 3) uint8 image resampled to size = (width, height) with Pillow's Lanczos filter.

    What a decode at another size does when the model cannot render that size itself.
    """
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    out = Image.fromarray(image).resize(tuple(size), Image.Resampling.LANCZOS)
    return np.ascontiguousarray(np.asarray(out, dtype=np.uint8))


@runtime_checkable
class Rescaler(Protocol):
    """What the codec needs from a model."""

    name: str
    scales: tuple[int, ...]

    def downscale(self, image: np.ndarray, scale: int) -> np.ndarray:
        """(H, W, 3) uint8 -> (ceil(H/scale), ceil(W/scale), 3) uint8."""
        ...

    def upscale(self, lr: np.ndarray, scale: int, size: tuple[int, int]) -> np.ndarray:
        """LR uint8 image -> (height, width, 3) uint8 where size = (width, height)."""
        ...


def check_lr(lr: np.ndarray, width: int, height: int, scale: int) -> None:
    """Raise ValueError unless `lr` is the LR image the contract promises."""
    lw, lh = lr_size(width, height, scale)
    if lr.dtype != np.uint8 or lr.shape != (lh, lw, 3):
        raise ValueError(
            f"LR image must be uint8 of shape {(lh, lw, 3)}, got {lr.dtype} {lr.shape}"
        )


class BicubicRescaler:
    """Antialiased bicubic down, bicubic up: the classic baseline.

    Kept after TADM exists, as the reference that benchmarks and tests compare
    against. Pillow's BICUBIC filter widens its support by the scale factor
    when shrinking, which is what makes the downscale antialiased.
    """

    name = "bicubic"
    scales = SCALES

    def downscale(self, image: np.ndarray, scale: int) -> np.ndarray:
        h, w = image.shape[:2]
        padded = pad_to_multiple(image, scale)
        lw, lh = lr_size(w, h, scale)
        lr = Image.fromarray(padded).resize((lw, lh), Image.Resampling.BICUBIC)
        return np.asarray(lr, dtype=np.uint8).copy()

    def upscale(self, lr: np.ndarray, scale: int, size: tuple[int, int]) -> np.ndarray:
        width, height = size
        check_lr(lr, width, height, scale)
        lh, lw = lr.shape[:2]
        up = Image.fromarray(lr).resize((lw * scale, lh * scale), Image.Resampling.BICUBIC)
        return np.ascontiguousarray(np.asarray(up, dtype=np.uint8)[:height, :width])
