"""`tadm bench` and `tadm demo` end to end on tiny generated images: outputs, schema, resume, errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tadmcodec.cli_bench import bench_command, demo_command


def photo(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, 128 + 60 * np.sin(x / (5.0 + seed)) * np.cos(y / 4.0)], axis=2)
    img += rng.normal(0, 5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(photo(96, 64, 0)).save(d / "a.png")
    Image.fromarray(photo(80, 72, 1)).save(d / "b.png")
    (d / "notes.txt").write_text("not an image: skipped by extension")
    return d


# One torch thread: on a shared, loaded CPU idle-spinning OpenMP threads make tiny images slow.
TINY = ["--codecs", "jpeg,webp", "--jpeg-quality", "5,40", "--webp-quality", "10", "--shrink", "1,2",
        "--scales", "8,16", "--lr-codecs", "png,webp", "--metrics", "psnr,ssim,lpips_alex", "--threads", "1", "-q",
        "--models", "bicubic"]  # the packaged models run in tests of their own


def bench(*args: str) -> object:
    return CliRunner().invoke(bench_command, list(args), catch_exceptions=False)


def test_bench_writes_every_output_with_the_promised_schema(images: Path, tmp_path: Path):
    out = tmp_path / "out"
    r = bench(str(images), "-o", str(out), *TINY, "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    # 2 images x (jpeg 2 q x 2 shrinks + webp 1 q x 2 shrinks + bicubic 2 scales x 2 LR codecs) = 2 x 10
    assert (info["images"], info["settings"], info["computed"], info["cached"]) == (2, 10, 20, 0)

    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 20
    assert {r["image"] for r in rows} == {"a.png", "b.png"}
    for row in rows:
        for m in ("psnr", "ssim", "lpips_alex"):
            assert float(row[m]) == float(row[m])  # a number, not empty
        assert row["lpips_vgg"] == row["dists"] == ""  # not asked for
        w, h = int(row["width"]), int(row["height"])
        assert float(row["bpp"]) == pytest.approx(8 * int(row["bytes"]) / (w * h))
    # our container is counted in full: the .tadm bytes are more than the LR payload alone
    ours = [r for r in rows if r["kind"] == "ours"]
    assert {r["curve"] for r in ours} == {"bicubic-png", "bicubic-webp"}
    # lossless LR codecs decode identically: same metrics, different sizes
    a8 = {r["lr_codec"]: r for r in ours if r["image"] == "a.png" and r["setting"].endswith("/x8")}
    assert a8["png"]["lpips_alex"] == a8["webp"]["lpips_alex"] and a8["png"]["bytes"] != a8["webp"]["bytes"]

    expected_curves = {"jpeg", "jpeg-shrink2", "webp", "webp-shrink2", "bicubic-png", "bicubic-webp"}
    for name in expected_curves:
        doc = json.loads((out / f"{name}.json").read_text())
        assert set(doc) >= {"name", "description", "results"} and doc["name"] == name
        res = doc["results"]
        assert {"bpp", "psnr", "lpips", "ssim", "lpips_alex"} <= set(res)
        n = len(res["bpp"])
        assert n >= 1 and all(len(v) == n for v in res.values())
        assert res["bpp"] == sorted(res["bpp"])
    # the mean of a curve point is the mean over the images of that setting
    jpeg = json.loads((out / "jpeg.json").read_text())["results"]
    q5 = [float(r["psnr"]) for r in rows if r["setting"] == "jpeg/s1/q5"]
    assert jpeg["psnr"][jpeg["quality"].index(5.0)] == pytest.approx(sum(q5) / 2)

    bd = json.loads((out / "bdrate.json").read_text())
    tests = {(x["test"], x["anchor"], x["metric"]) for x in bd["results"]}
    assert ("bicubic-png", "jpeg", "lpips_alex") in tests and ("bicubic-png", "best-classic", "psnr") in tests
    for x in bd["results"]:
        assert x["bd_rate"] is None or isinstance(x["bd_rate"], float)
    assert "n/a" in (out / "bdrate.md").read_text() or "%" in (out / "bdrate.md").read_text()
    summary = (out / "summary.md").read_text()
    for col in ("PSNR", "SSIM", "LPIPS-Alex", "enc s/MP", "dec s/MP"):
        assert col in summary
    png = (out / "rd.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(out / "rd.png").size[0] > 600


def test_bench_computes_every_metric_by_default(images: Path, tmp_path: Path):
    out = tmp_path / "out"
    r = bench(str(images / "a.png"), "-o", str(out), "--codecs", "jpeg", "--jpeg-quality", "10", "--shrink", "1",
              "--models", "none", "--threads", "1", "-q")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(out / "summary.md")
    (row,) = list(csv.DictReader(open(out / "results.csv")))
    values = {m: float(row[m]) for m in ("psnr", "ssim", "lpips_alex", "lpips_vgg", "dists")}
    assert 15 < values["psnr"] < 50 and 0 < values["ssim"] < 1
    assert all(0 < values[m] < 1 for m in ("lpips_alex", "lpips_vgg", "dists"))
    summary = (out / "summary.md").read_text()
    for col in ("PSNR", "SSIM", "LPIPS-Alex", "LPIPS-VGG", "DISTS", "enc s/MP", "dec s/MP"):
        assert col in summary
    res = json.loads((out / "jpeg.json").read_text())["results"]
    assert res["lpips_vgg"] == [pytest.approx(values["lpips_vgg"])] and res["dists"] == [pytest.approx(values["dists"])]


def test_bench_resumes_from_the_cache(images: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = [str(images), "-o", str(out), "--codecs", "jpeg", "--jpeg-quality", "5,40", "--shrink", "1",
            "--models", "none", "--metrics", "psnr,ssim", "--threads", "1", "-q", "--json"]
    first = json.loads(bench(*args).stdout)
    assert (first["computed"], first["cached"]) == (4, 0)
    csv1 = (out / "results.csv").read_text()
    second = json.loads(bench(*args).stdout)
    assert (second["computed"], second["cached"]) == (0, 4)  # nothing redone
    # the timing columns come from the cache too, so the whole CSV is identical
    assert (out / "results.csv").read_text() == csv1
    # an interrupted run: drop one finished line from one image's cache -> exactly one row is redone
    cache_file = sorted((out / "cache").glob("*.jsonl"))[0]
    lines = cache_file.read_text().splitlines()
    cache_file.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    third = json.loads(bench(*args).stdout)
    assert (third["computed"], third["cached"]) == (1, 3)
    # asking for a metric the cache lacks recomputes those rows
    fourth = json.loads(bench(*args[:-6], "--metrics", "psnr,ssim,lpips_alex", "--threads", "1", "-q", "--json").stdout)
    assert fourth["computed"] == 4


def test_bench_reuses_classic_and_bicubic_rows_after_checking_them(images: Path, tmp_path: Path):
    args = ["--codecs", "jpeg", "--jpeg-quality", "5,40", "--shrink", "1", "--models", "bicubic", "--scales", "8",
            "--lr-codecs", "png", "--metrics", "psnr,ssim", "--threads", "1", "-q", "--json"]
    first = json.loads(bench(str(images), "-o", str(tmp_path / "first"), *args).stdout)
    assert (first["computed"], first["reused"]) == (6, 0)
    old = tmp_path / "first" / "results.csv"
    # a new folder, as after a fresh clone: every row comes from the file, none is coded again
    again = json.loads(bench(str(images), "-o", str(tmp_path / "again"), "--reuse", str(old), *args).stdout)
    assert (again["computed"], again["cached"], again["reused"]) == (0, 6, 6)
    assert f"Reused: 6 of 6 rows (classic codecs and bicubic) come from `{old}` (`tadm bench --reuse`, after one " \
        "classic row and one bicubic row were measured again" in (tmp_path / "again" / "summary.md").read_text()
    assert "Reused:" not in (tmp_path / "first" / "summary.md").read_text()
    key = lambda r: (r["image"], r["setting"], r["bytes"], r["psnr"], r["ssim"], r["enc_s"])  # noqa: E731
    assert [key(r) for r in csv.DictReader(open(old))] == \
        [key(r) for r in csv.DictReader(open(tmp_path / "again" / "results.csv"))]
    # a setting the file lacks is computed
    more = json.loads(bench(str(images), "-o", str(tmp_path / "more"), "--reuse", str(old),
                            *args[:3], "5,40,60", *args[4:]).stdout)
    assert (more["computed"], more["reused"]) == (2, 6)
    assert "Reused: 6 of 8 rows" in (tmp_path / "more" / "summary.md").read_text()
    # a file that does not match what this machine measures is refused whole, in one line
    rows = list(csv.DictReader(open(old)))
    first_jpeg = next(r for r in rows if r["kind"] == "classic")
    first_jpeg["bytes"] = str(int(first_jpeg["bytes"]) + 1)
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = CliRunner().invoke(bench_command, [str(images), "-o", str(tmp_path / "b"), "--reuse", str(bad), *args])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "does not match this machine" in r.stderr
    assert not (tmp_path / "b" / "cache").exists()
    r = CliRunner().invoke(bench_command, [str(images), "-o", str(tmp_path / "c"), "--reuse", str(images / "notes.txt"),
                                           *args])
    assert r.exit_code == 2 and "not a results.csv" in r.stderr and "Traceback" not in r.stderr


def test_bench_with_two_worker_processes_matches_one(images: Path, tmp_path: Path):
    common = [str(images), "--codecs", "jpeg", "--jpeg-quality", "20", "--shrink", "1,2", "--scales", "8",
              "--lr-codecs", "png", "--metrics", "psnr", "--threads", "1", "-q", "--json"]
    one = bench(*common[:1], "-o", str(tmp_path / "one"), *common[1:])
    two = bench(*common[:1], "-o", str(tmp_path / "two"), *common[1:], "--jobs", "2")
    assert one.exit_code == 0 and two.exit_code == 0, two.stderr
    rows1 = list(csv.DictReader(open(tmp_path / "one" / "results.csv")))
    rows2 = list(csv.DictReader(open(tmp_path / "two" / "results.csv")))
    key = lambda r: (r["image"], r["setting"], r["bytes"], r["psnr"])  # noqa: E731
    assert [key(r) for r in rows1] == [key(r) for r in rows2]


@pytest.mark.parametrize(
    "args,message",
    [
        (["{missing}"], "no such file or directory"),
        (["{images}", "--jpeg-quality", "1,abc", "--codecs", "jpeg"], "comma-separated numbers"),
        (["{images}", "--codecs", "gif"], "unknown classic codec"),
        (["{images}", "--models", "tadm-sd21-x16"], "not available"),
        (["{images}", "--metrics", "vmaf"], "unknown metric"),
        (["{images}", "--lr-codecs", "gif"], "unknown LR codec"),
        (["{empty}"], "no images found"),
    ],
)
def test_bench_errors_are_one_line(images: Path, tmp_path: Path, args, message):
    (tmp_path / "empty").mkdir()
    subst = {"{missing}": str(tmp_path / "nope"), "{images}": str(images), "{empty}": str(tmp_path / "empty")}
    argv = [subst.get(a, a) for a in args] + ["-o", str(tmp_path / "o"), "-q"]
    r = CliRunner().invoke(bench_command, argv)
    assert r.exit_code == 2
    assert r.stderr.startswith("tadm: ") and message in r.stderr and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr


def test_unreadable_image_is_a_one_line_error_through_the_real_command(tmp_path: Path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "x.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    r = subprocess.run([sys.executable, "-m", "tadmcodec", "bench", str(d), "-o", str(tmp_path / "o"), "-q"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("tadm: ") and "x.png" in r.stderr and r.stderr.count("\n") == 1


def test_demo_on_one_small_bundled_photo(tmp_path: Path):
    pytest.importorskip("skimage")
    out = tmp_path / "demo"
    r = CliRunner().invoke(demo_command, ["-o", str(out), "--images", "1", "--max-size", "128", "--threads", "1", "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    ours, jpeg, *avif = doc["rows"]
    assert ours["method"] == "ours" and jpeg["method"] == "jpeg" and ours["image"] == "astronaut"
    # the best AVIF within our bytes, when even the smallest one fits
    assert len(avif) <= 1 and all(a["method"] == "avif" and a["n_bytes"] <= ours["n_bytes"] for a in avif)
    # JPEG gets at least our bytes (or its top quality if even that is smaller)
    assert jpeg["n_bytes"] >= ours["n_bytes"] or jpeg["label"] == "JPEG q=95"
    assert (out / "astronaut.tadm").stat().st_size == ours["n_bytes"]
    assert (out / "astronaut.jpg").stat().st_size == jpeg["n_bytes"]
    for row in (ours, jpeg, *avif):
        assert row["bpp"] == pytest.approx(8 * row["n_bytes"] / (128 * 128))
        assert 5 < row["psnr"] < 60 and 0 <= row["lpips"] <= 1.5 and 0 <= row["dists"] <= 1
    pic = Image.open(out / "side_by_side.png")
    assert pic.size[0] >= (3 + len(avif)) * 128 and pic.size[1] >= 128
    text = CliRunner().invoke(demo_command, ["-o", str(out), "--images", "1", "--max-size", "128", "--threads", "1"]).stdout
    assert "astronaut" in text and "JPEG q=" in text and "side_by_side.png" in text


def test_demo_rejects_bad_options(tmp_path: Path):
    r = CliRunner().invoke(demo_command, ["-o", str(tmp_path), "--images", "9"])
    assert r.exit_code == 2 and r.stderr.startswith("tadm: ") and "--images" in r.stderr
