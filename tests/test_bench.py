"""Benchmark building blocks: BD-rate on curves with known answers, settings, classic codecs, cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tadmcodec.bench import classic
from tadmcodec.bench.bdrate import bd_rate, overlap, pareto_front
from tadmcodec.bench.cache import ResultCache, image_hash
from tadmcodec.bench.settings import CLASSIC_CODECS, GRIDS, SHRINKS, Setting, classic_settings, model_settings, parse_numbers
from tadmcodec.errors import InputError


# --- BD-rate -----------------------------------------------------------------------------------

def loglinear(q: np.ndarray, a: float = -9.0, b: float = 0.3) -> np.ndarray:
    """A codec whose log-rate is linear in PSNR (what the Bjøntegaard model assumes)."""
    return np.exp(a + b * q)


def test_bd_rate_half_the_bits_is_minus_50_percent():
    q_anchor = np.array([20.0, 23.0, 26.0, 29.0, 32.0])
    q_test = np.array([21.0, 24.5, 27.0, 30.0])  # sampled elsewhere on purpose
    r_anchor = loglinear(q_anchor)
    r_test = 0.5 * loglinear(q_test)
    assert bd_rate(r_anchor, q_anchor, r_test, q_test) == pytest.approx(-50.0, abs=1e-9)
    # and the anchor against the test: twice the bits
    assert bd_rate(r_test, q_test, r_anchor, q_anchor) == pytest.approx(100.0, abs=1e-9)


def test_bd_rate_lower_is_better_metric():
    """For LPIPS-like metrics (lower = better) the sign of quality must flip."""
    lp = np.array([0.6, 0.5, 0.4, 0.3])
    rate = np.exp(2.0 - 8.0 * lp)  # more bits -> lower LPIPS
    assert bd_rate(rate, lp, 0.8 * rate, lp, lower_is_better=True) == pytest.approx(-20.0, abs=1e-9)
    # treating it as higher-is-better turns both curves into dominated points: no answer
    assert bd_rate(rate, lp, 0.8 * rate, lp, lower_is_better=False) is None


def test_bd_rate_same_smooth_curve_sampled_differently_is_near_zero():
    """PCHIP follows a curved R-D shape closely: the same codec sampled at other points gives ~0 %."""
    def rate(q):
        return np.exp(0.004 * (q - 10) ** 2 - 4)

    qa = np.linspace(18, 34, 6)
    qt = np.array([19.0, 22.5, 27.0, 33.0])
    assert abs(bd_rate(rate(qa), qa, rate(qt), qt)) < 1.0


def test_bd_rate_only_over_the_overlap():
    qa = np.array([20.0, 22.0, 24.0])
    qt = np.array([23.0, 25.0, 27.0])
    # test = 0.7 x anchor where they overlap (23..24); outside, the anchor is undefined
    ra, rt = loglinear(qa), 0.7 * loglinear(qt)
    assert bd_rate(ra, qa, rt, qt) == pytest.approx(-30.0, abs=1e-9)
    assert overlap(qa, qt, ra, rt) == pytest.approx((23.0, 24.0))


def test_bd_rate_not_available_without_overlap_or_points():
    qa, qt = np.array([20.0, 22.0]), np.array([25.0, 27.0])
    assert bd_rate(loglinear(qa), qa, loglinear(qt), qt) is None
    assert overlap(qa, qt, loglinear(qa), loglinear(qt)) is None
    assert bd_rate([0.1], [20.0], [0.1, 0.2], [20.0, 22.0]) is None
    assert bd_rate([0.1, 0.2], [20.0, float("nan")], [0.1, 0.2], [20.0, 22.0]) is None


def test_pareto_front_drops_dominated_points():
    r, q = pareto_front([0.1, 0.2, 0.15, 0.3, 0.3], [20.0, 22.0, 19.0, 21.5, 23.0])
    assert r.tolist() == [0.1, 0.2, 0.3]
    assert q.tolist() == [20.0, 22.0, 23.0]
    assert np.all(np.diff(r) > 0) and np.all(np.diff(q) > 0)


def test_bd_rate_matches_a_direct_numerical_integral():
    """Two non-parallel curves: the closed-form Hermite integral equals a fine trapezoid rule on the same PCHIP."""
    from tadmcodec.bench.bdrate import _hermite_integral, _pchip_slopes

    qa = np.array([20.0, 22.0, 25.0, 29.0])
    la = np.log(np.array([0.05, 0.09, 0.2, 0.5]))
    d = _pchip_slopes(qa, la)
    xs = np.linspace(21.0, 28.0, 20001)
    # evaluate the Hermite interpolant pointwise
    k = np.clip(np.searchsorted(qa, xs) - 1, 0, len(qa) - 2)
    h = qa[k + 1] - qa[k]
    t = (xs - qa[k]) / h
    y = ((2 * t**3 - 3 * t**2 + 1) * la[k] + (t**3 - 2 * t**2 + t) * h * d[k]
         + (-2 * t**3 + 3 * t**2) * la[k + 1] + (t**3 - t**2) * h * d[k + 1])
    numeric = float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(xs)))
    assert _hermite_integral(qa, la, d, 21.0, 28.0) == pytest.approx(numeric, rel=1e-7)
    # the interpolant passes through the points and does not overshoot (monotone data)
    assert np.all(np.diff(y) > 0)


# --- settings -----------------------------------------------------------------------------------

def test_settings_keys_are_unique_and_curves_group_by_shrink():
    settings = classic_settings(GRIDS["full"])
    keys = [s.key for s in settings]
    assert len(keys) == len(set(keys)) == 3 * (19 + 12 + 11 + 12)
    curves = {s.curve for s in settings}
    assert {"jpeg", "jpeg-shrink2", "avif-shrink4", "jxl"} <= curves
    ours = model_settings(["bicubic"], (16, 32), ("png", "webp"), {"bicubic": (8, 16, 32)})
    assert [s.key for s in ours] == ["bicubic/png/x16", "bicubic/webp/x16", "bicubic/png/x32", "bicubic/webp/x32"]
    assert {s.curve for s in ours} == {"bicubic-png", "bicubic-webp"}


def test_standard_grid_covers_every_codec_and_shrink_and_options_change_keys():
    std = classic_settings(GRIDS["standard"])
    assert len(std) == 29
    assert {s.curve for s in std} == {c if k == 1 else f"{c}-shrink{k}" for c in CLASSIC_CODECS for k in SHRINKS}
    # every curve starts at its codec's lowest rate
    lowest = {"jpeg": 1, "webp": 0, "avif": 0, "jxl": 25}
    for curve in {s.curve for s in std}:
        assert any(s.param == lowest[s.family] for s in std if s.curve == curve), curve
    a = classic_settings(GRIDS["quick"], codecs=("avif",), avif_speed=6)
    b = classic_settings(GRIDS["quick"], codecs=("avif",), avif_speed=8)
    assert {s.key for s in a}.isdisjoint({s.key for s in b})


def test_settings_reject_bad_values():
    with pytest.raises(InputError, match="outside"):
        classic_settings(GRIDS["quick"], codecs=("jpeg",), overrides={"jpeg": (0,)})
    with pytest.raises(InputError, match="unknown classic codec"):
        classic_settings(GRIDS["quick"], codecs=("gif",))
    with pytest.raises(InputError, match="no webp points"):
        classic_settings(GRIDS["quick"], codecs=("webp",))
    with pytest.raises(InputError, match="comma-separated"):
        parse_numbers("1,x", "--jpeg-quality")


# --- classic codecs ---------------------------------------------------------------------------------

def photo(w: int = 96, h: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, 128 + 60 * np.sin(x / 7.0) * np.cos(y / 5.0)], axis=2)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("family,low,high", [("jpeg", 5, 90), ("webp", 5, 90), ("avif", 5, 80), ("jxl", 15, 1)])
def test_classic_codecs_round_trip_and_rate_grows_with_quality(family, low, high):
    img = photo()
    lo = classic.code(img, Setting(family=family, param=low, option=7 if family == "jxl" else 6))
    hi = classic.code(img, Setting(family=family, param=high, option=7 if family == "jxl" else 6))
    for c in (lo, hi):
        assert c.decoded.shape == img.shape and c.decoded.dtype == np.uint8
        assert c.encode_s >= 0 and c.decode_s >= 0
    assert hi.n_bytes > lo.n_bytes
    err = [np.abs(c.decoded.astype(int) - img).mean() for c in (lo, hi)]
    assert err[1] < err[0]


def test_pre_shrink_codes_a_smaller_image_and_restores_the_size():
    img = photo(100, 60)
    full = classic.code(img, Setting(family="jpeg", param=50))
    small = classic.code(img, Setting(family="jpeg", param=50, shrink=4))
    assert small.decoded.shape == img.shape
    assert small.n_bytes < full.n_bytes
    assert classic.shrink(img, 4).shape == (15, 25, 3)


# --- cache --------------------------------------------------------------------------------------

def test_cache_round_trip_and_tolerates_a_cut_off_line(tmp_path):
    img = photo()
    h = image_hash(img)
    assert h != image_hash(photo(seed=1)) and h == image_hash(img.copy())
    c = ResultCache(tmp_path)
    c.put(h, "jpeg/s1/q5|v", {"bpp": 0.1, "psnr": 30.0, "ssim": 0.9})
    c.put(h, "jpeg/s1/q9|v", {"bpp": 0.2, "psnr": float("inf")})
    with open(next(tmp_path.glob("*.jsonl")), "a") as f:
        f.write('{"key": "broken", "row": {"bpp"')  # a crash mid-write
    fresh = ResultCache(tmp_path)
    assert fresh.get(h, "jpeg/s1/q5|v", ("psnr", "ssim")) == {"bpp": 0.1, "psnr": 30.0, "ssim": 0.9}
    assert math.isinf(fresh.get(h, "jpeg/s1/q9|v", ("psnr",))["psnr"])
    assert fresh.get(h, "jpeg/s1/q9|v", ("psnr", "ssim")) is None  # a metric missing: recompute
    assert fresh.get(h, "broken", ()) is None
    assert fresh.get(h, "jpeg/s1/q5|other-version", ("psnr",)) is None
    lines = next(tmp_path.glob("*.jsonl")).read_text().splitlines()
    assert json.loads(lines[0])["key"] == "jpeg/s1/q5|v"


def test_bd_quality_is_the_metric_gap_at_equal_rate():
    from tadmcodec.bench.bdrate import bd_quality

    r = np.array([0.02, 0.05, 0.1, 0.2])
    psnr = 30 + 4 * np.log(r)
    # the same codec needing half the bits: at equal rate it gains 4 ln 2 dB on this log-linear curve
    assert bd_quality(r, psnr, r / 2, psnr) == pytest.approx(4 * np.log(2), abs=1e-9)
    assert bd_quality(r, psnr, r, psnr + 1.0) == pytest.approx(1.0, abs=1e-9)
    lp = 0.3 - 0.1 * np.log(r)  # lower is better
    assert bd_quality(r, lp, r, lp - 0.05, lower_is_better=True) == pytest.approx(-0.05, abs=1e-9)
    # defined where only the rates overlap: quality ranges far apart
    assert bd_rate(r, psnr, r, psnr + 50) is None
    assert bd_quality(r, psnr, r, psnr + 50) == pytest.approx(50.0)
    assert bd_quality(r, psnr, r * 100, psnr) is None


_RSS_AFTER_FREE = """
import sys, numpy as np
from tadmcodec.bench.runner import keep_freed_memory
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
if sys.argv[1] == "keep":
    assert keep_freed_memory()
base = rss_mb()
a = np.ones(300 * 2**20, np.uint8)
del a
print(rss_mb() - base)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc to read the resident size")
def test_keep_freed_memory_keeps_a_large_freed_block(tmp_path):
    """With the setting a 300 MB block stays resident after free (reused next time); without it, it is unmapped."""
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt settings are glibc's")
    grown = {}
    for mode in ("keep", "default"):
        proc = subprocess.run([sys.executable, "-c", _RSS_AFTER_FREE, mode], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-1000:]
        grown[mode] = float(proc.stdout.strip())
    assert grown["keep"] > 250 and grown["default"] < 50, grown
