"""Pillow plugin: `import tadmcodec.pillow`, then `Image.open("a.tadm")` and `im.save("a.tadm")`.

Opening is lazy, as with Pillow's own formats and pillow-heif: `Image.open`
reads and validates the small `.tadm` file (signature, lengths, CRC) and sets
`size`, `mode` ("RGB"), `format` ("TADM") and `info` (ICC profile, EXIF, and
`tadm_model`/`tadm_scale`/`tadm_lr_codec`) from its header. The model runs only
when the pixels are needed (`load()`, `convert()`, `save()`...), through a
Python decoder registered with Pillow, so a file whose model is not installed
still opens and reports its size.

Saving takes the API's options as keyword arguments: `model=`, `scale=`,
`lr_codec=`, `flatten=`, `model_dir=`, `device=`, `precision=`, plus Pillow's
usual `icc_profile=` and `exif=`. Metadata is stored only when passed, never
taken from `im.info` by default: at 0.01-0.2 bpp an ICC profile can outweigh
the picture. Pixels are stored as they are (no EXIF orientation applied), as
every Pillow writer does.

Errors are the CLI's typed errors and also `OSError`, which is what Pillow code
catches for bad files: `except tadmcodec.errors.FormatError` and `except
OSError` both work.

Pillow (up to 13.0 at least) has no entry-point discovery for third-party
plugins, so the plugin is active only once this module is imported.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

from PIL import Image, ImageFile

from tadmcodec import api, container
from tadmcodec.errors import FormatError, InputError, ModelError, TadmError
from tadmcodec.lr_choice import DEFAULT_EFFORT

FORMAT = "TADM"
EXTENSION = ".tadm"
MIME_TYPE = "image/x-tadm"
"""Not registered with IANA (hence x-); what `Image.MIME` and `get_format_mimetype()` report."""

_DECODER = "tadm"
_UNLIMITED = 1 << 62
"""Pixel budget passed to the container parser in `_open`: Pillow's own MAX_IMAGE_PIXELS check
(`Image.open` runs it on the size we report) is the one a Pillow user expects to be in charge."""


class PillowTadmError(TadmError, OSError):
    """A TadmError raised through Pillow (also an OSError, as Pillow's own errors are)."""


class PillowFormatError(FormatError, PillowTadmError):
    """Corrupt, truncated or unsupported `.tadm` file."""


class PillowInputError(InputError, PillowTadmError):
    """An image (or save option) that cannot be encoded as given."""


class PillowModelError(ModelError, PillowTadmError):
    """A model that is unknown, unavailable, or not the one the file was made with."""


@contextlib.contextmanager
def _pillow_errors() -> Iterator[None]:
    """Re-raise the codec's typed errors as their OSError-compatible twins, message unchanged."""
    try:
        yield
    except PillowTadmError:
        raise
    except FormatError as exc:
        raise PillowFormatError(str(exc)) from None
    except InputError as exc:
        raise PillowInputError(str(exc)) from None
    except ModelError as exc:
        raise PillowModelError(str(exc)) from None
    except TadmError as exc:
        raise PillowTadmError(str(exc)) from None


@dataclass
class _Settings:
    """How images opened through Pillow are decoded (Image.open takes no options of its own)."""

    device: str = "auto"
    precision: str = "auto"
    model_dirs: dict[str, Path] = field(default_factory=dict)


_settings = _Settings()


def register(*, device: str = "auto", precision: str = "auto",
             model_dirs: Mapping[str, str | os.PathLike] | None = None) -> None:
    """Register the TADM format with Pillow (done on import) and set how it decodes.

    model_dirs maps model names to weight folders, like `decode(model_dir=...)`
    for the files that name that model (e.g. {"tadm-sd21-x16": "~/models/tadm-sd21-x16"}).
    Calling it again replaces the settings; registering twice is harmless.
    """
    with _pillow_errors():
        api._check_device(device, precision)
        if model_dirs is not None and not isinstance(model_dirs, Mapping):
            raise InputError(f"model_dirs must map model names to folders, got {type(model_dirs).__name__}")
    global _settings
    _settings = _Settings(device=device, precision=precision,
                          model_dirs={name: Path(d).expanduser() for name, d in (model_dirs or {}).items()})
    Image.register_open(FORMAT, TadmImageFile, _accept)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, EXTENSION)
    Image.register_mime(FORMAT, MIME_TYPE)
    Image.register_decoder(_DECODER, _TadmDecoder)


def _accept(prefix: bytes) -> bool:
    return container.looks_like_tadm(prefix)


class TadmImageFile(ImageFile.ImageFile):
    """A `.tadm` file opened by Pillow: header parsed at open, pixels decoded on load."""

    format = FORMAT
    format_description = "TADM extreme-ratio image (tadmcodec)"

    tadm_header: container.TadmFile
    """Everything the container holds (scale, LR codec, model number and digest, metadata)."""

    def _open(self) -> None:
        assert self.fp is not None
        # The whole file, not just the header: .tadm files are a few KB, and the CRC and
        # length checks make a damaged file fail here rather than half way through load().
        data = self.fp.read()
        with _pillow_errors():
            header = container.unpack(data, max_pixels=_UNLIMITED)
        self.tadm_header = header
        self._size = (header.width, header.height)
        self._mode = "RGB"
        self.info.update(api.header_info(header))
        self.tile = [ImageFile._Tile(_DECODER, (0, 0, header.width, header.height), 0, None)]

    def draft(self, mode: str | None, size: tuple[int, int] | None) -> tuple[str, tuple[int, int, int, int]] | None:
        """Decode at a reduced size, as JPEG's draft does: the smallest size not below `size`.

        `Image.thumbnail()` calls this, so a thumbnail of a `.tadm` file is rendered at about
        twice its size (Pillow's reducing_gap) by the model's implicit decoder when it has one
        (else by the full decode resampled), and Pillow resamples the rest. Not below a tenth of
        the original (`--zoom`'s limit); the mode stays RGB. Only before the pixels are loaded.
        """
        if size is None or getattr(self, "_im", None) is not None or not self.tile:
            return None
        from tadmcodec.codec import ZOOM_RANGE

        w, h = self.tadm_header.width, self.tadm_header.height
        scale = max(ZOOM_RANGE[0], size[0] / w, size[1] / h)
        new = (min(w, max(1, math.ceil(w * scale))), min(h, max(1, math.ceil(h * scale))))
        if scale >= 1 or new == (w, h):
            return None
        self._size = new
        self.tile = [ImageFile._Tile(_DECODER, (0, 0, *new), 0, (*new, w * h))]
        return self.mode, (0, 0, *new)


class _TadmDecoder(ImageFile.PyDecoder):
    """Runs the codec when Pillow loads the pixels; reads the file again from its start."""

    _pulls_fd = True

    def decode(self, buffer: Any) -> tuple[int, int]:
        assert self.fd is not None and self.im is not None
        width, height = self.state.xsize, self.state.ysize
        data = self.fd.read()
        # args: () for the file's own size, (width, height, original pixels) after draft()
        size, budget = (self.args[:2], self.args[2]) if self.args else (None, width * height)
        with _pillow_errors():
            codec = api.codec_for(_settings.device, _settings.precision, _settings.model_dirs)
            # The budget is the size Image.open reported and Pillow already accepted.
            decoded = codec.decode(data, max_pixels=max(1, budget), size=size)
            if decoded.pixels.shape != (height, width, 3):
                raise FormatError(f"the file changed since it was opened ({width}x{height} then)")
        self.set_as_raw(decoded.pixels.tobytes())
        return -1, 0


_SAVE_OPTIONS = ("model", "scale", "lr_codec", "effort", "flatten", "model_dir", "device", "precision", "icc_profile", "exif")


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    """Pillow's save handler: `im.save(f, model=..., scale=..., lr_codec=...)` -> `.tadm` bytes."""
    info = im.encoderinfo
    with _pillow_errors():
        data = encode_pil(im, **{k: info[k] for k in _SAVE_OPTIONS if k in info})
    fp.write(data)


def encode_pil(
    im: Image.Image,
    model: str | None = None,
    scale: int | None = None,
    *,
    lr_codec: str = "auto",
    effort: int = DEFAULT_EFFORT,
    flatten: api.Colour | None = None,
    model_dir: str | os.PathLike | None = None,
    device: str | None = None,
    precision: str | None = None,
    icc_profile: bytes | None = None,
    exif: bytes | Image.Exif | None = None,
) -> bytes:
    """What `im.save(..., format="TADM")` writes; device/precision default to `register()`'s."""
    api.check_lr_codec(lr_codec)
    codec, model_name, scale = api.prepare_encode(
        model, scale, model_dir=model_dir,
        device=_settings.device if device is None else device,
        precision=_settings.precision if precision is None else precision,
    )
    # No pixel budget: the image is already in memory (Image.open applied Pillow's own limit).
    loaded = api.load_input(im, max_pixels=_UNLIMITED, flatten=api.colour(flatten), transpose=False)
    records = []
    if icc_profile:
        records.append(container.MetadataRecord("icc", _as_bytes(icc_profile, "icc_profile")))
    if exif:
        records.append(container.MetadataRecord("exif", exif.tobytes() if isinstance(exif, Image.Exif)
                                                else _as_bytes(exif, "exif")))
    return codec.encode(loaded.pixels, model=model_name, scale=scale, lr_codec=lr_codec, metadata=tuple(records),
                        effort=effort)


def _as_bytes(value: Any, name: str) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise InputError(f"{name} must be bytes, got {type(value).__name__}")


register()
