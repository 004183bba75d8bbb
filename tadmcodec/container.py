"""Reader and writer of the `.tadm` container (spec: docs/container.md).

A `.tadm` file is a signature, a few compact header fields, optional metadata
records, the losslessly coded LR image (the payload) and a CRC-32 over all of it.
At extreme ratios the header is a noticeable part of the rate (a 768x512 photo at
32x is ~800 bytes in all), so every field is a minimal varint or a packed bit
field: a file without metadata costs 24 bytes of container overhead (dimensions
and payload length below 16384; see docs/container.md, "Overhead").

This module deliberately imports neither torch nor numpy, so `tadm info` and
input-type detection stay instant. It does not decode the payload (see
`tadmcodec.lrcodec`) and does not interpret the model id (the CLI compares it
with `tadmcodec.registry`).

Every malformed input makes `unpack` raise `FormatError` with a one-line
message; nothing is allocated beyond the size of the input itself.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from tadmcodec.errors import FormatError

MAJOR = 1
MINOR = 0
"""Version written by this module. Unknown major: refused. Newer minor: read what is known."""

SIGNATURE = b"\x89TD\r\n\x1a\n"
"""7 bytes, in PNG's style: high-bit byte, name, CR LF, ^Z, LF (see the spec for what each catches)."""

DEFAULT_MAX_PIXELS = 178_956_970
"""Pixel budget of the original image: Pillow's DecompressionBombError limit (2 x MAX_IMAGE_PIXELS);
overridable with `unpack(max_pixels=...)` (the CLI's --max-pixels)."""

DIGEST_SIZE = 4
"""Bytes of the model digest. Equals tadmcodec.registry.DIGEST_SIZE (a test checks it); not
imported from there, so that the container depends on nothing of the models."""

LR_CODECS: tuple[str, ...] = ("png", "webp", "jxl")
"""LR codec names as on the command line; the index is the 2-bit id stored in the file."""

SCALES: tuple[int, ...] = (8, 16, 32)
"""Scale factors; the index is the 2-bit code stored in the file."""

MAX_DIMENSION = 1 << 30
"""Hard format limit on the original width and height, whatever the pixel budget."""

LR_CODEC_MAX_SIDE: dict[str, int] = {"png": (1 << 31) - 1, "webp": 16383, "jxl": 1 << 30}
"""Largest LR side each inner codec can represent."""

MAX_VARINT_BYTES = 5
"""A varint longer than this is refused before it is read further (values < 2**35)."""

_MAX_FIELD = (1 << 32) - 1
"""Upper bound of every varint field that is not a dimension (lengths, ids, counts)."""

_CRC_SIZE = 4

# Flags byte: bits 0-1 scale code, 2-3 LR codec id, 4 metadata present, 5-7 reserved.
_FLAG_SCALE_MASK = 0x03
_FLAG_CODEC_SHIFT = 2
_FLAG_CODEC_MASK = 0x0C
_FLAG_METADATA = 0x10
_FLAG_RESERVED = 0xE0

# Metadata record kinds (the stored type varint is kind << 1 | critical).
_KIND_NUMBERS: dict[str, int] = {"icc": 1, "exif": 2}
_KIND_NAMES: dict[int, str] = {v: k for k, v in _KIND_NUMBERS.items()}


@dataclass(frozen=True)
class MetadataRecord:
    """One optional record: an ICC profile, EXIF data, or a kind this version does not know.

    `critical` tells a reader that does not know the kind to refuse the file
    rather than skip the record. Unknown kinds are kept as "unknown:<n>" so a
    file can be re-packed without losing them.
    """

    kind: str
    data: bytes
    critical: bool = False


@dataclass(frozen=True)
class TadmFile:
    """Everything a `.tadm` file holds, decoded from its bytes but not interpreted."""

    scale: int
    width: int
    height: int
    lr_codec: str
    model_number: int
    model_digest: bytes
    payload: bytes
    metadata: tuple[MetadataRecord, ...] = ()
    version: tuple[int, int] = (MAJOR, MINOR)

    @property
    def lr_size(self) -> tuple[int, int]:
        """(width, height) of the LR image the payload holds (ceil division, never stored)."""
        return lr_dimensions(self.width, self.height, self.scale)

    def record(self, kind: str) -> bytes | None:
        """The data of the first metadata record of `kind`, or None."""
        for r in self.metadata:
            if r.kind == kind:
                return r.data
        return None


def lr_dimensions(width: int, height: int, scale: int) -> tuple[int, int]:
    """ceil(width/scale), ceil(height/scale): the same rule as `tadmcodec.rescaler.lr_size`.

    Duplicated (one line) so the container stays free of numpy; a test checks both agree.
    """
    return -(-width // scale), -(-height // scale)


def max_payload_size(lr_width: int, lr_height: int) -> int:
    """Largest payload accepted for an LR image: twice its raw size plus 4 KiB.

    Lossless coders stay well below this even on pure noise (worst seen: 1.8x raw
    for a 7x5 image); anything larger is forged.
    """
    return 2 * 3 * lr_width * lr_height + 4096


def looks_like_tadm(prefix: bytes) -> bool:
    """True if `prefix` (the first bytes of a file, >= 7 of them) starts with the signature."""
    return bytes(prefix[: len(SIGNATURE)]) == SIGNATURE


# --- varints -----------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, least significant group first, high bit = more."""
    if value < 0:
        raise ValueError(f"varint must be >= 0, got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class _Reader:
    """Bounded cursor over the file body (everything before the CRC)."""

    def __init__(self, data: bytes, end: int, pos: int) -> None:
        self.data = data
        self.end = end
        self.pos = pos

    def take(self, n: int, what: str) -> bytes:
        # The reader stops before the last 4 bytes, the CRC-32: a file cut anywhere runs out here.
        if n > self.end - self.pos:
            raise FormatError(f"file is truncated: its {len(self.data)} bytes cannot hold the {what} and the final CRC-32")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def varint(self, what: str, limit: int) -> int:
        """Read a minimal varint of at most MAX_VARINT_BYTES bytes whose value is <= limit."""
        value = 0
        for i in range(MAX_VARINT_BYTES):
            b = self.byte(what)
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                if b == 0 and i > 0:
                    raise FormatError(f"corrupt file: over-long varint in the {what}")
                if value > limit:
                    raise FormatError(f"corrupt file: {what} {value} is out of range (max {limit})")
                return value
        raise FormatError(f"corrupt file: varint in the {what} is longer than {MAX_VARINT_BYTES} bytes")


# --- writing -----------------------------------------------------------------------------


def _kind_number(record: MetadataRecord) -> int:
    if record.kind in _KIND_NUMBERS:
        return _KIND_NUMBERS[record.kind]
    if record.kind.startswith("unknown:"):
        try:
            n = int(record.kind[len("unknown:") :])
        except ValueError:
            n = -1
        if n >= 1 and n not in _KIND_NAMES and (n << 1 | 1) <= _MAX_FIELD:
            return n
    raise ValueError(f"bad metadata record kind {record.kind!r} (icc, exif or unknown:<n>)")


def _check_fields(f: TadmFile) -> None:
    """Refuse to write anything `unpack` (at an unlimited pixel budget) would refuse."""
    major, minor = f.version
    if major != MAJOR or not 0 <= minor <= 15:
        raise ValueError(f"can only write version {MAJOR}.x (minor 0-15), got {f.version}")
    if f.scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {f.scale}")
    if f.lr_codec not in LR_CODECS:
        raise ValueError(f"LR codec must be one of {LR_CODECS}, got {f.lr_codec!r}")
    for name, v in (("width", f.width), ("height", f.height)):
        if not isinstance(v, int) or not 1 <= v <= MAX_DIMENSION:
            raise ValueError(f"{name} must be an int in 1..{MAX_DIMENSION}, got {v!r}")
    if not isinstance(f.model_number, int) or not 0 <= f.model_number <= _MAX_FIELD:
        raise ValueError(f"model number must be in 0..{_MAX_FIELD}, got {f.model_number!r}")
    if len(f.model_digest) != DIGEST_SIZE:
        raise ValueError(f"model digest must be {DIGEST_SIZE} bytes, got {len(f.model_digest)}")
    lw, lh = lr_dimensions(f.width, f.height, f.scale)
    if max(lw, lh) > LR_CODEC_MAX_SIDE[f.lr_codec]:
        raise ValueError(f"{f.lr_codec} cannot hold a {lw}x{lh} LR image")
    if not 1 <= len(f.payload) <= max_payload_size(lw, lh):
        raise ValueError(f"payload of {len(f.payload)} bytes is empty or too large for {lw}x{lh}")
    seen: set[str] = set()
    for r in f.metadata:
        _kind_number(r)
        if r.kind in _KIND_NUMBERS and r.kind in seen:
            raise ValueError(f"more than one {r.kind} metadata record")
        seen.add(r.kind)
        if len(r.data) > _MAX_FIELD:
            raise ValueError(f"{r.kind} metadata record is too large")


def pack(f: TadmFile) -> bytes:
    """Serialize `f`; raises ValueError for field values the format cannot hold."""
    _check_fields(f)
    out = bytearray(SIGNATURE)
    out.append(MAJOR << 4 | f.version[1])
    flags = SCALES.index(f.scale) | LR_CODECS.index(f.lr_codec) << _FLAG_CODEC_SHIFT
    if f.metadata:
        flags |= _FLAG_METADATA
    out.append(flags)
    out += encode_varint(f.model_number)
    out += f.model_digest
    out += encode_varint(f.width)
    out += encode_varint(f.height)
    if f.metadata:
        out += encode_varint(len(f.metadata))
        for r in f.metadata:
            out += encode_varint(_kind_number(r) << 1 | int(r.critical))
            out += encode_varint(len(r.data))
            out += r.data
    out += encode_varint(len(f.payload))
    out += f.payload
    out += zlib.crc32(out).to_bytes(_CRC_SIZE, "big")
    return bytes(out)


def overhead(f: TadmFile) -> int:
    """Container bytes of `f` beyond its payload and metadata record contents."""
    return len(pack(f)) - len(f.payload) - sum(len(r.data) for r in f.metadata)


# --- reading -----------------------------------------------------------------------------


def _check_signature(data: bytes) -> None:
    """Refuse a bad signature, naming the transfer damage when it is recognisable."""
    head = data[: len(SIGNATURE) + 1]
    if head.startswith(SIGNATURE):
        return
    if not data:
        raise FormatError("file is empty (0 bytes)")
    if len(head) < len(SIGNATURE) and SIGNATURE.startswith(head):
        raise FormatError(f"file is truncated: {len(data)} bytes, not even a whole .tadm signature")
    if head.startswith(b"\x09TD\r\n\x1a\n"):
        raise FormatError("not a usable .tadm file: its high bit was stripped (7-bit transfer)")
    if head.startswith(b"\x89TD\n\x1a\n"):
        raise FormatError("not a usable .tadm file: CR LF became LF (text-mode transfer)")
    if head.startswith(b"\x89TD\r\r\n") or head.startswith(b"\x89TD\r\n\x1a\r\n"):
        raise FormatError("not a usable .tadm file: LF became CR LF (text-mode transfer)")
    if head.startswith(b"\x89TD\r\n") and len(data) <= len(SIGNATURE):
        raise FormatError("file is truncated: it ends inside the signature")
    raise FormatError("not a .tadm file (bad signature)")


def unpack(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> TadmFile:
    """Parse and validate a whole `.tadm` file.

    Checks, in order: signature, major version, structure and lengths (truncated,
    trailing bytes), CRC-32, then field values (scale, codec, dimensions, pixel
    budget, LR size, metadata). Raises FormatError with a one-line message.
    """
    if not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FormatError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    _check_signature(data)

    body_end = len(data) - _CRC_SIZE
    r = _Reader(data, max(body_end, len(SIGNATURE)), len(SIGNATURE))
    version = r.byte("version byte")
    major, minor = version >> 4, version & 0x0F
    if major != MAJOR:
        raise FormatError(
            f"unsupported .tadm version {major}.{minor} (this tadm reads {MAJOR}.x); "
            "made by a newer tadm, or the file is corrupt"
        )
    flags = r.byte("flags byte")
    model_number = r.varint("model number", _MAX_FIELD)
    model_digest = r.take(DIGEST_SIZE, "model digest")
    width = r.varint("width", MAX_DIMENSION)
    height = r.varint("height", MAX_DIMENSION)
    raw_records: list[tuple[int, bool, bytes]] = []
    if flags & _FLAG_METADATA:
        # Each record takes at least 2 bytes, so the count is bounded by what is left.
        count = r.varint("metadata record count", _MAX_FIELD)
        if count == 0 or count > (r.end - r.pos) // 2:
            raise FormatError(f"corrupt file: bad metadata record count {count}")
        for _ in range(count):
            typ = r.varint("metadata record type", _MAX_FIELD)
            length = r.varint("metadata record length", _MAX_FIELD)
            raw_records.append((typ >> 1, bool(typ & 1), r.take(length, "metadata record data")))
    payload_len = r.varint("payload length", _MAX_FIELD)
    expected = r.pos + payload_len + _CRC_SIZE
    if expected > len(data):
        raise FormatError(f"file is truncated: {len(data)} bytes, the header declares {expected}")
    if expected < len(data):
        raise FormatError(f"{len(data) - expected} bytes of trailing garbage after the .tadm data")
    payload = data[r.pos : r.pos + payload_len]

    crc = int.from_bytes(data[body_end:], "big")
    if zlib.crc32(memoryview(data)[:body_end]) != crc:
        raise FormatError("file is corrupt (CRC-32 mismatch)")

    # Field values: reached only by files with a correct CRC (forged or from a newer minor).
    if flags & _FLAG_RESERVED and minor <= MINOR:
        raise FormatError(f"corrupt file: reserved flag bits set (flags 0x{flags:02x})")
    scale_code = flags & _FLAG_SCALE_MASK
    if scale_code >= len(SCALES):
        raise FormatError(f"unsupported scale code {scale_code} (known: 8, 16, 32)")
    codec_id = (flags & _FLAG_CODEC_MASK) >> _FLAG_CODEC_SHIFT
    if codec_id >= len(LR_CODECS):
        newer = " (file is from a newer tadm)" if minor > MINOR else ""
        raise FormatError(f"unknown LR codec id {codec_id}{newer}")
    scale, lr_codec = SCALES[scale_code], LR_CODECS[codec_id]
    if width == 0 or height == 0:
        raise FormatError(f"corrupt file: image size {width}x{height}")
    if width * height > max_pixels:
        raise FormatError(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,}; pass --max-pixels {width * height} to allow it"
        )
    lw, lh = lr_dimensions(width, height, scale)
    if max(lw, lh) > LR_CODEC_MAX_SIDE[lr_codec]:
        raise FormatError(f"corrupt file: {lr_codec} cannot hold a {lw}x{lh} LR image")
    if payload_len == 0 or payload_len > max_payload_size(lw, lh):
        raise FormatError(f"corrupt file: a {payload_len}-byte payload for a {lw}x{lh} LR image")
    metadata = _records(raw_records)

    return TadmFile(
        scale=scale,
        width=width,
        height=height,
        lr_codec=lr_codec,
        model_number=model_number,
        model_digest=model_digest,
        payload=payload,
        metadata=metadata,
        version=(major, minor),
    )


def _records(raw: list[tuple[int, bool, bytes]]) -> tuple[MetadataRecord, ...]:
    """Name known kinds, refuse unknown critical ones and duplicates, keep unknown others."""
    out: list[MetadataRecord] = []
    seen: set[int] = set()
    for number, critical, data in raw:
        if number == 0:
            raise FormatError("corrupt file: metadata record of kind 0")
        name = _KIND_NAMES.get(number)
        if name is None:
            if critical:
                raise FormatError(
                    f"file needs a newer tadm: unknown critical metadata record kind {number}"
                )
            out.append(MetadataRecord(f"unknown:{number}", data, False))
            continue
        if number in seen:
            raise FormatError(f"corrupt file: more than one {name} metadata record")
        seen.add(number)
        out.append(MetadataRecord(name, data, critical))
    return tuple(out)
