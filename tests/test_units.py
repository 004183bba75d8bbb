"""Unit tests for the pieces under the CLI: rescaler contract, bicubic, file planning, atomic writes, image loading."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tadmcodec import files, imageio, registry
from tadmcodec.errors import InputError, ModelError, TadmError
from tadmcodec.rescaler import BicubicRescaler, Rescaler, lr_size, pad_to_multiple


@pytest.mark.parametrize("w,h,s,expected", [(768, 512, 16, (48, 32)), (769, 512, 16, (49, 32)), (1, 1, 32, (1, 1)), (100, 33, 8, (13, 5))])
def test_lr_size_is_ceil(w: int, h: int, s: int, expected: tuple[int, int]) -> None:
    assert lr_size(w, h, s) == expected


@pytest.mark.parametrize("w,h", [(1, 1), (5, 3), (33, 17), (64, 48)])
@pytest.mark.parametrize("scale", [8, 16, 32])
def test_bicubic_honours_the_contract(w: int, h: int, scale: int) -> None:
    r = BicubicRescaler()
    assert isinstance(r, Rescaler)
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    lr = r.downscale(img, scale)
    lw, lh = lr_size(w, h, scale)
    assert lr.shape == (lh, lw, 3) and lr.dtype == np.uint8
    up = r.upscale(lr, scale, (w, h))
    assert up.shape == (h, w, 3) and up.dtype == np.uint8
    with pytest.raises(ValueError):
        r.upscale(lr[:, :-1] if lw > 1 else np.zeros((lh, lw + 1, 3), np.uint8), scale, (w, h))


def test_bicubic_keeps_a_flat_image_flat() -> None:
    img = np.full((50, 70, 3), (10, 200, 90), np.uint8)
    r = BicubicRescaler()
    up = r.upscale(r.downscale(img, 16), 16, (70, 50))
    assert np.array_equal(up, img)


def test_pad_to_multiple_reflects() -> None:
    img = np.arange(5 * 3 * 3, dtype=np.uint8).reshape(5, 3, 3)
    p = pad_to_multiple(img, 4)
    assert p.shape == (8, 4, 3)
    assert np.array_equal(p[5, :3], img[3]) and np.array_equal(p[:5, 3], img[:, 1])
    assert pad_to_multiple(img[:1, :1], 8).shape == (8, 8, 3)  # too small to reflect: edge


def test_registry_numbers_are_unique_and_stable() -> None:
    numbers = [s.number for s in registry.MODELS.values()]
    assert len(numbers) == len(set(numbers))
    assert registry.get("bicubic").number == 0 and registry.by_number(1).name == "tadm-tiny-x16-n1"
    assert registry.by_number(6).name == "tadm-tiny-x16-n6" and registry.by_number(5).name == "tadm-tiny-x8-n5"
    assert registry.by_number(7).name == "tadm-tiny-x8" and registry.by_number(8).name == "tadm-tiny-x16"
    assert registry.by_number(999) is None
    with pytest.raises(ModelError, match="known"):
        registry.get("no-such-model")
    assert len(registry.get("bicubic").digest()) == registry.DIGEST_SIZE


def test_with_weights_dir_changes_digest(tmp_path: Path) -> None:
    from tadmcodec.tadm.testing import make_random_model_dir

    spec = registry.get("tadm-tiny-x16")
    a = registry.with_weights_dir(spec, make_random_model_dir(tmp_path / "a", 16, seed=0))
    b = registry.with_weights_dir(spec, make_random_model_dir(tmp_path / "b", 16, seed=1))
    assert a.availability()[0] and b.availability()[0]
    assert a.digest() != b.digest() and len(a.digest()) == registry.DIGEST_SIZE
    (tmp_path / "a" / "model.json").write_text("{}")
    ok, why = a.availability()
    assert not ok and "model.json" in why
    with pytest.raises(ModelError):
        registry.with_weights_dir(registry.get("bicubic"), tmp_path)


def test_plan_names_and_conflicts(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    for p in ("d/1.png", "d/e/2.jpg", "d/skip.txt"):
        (tmp_path / p).write_bytes(b"x")
    jobs = files.plan((str(tmp_path / "d"),), imageio.INPUT_EXTENSIONS, None, str(tmp_path / "o"), ".tadm")
    assert [Path(j.target).relative_to(tmp_path / "o").as_posix() for j in jobs] == ["1.tadm", "e/2.tadm"]
    jobs = files.plan((str(tmp_path / "d" / "1.png"),), imageio.INPUT_EXTENSIONS, None, None, ".tadm")
    assert jobs[0].target == str(tmp_path / "d" / "1.tadm")
    assert files.plan(("-",), (), None, None, ".png")[0].target == "-"
    with pytest.raises(TadmError, match="not both"):
        files.plan(("-",), (), "a", "b", ".png")
    with pytest.raises(TadmError, match="overwrite an input"):
        files.plan((str(tmp_path / "d" / "1.png"),), (), str(tmp_path / "d" / "1.png"), None, ".tadm")
    (tmp_path / "d" / "1.jpg").write_bytes(b"x")
    with pytest.raises(TadmError, match="same output"):
        files.plan((str(tmp_path / "d" / "1.png"), str(tmp_path / "d" / "1.jpg")), (), None, None, ".tadm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TadmError, match="no input"):
        files.plan((str(tmp_path / "empty"),), (".png",), None, None, ".x")
    with pytest.raises(TadmError, match="no such file"):
        files.plan((str(tmp_path / "missing.png"),), (".png",), None, None, ".x")


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out" / "x.tadm"
    files.write_target(str(target), b"first", force=False)
    assert target.read_bytes() == b"first"

    def boom(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        files.write_target(str(target), b"second", force=True)
    assert target.read_bytes() == b"first"
    assert os.listdir(target.parent) == ["x.tadm"]
    with pytest.raises(TadmError, match="exists"):
        files.write_target(str(target), b"third", force=False)


def _png(arr: np.ndarray, mode: str | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_load_image_modes() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    assert np.array_equal(imageio.load_image(_png(rgb), max_pixels=10**6).pixels, rgb)
    grey = imageio.load_image(_png(rgb[:, :, 0]), max_pixels=10**6).pixels
    assert grey.shape == (9, 7, 3) and np.array_equal(grey[:, :, 2], rgb[:, :, 0])
    deep = imageio.load_image(_png(rgb[:, :, 0].astype(np.uint16) * 257), max_pixels=10**6)
    assert np.array_equal(deep.pixels[:, :, 0], rgb[:, :, 0]) and deep.notes
    with pytest.raises(InputError, match="budget"):
        imageio.load_image(_png(rgb), max_pixels=62)
    with pytest.raises(InputError, match="not an image"):
        imageio.load_image(b"hello", max_pixels=100)
    with pytest.raises(InputError):
        imageio.load_image(_png(rgb)[:60], max_pixels=10**6)


def test_flatten_composites_on_colour() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent
    out = imageio.load_image(_png(rgba), max_pixels=100, flatten=imageio.parse_colour("white")).pixels
    assert (out == 255).all()
    with pytest.raises(InputError, match="colour"):
        imageio.parse_colour("notacolour")


def test_output_format() -> None:
    assert imageio.output_format("a.JPG") == "JPEG"
    assert imageio.output_format("-", default="WEBP") == "WEBP"
    with pytest.raises(InputError):
        imageio.output_format("a.gifx")


def test_load_image_leaves_pillow_limit_alone_and_budget_overrides_it() -> None:
    before = Image.MAX_IMAGE_PIXELS
    rgb = np.zeros((4, 4, 3), np.uint8)
    imageio.load_image(_png(rgb), max_pixels=100)
    assert Image.MAX_IMAGE_PIXELS == before
