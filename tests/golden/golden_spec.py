"""What the golden `.tadm` files in this folder hold (shared by the tests and make_golden.py)."""

from __future__ import annotations

import numpy as np

from tadmcodec.container import MetadataRecord

# The bicubic model's digest (first 4 bytes of SHA-256 of its canonical config) when the
# files were made; the container does not interpret it.
BICUBIC_DIGEST = bytes.fromhex("eacaef03")

GOLDEN: dict[str, dict] = {
    # 100x75 original at 32x -> 4x3 LR image, no metadata: the worked example of docs/container.md.
    "small-png.tadm": dict(
        scale=32, width=100, height=75, lr_codec="png", model_number=0, model_digest=BICUBIC_DIGEST
    ),
    "small-webp.tadm": dict(
        scale=32, width=100, height=75, lr_codec="webp", model_number=0, model_digest=BICUBIC_DIGEST
    ),
    # With metadata: a (fake, 8-byte) ICC record, an EXIF record, and an unknown
    # non-critical kind 9 that readers must skip.
    "small-jxl-metadata.tadm": dict(
        scale=32,
        width=100,
        height=75,
        lr_codec="jxl",
        model_number=0,
        model_digest=BICUBIC_DIGEST,
        metadata=(
            MetadataRecord("icc", b"ICCPROF!"),
            MetadataRecord("exif", b"Exif\0\0MM"),
            MetadataRecord("unknown:9", b"\x01\x02"),
        ),
    ),
}


def golden_lr() -> np.ndarray:
    """The 4x3 LR image every golden file holds: R = 60x, G = 100y, B = 30(x+y)."""
    y, x = np.mgrid[0:3, 0:4]
    return np.stack([60 * x, 100 * y, 30 * (x + y)], axis=-1).astype(np.uint8)
