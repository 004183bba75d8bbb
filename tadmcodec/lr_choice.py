"""The encoder's mode decision: which LR image a `.tadm` file stores.

A TADM decode back-projects its output onto the LR image (`tadmcodec.lr_projection`), so the
low band of the decoded photo is the LR image's. The DFRM's LR image also carries what its
invertible network hides for the decoder, and wherever that costs more than it gives back, the
plain bicubic downscale, run through the same decoder, comes out closer to the photo
(benchmarks/lr_projection.py measures both). The decoder cannot tell the two apart: both are
LR images of the same size, decoded by the same path. So the encoder tries them, as classic
encoders try modes, and keeps the one whose decode is closer to the photo (lower MSE).

    effort 1  the model's own LR image, no trial decode (fastest)
    effort 2  also the bicubic LR image; each is decoded once and the closer one is kept

numpy only, imported on first use (the CLI reads EFFORTS before it parses); the decodes run
through the rescaler, which is what imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tadmcodec.errors import InputError

if TYPE_CHECKING:  # numpy and Pillow load on the first choice: the CLI imports EFFORTS before parsing
    import numpy as np

    from tadmcodec.rescaler import Rescaler

EFFORTS = (1, 2)
DEFAULT_EFFORT = 2


@dataclass(frozen=True)
class Candidate:
    """One LR image the encoder considered: where it came from and how close its decode came."""

    source: str  # "model" (the rescaler's own downscale) or "bicubic"
    lr: np.ndarray
    psnr: float | None = None  # of its decode against the photo, dB; None when not decoded


@dataclass(frozen=True)
class Choice:
    kept: Candidate
    tried: tuple[Candidate, ...]

    def describe(self) -> str:
        """One line for `tadm encode -v`: which LR image was kept and what the trials measured."""
        kept = {"model": "the model's own", "bicubic": "the bicubic downscale"}[self.kept.source]
        if len(self.tried) == 1:
            return f"LR image kept: {kept} (no trial decode)"
        scores = ", ".join(f"{c.source} {c.psnr:.2f} dB" for c in self.tried)
        return f"LR image kept: {kept} (trial decodes: {scores})"


def check_effort(effort: object) -> int:
    """The effort as an int in EFFORTS, or ValueError naming the allowed values."""
    import numpy as np

    if isinstance(effort, bool) or not isinstance(effort, (int, np.integer)) or int(effort) not in EFFORTS:
        raise ValueError(f"effort must be one of {', '.join(map(str, EFFORTS))}, got {effort!r}")
    return int(effort)


def user_effort(effort: object) -> int:
    """`check_effort` for an option a user gave: the same message, as the one-line InputError."""
    try:
        return check_effort(effort)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def choose_lr(rescaler: Rescaler, image: np.ndarray, scale: int, own_lr: np.ndarray,
              effort: int = DEFAULT_EFFORT) -> Choice:
    """The LR image to store for `image` at `scale`, after `effort`'s trials (see the module doc).

    own_lr is `rescaler.downscale(image, scale)`, already computed and checked by the caller.
    Ties keep the model's own LR image. When the model's LR image is the bicubic one (the
    `bicubic` model, or by chance) nothing is decoded: there is nothing to choose between.
    """
    import numpy as np

    from tadmcodec.metrics.psnr_ssim import psnr_unchecked
    from tadmcodec.rescaler import BicubicRescaler

    effort = check_effort(effort)
    if isinstance(rescaler, BicubicRescaler):  # its own LR image is the bicubic downscale: say so
        bic = Candidate("bicubic", own_lr)
        return Choice(bic, (bic,))
    own = Candidate("model", own_lr)
    if effort == 1:
        return Choice(own, (own,))
    bic_lr = BicubicRescaler().downscale(image, scale)
    if bic_lr.shape == own.lr.shape and np.array_equal(bic_lr, own.lr):
        return Choice(own, (own,))
    h, w = image.shape[:2]
    tried = tuple(Candidate(c.source, c.lr, psnr_unchecked(image, rescaler.upscale(c.lr, scale, (w, h))))
                  for c in (own, Candidate("bicubic", bic_lr)))
    kept = max(tried, key=lambda c: (c.psnr, c.source == "model"))
    return Choice(kept, tried)
