"""Size arithmetic shared by the codec and the light commands, with no numpy or Pillow.

`tadm info` and `tadm models` need the scales, the LR size and the bit rate, but not
the rescalers (which import numpy and Pillow); `tadmcodec.rescaler` and
`tadmcodec.codec` re-export these names.
"""

from __future__ import annotations

SCALES: tuple[int, ...] = (8, 16, 32)


def lr_size(width: int, height: int, scale: int) -> tuple[int, int]:
    """(width, height) of the LR image for an original of width x height.

    The original is padded up to a multiple of the scale, so the LR image is
    ceil(W/scale) x ceil(H/scale).
    """
    return -(-width // scale), -(-height // scale)


def bits_per_pixel(n_bytes: int, width: int, height: int) -> float:
    """8 x stored bytes / original pixels: the rate every table in this project uses."""
    return 8.0 * n_bytes / (width * height)
