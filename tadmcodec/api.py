"""The Python API: `encode(image) -> bytes` and `decode(data) -> image`.

These are the `tadm encode` / `tadm decode` commands as functions. They read
images the same way (`imageio`), pick the same default model
(`registry.default_model`), keep the same metadata and transparency rules, and
raise the CLI's typed errors (`tadmcodec.errors`). So `encode("a.png")` returns
exactly the bytes `tadm encode a.png` writes.

Loaded models are expensive (torch, diffusers, weights), so one `Codec` per
(device, precision, model folders) is kept for the life of the process and
shared by the Pillow plugin (`tadmcodec.pillow`); `clear_cache()` drops them.

`import tadmcodec` stays cheap: the package exposes `encode`/`decode` lazily,
and this module imports numpy and Pillow but never torch (only a TADM model,
when it first runs, imports torch).
"""

from __future__ import annotations

import operator
import os
import threading
import warnings
from pathlib import Path
from typing import IO, Any, Literal, Mapping, Union

import numpy as np
from PIL import Image

from tadmcodec import container, imageio, registry
from tadmcodec.codec import Codec, Decoded, check_scale, output_size, parse_size
from tadmcodec.errors import InputError, ModelError
from tadmcodec.lr_choice import DEFAULT_EFFORT

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], Image.Image, np.ndarray]
"""What `encode` accepts: a path, an image file's bytes or binary file object, a Pillow image, an array."""

TadmInput = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes]]
"""What `decode` accepts: a `.tadm` file's path, its bytes, or a binary file object."""

Colour = Union[str, tuple[int, int, int]]

METADATA_CHOICES = ("none", "icc", "exif", "all")
OUTPUTS = ("pil", "numpy")
# The values tadmcodec.tadm.devices accepts; repeated here because that module imports torch,
# and a typo in `device=` must be refused even for the bicubic model, which never resolves a device.
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")

_CodecKey = tuple[str, str, tuple[tuple[str, str], ...]]
_CODECS: dict[_CodecKey, Codec] = {}
_CODECS_LOCK = threading.Lock()


def encode(
    image: ImageInput,
    model: str | None = None,
    scale: int | None = None,
    *,
    lr_codec: str = "auto",
    metadata: str = "none",
    flatten: Colour | None = None,
    effort: int = DEFAULT_EFFORT,
    max_pixels: int = container.DEFAULT_MAX_PIXELS,
    model_dir: str | os.PathLike | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> bytes:
    """Compress an image to `.tadm` bytes, as `tadm encode` does.

    image: a path, an image file's bytes or binary file object (read like
    `tadm encode` reads files: EXIF orientation applied, grey and palette made
    RGB, 16-bit reduced with a warning), a Pillow image (the same rules), or a
    uint8 numpy array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).
    model: a name from `tadm models` (default: the stable model
    at the scale nearest the headline bar, else bicubic; experimental models only by name). scale: 8, 16 or 32 (default: the model's own, else 16).
    lr_codec: auto | png | webp | jxl. metadata: none | icc | exif | all
    (what of the input's ICC/EXIF to keep; arrays have none). flatten: a colour
    ('white', '#808080' or (r, g, b)) to composite transparent images onto;
    without it they are refused. effort: 1 stores the model's LR image, 2 (the
    default) also tries the bicubic LR image and keeps whichever decodes closer
    to the photo (`tadmcodec.lr_choice`; two trial decodes). model_dir: the model's weights folder (the
    CLI's --model-dir; needs `model`).

    Raises InputError (unusable image or option), ModelError (unknown or
    unavailable model, bad device), both `tadmcodec.errors.TadmError`.
    """
    _check_choice("metadata", metadata, METADATA_CHOICES, InputError)
    check_lr_codec(lr_codec)
    _check_max_pixels(max_pixels)
    codec, model_name, scale = prepare_encode(model, scale, model_dir=model_dir, device=device, precision=precision)
    loaded = load_input(image, max_pixels=max_pixels, flatten=colour(flatten))
    for note in loaded.notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return codec.encode(loaded.pixels, model=model_name, scale=scale, lr_codec=lr_codec,
                        metadata=imageio.metadata_records(loaded, metadata), effort=effort)


def decode(
    data: TadmInput,
    *,
    output: Literal["pil", "numpy"] = "pil",
    max_pixels: int = container.DEFAULT_MAX_PIXELS,
    model_dir: str | os.PathLike | None = None,
    device: str = "auto",
    precision: str = "auto",
    size: tuple[int | None, int | None] | str | None = None,
    zoom: float | None = None,
) -> Image.Image | np.ndarray:
    """Decompress a `.tadm` file, as `tadm decode` does.

    size: the output (width, height), either None to keep the aspect ratio, or a string as
    `tadm decode --size` takes ("1920x1080", "1920x", "x1080"); zoom: the output size as a
    factor of the original (0.1-4). A model with an implicit decoder renders that size
    directly; others decode at full size and resample with Lanczos (`info["tadm_path"]`
    says which).

    data: the file's bytes, its path, or a binary file object. Returns an RGB
    Pillow image (the file's ICC profile and EXIF in `info` under Pillow's keys,
    for the caller to pass to `save()` as `tadm decode` does) or, with
    output="numpy", a (H, W, 3) uint8 array. max_pixels: refuse files whose
    image is larger (checked on the header, before anything is decoded).
    model_dir: the weights folder of the model the file names (the CLI's
    --model-dir).

    Raises FormatError (corrupt, truncated or unsupported file), InputError
    (unreadable input, bad option), ModelError (the file's model is unknown,
    unavailable, or not the one that made it).
    """
    _check_choice("output", output, OUTPUTS, InputError)
    _check_max_pixels(max_pixels)
    _check_device(device, precision)
    if isinstance(size, str):
        size = parse_size(size)
    if size is not None or zoom is not None:  # option errors (types, range, both given) before any file is read
        output_size((1 << 40, 1 << 40), size, zoom)
    raw = read_tadm(data)
    dirs = None
    if model_dir is not None:
        # As `tadm decode --model-dir`: the folder replaces the model the file names.
        header = container.unpack(raw, max_pixels=max_pixels)
        spec = registry.by_number(header.model_number)
        if spec is None:
            raise ModelError(f"file was made with model number {header.model_number}, "
                             "unknown to this version of tadmcodec")
        dirs = {spec.name: model_dir}
    decoded = codec_for(device, precision, dirs).decode(raw, max_pixels=max_pixels, size=size, zoom=zoom)
    if output == "numpy":
        return decoded.pixels
    return to_pil(decoded)


def clear_cache() -> None:
    """Forget every loaded model (frees their memory; the next call loads them again).

    Also the way to see new weights written into a model folder this process
    already used: a cached Codec keeps the digest it computed first.
    """
    with _CODECS_LOCK:
        _CODECS.clear()


# --- shared with the Pillow plugin ------------------------------------------------------


def codec_for(device: str = "auto", precision: str = "auto",
              model_dirs: Mapping[str, str | os.PathLike] | None = None) -> Codec:
    """The process-wide Codec for these settings, created on first use.

    Keyed on the model folders too: a Codec caches models by name, so a
    `model_dir` override must not share one with the registry's own weights.
    """
    dirs = {name: Path(d).expanduser() for name, d in (model_dirs or {}).items()}
    key: _CodecKey = (device, precision, tuple(sorted((n, str(p.resolve())) for n, p in dirs.items())))
    with _CODECS_LOCK:
        codec = _CODECS.get(key)
        if codec is None:
            codec = _CODECS[key] = Codec(device=device, precision=precision, model_dirs=dirs)
        return codec


def prepare_encode(model: str | None, scale: Any, *, model_dir: str | os.PathLike | None = None,
                   device: str = "auto", precision: str = "auto") -> tuple[Codec, str, int]:
    """(codec, model name, scale) for an encode, checked before any image is read, as the CLI does.

    The default model depends on the scale asked for (`registry.default_model`),
    and the scale then defaults to that model's own.
    """
    _check_device(device, precision)
    if scale is not None:
        scale = _as_scale(scale)
    if model is not None and not isinstance(model, str):
        raise ModelError(f"model must be a model name (see `tadm models`), got {model!r}")
    if model_dir is not None and model is None:
        raise ModelError("model_dir needs model=NAME (the model whose weights it holds)")
    model_name = model or registry.default_model(scale).name
    codec = codec_for(device, precision, {model_name: model_dir} if model_dir is not None else None)
    return codec, model_name, check_scale(codec.spec(model_name), scale)


def load_input(image: Any, *, max_pixels: int, flatten: tuple[int, int, int] | None,
               transpose: bool = True) -> imageio.LoadedImage:
    """Any supported image input -> 8-bit RGB pixels (+ ICC/EXIF), by `tadm encode`'s rules."""
    if isinstance(image, np.ndarray):
        return imageio.from_pil(_array_to_pil(image), max_pixels=max_pixels, flatten=flatten, transpose=False)
    if isinstance(image, Image.Image):
        return imageio.from_pil(image, max_pixels=max_pixels, flatten=flatten, transpose=transpose)
    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(image, "read"):
        return imageio.load_image(_read_bytes(image, "image"), max_pixels=max_pixels, flatten=flatten)
    raise InputError(f"cannot encode a {type(image).__name__}: give a path, image bytes, a binary file, "
                     "a PIL image or a uint8 numpy array")


def read_tadm(data: Any) -> bytes:
    """A `.tadm` file's bytes from bytes, a path or a binary file object."""
    if isinstance(data, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(data, "read"):
        return _read_bytes(data, ".tadm file")
    raise InputError(f"cannot decode a {type(data).__name__}: give the .tadm bytes, a path or a binary file")


def header_info(header: container.TadmFile) -> dict[str, Any]:
    """`Image.info` entries for a file: ICC and EXIF under Pillow's own keys, plus what made it.

    The model is named by the registry without loading it (None for a number
    this version does not know), so `Image.open` can report it for free.
    """
    info: dict[str, Any] = {}
    icc, exif = header.record("icc"), header.record("exif")
    if icc:
        info["icc_profile"] = icc
    if exif:
        info["exif"] = exif
    spec = registry.by_number(header.model_number)
    info["tadm_model"] = spec.name if spec is not None else None
    info["tadm_scale"] = header.scale
    info["tadm_lr_codec"] = header.lr_codec
    return info


def to_pil(decoded: Decoded) -> Image.Image:
    img = Image.fromarray(decoded.pixels)
    img.info.update(header_info(decoded.header))
    img.info["tadm_path"] = decoded.path
    return img


def colour(value: Colour | None) -> tuple[int, int, int] | None:
    """A flatten colour given as a name/'#rrggbb' or an (r, g, b) tuple; InputError otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        return imageio.parse_colour(value)
    if (isinstance(value, (tuple, list)) and len(value) == 3
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
        return int(value[0]), int(value[1]), int(value[2])
    raise InputError(f"flatten: expected a colour name, '#rrggbb' or an (r, g, b) tuple of 0-255, got {value!r}")


# --- checks ------------------------------------------------------------------------------


def _as_scale(scale: Any) -> int:
    try:
        if isinstance(scale, bool):
            raise TypeError
        return operator.index(scale)
    except TypeError:
        raise InputError(f"scale must be 8, 16 or 32, got {scale!r}") from None


def check_lr_codec(lr_codec: Any) -> None:
    """Refuse an unknown LR codec before a model runs (lrcodec would, but only after the downscale)."""
    _check_choice("lr_codec", lr_codec, ("auto", *container.LR_CODECS), InputError)


def _check_choice(name: str, value: Any, choices: tuple[str, ...], error: type[Exception]) -> None:
    if value not in choices:
        raise error(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _check_max_pixels(max_pixels: Any) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise InputError(f"max_pixels must be a positive int, got {max_pixels!r}")


def _check_device(device: Any, precision: Any) -> None:
    # Same messages and error type as tadmcodec.tadm.devices, which checks again when a model loads.
    if not isinstance(device, str) or device.lower().split(":")[0] not in DEVICES:
        raise ModelError(f"unknown device {device!r} (choose from {', '.join(DEVICES)})")
    if not isinstance(precision, str) or precision.lower() not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")


def _array_to_pil(a: np.ndarray) -> Image.Image:
    """A uint8 array as the Pillow image of its mode, so arrays follow the same alpha/grey rules."""
    if a.dtype != np.uint8:
        raise InputError(f"expected a uint8 array, got {a.dtype} (scale floats to 0-255 and convert with "
                         ".astype(np.uint8); 16-bit arrays must be reduced first)")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise InputError(f"expected an array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise InputError(f"image has no pixels ({a.shape[1]}x{a.shape[0]})")
    return Image.fromarray(np.ascontiguousarray(a))


def _read_bytes(source: Any, what: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            return Path(source).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {what} {os.fspath(source)!r}: {exc.strerror or exc}") from None
    try:
        data = source.read()
    except OSError as exc:
        raise InputError(f"cannot read {what} from {type(source).__name__}: {exc.strerror or exc}") from None
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"the {what} file object must be opened in binary mode (read() gave {type(data).__name__})")
    return bytes(data)
