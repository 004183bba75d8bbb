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


def test_process_rows_time_a_whole_process_and_read_its_own_peak_rss() -> None:
    import sys

    r = speed.run_process([sys.executable, "-c", "x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096])"], 120)
    assert r["seconds"] > 0 and 200 <= r["peak_rss_mb"] < 400  # its own 200 MB, not this process's peak
    assert speed.run_process([sys.executable, "-c", "raise SystemExit('tadm: no such file')"], 60) == \
        {"error": "tadm: no such file"}
    assert speed.run_process([sys.executable, "-c", "import time; time.sleep(60)"], 1) == {"error": "killed after 1 s"}


def test_process_and_batch_rows_are_written_without_the_worker_fields(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(speed, "RESULTS", tmp_path)
    rows = [{"model": "-", "device": "cpu", "mode": "tadm --help (process)", "size": "-", "seconds": 0.2,
             "peak_rss_mb": 40.0, "note": "imports no torch"},
            {"model": "tadm-tiny-x16", "device": "cpu", "mode": "decode batch of 24, --jobs 2", "size": "768x512",
             "seconds": 50.0, "s_per_mp": 5.3, "peak_rss_mb": 900.0, "load_s": 1.5, "note": "0.48 images/s"}]
    speed.write(rows, {"cpu": "AMD EPYC", "cpu_count": 2, "simd": "AVX2"})
    md = (tmp_path / "speed.md").read_text()
    assert "| - | cpu | - | tadm --help (process) | - | 0.20 | - | 40 | - | - |" in md
    assert "decode batch of 24, --jobs 2 | 768x512 | 50.00 | 5.300 | 900 | - | 1.50 |" in md and "0.48 images/s" in md
