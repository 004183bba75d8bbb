"""Batch coding on Ray Data (`tadmcodec.distributed`, `tadm encode/decode --engine ray`).

One local Ray (`ray.init(num_cpus=2)`) serves the whole module: the Python API
runs on it in this process, and the CLI runs as a user runs it (a subprocess)
and joins it through RAY_ADDRESS, as it would join a real cluster. What is
checked is that Ray changes nothing a user can see: the same bytes as
`tadm encode -d`, the same pixels as `tadm decode`, the same per-file errors
and exit codes, and no partial outputs. The tests that need no Ray (importing
without it, the one-line error) run without it too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

try:
    import ray
    import ray.data
except ImportError:  # the extra is not installed: only the no-Ray tests run
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason="Ray Data is not installed (pip install 'tadmcodec[ray]')")

TADM = [sys.executable, "-m", "tadmcodec"]
# Ray gives each worker one torch thread per CPU it holds (one here); TADM models on the CPU round
# differently with other thread counts, so the local runs that Ray's bytes must equal use one too.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*TADM, *args], capture_output=True, timeout=300, env={**os.environ, **(env or {})})


def photo(w: int, h: int, seed: int) -> np.ndarray:
    """A smooth photo-like image (gradients, a ripple, mild noise), different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([x * 255 / w, y * 255 / h, 128 + 60 * np.sin((x + 7 * seed) / 9) * np.cos(y / 7)], axis=2)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones too), by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def err_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.decode().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def cluster():
    """A local 2-CPU Ray for the module; its address is what the CLI subprocesses get as RAY_ADDRESS."""
    if ray is None:
        pytest.skip("Ray Data is not installed (pip install 'tadmcodec[ray]')")
    saved = os.environ.pop("RAY_ADDRESS", None)  # a cluster of the caller's must not be used, nor num_cpus refused
    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield {"RAY_ADDRESS": ctx.address_info["address"]}
    finally:
        ray.shutdown()
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """12 photos of a few sizes, 4 of them in a subfolder (mirroring)."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    for i in range(12):
        w, h = (96, 64) if i % 3 == 0 else (80, 80) if i % 3 == 1 else (112, 48)
        Image.fromarray(photo(w, h, i)).save(root / ("sub" if i >= 8 else "") / f"p{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> Path:
    from tadmcodec.tadm.testing import make_random_model_dir

    return make_random_model_dir(tmp_path_factory.mktemp("models") / "micro-x16", 16)


@needs_ray
@pytest.mark.parametrize("model", ["bicubic", "micro"])
def test_ray_encode_is_byte_identical_to_local(cluster, photos: Path, model: str, request, tmp_path: Path) -> None:
    # Each test does its own work (no shared encoded fixture): under pytest-xdist they may run on two workers.
    if model == "bicubic":
        args, ray_args = ["-m", "bicubic", "-s", "16"], []
    else:  # one worker: the micro model's actors import torch, and one is enough for 12 small photos
        micro = request.getfixturevalue("micro")
        args, ray_args = ["-m", "tadm-tiny-x16", "--model-dir", str(micro), "--device", "cpu"], ["-j", "1"]
    p = run("encode", str(photos), "-d", str(tmp_path / "local"), *args, env=ONE_THREAD)
    assert p.returncode == 0, p.stderr.decode()
    p = run("encode", "--engine", "ray", *ray_args, str(photos), "-d", str(tmp_path / "ray"), *args, env=cluster)
    assert p.returncode == 0, p.stderr.decode()
    assert err_lines(p) == [], p.stderr.decode()  # Ray's own logs stay off the command's stderr
    want = tree(tmp_path / "local")
    assert len(want) == 12 and "sub/p08.tadm" in want  # the tree is mirrored
    assert tree(tmp_path / "ray") == want


@needs_ray
def test_ray_decode_round_trip_gives_the_local_pixels(cluster, photos: Path, tmp_path: Path) -> None:
    """Through file:// URIs, so the workers read and write through pyarrow as they would on s3:// or gs://."""
    local = tmp_path / "tadm"
    assert run("encode", str(photos), "-d", str(local), "-m", "bicubic", "-s", "16").returncode == 0
    p = run("decode", str(local), "-d", str(tmp_path / "local"), env=ONE_THREAD)
    assert p.returncode == 0, p.stderr.decode()
    p = run("decode", "--engine", "ray", f"file://{local}", "-d", f"file://{tmp_path / 'ray'}", "-v", env=cluster)
    assert p.returncode == 0, p.stderr.decode()
    assert len(err_lines(p)) == 12 and all(" bpp, bicubic x16, " in line for line in err_lines(p))
    want = tree(tmp_path / "local")
    assert sorted(tree(tmp_path / "ray")) == sorted(want)  # no temporary names left behind
    for rel in want:
        a = np.asarray(Image.open(tmp_path / "local" / rel))
        b = np.asarray(Image.open(tmp_path / "ray" / rel))
        assert a.shape[2] == 3 and np.array_equal(a, b), rel


@needs_ray
def test_bad_files_fail_alone_and_leave_nothing_partial(cluster, photos: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "deep").mkdir(parents=True)
    for name in ("p00.png", "p01.png"):
        (src / "deep" / name).write_bytes((photos / name).read_bytes())
    good = (photos / "p02.png").read_bytes()
    (src / "corrupt.png").write_bytes(good[: len(good) // 2])  # a truncated PNG
    # Unreadable even as root (CI runs as root, so chmod 000 would not do): every read of it fails with EIO.
    (src / "unreadable.png").symlink_to("/proc/self/mem")
    out = tmp_path / "out"
    p = run("encode", "--engine", "ray", str(src), "-d", str(out), "-m", "bicubic", env=cluster)
    lines = err_lines(p)
    assert p.returncode == 1, p.stderr.decode()
    assert len(lines) == 3 and lines[-1] == "tadm: 2 of 4 files failed", lines
    assert any(line.startswith(f"tadm: {src / 'corrupt.png'}: cannot ") for line in lines), lines
    assert f"tadm: {src / 'unreadable.png'}: cannot read: Input/output error" in lines
    assert "Traceback" not in p.stderr.decode()
    local = tmp_path / "local"
    assert run("encode", str(src / "deep"), "-d", str(local), "-m", "bicubic").returncode == 0
    assert tree(out) == {f"deep/{k}": v for k, v in tree(local).items()}  # every good file, nothing else

    # Outputs that exist are refused without -f, each on its own line, before any work (and Ray) starts.
    p = run("encode", "--engine", "ray", str(src / "deep"), "-d", str(out / "deep"), "-m", "bicubic", env=cluster)
    assert p.returncode == 1
    assert err_lines(p) == [
        f"tadm: {src / 'deep' / 'p00.png'}: {out / 'deep' / 'p00.tadm'} exists (use -f to overwrite)",
        f"tadm: {src / 'deep' / 'p01.png'}: {out / 'deep' / 'p01.tadm'} exists (use -f to overwrite)",
        "tadm: 2 of 2 files failed",
    ]


@needs_ray
def test_python_api_on_existing_datasets(cluster, photos: Path, tmp_path: Path) -> None:
    from tadmcodec.codec import Codec
    from tadmcodec.distributed import decode_dataset, encode_dataset

    codec = Codec(device="cpu")
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(photos.glob("p0[0-3].png"))]
    ds = ray.data.from_items([{"id": i, "image": a} for i, a in enumerate(arrays)])
    rows = sorted(encode_dataset(ds, model="bicubic", scale=16, workers=2).iter_rows(), key=lambda r: r["id"])
    assert [r["error"] for r in rows] == [None] * 4
    assert [r["tadm"] for r in rows] == [codec.encode(a, model="bicubic", scale=16) for a in arrays]
    assert "image" not in rows[0] and rows[0]["width"] == arrays[0].shape[1]

    back = sorted(decode_dataset(ray.data.from_items([{"id": r["id"], "tadm": r["tadm"]} for r in rows]),
                                 workers=2).iter_rows(), key=lambda r: r["id"])
    for r in back:
        assert r["error"] is None and r["model"] == "bicubic"
        assert np.array_equal(np.asarray(r["image"]), codec.decode(rows[r["id"]]["tadm"]).pixels)

    # Ray Data's own reader: file bytes and their paths; a corrupt file fails its row, not the Dataset.
    folder = tmp_path / "files"
    folder.mkdir()
    for name in ("p04.png", "p05.png"):
        (folder / name).write_bytes((photos / name).read_bytes())
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    files = ray.data.read_binary_files(str(folder), include_paths=True)
    got = {Path(r["path"]).name: r for r in encode_dataset(files, model="bicubic", scale=16, workers=1).iter_rows()}
    assert got["corrupt.png"]["tadm"] is None and got["corrupt.png"]["error"]  # the reason, as `tadm encode` gives it
    for name in ("p04.png", "p05.png"):
        assert got[name]["error"] is None
        assert got[name]["tadm"] == run_local_encode(folder / name)


def run_local_encode(path: Path) -> bytes:
    p = run("encode", str(path), "-m", "bicubic", "-s", "16", "-o", "-")
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout


def test_nothing_imports_ray_unless_asked(tmp_path: Path) -> None:
    """`import tadmcodec`, the CLI, `tadm info` and a local encode never load Ray (it costs seconds)."""
    src = tmp_path / "a.png"
    Image.fromarray(photo(64, 48, 0)).save(src)
    code = (
        "import sys\n"
        "import tadmcodec, tadmcodec.cli, tadmcodec.distributed\n"
        "from click.testing import CliRunner\n"
        f"r = CliRunner().invoke(tadmcodec.cli.main, ['encode', {str(src)!r}, '-m', 'bicubic'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"r = CliRunner().invoke(tadmcodec.cli.main, ['info', {str(tmp_path / 'a.tadm')!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray was imported'\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()


def test_engine_ray_without_ray_is_one_line(tmp_path: Path) -> None:
    src = tmp_path / "a.png"
    Image.fromarray(photo(64, 48, 0)).save(src)
    fake = tmp_path / "no-ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    env = {"PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    for cmd in (["encode", str(src), "-m", "bicubic", "-d", str(tmp_path / "out")], ["decode", str(src)]):
        p = run(*cmd, "--engine", "ray", env=env)
        assert p.returncode == 2
        lines = err_lines(p)
        assert len(lines) == 1 and lines[0].startswith("tadm: --engine ray needs Ray") and "tadmcodec[ray]" in lines[0]
    assert not (tmp_path / "out").exists()
    p = run("encode", "-", "--engine", "ray", "-m", "bicubic")
    assert p.returncode == 2 and err_lines(p) == [
        "tadm: --engine ray codes files and folders, not stdin or stdout (use --engine local)"]
