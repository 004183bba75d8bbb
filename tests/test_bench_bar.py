"""The shipping bar (`tadmcodec.bench.bar`, `benchmarks/quality_bar.py`): criteria, summary, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tadmcodec.bench import bar
from tadmcodec.codec import Codec
from tadmcodec.errors import InputError
from tadmcodec.tadm.testing import make_random_model_dir

ROOT = Path(__file__).resolve().parent.parent


def m(psnr: float, lpips: float, dists: float) -> dict[str, float]:
    return {"psnr": psnr, "lpips_alex": lpips, "lpips_vgg": lpips, "dists": dists}


def test_judge_each_criterion() -> None:
    bic = m(18.0, 0.8, 0.5)
    good = bar.judge(m(18.5, 0.4, 0.3), bic, {"lpips_alex": 0.45, "dists": 0.3})
    assert all(good.values())
    worse = bar.judge(m(18.49, 0.46, 0.31), bic, {"lpips_alex": 0.45, "dists": 0.3})
    assert worse == {"lpips_vs_classic": False, "dists_vs_classic": False, "lpips_vs_bicubic": True,
                     "dists_vs_bicubic": True, "psnr_vs_bicubic": True, "psnr_margin_vs_bicubic": False}
    # level with bicubic is not beating it
    level = bar.judge(m(18.0, 0.79, 0.5), bic, {"lpips_alex": None, "dists": None})
    assert not level["psnr_vs_bicubic"] and level["lpips_vs_bicubic"] and not level["dists_vs_bicubic"]
    # nothing classic fits the budget: those two criteria hold
    none = bar.judge(m(19, 0.9, 0.6), bic, {"lpips_alex": None, "dists": None})
    assert none["lpips_vs_classic"] and none["dists_vs_classic"] and not none["lpips_vs_bicubic"]


def test_every_criterion_belongs_to_one_bar_and_27_of_30_are_needed() -> None:
    assert sorted(bar.BARS["default"].criteria + bar.BARS["headline"].criteria) == sorted(bar.CRITERIA)
    assert bar.BARS["default"].needed(30) == 27 and bar.BARS["default"].needed(3) == 3
    assert bar.BARS["default"].needed(10) == 9 and bar.BARS["headline"].needed(30) == 30


def check(name: str, ours: dict, bic: dict, classic: list[dict]) -> bar.ImageCheck:
    c = bar.ImageCheck(name, bar.Coded("ours", 100, 0.05, ours), bar.Coded("bicubic", 100, 0.05, bic))
    c.classic = [bar.Coded(f"c{i}", 90, 0.045, v) for i, v in enumerate(classic)]
    return c


def test_summary_counts_images_and_judges_the_means() -> None:
    a = check("a", m(20, 0.40, 0.30), m(18, 0.8, 0.5), [m(22, 0.45, 0.25), m(21, 0.50, 0.35)])
    b = check("b", m(20, 0.30, 0.20), m(19, 0.8, 0.5), [m(22, 0.45, 0.28)])
    s = bar.summary([a, b])
    # a: DISTS 0.30 > best classic 0.25 fails; b passes everything
    assert s["images_passing"] == {"lpips_vs_classic": 2, "dists_vs_classic": 1, "lpips_vs_bicubic": 2,
                                   "dists_vs_bicubic": 2, "psnr_vs_bicubic": 2, "psnr_margin_vs_bicubic": 2}
    assert s["mean"]["best_classic"]["dists"] == pytest.approx((0.25 + 0.28) / 2)
    assert s["means_pass"]["dists_vs_classic"]  # 0.25 <= 0.265 on the means
    assert s["bars"]["default"]["passes"]  # beats bicubic everywhere
    assert not s["bars"]["headline"]["passes"]  # but not the classic file on every image
    assert bar.summary([b])["bars"]["headline"]["passes"]
    assert bar.failures(s) == {"default": [], "headline": ["dists_vs_classic (1/2 images, needs 2)"]}
    text = bar.markdown([a, b], "t")
    assert "Default bar met; headline bar not met" in text and "| dists_vs_classic | 1/2 | yes |" in text
    with pytest.raises(InputError):
        bar.summary([])


def test_default_bar_allows_one_image_in_ten_but_never_the_means() -> None:
    win, lose = m(19, 0.5, 0.3), m(17.9, 0.5, 0.3)
    bic = m(18, 0.8, 0.5)
    ten = [check(f"p{i}", lose if i == 0 else win, bic, []) for i in range(10)]
    s = bar.summary(ten)
    assert s["images_passing"]["psnr_vs_bicubic"] == 9 and s["bars"]["default"]["passes"]
    two = [check(f"p{i}", lose if i < 2 else win, bic, []) for i in range(10)]
    assert not bar.summary(two)["bars"]["default"]["passes"]
    # 9 images a hair above bicubic, one far below: the means fail although 9 of 10 pass
    skew = [check(f"p{i}", m(8, 0.5, 0.3) if i == 0 else m(18.1, 0.5, 0.3), bic, []) for i in range(10)]
    s = bar.summary(skew)
    assert not s["means_pass"]["psnr_vs_bicubic"] and not s["bars"]["default"]["passes"]
    assert bar.failures(s)["default"] == ["psnr_vs_bicubic (9/10 images, needs 9; fails on the means)"]


def photo(w: int, h: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, 128 + 60 * np.sin(x / 5.0) * np.cos(y / 4.0)], axis=2)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_check_image_keeps_every_classic_file_within_the_budget(tmp_path) -> None:
    micro = make_random_model_dir(tmp_path / "micro", 16)
    codec = Codec(device="cpu", model_dirs={"tadm-tiny-x16": micro})
    c = bar.check_image("p", photo(128, 96), codec, "tadm-tiny-x16", 16, families=("jpeg", "avif"), shrinks=(2, 4))
    assert c.ours.bpp == pytest.approx(8 * c.ours.n_bytes / (128 * 96))
    assert all(k.n_bytes <= c.ours.n_bytes for k in c.classic)
    assert set(c.verdict()) == set(bar.CRITERIA)
    assert c.bicubic.label == "bicubic x16" and set(c.ours.metrics) == set(bar.BAR_METRICS)
    assert all(set(k.metrics) == set(bar.CLASSIC_METRICS) for k in c.classic)
    assert c.lr_source in ("model", "bicubic")
    assert bar.check_image("p", photo(128, 96), codec, "tadm-tiny-x16", 16, families=(), effort=1).lr_source == "model"
    with pytest.raises(InputError, match="give another model"):
        bar.check_image("p", photo(64, 64), codec, "bicubic", 16)


def test_script_end_to_end(tmp_path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(photo(128, 96)).save(photos / "p1.png")
    micro = make_random_model_dir(tmp_path / "micro", 16)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality_bar.py"), "--model", f"tadm-tiny-x16={micro}",
           "--scale", "16", "--images", str(photos), "--out", str(out), "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "tadm-tiny-x16-x16.json").read_text())
    assert doc["summary"]["images"] == 1 and doc["images"][0]["image"] == "p1"
    kept = doc["images"][0]["lr_source"]
    assert kept in ("model", "bicubic") and doc["summary"]["bicubic_lr_kept"] == (kept == "bicubic")
    # an untrained random model cannot beat bicubic's PSNR by 0.5 dB
    bars = doc["summary"]["bars"]
    assert bars["headline"]["passes"] is False
    assert r.stdout.strip().endswith(f"default bar {'met' if bars['default']['passes'] else 'NOT met'}, "
                                     "headline bar NOT met")
    md = (out / "tadm-tiny-x16-x16.md").read_text()
    assert md.startswith("# Quality bar: tadm-tiny-x16 x16") and f"| {kept} |" in md
    assert f"bicubic LR image (`tadmcodec.lr_choice`) on {int(kept == 'bicubic')} of 1 images" in md
    bad = subprocess.run(cmd[:3] + ["nope", "--scale", "16", "--images", str(photos), "--out", str(tmp_path / "o2")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "nope" in bad.stderr
    assert not (tmp_path / "o2").exists()
