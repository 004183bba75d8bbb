"""Lossless coding of the LR image: PNG, WebP lossless, JPEG XL lossless, or the smallest.

The LR image of a `.tadm` file is tiny (48x32 px at 16x of a 768x512 photo), so
each inner codec's own framing is a real share of the rate. Every codec's
wrapper is stripped down to the entropy-coded data and rebuilt on decode from
values the container already holds (the LR size): see docs/container.md, "LR
payloads". Rebuilding also means a payload cannot declare its own image size,
so a forged file cannot make a library allocate more than the pixel budget
allowed; for JPEG XL the first frame header is additionally checked to be one
plain full-size frame before any pixel is decoded.

The decoder opens a payload only with the codec the container declares (no
sniffing), and every failure is a one-line FormatError.

Uses numpy and imagecodecs only (no torch).
"""

from __future__ import annotations

import struct
import zlib
from typing import Callable

import imagecodecs
import numpy as np

from tadmcodec.container import LR_CODEC_MAX_SIDE, LR_CODECS
from tadmcodec.errors import FormatError, InputError, TadmError

AUTO = "auto"
CHOICES: tuple[str, ...] = (AUTO, *LR_CODECS)

# Encoder settings: the highest effort that keeps a 1024x1024 LR image under ~2 s per
# codec on one CPU core (measured numbers in docs/container.md).
PNG_LEVEL = 9  # zlib level; libpng's adaptive filter choice (the default) beat every fixed filter
WEBP_LEVEL = 100  # lossless effort 0-100
WEBP_METHOD = 4  # 5 and 6 were slower and no smaller on LR images
JXL_EFFORTS: tuple[tuple[int, int], ...] = ((1 << 16, 9), (1 << 19, 7))
JXL_LARGE_EFFORT = 6  # above 2**19 pixels


def jxl_effort(pixels: int) -> int:
    """libjxl effort for an LR image of `pixels` pixels (9 up to 256x256, then 7, then 6)."""
    for limit, effort in JXL_EFFORTS:
        if pixels <= limit:
            return effort
    return JXL_LARGE_EFFORT


# --- bit-level helpers (JPEG XL packs fields LSB-first) ---------------------------------


class _BitReader:
    """LSB-first bit reader over bytes; running off the end raises FormatError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0  # in bits

    def bits(self, n: int) -> int:
        value = 0
        for i in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise FormatError("corrupt jxl payload: header cut short")
            value |= ((self.data[byte] >> (self.pos & 7)) & 1) << i
            self.pos += 1
        return value

    def u32(self, *dist: tuple[int, int]) -> int:
        """JPEG XL U32: a 2-bit selector picks (offset, extra bits)."""
        offset, nbits = dist[self.bits(2)]
        return offset + self.bits(nbits)

    def u64(self) -> int:
        sel = self.bits(2)
        if sel == 0:
            return 0
        if sel == 1:
            return 1 + self.bits(4)
        if sel == 2:
            return 17 + self.bits(8)
        value, shift = self.bits(12), 12
        while self.bits(1):
            if shift == 60:
                return value | self.bits(4) << 60
            value |= self.bits(8) << shift
            shift += 8
        return value


class _BitWriter:
    """LSB-first bit writer, the inverse of _BitReader."""

    def __init__(self) -> None:
        self.value = 0
        self.nbits = 0

    def bits(self, value: int, n: int) -> None:
        self.value |= value << self.nbits
        self.nbits += n

    def to_bytes(self) -> bytes:
        """The bits so far, zero-padded to a whole byte."""
        return self.value.to_bytes((self.nbits + 7) // 8, "little")


# --- PNG: payload = the raw DEFLATE stream of the IDAT data -------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ZLIB_HEADER = b"\x78\xda"  # deflate, 32 KiB window, "best" level; (0x78da % 31) == 0


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_ihdr(width: int, height: int) -> bytes:
    """IHDR data of an 8-bit RGB, non-interlaced PNG (the only kind we store)."""
    return struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)


def png_chunks(stream: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk of a PNG stream, checking framing and CRCs."""
    if not stream.startswith(_PNG_SIGNATURE):
        raise FormatError("not a PNG stream")
    chunks, pos = [], len(_PNG_SIGNATURE)
    while pos < len(stream):
        if len(stream) - pos < 12:
            raise FormatError("PNG stream cut short")
        (n,) = struct.unpack(">I", stream[pos : pos + 4])
        kind, data = stream[pos + 4 : pos + 8], stream[pos + 8 : pos + 8 + n]
        if len(data) != n or len(stream) < pos + 12 + n:
            raise FormatError("PNG stream cut short")
        (crc,) = struct.unpack(">I", stream[pos + 8 + n : pos + 12 + n])
        if zlib.crc32(kind + data) != crc:
            raise FormatError(f"PNG chunk {kind!r} has a bad CRC")
        chunks.append((kind, data))
        pos += 12 + n
    return chunks


def png_size(stream: bytes) -> tuple[int, int]:
    """(width, height) a full PNG stream declares in its IHDR, read without decoding."""
    if len(stream) < 24 or not stream.startswith(_PNG_SIGNATURE) or stream[12:16] != b"IHDR":
        raise FormatError("not a PNG stream")
    return struct.unpack(">II", stream[16:24])


def _png_strip(stream: bytes, width: int, height: int) -> bytes:
    """libpng output -> raw DEFLATE data (no signature, IHDR, IEND, chunk framing, zlib wrapper)."""
    chunks = png_chunks(stream)
    kinds = [k for k, _ in chunks]
    if (
        kinds[0] != b"IHDR"
        or chunks[0][1] != _png_ihdr(width, height)
        or kinds[-1] != b"IEND"
        or set(kinds[1:-1]) != {b"IDAT"}
    ):
        raise TadmError(f"libpng wrote an unexpected chunk layout {kinds}; cannot store it")
    zdata = b"".join(d for k, d in chunks if k == b"IDAT")
    cmf, flg = zdata[0], zdata[1]
    if cmf & 0x0F != 8 or flg & 0x20 or (cmf << 8 | flg) % 31:
        raise TadmError("libpng wrote an unexpected zlib header; cannot store it")
    return zdata[2:-4]


def _png_rebuild(payload: bytes, width: int, height: int) -> bytes:
    """Raw DEFLATE payload -> a complete PNG of the given size.

    The payload is inflated here first (bounded by the exact size an 8-bit RGB
    image of this size has after filtering) to check it and to recompute the
    Adler-32 the zlib wrapper needs.
    """
    expected = height * (1 + 3 * width)
    inflater = zlib.decompressobj(-15)
    try:
        raw = inflater.decompress(payload, expected + 1)
    except zlib.error as exc:
        raise FormatError(f"corrupt png payload: {exc}") from None
    if len(raw) != expected or not inflater.eof or inflater.unused_data or inflater.unconsumed_tail:
        raise FormatError(f"corrupt png payload: does not hold a {width}x{height} image")
    zdata = _ZLIB_HEADER + payload + struct.pack(">I", zlib.adler32(raw))
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", _png_ihdr(width, height))
        + _png_chunk(b"IDAT", zdata)
        + _png_chunk(b"IEND", b"")
    )


def _png_encode(lr: np.ndarray) -> bytes:
    h, w = lr.shape[:2]
    return _png_strip(imagecodecs.png_encode(lr, level=PNG_LEVEL), w, h)


def _png_decode(payload: bytes, width: int, height: int) -> np.ndarray:
    return imagecodecs.png_decode(_png_rebuild(payload, width, height))


# --- WebP lossless: payload = the VP8L bitstream after its 5-byte header ------------------


def _vp8l_header(width: int, height: int) -> bytes:
    """0x2F, then width-1 (14 bits), height-1 (14 bits), alpha_is_used=0, version=0 (3 bits)."""
    return b"\x2f" + ((width - 1) | (height - 1) << 14).to_bytes(4, "little")


def webp_size(stream: bytes) -> tuple[int, int]:
    """(width, height) a simple lossless WebP (RIFF/WEBP/VP8L) declares, read without decoding."""
    if len(stream) < 25 or stream[:4] != b"RIFF" or stream[8:16] != b"WEBPVP8L" or stream[20] != 0x2F:
        raise FormatError("not a lossless WebP stream")
    bits = int.from_bytes(stream[21:25], "little")
    return (bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1


def _webp_strip(stream: bytes, width: int, height: int) -> bytes:
    """libwebp output -> VP8L data without RIFF header, chunk header, pad byte and VP8L header."""
    if len(stream) < 25 or stream[:4] != b"RIFF" or stream[8:16] != b"WEBPVP8L":
        raise TadmError("libwebp wrote an unexpected file layout; cannot store it")
    (riff_size,) = struct.unpack("<I", stream[4:8])
    (n,) = struct.unpack("<I", stream[16:20])
    if riff_size != len(stream) - 8 or len(stream) != 20 + n + (n & 1):
        raise TadmError("libwebp wrote unexpected RIFF sizes; cannot store it")
    if stream[20:25] != _vp8l_header(width, height):
        raise TadmError("libwebp wrote an unexpected VP8L header; cannot store it")
    return stream[25 : 20 + n]


def _webp_rebuild(payload: bytes, width: int, height: int) -> bytes:
    vp8l = _vp8l_header(width, height) + payload
    n = len(vp8l)
    pad = b"\0" * (n & 1)
    return b"RIFF" + struct.pack("<I", 12 + n + len(pad)) + b"WEBPVP8L" + struct.pack("<I", n) + vp8l + pad


def _webp_encode(lr: np.ndarray) -> bytes:
    h, w = lr.shape[:2]
    stream = imagecodecs.webp_encode(lr, lossless=True, level=WEBP_LEVEL, method=WEBP_METHOD)
    return _webp_strip(stream, w, h)


def _webp_decode(payload: bytes, width: int, height: int) -> np.ndarray:
    return imagecodecs.webp_decode(_webp_rebuild(payload, width, height), hasalpha=False)


# --- JPEG XL lossless: payload = the codestream from the first frame header on ------------

_JXL_SIGNATURE = b"\xff\x0a"
_JXL_DIM = ((1, 9), (1, 13), (1, 18), (1, 30))  # U32 distribution of a dimension
_JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}
# ImageMetadata of an 8-bit sRGB RGB image without alpha, extra fields, or XYB, as
# (value, bits) in order: all_default, extra_fields, float_sample, bits_per_sample
# selector (0 = 8 bits), modular_16_bit_buffers, num_extra_channels selector (0 = none),
# xyb_encoded, colour_encoding.all_default (sRGB), extensions selector, default_m.
_JXL_METADATA = ((0, 1), (0, 1), (0, 1), (0, 2), (1, 1), (0, 2), (0, 1), (1, 1), (0, 2), (1, 1))
_JXL_FLAG_USE_LF_FRAME = 32


def _jxl_read_size(br: _BitReader) -> tuple[int, int]:
    """Read a SizeHeader: (width, height)."""
    if br.bits(1):  # small: multiples of 8 up to 256
        height = 8 * (1 + br.bits(5))
        ratio = br.bits(3)
        width = 8 * (1 + br.bits(5)) if ratio == 0 else 0
    else:
        height = br.u32(*_JXL_DIM)
        ratio = br.bits(3)
        width = br.u32(*_JXL_DIM) if ratio == 0 else 0
    if ratio:
        num, den = _JXL_RATIOS[ratio]
        width = height * num // den
    return width, height


def jxl_size(stream: bytes) -> tuple[int, int]:
    """(width, height) a bare JPEG XL codestream declares in its SizeHeader, read without decoding."""
    if not stream.startswith(_JXL_SIGNATURE):
        raise FormatError("not a bare JPEG XL codestream")
    br = _BitReader(stream)
    br.pos = 16
    return _jxl_read_size(br)


def _jxl_header(width: int, height: int) -> bytes:
    """Signature, SizeHeader (explicit sizes, no ratio), fixed ImageMetadata, zero padding."""
    bw = _BitWriter()
    for v, n in ((0xFF, 8), (0x0A, 8), (0, 1)):
        bw.bits(v, n)
    for i, dim in enumerate((height, width)):
        sel = next(s for s, (_, nb) in enumerate(_JXL_DIM) if dim - 1 < 1 << nb)
        bw.bits(sel, 2)
        bw.bits(dim - 1, _JXL_DIM[sel][1])
        if i == 0:
            bw.bits(0, 3)  # ratio 0: the width follows explicitly
    for v, n in _JXL_METADATA:
        bw.bits(v, n)
    return bw.to_bytes()


def _jxl_strip(stream: bytes, width: int, height: int) -> bytes:
    """libjxl output -> codestream from the first frame on, after checking the header we drop."""
    if not stream.startswith(_JXL_SIGNATURE):
        raise TadmError("libjxl did not write a bare codestream; cannot store it")
    br = _BitReader(stream)
    br.pos = 16
    if _jxl_read_size(br) != (width, height):
        raise TadmError("libjxl wrote an unexpected image size; cannot store it")
    for v, n in _JXL_METADATA:
        if br.bits(n) != v:
            raise TadmError("libjxl wrote unexpected image metadata; cannot store it")
    if br.bits(-br.pos % 8):
        raise TadmError("libjxl wrote non-zero header padding; cannot store it")
    payload = stream[br.pos // 8 :]
    check_jxl_frame(payload)
    return payload


def check_jxl_frame(payload: bytes) -> None:
    """Refuse a payload unless its first frame is one plain, full-size, last frame.

    The rebuilt header fixes the image size, but a frame header may still ask for
    a cropped (larger) frame, upsampling, or further frames; none of that is made
    by our encoder, so it is refused here before libjxl allocates anything.
    """
    br = _BitReader(payload)
    if br.bits(1):  # all_default: a single regular full-size frame
        return
    if br.bits(2) != 0:
        raise FormatError("corrupt jxl payload: first frame is not a regular frame")
    encoding = br.bits(1)
    flags = br.u64()
    if flags & _JXL_FLAG_USE_LF_FRAME:
        raise FormatError("corrupt jxl payload: frame uses an LF frame")
    if br.bits(1):
        raise FormatError("corrupt jxl payload: YCbCr frame in a lossless RGB image")
    if br.bits(2) != 0:
        raise FormatError("corrupt jxl payload: upsampled frame")
    if encoding == 1:
        br.bits(2)  # group_size_shift
    if br.bits(2) != 0:
        raise FormatError("corrupt jxl payload: progressive passes")
    if br.bits(1):
        raise FormatError("corrupt jxl payload: cropped frame")
    if br.bits(2) != 0:
        raise FormatError("corrupt jxl payload: blended frame")
    if not br.bits(1):
        raise FormatError("corrupt jxl payload: more than one frame")


def _jxl_encode(lr: np.ndarray) -> bytes:
    h, w = lr.shape[:2]
    stream = imagecodecs.jpegxl_encode(lr, lossless=True, effort=jxl_effort(w * h))
    return _jxl_strip(stream, w, h)


def _jxl_decode(payload: bytes, width: int, height: int) -> np.ndarray:
    check_jxl_frame(payload)
    return imagecodecs.jpegxl_decode(_jxl_header(width, height) + payload)


# --- public API ---------------------------------------------------------------------------

_ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {
    "png": _png_encode,
    "webp": _webp_encode,
    "jxl": _jxl_encode,
}
_DECODERS: dict[str, Callable[[bytes, int, int], np.ndarray]] = {
    "png": _png_decode,
    "webp": _webp_decode,
    "jxl": _jxl_decode,
}


def _check_image(lr: np.ndarray) -> None:
    if not isinstance(lr, np.ndarray) or lr.dtype != np.uint8 or lr.ndim != 3 or lr.shape[2] != 3:
        desc = f"{lr.dtype} {lr.shape}" if isinstance(lr, np.ndarray) else type(lr).__name__
        raise ValueError(f"LR image must be a uint8 (H, W, 3) array, got {desc}")
    if lr.shape[0] < 1 or lr.shape[1] < 1:
        raise ValueError(f"LR image is empty: {lr.shape}")


def encode_lr(lr: np.ndarray, codec: str = AUTO) -> tuple[str, bytes]:
    """Losslessly code an LR image; returns (codec used, payload).

    `auto` encodes with every codec that can hold the image and keeps the
    smallest (ties go to the earlier of png, webp, jxl). The chosen payload is
    decoded again and compared with the input, so a wrapper-stripping mistake
    can never produce a file that does not decode to the same pixels.
    """
    if codec not in CHOICES:
        raise InputError(f"unknown LR codec {codec!r} (choose from {', '.join(CHOICES)})")
    _check_image(lr)
    lr = np.ascontiguousarray(lr)
    h, w = lr.shape[:2]
    names = LR_CODECS if codec == AUTO else (codec,)
    fits = [c for c in names if max(w, h) <= LR_CODEC_MAX_SIDE[c]]
    if not fits:
        raise InputError(f"the {codec} LR codec cannot hold a {w}x{h} LR image (max side "
                         f"{LR_CODEC_MAX_SIDE[codec]}); use --lr-codec auto")
    best: tuple[str, bytes] | None = None
    for name in fits:
        payload = _ENCODERS[name](lr)
        if best is None or len(payload) < len(best[1]):
            best = (name, payload)
    assert best is not None
    if not np.array_equal(decode_lr(best[0], best[1], w, h), lr):
        raise TadmError(f"internal error: the {best[0]} LR payload does not decode losslessly")
    return best


def decode_lr(codec: str, payload: bytes, width: int, height: int) -> np.ndarray:
    """Decode a payload with the codec the container declares into (height, width, 3) uint8.

    `width` x `height` is the LR size derived from the container
    (`lr_size(W, H, scale)`); the payload carries no size of its own, so nothing
    larger can be decoded. Any failure is a one-line FormatError.
    """
    if codec not in _DECODERS:
        raise FormatError(f"unknown LR codec {codec!r}")
    if not (1 <= width <= LR_CODEC_MAX_SIDE[codec] and 1 <= height <= LR_CODEC_MAX_SIDE[codec]):
        raise FormatError(f"{codec} cannot hold a {width}x{height} LR image")
    if not payload:
        raise FormatError(f"empty {codec} payload")
    try:
        image = _DECODERS[codec](bytes(payload), width, height)
    except TadmError:
        raise
    except Exception as exc:  # imagecodecs raises RuntimeError/ValueError subclasses
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FormatError(f"corrupt {codec} payload: {first}") from None
    if image.dtype != np.uint8 or image.shape != (height, width, 3):
        raise FormatError(
            f"corrupt {codec} payload: decoded to {image.dtype} {image.shape}, "
            f"expected {(height, width, 3)}"
        )
    return np.ascontiguousarray(image)
