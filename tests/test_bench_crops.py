"""Side-by-side crops (`tadmcodec.bench.crops`, `benchmarks/crops.py`): window choice, strips, script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tadmcodec.bench import classic, crops
from tadmcodec.bench.demo import side_by_side
from tadmcodec.codec import Codec
from tadmcodec.errors import InputError
from tadmcodec.tadm.testing import make_random_model_dir

ROOT = Path(__file__).resolve().parent.parent


def smooth_with_texture(w: int, h: int, box: tuple[int, int, int]) -> np.ndarray:
    """A flat gradient with one square of strong checkerboard texture at box = (x, y, size)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 200 / w, y * 200 / h, np.full((h, w), 90.0)], axis=2)
    bx, by, s = box
    checker = ((x // 3 + y // 3) % 2) * 120.0 - 60.0
    inside = (x >= bx) & (x < bx + s) & (y >= by) & (y < by + s)
    img[inside] += checker[inside][:, None]
    return np.clip(img, 0, 255).astype(np.uint8)


def test_detail_window_finds_the_textured_square() -> None:
    img = smooth_with_texture(160, 128, (96, 64, 32))
    assert crops.detail_window(img, 32) == (96, 64)


def test_detail_window_refuses_a_crop_larger_than_the_image() -> None:
    with pytest.raises(InputError, match="does not fit"):
        crops.detail_window(np.zeros((50, 80, 3), np.uint8), 64)


def test_side_by_side_sizes_panels_and_multiline_captions() -> None:
    a, b = np.zeros((40, 30, 3), np.uint8), np.full((50, 20, 3), 255, np.uint8)
    one = side_by_side([[(a, "one line"), (b, "x")]])
    three = side_by_side([[(a, "one\ntwo\nthree"), (b, "x")]])
    assert one.size[0] == 30 + 20 + 3 * 6 == three.size[0]
    assert three.size[1] - one.size[1] == 2 * 16  # two more caption lines


def test_compare_gives_jpeg_no_fewer_bytes_and_crops_at_native_size(tmp_path) -> None:
    img = smooth_with_texture(128, 96, (36, 24, 48))  # on the search grid (stride 12)
    micro = make_random_model_dir(tmp_path / "micro", 16)
    codec = Codec(device="cpu", model_dirs={"tadm-tiny-x16": micro})
    rows, strip = crops.compare("t", img, codec, [("tadm-tiny-x16", 16), ("bicubic", 16)], crop=48)
    jpeg, tiny, bic = rows[0], rows[-2], rows[-1]
    assert [r.method for r in rows] in (["jpeg", "tadm-tiny-x16", "bicubic"], ["jpeg", "avif", "tadm-tiny-x16", "bicubic"])
    assert jpeg.n_bytes >= tiny.n_bytes or jpeg.label == "JPEG q=95"
    assert all(r.n_bytes <= tiny.n_bytes for r in rows if r.method == "avif")
    for r in rows:
        assert r.bpp == pytest.approx(8 * r.n_bytes / (128 * 96))
        assert 5 < r.psnr < 60 and 0 <= r.lpips <= 1.5 and 0 <= r.dists <= 1
    # 48-px panels (original, JPEG, [AVIF,] two models) side by side, not resampled
    assert strip.size[0] == (len(rows) + 1) * 48 + (len(rows) + 2) * 6
    panel = np.asarray(strip)[6:54, 6:54]
    assert np.array_equal(panel, img[24:72, 36:84])


@pytest.mark.parametrize("family", ["jpeg", "webp", "avif", "jxl"])
def test_best_within_is_the_highest_rate_that_fits(family) -> None:
    img = smooth_with_texture(128, 96, (16, 16, 64))
    budget = 1500
    s, coded = classic.best_within(img, budget, family, 2)
    assert s.family == family and s.shrink == 2 and coded.n_bytes <= budget
    assert coded.decoded.shape == img.shape
    ladder = classic.RATE_LADDERS[family]
    i = ladder.index(s.param)
    if i + 1 < len(ladder):  # one step up the ladder no longer fits
        up = classic.Setting(family, ladder[i + 1], shrink=2, option=s.option)
        assert len(classic.encode(np.ascontiguousarray(classic.shrink(img, 2)), up)) > budget
    assert classic.best_within(img, 10, family, 1) is None


def test_script_end_to_end_and_errors(tmp_path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(smooth_with_texture(128, 96, (16, 16, 64))).save(photos / "p1.png")
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "crops.py"), "--images", str(photos), "--names", "p1",
           "--model", "bicubic", "--scale", "8", "--crop", "64", "--out", str(out), "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "crops.json").read_text())
    methods = [row["method"] for row in doc["rows"]]
    assert methods[0] == "jpeg" and methods[-1] == "bicubic" and set(methods) <= {"jpeg", "avif", "bicubic"}
    n = len(methods)
    assert Image.open(out / "p1-side-by-side.png").size[0] == (n + 1) * 64 + (n + 2) * 6
    assert "| p1 | bicubic x8 |" in (out / "crops.md").read_text() and "![p1](p1-side-by-side.png)" in r.stdout
    bad = subprocess.run(cmd[:-8] + ["--names", "nope", "--model", "bicubic", "--out", str(tmp_path / "o2")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip() == f"crops: no photo named nope in {photos}"
    assert not (tmp_path / "o2").exists()



def test_script_follows_the_default_model_and_its_scale(tmp_path) -> None:
    from tadmcodec import registry

    default = registry.default_model()
    if default.name == "bicubic":
        pytest.skip("no stable model is packaged in this checkout")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(smooth_with_texture(128, 96, (16, 16, 64))).save(photos / "p1.png")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "crops.py"), "--images", str(photos), "--names",
                        "p1", "--crop", "64", "--out", str(out), "--threads", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "crops.json").read_text())
    assert doc["scale"] == default.scale  # no --scale: the default model's own
    assert [row["method"] for row in doc["rows"]][-2:] == [default.name, "bicubic"]
