"""Back-projection of a decoded image onto its LR image (numpy only, no torch).

A TADM decode rebuilds the photo from a latent, and its low frequencies (colour, brightness
over tens of pixels) need not agree with the LR image the file holds. One step of
back-projection,

    x' = x + U(L - D(x))

replaces the decode's low band, as D sees it, with the LR image's, and keeps the decode's
detail; `benchmarks/lr_projection.py` measures what it does per photo, off and on. D is the
antialiased bicubic downscale by the scale and U the bicubic upscale, both fixed separable
matrices built here, so the trainer (`tadmcodec.tadm.projection`, torch) and the decoder
apply the same operator. The decoder works in row strips, so the image is never held in
float; the matrices are dense, (side, side/scale) float32 per axis and direction, which is
33 MB for a 16384-pixel side at x32 and 4x that at x8 (banded ones would be smaller).
"""

from __future__ import annotations

import numpy as np

STRIP = 256  # output rows per strip of the decoder's pass (a multiple of every scale)


def _cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic kernel (a = -0.5, as Pillow's BICUBIC)."""
    t = np.abs(t)
    return np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                    np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))


def down_matrix(n_in: int, scale: int) -> np.ndarray:
    """(n_in // scale, n_in): antialiased bicubic downscaling of one axis by `scale`.

    The kernel is widened by the scale (as Pillow does when shrinking); weights that fall
    outside the axis are dropped and each row renormalised.
    """
    n_out = n_in // scale
    centre = (np.arange(n_out) + 0.5) * scale - 0.5
    w = _cubic((np.arange(n_in)[None, :] - centre[:, None]) / scale)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def up_matrix(n_out: int, scale: int) -> np.ndarray:
    """(n_out, n_out // scale): bicubic upscaling of one axis by `scale` (edges renormalised)."""
    n_in = n_out // scale
    centre = (np.arange(n_out) + 0.5) / scale - 0.5
    w = _cubic(np.arange(n_in)[None, :] - centre[:, None])
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def project_onto_lr(image: np.ndarray, lr: np.ndarray, scale: int, strip: int = STRIP) -> np.ndarray:
    """x + U(L - D(x)) for a uint8 (H, W, 3) image whose sides are `scale` times the LR's.

    Two passes over the image in row strips: one accumulates D(x), one writes the result.
    """
    h, w = lr.shape[:2]
    if image.shape != (h * scale, w * scale, 3) or image.dtype != np.uint8 or lr.dtype != np.uint8:
        raise ValueError(f"image {image.dtype} {image.shape} is not x{scale} of LR {lr.dtype} {lr.shape}")
    dy, dx = down_matrix(h * scale, scale), down_matrix(w * scale, scale)
    uy, ux = up_matrix(h * scale, scale), up_matrix(w * scale, scale)
    return _project(image, lr, dy, dx, uy, ux, strip)


def resized_matrices(n_out: int, extent: int, n_lr: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """D (n_lr, n_out) and U (n_out, n_lr) for an output axis of any size.

    The output axis has n_out pixels across the first `extent` image pixels (the image, not its
    padding); the LR axis has n_lr pixels of `scale` image pixels each. Both kernels are the
    bicubic one spread over an LR pixel, placed by the pixels' centres in image coordinates, with
    weights that fall outside an axis dropped and each row renormalised. For n_out = extent =
    n_lr * scale these are `down_matrix` and `up_matrix` (to float rounding).
    """
    x = (np.arange(n_out) + 0.5) * (extent / n_out)  # output pixel centres, in image pixels
    X = (np.arange(n_lr) + 0.5) * scale  # LR pixel centres
    k = _cubic((x[None, :] - X[:, None]) / scale)  # (n_lr, n_out)
    d = k / k.sum(axis=1, keepdims=True)
    u = k.T / k.T.sum(axis=1, keepdims=True)
    return d.astype(np.float32), u.astype(np.float32)


def can_project_resized(out_size: tuple[int, int], size: tuple[int, int], scale: int) -> bool:
    """Whether `project_onto_lr_resized` applies: output pixels at most half an LR pixel a side.

    Coarser outputs resolve little that the LR image does not already fix, and an LR pixel near
    the padded edge could then cover no output pixel centre with a positive weight.
    """
    return all(s / o <= scale / 2 for o, s in zip(out_size, size))


def project_onto_lr_resized(image: np.ndarray, lr: np.ndarray, scale: int, size: tuple[int, int],
                            strip: int = STRIP) -> np.ndarray:
    """x + U(L - D(x)) for a rendering of the image at another size (the implicit decoder's).

    image: uint8 (h_out, w_out, 3) covering the whole image of `size` = (W, H) pixels; lr: the
    LR image of that image padded to the scale. D and U are `resized_matrices` per axis.
    """
    lh, lw = lr.shape[:2]
    w, h = size
    oh, ow = image.shape[:2]
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or lr.dtype != np.uint8 \
            or (lw, lh) != (-(-w // scale), -(-h // scale)):
        raise ValueError(f"LR {lr.dtype} {lr.shape} is not the x{scale} LR image of a {w}x{h} image")
    if not can_project_resized((ow, oh), size, scale):
        raise ValueError(f"a {ow}x{oh} rendering of {w}x{h} is too coarse to project at x{scale}")
    dy, uy = resized_matrices(oh, h, lh, scale)
    dx, ux = resized_matrices(ow, w, lw, scale)
    return _project(image, lr, dy, dx, uy, ux, strip)


def _project(image: np.ndarray, lr: np.ndarray, dy: np.ndarray, dx: np.ndarray, uy: np.ndarray,
             ux: np.ndarray, strip: int) -> np.ndarray:
    """The two strip passes of x + U(L - D(x)) with per-axis matrices D = (dy, dx), U = (uy, ux)."""
    h, w = lr.shape[:2]
    low = np.zeros((h, w, 3), np.float32)
    for a in range(0, image.shape[0], strip):
        rows = image[a:a + strip].astype(np.float32)
        low += np.einsum("ya,axc,bx->ybc", dy[:, a:a + strip], rows, dx, optimize=True)
    residual = lr.astype(np.float32) - low
    wide = np.einsum("ybc,xb->yxc", residual, ux, optimize=True)  # (h, W, 3): small
    out = np.empty_like(image)
    for a in range(0, image.shape[0], strip):
        rows = image[a:a + strip].astype(np.float32) + np.einsum("ay,yxc->axc", uy[a:a + strip], wide,
                                                                 optimize=True)
        out[a:a + strip] = np.clip(np.rint(rows), 0, 255).astype(np.uint8)
    return out
