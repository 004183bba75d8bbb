"""The `tadm` command end to end, run as a user runs it (a subprocess), with the bicubic model.

These tests need no network model, so they also pin down the codec plumbing:
files, folders, pipes, overwrite rules, exit codes, one-line errors.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tadmcodec import container

TADM = [sys.executable, "-m", "tadmcodec"]


def run(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*TADM, *args], input=stdin, capture_output=True, cwd=cwd, timeout=120)


def photo(w: int = 96, h: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like test image (gradients plus mild noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 64], axis=2)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def save(path: Path, arr: np.ndarray, **kw) -> Path:
    Image.fromarray(arr).save(path, **kw)
    return path


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("tadm: ")
    return lines[0]


def test_encode_decode_file_roundtrip(tmp_path: Path) -> None:
    src = save(tmp_path / "a.png", photo(100, 70))
    p = run("encode", str(src), "--model", "bicubic", "--scale", "8", "-v")
    assert p.returncode == 0, p.stderr
    tadm = tmp_path / "a.tadm"
    assert tadm.exists()
    assert b"bpp" in p.stderr
    p = run("decode", str(tadm), "-o", str(tmp_path / "b.png"))
    assert p.returncode == 0, p.stderr
    out = np.asarray(Image.open(tmp_path / "b.png"))
    assert out.shape == (70, 100, 3)
    # bicubic at 8x of a smooth gradient: close but not equal
    err = np.abs(out.astype(int) - photo(100, 70).astype(int)).mean()
    assert err < 12


@pytest.mark.parametrize("lr_codec", ["png", "webp", "jxl", "auto"])
def test_every_lr_codec_roundtrips_through_cli(tmp_path: Path, lr_codec: str) -> None:
    src = save(tmp_path / "a.png", photo(64, 48))
    assert run("encode", str(src), "-m", "bicubic", "-s", "16", "--lr-codec", lr_codec, "-o", str(tmp_path / "a.tadm")).returncode == 0
    info = json.loads(run("info", "--json", str(tmp_path / "a.tadm")).stdout)
    if lr_codec != "auto":
        assert info["lr_codec"] == lr_codec
    assert (info["lr_width"], info["lr_height"]) == (4, 3)
    assert run("decode", str(tmp_path / "a.tadm"), "-o", str(tmp_path / "b.png")).returncode == 0
    assert Image.open(tmp_path / "b.png").size == (64, 48)


def test_shell_pipe(tmp_path: Path) -> None:
    data = (save(tmp_path / "a.png", photo())).read_bytes()
    enc = run("encode", "-", "-o", "-", "-m", "bicubic", stdin=data)
    assert enc.returncode == 0, enc.stderr
    assert container.looks_like_tadm(enc.stdout[:16])
    dec = run("decode", "-", "-o", "-", stdin=enc.stdout)
    assert dec.returncode == 0, dec.stderr
    assert Image.open(io.BytesIO(dec.stdout)).size == (96, 64)
    # stdin without -o also goes to stdout (README: a filter, as with gzip), for both commands
    assert run("encode", "-", "-m", "bicubic", stdin=data).stdout == enc.stdout
    assert run("decode", "-", stdin=enc.stdout).stdout == dec.stdout
    # ... so a shell redirect works: tadm encode - < a.png > a.tadm
    with open(tmp_path / "a.png", "rb") as fin, open(tmp_path / "r.tadm", "wb") as fout:
        assert subprocess.run([*TADM, "encode", "-", "-m", "bicubic"], stdin=fin, stdout=fout, timeout=120).returncode == 0
    assert (tmp_path / "r.tadm").read_bytes() == enc.stdout
    # stdin has no name to put under -d
    assert "-o" in assert_one_line_error(run("encode", "-", "-d", str(tmp_path / "d"), "-m", "bicubic", stdin=data))


def test_decode_output_format_from_extension(tmp_path: Path) -> None:
    src = save(tmp_path / "a.png", photo())
    run("encode", str(src), "-m", "bicubic")
    for ext, fmt in ((".jpg", "JPEG"), (".webp", "WEBP"), (".tiff", "TIFF"), (".bmp", "BMP")):
        out = tmp_path / f"o{ext}"
        assert run("decode", str(tmp_path / "a.tadm"), "-o", str(out)).returncode == 0
        assert Image.open(out).format == fmt
    bad = run("decode", str(tmp_path / "a.tadm"), "-o", str(tmp_path / "o.xyz"))
    assert "output format" in assert_one_line_error(bad)


def test_batch_folder_mirrors_tree_and_reports_bad_file(tmp_path: Path) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    save(tmp_path / "in" / "x.png", photo(seed=1))
    save(tmp_path / "in" / "sub" / "y.jpg", photo(seed=2))
    (tmp_path / "in" / "notes.txt").write_text("not an image, and not picked up")
    p = run("encode", str(tmp_path / "in"), "-d", str(tmp_path / "enc"), "-m", "bicubic", "-j", "2")
    assert p.returncode == 0, p.stderr
    assert sorted(str(q.relative_to(tmp_path / "enc")) for q in (tmp_path / "enc").rglob("*.tadm")) == ["sub/y.tadm", "x.tadm"]
    # a corrupt file among good ones: the batch goes on, reports it, exits 1
    good = (tmp_path / "enc" / "x.tadm").read_bytes()
    (tmp_path / "enc" / "broken.tadm").write_bytes(good[: len(good) // 2])
    p = run("decode", str(tmp_path / "enc"), "-d", str(tmp_path / "dec"))
    err = p.stderr.decode()
    assert p.returncode == 1, err
    assert "broken.tadm" in err and "Traceback" not in err
    assert (tmp_path / "dec" / "x.png").exists() and (tmp_path / "dec" / "sub" / "y.png").exists()
    assert not (tmp_path / "dec" / "broken.png").exists()
    assert not list((tmp_path / "dec").rglob("*.part"))


def test_overwrite_protection(tmp_path: Path) -> None:
    src = save(tmp_path / "a.png", photo())
    out = tmp_path / "a.tadm"
    out.write_bytes(b"precious")
    p = run("encode", str(src), "-m", "bicubic")
    assert "exists" in assert_one_line_error(p)
    assert out.read_bytes() == b"precious"
    assert run("encode", str(src), "-m", "bicubic", "-f").returncode == 0
    assert out.read_bytes() != b"precious"
    # never overwrite an input, even with -f
    before = src.read_bytes()
    p = run("decode", str(out), "-o", str(out), "-f")
    assert "input" in assert_one_line_error(p)
    p = run("encode", str(src), "-o", str(src), "-f", "-m", "bicubic")
    assert "input" in assert_one_line_error(p)
    assert src.read_bytes() == before


@pytest.mark.skipif(os.name != "posix", reason="file modes and umask are POSIX")
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=["022", "077", "002"])
def test_outputs_honour_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    """New outputs get 0666 & ~umask, as `cp` and `>` give; an overwritten file (-f) keeps its mode."""

    def tadm(*args: str) -> None:
        p = subprocess.run([*TADM, *args], capture_output=True, timeout=120, umask=umask)
        assert p.returncode == 0, p.stderr

    src = save(tmp_path / "a.png", photo())
    tadm("encode", str(src), "-m", "bicubic")  # next to the input
    tadm("encode", str(src), "-m", "bicubic", "-d", str(tmp_path / "enc"))  # a new folder too
    tadm("decode", str(tmp_path / "a.tadm"), "-o", str(tmp_path / "b.png"))
    for out in (tmp_path / "a.tadm", tmp_path / "enc" / "a.tadm", tmp_path / "b.png"):
        assert oct(out.stat().st_mode & 0o777) == oct(mode), out
    (tmp_path / "b.png").chmod(0o640)
    tadm("decode", str(tmp_path / "a.tadm"), "-o", str(tmp_path / "b.png"), "-f")
    assert oct((tmp_path / "b.png").stat().st_mode & 0o777) == oct(0o640)
    assert not list(tmp_path.rglob("*.part"))


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    a = save(tmp_path / "a.png", photo())
    b = save(tmp_path / "b.png", photo(seed=3))
    assert_one_line_error(run("encode", str(a), str(b), "-o", str(tmp_path / "x.tadm"), "-m", "bicubic"))
    assert "unknown model" in assert_one_line_error(run("encode", str(a), "-m", "nope"))
    assert "scale" in assert_one_line_error(run("encode", str(a), "-m", "tadm-tiny-x16", "-s", "32"))
    assert_one_line_error(run("encode", str(tmp_path / "missing.png"), "-m", "bicubic"))
    assert "--scale" in assert_one_line_error(run("encode", str(a), "--scale", "7"))


@pytest.mark.parametrize("args,needles", [
    pytest.param(("encode", "a.png", "-s", "12"), ("-s/--scale", "'12'", "'8'", "'16'", "'32'", "encode -h'"), id="bad-scale"),
    pytest.param(("decode", "a.tadm", "--format", "gif"), ("--format", "'gif'", "'png'", "'webp'", "'jpg'", "'ppm'"), id="bad-format"),
    pytest.param(("encode", "a.png", "--lr-codec", "gif"), ("--lr-codec", "'auto'", "'jxl'"), id="bad-lr-codec"),
    pytest.param(("encode",), ("missing argument IN...",), id="missing-input"),
    pytest.param(("info",), ("missing argument FILE...",), id="missing-file"),
    pytest.param(("encode", "a.png", "--forc"), ("no such option --forc", "--force"), id="unknown-option"),
    pytest.param(("decode", "a.tadm", "-j", "0"), ("-j/--jobs", "0"), id="out-of-range"),
    pytest.param(("encode", "a.png", "-s"), ("-s", "requires an argument"), id="no-value"),
    pytest.param(("nosuch",), ("no such command", "nosuch"), id="unknown-command"),
    pytest.param(("train", "--config", "c.json", "--stage", "9"), ("--stage", "'0a'", "'all'", "train -h'"), id="train-stage"),
    pytest.param(("train",), ("missing option --config",), id="train-no-config"),
    pytest.param(("bench", "--grid", "huge", "a.png"), ("--grid", "'full'", "'standard'", "'quick'", "bench -h'"), id="bench-grid"),
])
def test_click_usage_errors_are_one_line(tmp_path: Path, args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    """A bad option value, a missing argument or an unknown option: `tadm: ...` on one line, exit 2,
    naming the option and, for a choice, the allowed values (not click's usage block)."""
    line = assert_one_line_error(run(*args, cwd=tmp_path))
    for needle in needles:
        assert needle in line, line
    assert "Usage:" not in line and "Error:" not in line


def test_corrupt_and_truncated_files(tmp_path: Path) -> None:
    src = save(tmp_path / "a.png", photo())
    run("encode", str(src), "-m", "bicubic")
    good = (tmp_path / "a.tadm").read_bytes()
    cases = {
        "trunc.tadm": good[:-3],
        "flip.tadm": good[:10] + bytes([good[10] ^ 0x40]) + good[11:],
        "garbage.tadm": good + b"\0",
        "empty.tadm": b"",
        "png.tadm": src.read_bytes(),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        p = run("decode", str(tmp_path / name), "-o", str(tmp_path / f"{name}.png"))
        assert_one_line_error(p)
        assert not (tmp_path / f"{name}.png").exists()
        assert_one_line_error(run("info", str(tmp_path / name)))


def test_pixel_budget(tmp_path: Path) -> None:
    src = save(tmp_path / "a.png", photo(40, 30))
    p = run("encode", str(src), "-m", "bicubic", "--max-pixels", "1000")
    assert "--max-pixels" in assert_one_line_error(p)
    assert not (tmp_path / "a.tadm").exists()
    assert run("encode", str(src), "-m", "bicubic", "--max-pixels", "1200").returncode == 0
    p = run("decode", str(tmp_path / "a.tadm"), "--max-pixels", "1000")
    assert_one_line_error(p)


def test_alpha_needs_flatten(tmp_path: Path) -> None:
    rgba = np.dstack([photo(), np.full((64, 96), 128, np.uint8)])
    src = save(tmp_path / "t.png", rgba)
    p = run("encode", str(src), "-m", "bicubic")
    assert "--flatten" in assert_one_line_error(p)
    assert run("encode", str(src), "-m", "bicubic", "--flatten", "white").returncode == 0
    opaque = save(tmp_path / "o.png", np.dstack([photo(), np.full((64, 96), 255, np.uint8)]))
    assert run("encode", str(opaque), "-m", "bicubic").returncode == 0  # opaque alpha loses nothing


def test_grey_palette_16bit_and_orientation(tmp_path: Path) -> None:
    grey = save(tmp_path / "g.png", photo()[:, :, 0])
    pal = tmp_path / "p.png"
    Image.fromarray(photo()).convert("P", palette=Image.Palette.ADAPTIVE).save(pal)
    deep = tmp_path / "d.png"
    Image.fromarray(photo()[:, :, 0].astype(np.uint16) * 257).save(deep)
    for f in (grey, pal):
        assert run("encode", str(f), "-m", "bicubic").returncode == 0
    p = run("encode", str(deep), "-m", "bicubic")
    assert p.returncode == 0 and b"16-bit" in p.stderr
    # EXIF orientation 6 (rotate 90 CW): a 96x64 JPEG is shown as 64x96
    exif = Image.Exif()
    exif[0x0112] = 6
    rot = tmp_path / "r.jpg"
    Image.fromarray(photo()).save(rot, exif=exif.tobytes())
    run("encode", str(rot), "-m", "bicubic")
    info = json.loads(run("info", "--json", str(tmp_path / "r.tadm")).stdout)
    assert (info["width"], info["height"]) == (64, 96)


def test_icc_metadata_kept_on_request(tmp_path: Path) -> None:
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = save(tmp_path / "a.png", photo(), icc_profile=icc)
    run("encode", str(src), "-m", "bicubic", "-o", str(tmp_path / "plain.tadm"))
    run("encode", str(src), "-m", "bicubic", "--metadata", "icc", "-o", str(tmp_path / "icc.tadm"))
    plain = json.loads(run("info", "--json", str(tmp_path / "plain.tadm")).stdout)
    withicc = json.loads(run("info", "--json", str(tmp_path / "icc.tadm")).stdout)
    assert plain["metadata"] == [] and withicc["metadata"][0]["kind"] == "icc"
    assert withicc["bytes"] > plain["bytes"] + len(icc) // 2
    run("decode", str(tmp_path / "icc.tadm"), "-o", str(tmp_path / "out.png"))
    assert Image.open(tmp_path / "out.png").info.get("icc_profile") == icc


def test_info_and_models(tmp_path: Path) -> None:
    src = save(tmp_path / "a.png", photo(768 // 4, 512 // 4))
    run("encode", str(src), "-m", "bicubic", "-s", "32")
    p = run("info", str(tmp_path / "a.tadm"))
    assert p.returncode == 0 and b"bicubic" in p.stdout
    d = json.loads(run("info", "--json", str(tmp_path / "a.tadm")).stdout)
    assert d["model"] == "bicubic" and d["scale"] == 32 and d["overhead_bytes"] <= 24
    rows = [json.loads(line) for line in run("models", "--json").stdout.splitlines()]
    names = {r["name"]: r for r in rows}
    assert set(names) >= {"bicubic", "tadm-tiny-x16", "tadm-tiny-x32", "tadm-sd21-x16", "tadm-sd21-x32"}
    assert names["bicubic"]["available"]
    assert not names["tadm-sd21-x16"]["available"] and "import-official" in names["tadm-sd21-x16"]["needs"]


def test_info_overhead_leaves_out_metadata_record_data() -> None:
    """`tadm info` and docs/container.md section 11 agree: 28 bytes on small-jxl-metadata.tadm."""
    golden = Path(__file__).resolve().parent / "golden" / "small-jxl-metadata.tadm"
    d = json.loads(run("info", "--json", str(golden)).stdout)
    assert d["overhead_bytes"] == 28 and d["payload_bytes"] == 32 and d["bytes"] == 78
    assert [m["bytes"] for m in d["metadata"]] == [8, 8, 2]
    assert d["bytes"] == d["payload_bytes"] + sum(m["bytes"] for m in d["metadata"]) + d["overhead_bytes"]
    assert "overhead 28 B" in run("info", str(golden)).stdout.decode()


def test_digest_mismatch_is_refused(tmp_path: Path) -> None:
    src = save(tmp_path / "a.png", photo())
    run("encode", str(src), "-m", "bicubic")
    f = container.unpack((tmp_path / "a.tadm").read_bytes())
    forged = container.TadmFile(**{**f.__dict__, "model_digest": bytes(4)})
    (tmp_path / "f.tadm").write_bytes(container.pack(forged))
    p = run("decode", str(tmp_path / "f.tadm"))
    assert "bicubic" in assert_one_line_error(p)
    other = container.TadmFile(**{**f.__dict__, "model_number": 77})
    (tmp_path / "u.tadm").write_bytes(container.pack(other))
    assert "77" in assert_one_line_error(run("decode", str(tmp_path / "u.tadm")))


def test_unavailable_model_names_what_is_missing(tmp_path: Path, monkeypatch) -> None:
    src = save(tmp_path / "a.png", photo())
    env = {k: v for k, v in os.environ.items() if not k.startswith("TADM_SD21")}
    p = subprocess.run([*TADM, "encode", str(src), "-m", "tadm-sd21-x16"], capture_output=True, env=env, timeout=60)
    line = assert_one_line_error(p)
    assert "TADM_SD21_X16" in line or "--model-dir" in line
