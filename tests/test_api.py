"""The Python API (`tadmcodec.encode` / `tadmcodec.decode`): the CLI's semantics as functions.

Every round trip is checked against the `tadm` command itself (a subprocess), so
the API cannot drift from what `tadm encode` writes. The TADM path uses a tiny
random model folder (tadmcodec.tadm.testing); the rest uses bicubic.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tadmcodec
from tadmcodec import api, container, registry
from tadmcodec.codec import Codec
from tadmcodec.errors import FormatError, InputError, ModelError, TadmError

TADM = [sys.executable, "-m", "tadmcodec"]


def cli(*args: str) -> subprocess.CompletedProcess:
    p = subprocess.run([*TADM, *args], capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode()
    return p


def photo(w: int = 96, h: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like image (gradients plus mild noise), as in test_cli."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 64], axis=2)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def save(path: Path, arr: np.ndarray, **kw) -> Path:
    Image.fromarray(arr).save(path, **kw)
    return path


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts without cached models, so cache tests see their own loads."""
    api.clear_cache()
    yield
    api.clear_cache()


# --- import cost -------------------------------------------------------------------------


def test_import_stays_cheap_and_api_is_lazy() -> None:
    code = textwrap.dedent("""
        import sys
        import tadmcodec
        heavy = ("numpy", "PIL", "torch", "tadmcodec.api", "tadmcodec.codec")
        assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]
        assert "encode" in dir(tadmcodec) and "decode" in dir(tadmcodec)
        from tadmcodec import encode, decode
        assert encode.__module__ == "tadmcodec.api"
        import numpy as np
        im = decode(encode(np.zeros((20, 30, 3), np.uint8), model="bicubic"))
        assert im.size == (30, 20)
        assert "torch" not in sys.modules  # bicubic never needs it
        try:
            tadmcodec.no_such_name
        except AttributeError:
            pass
        else:
            raise SystemExit("no AttributeError")
        from tadmcodec import pillow  # a submodule still imports through __getattr__
        print("ok")
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == b"ok", p.stderr.decode()


def test_errors_are_exported_lazily() -> None:
    assert tadmcodec.InputError is InputError and tadmcodec.FormatError is FormatError
    assert tadmcodec.encode is api.encode and tadmcodec.decode is api.decode


# --- encode: same bytes as the CLI -------------------------------------------------------


def test_encode_every_input_kind_gives_the_cli_bytes(tmp_path: Path) -> None:
    arr = photo(100, 70)
    src = save(tmp_path / "a.png", arr)
    want = cli("encode", str(src), "-m", "bicubic", "-s", "16", "-o", "-").stdout
    assert container.looks_like_tadm(want)
    with open(src, "rb") as f:
        from_file = api.encode(f, "bicubic", 16)
    inputs = {
        "str path": str(src),
        "Path": src,
        "bytes": src.read_bytes(),
        "bytearray": bytearray(src.read_bytes()),
        "PIL": Image.open(src),
        "array": arr,
    }
    for kind, image in inputs.items():
        assert api.encode(image, model="bicubic", scale=16) == want, kind
    assert from_file == want


def test_encode_defaults_are_the_cli_defaults(tmp_path: Path) -> None:
    src = save(tmp_path / "a.png", photo())
    assert api.encode(src) == cli("encode", str(src), "-o", "-").stdout
    header = container.unpack(api.encode(photo()))
    assert header.model_number == registry.default_model().number
    assert header.scale == (registry.default_model().scale or 16)  # the default model's own scale
    # with -s, the default at that scale (bicubic at a scale no stable model has)
    assert container.unpack(api.encode(photo(), scale=16)).model_number == registry.default_model(16).number
    assert container.unpack(api.encode(photo(), scale=8)).model_number == registry.default_model(8).number
    assert container.unpack(api.encode(photo(), scale=32)).scale == 32
    assert container.unpack(api.encode(photo(), scale=np.int64(8))).scale == 8


@pytest.mark.parametrize("lr_codec", ["png", "webp", "jxl"])
def test_lr_codec_option(lr_codec: str) -> None:
    assert container.unpack(api.encode(photo(), "bicubic", 16, lr_codec=lr_codec)).lr_codec == lr_codec


def test_metadata_and_orientation_as_cli(tmp_path: Path) -> None:
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = save(tmp_path / "a.png", photo(), icc_profile=icc)
    assert api.encode(src, "bicubic") == cli("encode", str(src), "-m", "bicubic", "-o", "-").stdout
    kept = api.encode(src, "bicubic", metadata="icc")
    assert kept == cli("encode", str(src), "-m", "bicubic", "--metadata", "icc", "-o", "-").stdout
    assert container.unpack(kept).record("icc") == icc
    assert api.encode(Image.open(src), "bicubic", metadata="all") == kept  # no EXIF in this file
    # EXIF orientation 6 (rotate 90 CW) is applied, from a path and from the PIL image alike.
    exif = Image.Exif()
    exif[0x0112] = 6
    rot = save(tmp_path / "r.jpg", photo(), exif=exif.tobytes())
    want = cli("encode", str(rot), "-m", "bicubic", "--metadata", "exif", "-o", "-").stdout
    assert api.encode(rot, "bicubic", metadata="exif") == want
    assert api.encode(Image.open(rot), "bicubic", metadata="exif") == want
    header = container.unpack(want)
    assert (header.width, header.height) == (64, 96)
    stored = Image.Exif()
    stored.load(header.record("exif"))
    assert 0x0112 not in stored  # already applied to the pixels


def test_array_modes_follow_the_cli_rules(tmp_path: Path) -> None:
    rgb = photo()
    grey = rgb[:, :, 0]
    grey_file = save(tmp_path / "g.png", grey)
    want_grey = cli("encode", str(grey_file), "-m", "bicubic", "-o", "-").stdout
    assert api.encode(grey, "bicubic") == want_grey
    assert api.encode(grey[:, :, None], "bicubic") == want_grey
    assert api.encode(np.repeat(grey[:, :, None], 3, axis=2), "bicubic") == want_grey
    opaque = np.dstack([rgb, np.full(grey.shape, 255, np.uint8)])
    assert api.encode(opaque, "bicubic") == api.encode(rgb, "bicubic")
    assert api.encode(rgb[::-1, ::2], "bicubic") == api.encode(np.ascontiguousarray(rgb[::-1, ::2]), "bicubic")

    clear = np.dstack([rgb, np.full(grey.shape, 128, np.uint8)])
    with pytest.raises(InputError, match="transparency"):
        api.encode(clear, "bicubic")
    with pytest.raises(InputError, match="transparency"):
        api.encode(Image.fromarray(clear), "bicubic")
    clear_file = save(tmp_path / "t.png", clear)
    want = cli("encode", str(clear_file), "-m", "bicubic", "--flatten", "white", "-o", "-").stdout
    assert api.encode(clear, "bicubic", flatten="white") == want
    assert api.encode(clear, "bicubic", flatten=(255, 255, 255)) == want
    assert api.encode(clear_file, "bicubic", flatten="#ffffff") == want


def test_16bit_input_warns_as_the_cli_does(tmp_path: Path) -> None:
    deep = tmp_path / "d.png"
    Image.fromarray(photo()[:, :, 0].astype(np.uint16) * 257).save(deep)
    with pytest.warns(UserWarning, match="16-bit"):
        data = api.encode(deep, "bicubic")
    assert data == cli("encode", str(deep), "-m", "bicubic", "-o", "-").stdout
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        api.encode(photo(), "bicubic")  # 8-bit: silent


# --- decode ------------------------------------------------------------------------------


def test_decode_matches_cli_decode(tmp_path: Path) -> None:
    data = api.encode(photo(100, 70), "bicubic", 8)
    (tmp_path / "a.tadm").write_bytes(data)
    cli("decode", str(tmp_path / "a.tadm"), "-o", str(tmp_path / "b.png"))
    want = np.asarray(Image.open(tmp_path / "b.png"))
    im = api.decode(data)
    assert isinstance(im, Image.Image) and im.mode == "RGB" and im.size == (100, 70)
    assert np.array_equal(np.asarray(im), want)
    arr = api.decode(data, output="numpy")
    assert isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.shape == (70, 100, 3)
    assert np.array_equal(arr, want)
    with open(tmp_path / "a.tadm", "rb") as f:
        from_file = api.decode(f, output="numpy")
    for source in (tmp_path / "a.tadm", str(tmp_path / "a.tadm"), bytearray(data), memoryview(data)):
        assert np.array_equal(api.decode(source, output="numpy"), want)
    assert np.array_equal(from_file, want)
    assert im.info["tadm_model"] == "bicubic" and im.info["tadm_scale"] == 8


def test_decoded_image_carries_metadata(tmp_path: Path) -> None:
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = save(tmp_path / "a.png", photo(), icc_profile=icc)
    im = api.decode(api.encode(src, "bicubic", metadata="icc"))
    assert im.info["icc_profile"] == icc
    buf = io.BytesIO()
    im.save(buf, format="PNG")  # Pillow's PNG writer keeps info["icc_profile"]
    assert Image.open(buf).info["icc_profile"] == icc
    assert "icc_profile" not in api.decode(api.encode(src, "bicubic")).info


def test_decode_max_pixels_is_checked_on_the_header() -> None:
    data = api.encode(photo(100, 70), "bicubic")
    with pytest.raises(FormatError, match="over the limit"):
        api.decode(data, max_pixels=100 * 70 - 1)
    assert api.decode(data, max_pixels=100 * 70).size == (100, 70)


# --- typed errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 3), np.uint16), "uint8"),
        (np.zeros((8, 8), bool), "uint8"),
        (np.zeros((8, 8, 2), np.uint8), "shape"),
        (np.zeros((2, 8, 8, 3), np.uint8), "shape"),
        (np.zeros((8,), np.uint8), "shape"),
        (np.zeros((0, 8, 3), np.uint8), "no pixels"),
        (42, "int"),
        ([[1, 2], [3, 4]], "list"),
        (b"not an image", "not an image"),
        ("/no/such/file.png", "cannot read"),
        (io.StringIO("text"), "binary mode"),
    ],
)
def test_encode_refuses_bad_images_with_input_error(image, match: str) -> None:
    with pytest.raises(InputError, match=match):
        api.encode(image, "bicubic")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"model": "no-such-model"}, ModelError, "unknown model"),
        ({"model": 3}, ModelError, "model name"),
        ({"model": "bicubic", "scale": 12}, InputError, "scale"),
        ({"model": "bicubic", "scale": "16"}, InputError, "scale"),
        ({"model": "bicubic", "scale": True}, InputError, "scale"),
        ({"model": "bicubic", "lr_codec": "gif"}, InputError, "lr_codec"),
        ({"model": "bicubic", "metadata": "xmp"}, InputError, "metadata"),
        ({"model": "bicubic", "flatten": "no-such-colour"}, InputError, "colour"),
        ({"model": "bicubic", "flatten": (300, 0, 0)}, InputError, "flatten"),
        ({"model": "bicubic", "max_pixels": 0}, InputError, "max_pixels"),
        ({"model": "bicubic", "max_pixels": 100}, InputError, "budget"),
        ({"model": "bicubic", "device": "gpu"}, ModelError, "device"),
        ({"model": "bicubic", "precision": "fp8"}, ModelError, "precision"),
        ({"model_dir": "/tmp"}, ModelError, "model_dir needs model"),
        ({"model": "bicubic", "model_dir": "/tmp"}, ModelError, "does not apply"),
        ({"model": "tadm-sd21-x16"}, ModelError, "not available"),
    ],
)
def test_encode_refuses_bad_options_with_typed_errors(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match) as info:
        api.encode(photo(), **kwargs)
    assert isinstance(info.value, TadmError) and "\n" not in str(info.value)


def test_decode_refuses_bad_input_with_typed_errors(tmp_path: Path) -> None:
    data = api.encode(photo(), "bicubic")
    with pytest.raises(FormatError, match="CRC"):
        api.decode(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(FormatError, match="truncated"):
        api.decode(data[:-3])
    with pytest.raises(FormatError, match="signature"):
        api.decode(b"\x89PNG\r\n\x1a\n" + data[8:])
    with pytest.raises(InputError, match="cannot read"):
        api.decode(tmp_path / "missing.tadm")
    with pytest.raises(InputError, match="output"):
        api.decode(data, output="jpeg")
    with pytest.raises(InputError, match="cannot decode a"):
        api.decode(12)
    with pytest.raises(InputError, match="binary mode"):
        api.decode(io.StringIO("x"))
    with pytest.raises(ModelError, match="device"):
        api.decode(data, device="tpu")
    unknown = container.pack(
        container.TadmFile(**{**container.unpack(data).__dict__, "model_number": 99})
    )
    with pytest.raises(ModelError, match="model number 99"):
        api.decode(unknown)
    with pytest.raises(ModelError, match="model number 99"):
        api.decode(unknown, model_dir=tmp_path)


# --- model cache -------------------------------------------------------------------------


def test_models_are_loaded_once_per_device_and_precision(monkeypatch) -> None:
    loads: list[tuple[str, str, str]] = []
    real = registry.load_rescaler

    def counting(spec, device="auto", precision="auto"):
        loads.append((spec.name, device, precision))
        return real(spec, device=device, precision=precision)

    monkeypatch.setattr(registry, "load_rescaler", counting)
    data = api.encode(photo(), "bicubic")
    api.encode(photo(seed=1), "bicubic", 8)
    api.decode(data)
    assert loads == [("bicubic", "auto", "auto")]
    assert api.codec_for("auto", "auto") is api.codec_for("auto", "auto")
    api.encode(photo(), "bicubic", device="cpu")
    assert loads == [("bicubic", "auto", "auto"), ("bicubic", "cpu", "auto")]
    api.clear_cache()
    api.decode(data)
    assert len(loads) == 3


# --- a TADM model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def x16(tmp_path_factory) -> Path:
    from tadmcodec.tadm.testing import make_random_model_dir

    return make_random_model_dir(tmp_path_factory.mktemp("m") / "x16", 16, seed=0)


def test_tadm_model_roundtrip_matches_codec(x16: Path, tmp_path: Path) -> None:
    arr = photo(70, 50)
    data = api.encode(arr, "tadm-tiny-x16", model_dir=x16, device="cpu")
    codec = Codec(device="cpu", model_dirs={"tadm-tiny-x16": x16})
    assert data == codec.encode(arr, "tadm-tiny-x16", 16)
    header = container.unpack(data)
    assert header.model_number == registry.get("tadm-tiny-x16").number and header.scale == 16
    out = api.decode(data, output="numpy", model_dir=x16, device="cpu")
    assert out.shape == (50, 70, 3)
    assert np.array_equal(out, codec.decode(data).pixels)
    with pytest.raises(ModelError, match="tadm-tiny-x16"):
        api.decode(data)  # the packaged weights are not installed
    from tadmcodec.tadm.testing import make_random_model_dir

    other = make_random_model_dir(tmp_path / "other", 16, seed=1)
    with pytest.raises(ModelError, match="different tadm-tiny-x16"):
        api.decode(data, model_dir=other, device="cpu")
    with pytest.raises(InputError, match="scale 16"):
        api.encode(arr, "tadm-tiny-x16", 32, model_dir=x16, device="cpu")


# --- the README's examples ---------------------------------------------------------------


def readme_python_blocks() -> list[str]:
    """The ```python blocks of the README's "Python API" section, in order."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]


def test_readme_examples_run(tmp_path: Path) -> None:
    blocks = readme_python_blocks()
    assert len(blocks) == 2, "the API example and the Pillow plugin example"
    Image.fromarray(photo(160, 96)).save(tmp_path / "photo.jpg")  # the file the Pillow example opens
    for block in blocks:
        p = subprocess.run([sys.executable, "-c", block], capture_output=True, cwd=tmp_path, timeout=120)
        assert p.returncode == 0, p.stderr.decode()
    assert Image.open(tmp_path / "back.png").size == (160, 96)  # written last, by the Pillow example
    assert container.unpack((tmp_path / "photo.tadm").read_bytes()).scale == 16
