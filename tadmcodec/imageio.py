"""Reading user images into 8-bit RGB and writing decoded images, through Pillow.

Everything a camera or editor hands us is normalised here so the codec only
ever sees uint8 (H, W, 3): EXIF orientation applied, grey and palette images
expanded, 16-bit reduced to 8-bit (with a warning), alpha refused unless the
user asks to flatten it. No torch.
"""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

from tadmcodec import container
from tadmcodec.errors import InputError, TadmError

# Pillow's own decompression-bomb limit is switched off around Image.open only (we
# check our --max-pixels budget right after, before decoding); the lock keeps
# concurrent --jobs threads from seeing each other's setting.
_OPEN_LOCK = threading.Lock()

OUTPUT_FORMATS = {
    ".png": "PNG",
    ".webp": "WEBP",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".ppm": "PPM",
}
"""Output extension -> Pillow format for decoded images."""

INPUT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm", ".pnm")
"""Extensions picked up when a directory is given to `tadm encode`."""


@dataclass
class LoadedImage:
    pixels: np.ndarray  # (H, W, 3) uint8
    icc: bytes | None = None
    exif: bytes | None = None
    notes: list[str] = field(default_factory=list)  # warnings for the user (16-bit reduced...)


def parse_colour(text: str) -> tuple[int, int, int]:
    """'white', '#808080', 'rgb(1,2,3)' -> (r, g, b); InputError if Pillow does not know it."""
    try:
        rgb = ImageColor.getrgb(text)
    except ValueError:
        raise InputError(f"--flatten: unknown colour {text!r} (use a name such as white or #rrggbb)") from None
    return rgb[0], rgb[1], rgb[2]


def load_image(data: bytes, *, max_pixels: int, flatten: tuple[int, int, int] | None = None) -> LoadedImage:
    """Decode image bytes to 8-bit RGB, refusing what cannot be coded faithfully."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        raise InputError("not an image file Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot read image: {_one_line(exc)}") from None
    return from_pil(img, max_pixels=max_pixels, flatten=flatten, data=data)


def from_pil(
    img: Image.Image,
    *,
    max_pixels: int,
    flatten: tuple[int, int, int] | None = None,
    transpose: bool = True,
    data: bytes = b"",
) -> LoadedImage:
    """Normalise a (possibly not yet loaded) Pillow image to 8-bit RGB, as `tadm encode` does.

    Shared by `load_image` and the Python API, so a file, its bytes and the
    Image that Pillow opens from it all become the same pixels. The pixel budget
    is checked before `img.load()`, so a lazily opened bomb is never decoded.
    `transpose=False` keeps the pixels as they are (the Pillow save handler:
    Pillow writers never apply EXIF orientation). `data`, the file's bytes when
    known, lets a 16-bit PNG be noticed (Pillow reduces 16-bit RGB silently).
    """
    w, h = img.size
    if w < 1 or h < 1:
        raise InputError(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise InputError(f"image is {w}x{h} = {w * h} pixels, over the budget of {max_pixels} (raise it with --max-pixels)")
    notes: list[str] = []
    try:
        img.load()
        icc = img.info.get("icc_profile") or None
        exif_bytes = img.info.get("exif") or None
        if transpose:
            img = ImageOps.exif_transpose(img) or img
    except TadmError:  # a lazily opened .tadm image (tadmcodec.pillow) failing in load(): keep its type
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot decode image: {_one_line(exc)}") from None
    if exif_bytes is not None and transpose:
        exif_bytes = _exif_without_orientation(img, exif_bytes)
    pixels = _to_rgb8(img, flatten, notes, _bit_depth(data, img))
    return LoadedImage(pixels=pixels, icc=icc, exif=exif_bytes, notes=notes)


def _to_rgb8(img: Image.Image, flatten: tuple[int, int, int] | None, notes: list[str], depth: int) -> np.ndarray:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or depth == 16 or arr.max() > 255 else 255.0
        if top > 255:
            notes.append("16-bit image reduced to 8 bits")
        grey = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if depth == 16:
        notes.append("16-bit image reduced to 8 bits")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        if alpha.min() < 255:
            if flatten is None:
                raise InputError("image has transparency; the codec stores no alpha: add --flatten COLOUR (e.g. --flatten white)")
            background = Image.new("RGBA", rgba.size, flatten + (255,))
            rgba = Image.alpha_composite(background, rgba)
        img = rgba.convert("RGB")
    elif mode != "RGB":
        try:
            img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
        except (ValueError, OSError) as exc:
            raise InputError(f"cannot convert {mode} image to RGB: {_one_line(exc)}") from None
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _bit_depth(data: bytes, img: Image.Image) -> int:
    """Bits per sample where Pillow silently reduces them (16-bit RGB PNG and TIFF)."""
    if img.format == "PNG" and len(data) > 24:
        return data[24]  # IHDR bit depth, right after the signature, length, type, width, height
    if img.format == "TIFF":
        bits = img.tag_v2.get(258) if hasattr(img, "tag_v2") else None  # BitsPerSample
        if isinstance(bits, tuple):
            return max(bits)
        if isinstance(bits, int):
            return bits
    return 8


def _exif_without_orientation(img: Image.Image, exif_bytes: bytes) -> bytes:
    """EXIF to carry over: orientation is already applied to the pixels, so it must go."""
    try:
        exif = Image.Exif()
        exif.load(exif_bytes)
        exif.pop(0x0112, None)
        return exif.tobytes()
    except Exception:  # malformed EXIF from a camera: carry it as it was rather than fail the file
        return exif_bytes


def save_image(pixels: np.ndarray, fmt: str, *, icc: bytes | None = None, exif: bytes | None = None) -> bytes:
    """Encode a decoded image in a Pillow format, restoring ICC/EXIF where the format holds them."""
    img = Image.fromarray(pixels, "RGB")
    kwargs: dict = {}
    if icc and fmt in ("PNG", "WEBP", "JPEG", "TIFF"):
        kwargs["icc_profile"] = icc
    if exif and fmt in ("PNG", "WEBP", "JPEG", "TIFF"):
        kwargs["exif"] = exif
    if fmt == "JPEG":
        kwargs.update(quality=95, subsampling=0, optimize=True)
    elif fmt == "WEBP":
        kwargs.update(lossless=True, method=4)
    elif fmt == "PNG":
        kwargs.update(compress_level=6)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def output_format(name: str, default: str = "PNG") -> str:
    """Pillow format for an output file name (by extension), or `default` for '-'."""
    if name == "-":
        return default
    ext = name[name.rfind(".") :].lower() if "." in name else ""
    try:
        return OUTPUT_FORMATS[ext]
    except KeyError:
        known = ", ".join(sorted({e.lstrip('.') for e in OUTPUT_FORMATS}))
        raise InputError(f"cannot tell the output format from {name!r}: use one of .{known.replace(', ', ', .')}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def metadata_records(img: LoadedImage, which: str) -> tuple[container.MetadataRecord, ...]:
    """The ICC/EXIF records to store for `--metadata which` (none, icc, exif, all)."""
    records = []
    if which in ("icc", "all") and img.icc:
        records.append(container.MetadataRecord(kind="icc", data=img.icc))
    if which in ("exif", "all") and img.exif:
        records.append(container.MetadataRecord(kind="exif", data=img.exif))
    return tuple(records)
