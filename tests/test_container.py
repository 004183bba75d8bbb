"""The `.tadm` container: every field, every error path, golden bytes (spec: docs/container.md)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from tadmcodec import container as C
from tadmcodec.container import (
    DEFAULT_MAX_PIXELS,
    MAJOR,
    MINOR,
    SIGNATURE,
    MetadataRecord,
    TadmFile,
    encode_varint,
    looks_like_tadm,
    pack,
    unpack,
)
from tadmcodec.errors import FormatError

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
_spec = importlib.util.spec_from_file_location("golden_spec", GOLDEN_DIR / "golden_spec.py")
golden_spec = importlib.util.module_from_spec(_spec)
assert _spec.loader is not None
_spec.loader.exec_module(golden_spec)

DIGEST = bytes.fromhex("01020304")


def make(**kw) -> TadmFile:
    fields = dict(
        scale=32, width=768, height=512, lr_codec="jxl", model_number=1, model_digest=DIGEST,
        payload=bytes(range(256)) * 3,
    )
    fields.update(kw)
    return TadmFile(**fields)


def with_crc(body: bytes) -> bytes:
    """A forged file: arbitrary body plus a correct CRC, so field checks are reached."""
    return body + zlib.crc32(body).to_bytes(4, "big")


def header(version: int = MAJOR << 4 | MINOR, flags: int = 0x02 | 2 << 2, model: bytes = b"\x01",
           digest: bytes = DIGEST, width: int = 768, height: int = 512) -> bytes:
    return SIGNATURE + bytes([version, flags]) + model + digest + encode_varint(width) + encode_varint(height)


def refused(data: bytes, match: str, **kw) -> str:
    with pytest.raises(FormatError, match=match) as info:
        unpack(data, **kw)
    msg = str(info.value)
    assert "\n" not in msg and msg
    return msg


# --- round trips of every field -----------------------------------------------------------


@pytest.mark.parametrize("scale", C.SCALES)
@pytest.mark.parametrize("codec", C.LR_CODECS)
def test_scale_and_codec_round_trip(scale: int, codec: str) -> None:
    f = make(scale=scale, lr_codec=codec)
    assert unpack(pack(f)) == f


@pytest.mark.parametrize("w,h", [(1, 1), (1, 5000), (127, 128), (16383, 16384), (C.MAX_DIMENSION, 1)])
def test_dimensions_round_trip(w: int, h: int) -> None:
    f = make(width=w, height=h, scale=32, lr_codec="png")
    assert unpack(pack(f), max_pixels=w * h) == f


@pytest.mark.parametrize("number", [0, 1, 4, 127, 128, 300, 2**32 - 1])
def test_model_number_round_trips(number: int) -> None:
    f = make(model_number=number)
    assert unpack(pack(f)).model_number == number


def test_digest_is_stored_verbatim_and_matches_the_registry_size() -> None:
    from tadmcodec import registry

    assert C.DIGEST_SIZE == registry.DIGEST_SIZE
    assert unpack(pack(make(model_digest=b"\xff\x00\xaa\x55"))).model_digest == b"\xff\x00\xaa\x55"


def test_lr_size_agrees_with_the_rescaler() -> None:
    from tadmcodec.rescaler import lr_size

    for w, h, s in [(768, 512, 16), (769, 513, 32), (1, 1, 8), (100, 75, 32)]:
        assert C.lr_dimensions(w, h, s) == lr_size(w, h, s)
        assert make(width=w, height=h, scale=s).lr_size == lr_size(w, h, s)


def test_metadata_round_trip_and_lookup() -> None:
    md = (
        MetadataRecord("icc", b"\x00" * 3000),
        MetadataRecord("exif", b"Exif\0\0II*\0"),
        MetadataRecord("unknown:77", b"future", critical=False),
    )
    f = make(metadata=md)
    g = unpack(pack(f))
    assert g == f
    assert g.record("icc") == b"\x00" * 3000 and g.record("exif") == b"Exif\0\0II*\0"
    assert g.record("nothing") is None


def test_known_kind_may_be_marked_critical() -> None:
    f = make(metadata=(MetadataRecord("icc", b"p", critical=True),))
    assert unpack(pack(f)).metadata[0].critical


def test_empty_metadata_record_is_allowed() -> None:
    f = make(metadata=(MetadataRecord("exif", b""),))
    assert unpack(pack(f)) == f


def test_varint_encoding() -> None:
    assert encode_varint(0) == b"\x00"
    assert encode_varint(127) == b"\x7f"
    assert encode_varint(128) == b"\x80\x01"
    assert encode_varint(768) == b"\x80\x06"
    assert encode_varint(2**35 - 1) == b"\xff\xff\xff\xff\x7f"
    with pytest.raises(ValueError):
        encode_varint(-1)


def test_byte_layout_of_a_minimal_file() -> None:
    f = make(width=5, height=3, scale=8, lr_codec="png", model_number=2, payload=b"P")
    data = pack(f)
    body = SIGNATURE + bytes([0x10, 0x00, 0x02]) + DIGEST + b"\x05\x03" + b"\x01P"
    assert data == body + zlib.crc32(body).to_bytes(4, "big")


def test_flags_byte_layout() -> None:
    data = pack(make(scale=16, lr_codec="webp", metadata=(MetadataRecord("exif", b"x"),)))
    assert data[len(SIGNATURE)] == 0x10  # version 1.0
    assert data[len(SIGNATURE) + 1] == 0x01 | 1 << 2 | 0x10


# --- overhead budget -----------------------------------------------------------------------


def test_overhead_is_24_bytes_for_a_realistic_file() -> None:
    """768x512 at 32x: LR 24x16, the payload is ~600-900 bytes (jxl). The issue's budget is 24."""
    f = make(scale=32, width=768, height=512, payload=b"\x55" * 800)
    assert C.overhead(f) == 24 == len(pack(f)) - 800


@pytest.mark.parametrize("scale,w,h,n", [(16, 768, 512, 3000), (8, 1920, 1080, 16383), (32, 4000, 3000, 9000)])
def test_overhead_within_budget_across_scales(scale: int, w: int, h: int, n: int) -> None:
    assert C.overhead(make(scale=scale, width=w, height=h, payload=b"\1" * n)) <= 24


def test_metadata_costs_only_its_framing() -> None:
    f = make(payload=b"\1" * 800, metadata=(MetadataRecord("icc", b"\0" * 500),))
    assert C.overhead(f) == 24 + 1 + 1 + 2  # count, type, 2-byte length


def test_overhead_of_the_metadata_golden_file_is_28_bytes_as_the_spec_says() -> None:
    """docs/container.md section 11: 78 bytes = 32 payload + 18 record data + 28 overhead.

    Record data is not overhead (tadm info lists it apart); its count, type and length
    varints are: 21 bytes as small-png.tadm, + 1 count + 3 x (type + length).
    """
    data = (GOLDEN_DIR / "small-jxl-metadata.tadm").read_bytes()
    f = unpack(data)
    record_data = sum(len(r.data) for r in f.metadata)
    assert (len(data), len(f.payload), record_data) == (78, 32, 18)
    assert C.overhead(f) == 28 == len(data) - len(f.payload) - record_data
    assert C.overhead(unpack((GOLDEN_DIR / "small-png.tadm").read_bytes())) + 1 + 3 * 2 == 28
    doc = (Path(__file__).resolve().parent.parent / "docs" / "container.md").read_text()
    section = doc[doc.index("## 11. Overhead"):doc.index("## 12.")]
    assert "78 bytes = 32\npayload + 18 record data (ICC 8, EXIF 8, kind 9 2) + **28 overhead**" in section


# --- golden files ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(golden_spec.GOLDEN))
def test_golden_file_parses_to_the_known_fields_and_repacks_identically(name: str) -> None:
    data = (GOLDEN_DIR / name).read_bytes()
    f = unpack(data)
    expected = golden_spec.GOLDEN[name]
    for key, value in expected.items():
        assert getattr(f, key) == value, key
    assert f.metadata == expected.get("metadata", ())
    assert f.version == (1, 0)
    assert pack(f) == data


def test_golden_png_bytes_are_the_documented_example() -> None:
    """The hex dump in docs/container.md; pinned here so the spec and the code cannot drift."""
    data = (GOLDEN_DIR / "small-png.tadm").read_bytes()
    assert data.hex(" ") == (
        "89 54 44 0d 0a 1a 0a"  # signature
        " 10"  # version 1.0
        " 02"  # flags: scale code 2 (32x), codec 0 (png), no metadata
        " 00"  # model number 0 (bicubic)
        " ea ca ef 03"  # model digest
        " 64 4b"  # width 100, height 75
        " 14"  # payload length 20
        " 63 64 60 60 b0 61 90 83 20 16 86 14 39 06 06 28 42 e1 00 00"  # raw DEFLATE
        " 71 09 79 d2"  # CRC-32
    )
    doc = (Path(__file__).resolve().parent.parent / "docs" / "container.md").read_text()
    assert "89 54 44 0d 0a 1a 0a" in doc and "71 09 79 d2" in doc


# --- signature --------------------------------------------------------------------------------


def test_looks_like_tadm() -> None:
    data = pack(make())
    assert looks_like_tadm(data) and looks_like_tadm(data[:7])
    assert not looks_like_tadm(b"\x89PNG\r\n\x1a\n") and not looks_like_tadm(data[:6])
    assert not looks_like_tadm(b"")


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda d: bytes([d[0] & 0x7F]) + d[1:], "high bit was stripped"),
        (lambda d: d.replace(b"\r\n", b"\n", 1), "CR LF became LF"),
        (lambda d: d[:6] + b"\r\n" + d[7:], "LF became CR LF"),
        (lambda d: d[:5], "truncated"),
        (lambda d: d[:6], "truncated"),
        (lambda d: b"", "file is empty"),
        (lambda d: b"\x89PNG\r\n\x1a\n" + d[8:], "not a .tadm file"),
        (lambda d: b"GIF89a" + d, "not a .tadm file"),
    ],
)
def test_signature_damage_is_named(damage, match: str) -> None:
    refused(damage(pack(make())), match)


def test_ctrl_z_truncation_is_caught() -> None:
    data = pack(make())
    refused(data[: data.index(b"\x1a")], "truncated")
    refused(data[: data.index(b"\x1a") + 1], "truncated")


# --- versions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("major", [0, 2, 15])
def test_unknown_major_is_refused(major: int) -> None:
    body = header(version=major << 4) + b"\x01P"
    msg = refused(with_crc(body), "unsupported .tadm version")
    assert f"{major}.0" in msg


def test_newer_minor_reads_what_is_known() -> None:
    f = make(version=(MAJOR, MINOR + 1), metadata=(MetadataRecord("unknown:40", b"new stuff"),))
    data = bytearray(pack(f))
    data[len(SIGNATURE) + 1] |= 0xE0  # a newer minor may use the reserved flag bits
    data = with_crc(bytes(data[:-4]))
    g = unpack(data)
    assert g.version == (MAJOR, MINOR + 1)
    assert (g.width, g.height, g.scale, g.lr_codec, g.payload) == (f.width, f.height, f.scale, f.lr_codec, f.payload)
    assert g.metadata == (MetadataRecord("unknown:40", b"new stuff"),)


def test_reserved_flag_bits_are_refused_in_the_current_minor() -> None:
    refused(with_crc(header(flags=0x02 | 2 << 2 | 0x20) + b"\x01P"), "reserved flag bits")


def test_unknown_codec_in_newer_minor_names_the_reason() -> None:
    refused(with_crc(header(version=MAJOR << 4 | MINOR + 1, flags=0x02 | 3 << 2) + b"\x01P"), "newer tadm")


# --- field values ---------------------------------------------------------------------------------


def test_bad_scale_code_is_refused() -> None:
    refused(with_crc(header(flags=0x03 | 2 << 2) + b"\x01P"), "unsupported scale code 3")


def test_unknown_codec_id_is_refused() -> None:
    refused(with_crc(header(flags=0x02 | 3 << 2) + b"\x01P"), "unknown LR codec id 3")


@pytest.mark.parametrize("w,h", [(0, 512), (768, 0), (0, 0)])
def test_zero_dimensions_are_refused(w: int, h: int) -> None:
    refused(with_crc(header(width=w, height=h) + b"\x01P"), "image size")


def test_oversized_dimension_is_refused_before_the_pixel_budget() -> None:
    refused(with_crc(header(width=C.MAX_DIMENSION + 1, height=1) + b"\x01P"), "out of range")


def test_pixel_budget_refusal_says_how_to_override() -> None:
    f = make(width=20000, height=10000, scale=32, lr_codec="png", payload=b"\1" * 100)
    data = pack(f)
    msg = refused(data, "over the limit of 178,956,970")
    assert "--max-pixels 200000000" in msg
    assert unpack(data, max_pixels=200_000_000) == f
    refused(data, "over the limit of 199,999,999", max_pixels=199_999_999)


def test_default_pixel_budget_is_pillows() -> None:
    from PIL import Image

    # Pillow warns above MAX_IMAGE_PIXELS and refuses (DecompressionBombError) above twice that.
    assert DEFAULT_MAX_PIXELS == 178_956_970 == 2 * Image.MAX_IMAGE_PIXELS


def test_bad_max_pixels_argument() -> None:
    with pytest.raises(ValueError):
        unpack(pack(make()), max_pixels=0)


def test_lr_too_large_for_webp_is_refused() -> None:
    body = header(flags=0x00 | 1 << 2, width=8 * 16384, height=8) + b"\x01P"
    refused(with_crc(body), "webp cannot hold a 16384x1", max_pixels=10**9)


def test_forged_60000_square_image_is_refused_by_the_budget() -> None:
    body = header(flags=0x02 | 0 << 2, width=60000 * 32, height=60000 * 32) + b"\x01P"
    refused(with_crc(body), "pixel", max_pixels=DEFAULT_MAX_PIXELS)


def test_payload_larger_than_the_lr_image_could_need_is_refused() -> None:
    lw, lh = C.lr_dimensions(64, 64, 32)
    n = C.max_payload_size(lw, lh) + 1
    refused(with_crc(header(width=64, height=64) + encode_varint(n) + b"\0" * n), "payload for a 2x2")


def test_empty_payload_is_refused() -> None:
    refused(with_crc(header() + b"\x00"), "0-byte payload")


# --- structure ---------------------------------------------------------------------------------


def test_trailing_garbage_is_refused() -> None:
    refused(pack(make()) + b"\0\0\0", "3 bytes of trailing garbage")


@pytest.mark.parametrize("cut", [1, 4, 5, 100, 790])
def test_truncation_is_refused(cut: int) -> None:
    data = pack(make())
    refused(data[:-cut], "truncated")


@pytest.mark.parametrize(
    "length,message",
    [
        (0, "file is empty (0 bytes)"),
        (5, "file is truncated: 5 bytes, not even a whole .tadm signature"),
        (8, "file is truncated: its 8 bytes cannot hold the version byte and the final CRC-32"),
        (12, "file is truncated: its 12 bytes cannot hold the flags byte and the final CRC-32"),
        (16, "file is truncated: its 16 bytes cannot hold the model digest and the final CRC-32"),
        (30, "file is truncated: its 30 bytes cannot hold the metadata record data and the final CRC-32"),
        (77, "file is truncated: 77 bytes, the header declares 78"),
    ],
)
def test_truncation_messages_read_as_sentences(length: int, message: str) -> None:
    """Each cut names what the file is too short for, in words (issue 17: not "(in the version)")."""
    data = (GOLDEN_DIR / "small-jxl-metadata.tadm").read_bytes()
    assert refused(data[:length], "truncated|empty") == message


def test_crc_mismatch_is_refused() -> None:
    data = bytearray(pack(make()))
    data[40] ^= 0x01
    refused(bytes(data), "CRC-32 mismatch")
    data = bytearray(pack(make()))
    data[-1] ^= 0x80
    refused(bytes(data), "CRC-32 mismatch")


def test_payload_length_beyond_file_is_truncation_without_allocation() -> None:
    refused(with_crc(header() + encode_varint(2**32 - 1) + b"P"), "truncated")


@pytest.mark.parametrize(
    "varint,match",
    [
        (b"\x80\x80\x80\x80\x80\x01", "longer than 5 bytes"),
        (b"\x85\x00", "over-long varint"),
        (b"\xff\xff\xff\xff\x7f", "out of range"),
    ],
)
def test_forged_varints_are_refused(varint: bytes, match: str) -> None:
    body = SIGNATURE + bytes([0x10, 0x0A]) + varint + DIGEST + b"\x05\x05\x01P"
    refused(with_crc(body), match)


def test_forged_record_length_is_refused() -> None:
    body = header(flags=0x0A | 0x10) + b"\x01" + b"\x02" + encode_varint(2**31) + b"xx\x01P"
    refused(with_crc(body), "truncated")


@pytest.mark.parametrize("count", [0, 1000])
def test_forged_record_count_is_refused(count: int) -> None:
    body = header(flags=0x0A | 0x10) + encode_varint(count) + b"\x02\x00\x01P"
    refused(with_crc(body), "record count")


def test_unknown_critical_record_is_refused_and_unknown_others_skipped() -> None:
    critical = make(metadata=(MetadataRecord("unknown:12", b"must understand", critical=True),))
    refused(pack(critical), "unknown critical metadata record kind 12")
    skippable = make(metadata=(MetadataRecord("unknown:12", b"may skip"), MetadataRecord("icc", b"p")))
    assert unpack(pack(skippable)).record("icc") == b"p"


def test_duplicate_known_record_and_kind_zero_are_refused() -> None:
    dup = header(flags=0x0A | 0x10) + b"\x02" + b"\x02\x01a" + b"\x02\x01b" + b"\x01P"
    refused(with_crc(dup), "more than one icc")
    zero = header(flags=0x0A | 0x10) + b"\x01" + b"\x00\x01a" + b"\x01P"
    refused(with_crc(zero), "kind 0")


def test_non_bytes_input_is_a_format_error() -> None:
    with pytest.raises(FormatError):
        unpack("not bytes")  # type: ignore[arg-type]


def test_bytearray_and_memoryview_are_accepted() -> None:
    data = pack(make())
    assert unpack(bytearray(data)) == unpack(memoryview(data)) == make()


# --- writer refuses what the reader would refuse ---------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(scale=4),
        dict(lr_codec="gif"),
        dict(width=0),
        dict(height=C.MAX_DIMENSION + 1),
        dict(model_number=-1),
        dict(model_digest=b"abc"),
        dict(payload=b""),
        dict(version=(2, 0)),
        dict(metadata=(MetadataRecord("xmp", b""),)),
        dict(metadata=(MetadataRecord("unknown:1", b""),)),  # 1 is icc: not "unknown"
        dict(metadata=(MetadataRecord("icc", b""), MetadataRecord("icc", b""))),
        dict(scale=8, lr_codec="webp", width=8 * 16384, height=8),
    ],
)
def test_pack_refuses_bad_fields(kw: dict) -> None:
    with pytest.raises(ValueError):
        pack(make(**kw))


def test_container_imports_neither_torch_nor_numpy() -> None:
    code = (
        "import sys, tadmcodec.container;"
        "bad = [m for m in ('torch', 'numpy', 'PIL') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_lrcodec_does_not_import_torch() -> None:
    code = "import sys, tadmcodec.lrcodec; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_replace_keeps_frozen_semantics() -> None:
    f = make()
    with pytest.raises(Exception):
        f.width = 3  # type: ignore[misc]
    assert replace(f, width=3).width == 3
