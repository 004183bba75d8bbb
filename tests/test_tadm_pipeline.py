"""TADM as the codec's Rescaler: exact LR sizes, determinism, tiling, errors, the CLI end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tadmcodec import registry
from tadmcodec.errors import FormatError, InputError, ModelError
from tadmcodec.rescaler import Rescaler, lr_size
from tadmcodec.tadm.loader import load_tadm
from tadmcodec.tadm.pipeline import TadmRescaler
from tadmcodec.tadm.testing import make_random_model, make_random_model_dir


@pytest.fixture(scope="module")
def x16(tmp_path_factory) -> Path:
    return make_random_model_dir(tmp_path_factory.mktemp("m") / "x16", 16, seed=0)


@pytest.fixture(scope="module")
def rescaler(x16: Path) -> TadmRescaler:
    return load_tadm(registry.with_weights_dir(registry.get("tadm-tiny-x16"), x16), device="cpu")


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / max(w, 1), y * 255 / max(h, 1), (x + y) * 100 / max(w + h, 1) + 60], axis=2)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def test_is_a_rescaler(rescaler: TadmRescaler) -> None:
    assert isinstance(rescaler, Rescaler)
    assert rescaler.scales == (16,) and rescaler.name == "tadm-tiny-x16"
    assert str(rescaler.device) == "cpu" and str(rescaler.dtype) == "torch.float32"


@pytest.mark.parametrize("h,w", [(1, 1), (17, 33), (48, 80), (61, 130)])
def test_lr_size_is_exact(rescaler: TadmRescaler, h: int, w: int) -> None:
    img = photo(h, w)
    lr = rescaler.downscale(img, 16)
    lw, lh = lr_size(w, h, 16)
    assert lr.shape == (lh, lw, 3) and lr.dtype == np.uint8 and lr.flags.c_contiguous
    out, tmap = rescaler.upscale_with_timestep_map(lr, 16, (w, h))
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    assert tmap.shape == (-(-h // 8), -(-w // 8)) and tmap.dtype == np.float32
    assert 10 <= tmap.min() <= tmap.max() <= 200


@pytest.mark.parametrize("scale", [8, 32])
def test_other_scales(scale: int) -> None:
    r = TadmRescaler(make_random_model(scale, seed=2))
    img = photo(40, 70)
    lr = r.downscale(img, scale)
    lw, lh = lr_size(70, 40, scale)
    assert lr.shape == (lh, lw, 3)
    assert r.upscale(lr, scale, (70, 40)).shape == (40, 70, 3)


def test_read_only_arrays_are_accepted_silently(rescaler: TadmRescaler) -> None:
    """np.asarray(PIL image) is read-only: no torch warning, same bytes as a writable copy."""
    import warnings

    img = photo(64, 96, seed=4)
    frozen = np.asarray(Image.fromarray(img))
    assert not frozen.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lr = rescaler.downscale(frozen, 16)
        lr_frozen = lr.copy()
        lr_frozen.flags.writeable = False
        out = rescaler.upscale(lr_frozen, 16, (96, 64))
    assert np.array_equal(lr, rescaler.downscale(img.copy(), 16))
    assert np.array_equal(out, rescaler.upscale(lr, 16, (96, 64)))


def test_same_input_same_bytes(rescaler: TadmRescaler, x16: Path) -> None:
    img = photo(64, 96, seed=3)
    lr = rescaler.downscale(img, 16)
    out = rescaler.upscale(lr, 16, (96, 64))
    again = load_tadm(registry.with_weights_dir(registry.get("tadm-tiny-x16"), x16), device="cpu")
    assert np.array_equal(again.downscale(img, 16), lr)
    assert np.array_equal(again.upscale(lr, 16, (96, 64)), out)
    assert np.array_equal(rescaler.upscale(lr, 16, (96, 64)), out)


def test_channels_last_is_on_for_the_cpu_and_changes_pixels_by_a_level_at_most(rescaler: TadmRescaler) -> None:
    assert rescaler.channels_last
    assert rescaler.model.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    img = photo(64, 96, seed=5)
    lr = rescaler.downscale(img, 16)
    out = rescaler.upscale(lr, 16, (96, 64)).astype(int)
    rescaler.enable_channels_last(False)
    try:
        assert not rescaler.model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        assert np.abs(rescaler.upscale(lr, 16, (96, 64)).astype(int) - out).max() <= 1
    finally:
        rescaler.enable_channels_last()


def test_tiling_switch_is_invisible_when_one_tile_fits(rescaler: TadmRescaler) -> None:
    img = photo(64, 96, seed=4)
    lr = rescaler.downscale(img, 16)
    out = rescaler.upscale(lr, 16, (96, 64))
    rescaler.disable_tiling()
    try:
        assert np.array_equal(rescaler.downscale(img, 16), lr)
        assert np.array_equal(rescaler.upscale(lr, 16, (96, 64)), out)
    finally:
        rescaler.enable_tiling()


def test_tiled_decode_of_a_large_latent(rescaler: TadmRescaler) -> None:
    """A 900x700 decode crosses latent (96/64) and VAE tile borders and yields a real time-step map."""
    lr = rescaler.downscale(photo(700, 900, seed=5), 16)
    out, tmap = rescaler.upscale_with_timestep_map(lr, 16, (900, 700))
    assert out.shape == (700, 900, 3) and tmap.shape == (88, 113)
    assert tmap.std() > 0  # several tiles, several predicted time-steps


def test_bad_inputs_are_one_line_errors(rescaler: TadmRescaler) -> None:
    with pytest.raises(ModelError, match="x16"):
        rescaler.downscale(photo(32, 32), 32)
    with pytest.raises(InputError):
        rescaler.downscale(photo(32, 32).astype(np.float32), 16)
    with pytest.raises(FormatError, match="shape"):
        rescaler.upscale(np.zeros((3, 3, 3), np.uint8), 16, (100, 100))


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tadmcodec", *args], capture_output=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_cli_roundtrip_and_digest_mismatch(x16: Path, tmp_path: Path) -> None:
    pytest.importorskip("tadmcodec.cli")
    src = tmp_path / "a.png"
    Image.fromarray(photo(70, 100)).save(src)
    p = run_cli("encode", str(src), "--model", "tadm-tiny-x16", "--model-dir", str(x16), "--device", "cpu")
    assert p.returncode == 0, p.stderr.decode()
    tadm, out, tmap = tmp_path / "a.tadm", tmp_path / "b.png", tmp_path / "t.png"
    p = run_cli("decode", str(tadm), "-o", str(out), "--model-dir", str(x16), "--timestep-map", str(tmap))
    assert p.returncode == 0, p.stderr.decode()
    assert Image.open(out).size == (100, 70)
    assert Image.open(tmap).size == (13, 9)
    other = make_random_model_dir(tmp_path / "other", 16, seed=1)  # same name, other weights
    p = run_cli("decode", str(tadm), "-o", str(tmp_path / "c.png"), "--model-dir", str(other))
    err = p.stderr.decode()
    assert p.returncode == 2 and "tadm-tiny-x16" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


@pytest.mark.slow
def test_large_decode_memory_is_bounded(x16: Path) -> None:
    """Peak RSS of a 2048x2048 decode with the micro model stays bounded (benchmarks/speed.py does 8192²)."""
    code = textwrap.dedent(f"""
        import resource, numpy as np
        from tadmcodec import registry
        from tadmcodec.tadm.loader import load_tadm
        r = load_tadm(registry.with_weights_dir(registry.get("tadm-tiny-x16"), {str(x16)!r}), device="cpu")
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        lr = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
        out = r.upscale(lr, 16, (2048, 2048))
        assert out.shape == (2048, 2048, 3)
        print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=600)
    assert p.returncode == 0, p.stderr.decode()
    base_kb, peak_kb = map(int, p.stdout.split())
    # tiles in flight are bounded by the config (9 statistics tiles at most), not by the image
    assert peak_kb < 2_500_000, f"peak RSS {peak_kb / 1e6:.2f} GB"
