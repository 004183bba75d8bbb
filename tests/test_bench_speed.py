"""benchmarks/speed.py keeps rows of different CPUs apart (the lent VMs differ in their vector units)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("speed_bench", ROOT / "benchmarks" / "speed.py")
speed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(speed)


def _row(seconds: float) -> dict:
    return {"model": "tadm-tiny-x16", "device": "cpu", "mode": "decode", "size": "768x512", "seconds": seconds,
            "s_per_mp": seconds / 0.393, "peak_rss_mb": 900.0, "load_s": 5.0, "dtype": "float32"}


def test_rows_from_another_cpu_are_kept_and_the_same_cpu_is_replaced(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(speed, "RESULTS", tmp_path)
    avx512 = {"cpu": "AMD EPYC", "cpu_count": 2, "simd": "AVX-512 BF16"}
    avx2 = {"cpu": "AMD EPYC", "cpu_count": 2, "simd": "AVX2"}
    speed.write([_row(1.8)], avx512)
    speed.write([_row(3.4)], avx2)
    speed.write([_row(3.3)], avx2)  # a rerun on the same CPU replaces its row
    runs = json.loads((tmp_path / "speed.json").read_text())["runs"]
    assert sorted((r["machine"]["simd"], r["seconds"]) for r in runs) == [("AVX-512 BF16", 1.8), ("AVX2", 3.3)]
    md = (tmp_path / "speed.md").read_text()
    assert "AMD EPYC, AVX2 (2 cores)" in md and "AMD EPYC, AVX-512 BF16 (2 cores)" in md


def test_simd_level_names_a_known_extension() -> None:
    assert speed.simd_level() in ("AVX-512 BF16", "AVX-512", "AVX2", "no AVX2", "?")


def test_repeated_keeps_the_median_run_and_lists_every_time() -> None:
    times = iter([3.4, 2.9, 3.1])
    r = speed.repeated(3, lambda: {"seconds": next(times), "load_s": 1.0})
    assert r["seconds"] == 3.1 and r["seconds_all"] == [3.4, 2.9, 3.1]
    assert speed.repeated(2, lambda: {"error": "boom"}) == {"error": "boom"}
    assert "seconds_all" not in speed.repeated(1, lambda: {"seconds": 1.0})
