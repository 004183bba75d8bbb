"""Encode an image array to `.tadm` bytes and back: the codec without the command line.

`Codec` holds loaded models, so a batch loads each model once. It is what the
CLI, the benchmark and the demo call; none of them touch the container or the
LR codecs directly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tadmcodec import container, lrcodec, registry
from tadmcodec.errors import FormatError, InputError, ModelError
from tadmcodec.lr_choice import DEFAULT_EFFORT, Choice, choose_lr, user_effort
from tadmcodec.registry import ModelSpec
from tadmcodec.rescaler import Rescaler, lanczos, lr_size
from tadmcodec.sizes import bits_per_pixel  # re-exported (see __all__)


@dataclass(frozen=True)
class Decoded:
    """A decoded image with what the file said about itself."""

    pixels: np.ndarray  # (height, width, 3) uint8
    header: container.TadmFile
    model: ModelSpec
    timestep_map: np.ndarray | None = None  # (h_lat, w_lat) float32, when asked for
    path: str = ""  # how the image was rendered ("VAE decoder", "implicit decoder", "..., then Lanczos")


@dataclass(frozen=True)
class Encoded:
    """A `.tadm` file's bytes and the encoder's choice of LR image (`tadmcodec.lr_choice`)."""

    data: bytes
    choice: Choice


@dataclass
class Codec:
    """Encoder/decoder bound to a device and precision, with a cache of loaded models.

    `model_dirs` maps model names to weight folders that replace the registry's
    (the CLI's --model-dir). `models` is the registry to resolve names and file
    numbers in (the package's unless a test plays another release). Thread-safe:
    batch jobs share one instance.
    """

    device: str = "auto"
    precision: str = "auto"
    model_dirs: dict[str, Path] = field(default_factory=dict)
    models: registry.Registry = field(default_factory=lambda: registry.REGISTRY)
    _loaded: dict[str, Rescaler] = field(default_factory=dict, repr=False)
    _digests: dict[str, bytes] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def spec(self, name: str) -> ModelSpec:
        """The registry spec, with its weights folder overridden if the user gave one."""
        spec = self.models.get(name)
        if name in self.model_dirs:
            spec = registry.with_weights_dir(spec, self.model_dirs[name])
        return spec

    def digest(self, spec: ModelSpec) -> bytes:
        """The model's weights+config digest, hashed once per Codec (a batch hashes each model once)."""
        with self._lock:
            if spec.name not in self._digests:
                self._digests[spec.name] = spec.digest()
            return self._digests[spec.name]

    def rescaler(self, spec: ModelSpec) -> Rescaler:
        with self._lock:
            if spec.name not in self._loaded:
                self._loaded[spec.name] = registry.load_rescaler(spec, device=self.device, precision=self.precision)
            return self._loaded[spec.name]

    def encode(self, image: np.ndarray, model: str, scale: int | None = None, **options: Any) -> bytes:
        """uint8 (H, W, 3) image -> `.tadm` bytes; options (lr_codec, metadata, effort) as `encode_detailed`'s."""
        return self.encode_detailed(image, model, scale, **options).data

    def encode_detailed(
        self,
        image: np.ndarray,
        model: str,
        scale: int | None = None,
        lr_codec: str = "auto",
        metadata: tuple[container.MetadataRecord, ...] = (),
        effort: int = DEFAULT_EFFORT,
    ) -> Encoded:
        """As `encode`, with the LR image the encoder kept and why (effort: see `tadmcodec.lr_choice`)."""
        spec = self.spec(model)
        scale = check_scale(spec, scale)
        effort = user_effort(effort)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"expected an 8-bit RGB image, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        rescaler = self.rescaler(spec)
        image = np.ascontiguousarray(image)
        lr = rescaler.downscale(image, scale)
        lw, lh = lr_size(width, height, scale)
        if lr.shape != (lh, lw, 3) or lr.dtype != np.uint8:
            raise ModelError(f"model {spec.name} returned an LR image of {lr.shape}, expected {(lh, lw, 3)}")
        choice = choose_lr(rescaler, image, scale, lr, effort)
        codec_name, payload = lrcodec.encode_lr(choice.kept.lr, lr_codec)
        f = container.TadmFile(
            scale=scale,
            width=width,
            height=height,
            lr_codec=codec_name,
            model_number=spec.number,
            model_digest=self.digest(spec),
            payload=payload,
            metadata=tuple(metadata),
        )
        return Encoded(container.pack(f), choice)

    def decode(
        self,
        data: bytes,
        max_pixels: int = container.DEFAULT_MAX_PIXELS,
        want_timestep_map: bool = False,
        size: tuple[int | None, int | None] | None = None,
        zoom: float | None = None,
        method: str = "auto",
    ) -> Decoded:
        """`.tadm` bytes -> image. Refuses files made by another model than the one here.

        size (width, height; either may be None to keep the aspect ratio) or zoom (0.1-4)
        ask for another output size (see `output_size`): a model with an implicit decoder
        renders it directly, others decode at full size and resample with Lanczos.
        `method` ("auto", "implicit", "vae") is for benchmarks that compare the two.
        """
        header = container.unpack(data, max_pixels=max_pixels)
        orig = (header.width, header.height)
        out = output_size(orig, size, zoom)
        if out is not None and out[0] * out[1] > max_pixels:
            raise InputError(f"output {out[0]}x{out[1]} has more than {max_pixels} pixels (see --max-pixels)")
        spec = self.model_for(header)
        lr = lrcodec.decode_lr(header.lr_codec, header.payload, *lr_size(header.width, header.height, header.scale))
        rescaler = self.rescaler(spec)
        if want_timestep_map and not hasattr(rescaler, "upscale_with_timestep_map"):
            raise ModelError(f"model {spec.name} has no time-step map (only TADM models predict time-steps)")
        tmap = None
        if hasattr(rescaler, "render"):
            pixels, tmap, path = rescaler.render(lr, header.scale, orig, out, method=method)
            if not want_timestep_map:
                tmap = None
        else:
            if method == "implicit":
                raise ModelError(f"model {spec.name} has no implicit decoder")
            pixels, path = rescaler.upscale(lr, header.scale, orig), spec.name
            if out is not None and out != orig:
                pixels, path = lanczos(pixels, out), f"{spec.name}, then Lanczos"
        return Decoded(pixels=pixels, header=header, model=spec, timestep_map=tmap, path=path)

    def model_for(self, header: container.TadmFile) -> ModelSpec:
        """The model a file needs, checked against the file's digest."""
        spec = self.models.by_number(header.model_number)
        if spec is None:
            raise ModelError(
                f"file was made with model number {header.model_number}, unknown to this version of tadmcodec"
            )
        spec = self.spec(spec.name)
        ok, why = spec.availability()
        if not ok:
            raise ModelError(f"file needs model {spec.name}, which is not available here: {why}")
        here = self.digest(spec)
        if here != header.model_digest:
            if spec.status == "experimental" and spec.name not in self.model_dirs:
                raise ModelError(
                    f"file was made with other weights of the experimental model {spec.name} (digest "
                    f"{header.model_digest.hex()}, here {here.hex()}); experimental weights change between "
                    "releases: decode it with the tadmcodec release that made it"
                )
            raise ModelError(
                f"file was made with a different {spec.name} (digest {header.model_digest.hex()}, "
                f"here {here.hex()}): decode it with the model that made it"
            )
        return spec


ZOOM_RANGE = (0.1, 4.0)
"""Output size over original size that `zoom=` accepts, and that `size=` may reach per side (at most)."""


def parse_size(text: str) -> tuple[int | None, int | None]:
    """'1920x1080', '1920x', 'x1080' or '1920' (a width) -> (width, height); InputError on anything else."""
    t = text.strip().lower()
    w_s, sep, h_s = t.partition("x")
    if not sep:
        w_s, h_s = t, ""
    try:
        w = int(w_s) if w_s else None
        h = int(h_s) if h_s else None
    except ValueError:
        raise InputError(f"size {text!r}: expected WxH, Wx, xH or W in pixels (e.g. 1920x1080, 1920x)") from None
    if w is None and h is None:
        raise InputError(f"size {text!r}: give a width, a height or both (e.g. 1920x1080, 1920x)")
    if (w is not None and w < 1) or (h is not None and h < 1):
        raise InputError(f"size {text!r}: sides must be at least 1 pixel")
    return w, h


def output_size(orig: tuple[int, int], size: tuple[int | None, int | None] | None = None,
                zoom: float | None = None) -> tuple[int, int] | None:
    """The output (width, height) asked for, or None for the original size unasked.

    size: (width, height), either None to keep the aspect ratio (rounded, at least 1 px);
    zoom: a factor in ZOOM_RANGE of both sides. Each side may be at most ZOOM_RANGE[1] times
    the original's.
    """
    w0, h0 = orig
    if size is not None and zoom is not None:
        raise InputError("size and zoom exclude each other: give one")
    if zoom is not None:
        if isinstance(zoom, bool) or not isinstance(zoom, (int, float, np.integer, np.floating)):
            raise InputError(f"zoom must be a number, got {zoom!r}")
        lo, hi = ZOOM_RANGE
        if not lo <= float(zoom) <= hi:
            raise InputError(f"zoom {zoom:g} is outside {lo:g}-{hi:g} (times the original size)")
        return max(1, round(w0 * float(zoom))), max(1, round(h0 * float(zoom)))
    if size is None:
        return None
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise InputError(f"size must be (width, height), either may be None, got {size!r}")
    w, h = size
    for v in (w, h):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise InputError(f"size must hold positive ints or None, got {size!r}")
    if w is None and h is None:
        raise InputError("size needs a width or a height")
    if w is None:
        w = max(1, round(w0 * h / h0))
    if h is None:
        h = max(1, round(h0 * w / w0))
    hi = ZOOM_RANGE[1]
    if w > hi * w0 or h > hi * h0:
        raise InputError(f"output {w}x{h} is more than {hi:g} times the original {w0}x{h0} on a side")
    return int(w), int(h)


def check_scale(spec: ModelSpec, scale: int | None) -> int:
    """The scale to use with `spec`: its own if it has one, else the one asked for."""
    if scale is None:
        scale = spec.scale or 16
    if scale not in spec.scales:
        allowed = "/".join(str(s) for s in spec.scales)
        raise InputError(f"model {spec.name} works at scale {allowed}, not {scale}")
    return scale


__all__ = ["Codec", "Decoded", "Encoded", "ZOOM_RANGE", "bits_per_pixel", "check_scale", "output_size", "parse_size",
           "FormatError"]
