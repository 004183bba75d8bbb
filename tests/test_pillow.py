"""The Pillow plugin, exercised through Pillow itself: Image.open, im.save, format, mode, size.

Saved files are compared byte for byte with what `tadm encode` writes for the
same image, and decoded pixels with what `tadm decode` writes.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tadmcodec.pillow as tadm_pillow
from tadmcodec import api, container
from tadmcodec.errors import FormatError, InputError, ModelError, TadmError

TADM = [sys.executable, "-m", "tadmcodec"]


def cli(*args: str) -> bytes:
    p = subprocess.run([*TADM, *args], capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout


def photo(w: int = 96, h: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 64], axis=2)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(autouse=True)
def default_settings():
    tadm_pillow.register()
    yield
    tadm_pillow.register()


def test_registered_with_pillow() -> None:
    assert Image.registered_extensions()[".tadm"] == "TADM"
    assert Image.MIME["TADM"] == "image/x-tadm"
    assert "TADM" in Image.OPEN and "TADM" in Image.SAVE


def test_save_writes_the_cli_bytes_and_open_decodes_like_the_cli(tmp_path: Path) -> None:
    src = tmp_path / "a.png"
    Image.fromarray(photo(100, 70)).save(src)
    want = cli("encode", str(src), "-m", "bicubic", "-s", "8", "-o", "-")
    with Image.open(src) as im:
        im.save(tmp_path / "a.tadm", model="bicubic", scale=8)
    assert (tmp_path / "a.tadm").read_bytes() == want

    cli("decode", str(tmp_path / "a.tadm"), "-o", str(tmp_path / "b.png"))
    with Image.open(tmp_path / "a.tadm") as im:
        assert im.format == "TADM"
        assert im.format_description.startswith("TADM")
        assert im.mode == "RGB" and im.size == (100, 70) and (im.width, im.height) == (100, 70)
        assert im.get_format_mimetype() == "image/x-tadm"
        assert im.info["tadm_model"] == "bicubic" and im.info["tadm_scale"] == 8
        assert im.tadm_header.scale == 8
        pixels = np.asarray(im)
        assert im.format == "TADM"  # still, after loading
    assert np.array_equal(pixels, np.asarray(Image.open(tmp_path / "b.png")))


def test_defaults_to_the_cli_defaults_and_file_objects(tmp_path: Path) -> None:
    arr = photo()
    src = tmp_path / "a.png"
    Image.fromarray(arr).save(src)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="TADM")
    assert buf.getvalue() == cli("encode", str(src), "-o", "-")
    buf.seek(0)
    with Image.open(buf, formats=["TADM"]) as im:
        assert im.size == (96, 64)
        assert np.array_equal(np.asarray(im), api.decode(buf.getvalue(), output="numpy"))
    with open(tmp_path / "x.tadm", "wb") as f:
        Image.fromarray(arr).save(f, format="TADM", model="bicubic", scale=32)
    assert container.unpack((tmp_path / "x.tadm").read_bytes()).scale == 32


def test_open_is_lazy(tmp_path: Path, monkeypatch) -> None:
    data = api.encode(photo(), "bicubic")
    calls = []
    real = api.codec_for

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "codec_for", spy)
    im = Image.open(io.BytesIO(data))
    assert im.size == (96, 64) and im.mode == "RGB" and not calls
    im.load()
    assert len(calls) == 1
    # A file whose model this version does not know still opens: only its pixels are refused.
    unknown = container.pack(container.TadmFile(**{**container.unpack(data).__dict__, "model_number": 99}))
    (tmp_path / "u.tadm").write_bytes(unknown)
    with Image.open(tmp_path / "u.tadm") as im:
        assert im.size == (96, 64) and im.format == "TADM" and im.info["tadm_model"] is None
        with pytest.raises(ModelError, match="model number 99") as info:
            im.load()
        assert isinstance(info.value, OSError)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I;16", "CMYK", "1"])
def test_other_modes_are_converted_as_the_cli_does(mode: str, tmp_path: Path) -> None:
    im = Image.fromarray(photo()).convert(mode) if mode != "I;16" else Image.fromarray(
        photo()[:, :, 0].astype(np.uint16) * 257)
    buf = io.BytesIO()
    im.save(buf, format="TADM", model="bicubic")
    with Image.open(io.BytesIO(buf.getvalue())) as back:
        assert back.mode == "RGB" and back.size == im.size
    if mode in ("L", "P", "RGBA", "LA", "CMYK", "1"):
        src = tmp_path / ("a.tif" if mode == "CMYK" else "a.png")
        im.save(src)
        assert buf.getvalue() == cli("encode", str(src), "-m", "bicubic", "-o", "-")


def test_transparency_refused_without_flatten(tmp_path: Path) -> None:
    rgba = Image.fromarray(np.dstack([photo(), np.full((64, 96), 128, np.uint8)]))
    with pytest.raises(InputError, match="transparency") as info:
        rgba.save(tmp_path / "t.tadm", model="bicubic")
    assert isinstance(info.value, OSError) and isinstance(info.value, TadmError)
    assert not (tmp_path / "t.tadm").exists()  # Pillow removes the file it created
    rgba.save(tmp_path / "t.tadm", model="bicubic", flatten="white")
    rgba.save(tmp_path / "t.png")
    want = cli("encode", str(tmp_path / "t.png"), "-m", "bicubic", "--flatten", "white", "-o", "-")
    assert (tmp_path / "t.tadm").read_bytes() == want


def test_metadata_only_when_passed(tmp_path: Path) -> None:
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = tmp_path / "a.png"
    exif = Image.Exif()
    exif[0x010F] = "tadm test camera"  # Make
    Image.fromarray(photo()).save(src, icc_profile=icc)
    with Image.open(src) as im:
        assert im.info["icc_profile"] == icc
        plain, kept = io.BytesIO(), io.BytesIO()
        im.save(plain, format="TADM", model="bicubic")
        im.save(kept, format="TADM", model="bicubic", icc_profile=im.info["icc_profile"], exif=exif)
    assert plain.getvalue() == cli("encode", str(src), "-m", "bicubic", "-o", "-")
    assert container.unpack(plain.getvalue()).metadata == ()
    with Image.open(kept) as back:
        assert back.info["icc_profile"] == icc
        assert back.getexif()[0x010F] == "tadm test camera"


def test_orientation_is_not_applied_on_save(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo()).save(tmp_path / "r.jpg", exif=exif.tobytes())
    with Image.open(tmp_path / "r.jpg") as im:
        im.save(tmp_path / "r.tadm", model="bicubic")  # Pillow writers keep pixels as they are
    assert Image.open(tmp_path / "r.tadm").size == (96, 64)
    assert api.decode(api.encode(tmp_path / "r.jpg", "bicubic")).size == (64, 96)  # the API applies it, as the CLI


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"model": "no-such-model"}, ModelError, "unknown model"),
        ({"model": "bicubic", "scale": 12}, InputError, "scale"),
        ({"model": "bicubic", "lr_codec": "gif"}, InputError, "lr_codec"),
        ({"model": "bicubic", "device": "gpu"}, ModelError, "device"),
        ({"model": "bicubic", "icc_profile": "not bytes"}, InputError, "icc_profile"),
        ({"model": "tadm-sd21-x16"}, ModelError, "not available"),
    ],
)
def test_save_options_refused_with_typed_errors(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match) as info:
        Image.fromarray(photo()).save(io.BytesIO(), format="TADM", **kwargs)
    assert isinstance(info.value, OSError)


def test_corrupt_files_raise_format_error_and_other_formats_still_open(tmp_path: Path) -> None:
    data = api.encode(photo(), "bicubic")
    for bad, match in ((data[:-1] + bytes([data[-1] ^ 1]), "CRC"), (data[:-2], "truncated"), (data + b"x", "trailing")):
        with pytest.raises(FormatError, match=match) as info:
            Image.open(io.BytesIO(bad))
        assert isinstance(info.value, OSError)
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(io.BytesIO(b"\x89TD"))  # shorter than the signature: not ours
    png = io.BytesIO()
    Image.fromarray(photo()).save(png, format="PNG")
    assert Image.open(png).format == "PNG"


def test_pillow_pixel_limit_applies(monkeypatch) -> None:
    data = api.encode(photo(100, 70), "bicubic")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert Image.open(io.BytesIO(data)).load() is not None


def test_reopened_image_converts_and_saves_elsewhere(tmp_path: Path) -> None:
    Image.fromarray(photo()).save(tmp_path / "a.tadm", model="bicubic")
    with Image.open(tmp_path / "a.tadm") as im:
        im.convert("L").save(tmp_path / "g.png")
        im.save(tmp_path / "b.tadm", model="bicubic", scale=32)
    assert Image.open(tmp_path / "g.png").size == (96, 64)
    assert container.unpack((tmp_path / "b.tadm").read_bytes()).scale == 32


def test_register_refuses_bad_settings() -> None:
    with pytest.raises(ModelError, match="device"):
        tadm_pillow.register(device="gpu")
    with pytest.raises(InputError, match="model_dirs"):
        tadm_pillow.register(model_dirs=["x"])


def test_tadm_model_through_pillow(tmp_path: Path) -> None:
    from tadmcodec.tadm.testing import make_random_model_dir

    x16 = make_random_model_dir(tmp_path / "x16", 16, seed=0)
    arr = photo(70, 50)
    Image.fromarray(arr).save(tmp_path / "a.tadm", model="tadm-tiny-x16", model_dir=x16, device="cpu")
    data = (tmp_path / "a.tadm").read_bytes()
    assert data == api.encode(arr, "tadm-tiny-x16", model_dir=x16, device="cpu")
    with Image.open(tmp_path / "a.tadm") as im:
        assert im.size == (70, 50) and im.info["tadm_model"] == "tadm-tiny-x16"
        with pytest.raises(ModelError, match="tadm-tiny-x16"):
            im.load()  # without the folder the model is not available
    tadm_pillow.register(device="cpu", model_dirs={"tadm-tiny-x16": x16})
    with Image.open(tmp_path / "a.tadm") as im:
        assert np.array_equal(np.asarray(im), api.decode(data, output="numpy", model_dir=x16, device="cpu"))


def test_api_encode_of_an_opened_tadm_image_keeps_the_model_error(tmp_path: Path) -> None:
    data = api.encode(photo(), "bicubic")
    unknown = container.pack(container.TadmFile(**{**container.unpack(data).__dict__, "model_number": 99}))
    with Image.open(io.BytesIO(unknown)) as im:
        with pytest.raises(ModelError, match="model number 99"):
            api.encode(im, "bicubic")  # raised in im.load(), not turned into "cannot decode image"
    with Image.open(io.BytesIO(data)) as im:
        assert api.encode(im, "bicubic") == api.encode(api.decode(data), "bicubic")
