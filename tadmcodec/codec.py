"""Encode an image array to `.tadm` bytes and back: the codec without the command line.

`Codec` holds loaded models, so a batch loads each model once. It is what the
CLI, the benchmark and the demo call; none of them touch the container or the
LR codecs directly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tadmcodec import container, lrcodec, registry
from tadmcodec.errors import FormatError, InputError, ModelError
from tadmcodec.registry import ModelSpec
from tadmcodec.rescaler import Rescaler, lr_size


@dataclass(frozen=True)
class Decoded:
    """A decoded image with what the file said about itself."""

    pixels: np.ndarray  # (height, width, 3) uint8
    header: container.TadmFile
    model: ModelSpec
    timestep_map: np.ndarray | None = None  # (h_lat, w_lat) float32, when asked for


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

    def encode(
        self,
        image: np.ndarray,
        model: str,
        scale: int | None = None,
        lr_codec: str = "auto",
        metadata: tuple[container.MetadataRecord, ...] = (),
    ) -> bytes:
        """uint8 (H, W, 3) image -> `.tadm` bytes."""
        spec = self.spec(model)
        scale = check_scale(spec, scale)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"expected an 8-bit RGB image, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        lr = self.rescaler(spec).downscale(np.ascontiguousarray(image), scale)
        lw, lh = lr_size(width, height, scale)
        if lr.shape != (lh, lw, 3) or lr.dtype != np.uint8:
            raise ModelError(f"model {spec.name} returned an LR image of {lr.shape}, expected {(lh, lw, 3)}")
        codec_name, payload = lrcodec.encode_lr(lr, lr_codec)
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
        return container.pack(f)

    def decode(
        self,
        data: bytes,
        max_pixels: int = container.DEFAULT_MAX_PIXELS,
        want_timestep_map: bool = False,
    ) -> Decoded:
        """`.tadm` bytes -> image. Refuses files made by another model than the one here."""
        header = container.unpack(data, max_pixels=max_pixels)
        spec = self.model_for(header)
        lr = lrcodec.decode_lr(header.lr_codec, header.payload, *lr_size(header.width, header.height, header.scale))
        rescaler = self.rescaler(spec)
        size = (header.width, header.height)
        tmap = None
        if want_timestep_map:
            if not hasattr(rescaler, "upscale_with_timestep_map"):
                raise ModelError(f"model {spec.name} has no time-step map (only TADM models predict time-steps)")
            pixels, tmap = rescaler.upscale_with_timestep_map(lr, header.scale, size)
        else:
            pixels = rescaler.upscale(lr, header.scale, size)
        return Decoded(pixels=pixels, header=header, model=spec, timestep_map=tmap)

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


def check_scale(spec: ModelSpec, scale: int | None) -> int:
    """The scale to use with `spec`: its own if it has one, else the one asked for."""
    if scale is None:
        scale = spec.scale or 16
    if scale not in spec.scales:
        allowed = "/".join(str(s) for s in spec.scales)
        raise InputError(f"model {spec.name} works at scale {allowed}, not {scale}")
    return scale


def bits_per_pixel(n_bytes: int, width: int, height: int) -> float:
    """8 x stored bytes / original pixels: the rate every table in this project uses."""
    return 8.0 * n_bytes / (width * height)


__all__ = ["Codec", "Decoded", "check_scale", "bits_per_pixel", "FormatError"]
