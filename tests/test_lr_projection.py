"""The LR back-projection: its operator, the decoder's strip pass, the model flag, training, the benchmark."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tadmcodec import lr_projection as P
from tadmcodec.tadm.loader import load_model_dir
from tadmcodec.tadm.pipeline import TadmRescaler
from tadmcodec.tadm.projection import project_onto_lr as project_torch
from tadmcodec.tadm.spec import TadmConfig
from tadmcodec.tadm.testing import make_random_model_dir

ROOT = Path(__file__).resolve().parent.parent


def smooth(h: int, w: int, seed: int = 0, cell: int = 16) -> np.ndarray:
    """Random values on a grid of `cell` pixels, upscaled with bicubic."""
    small = np.random.default_rng(seed).integers(0, 256, (max(1, h // cell), max(1, w // cell), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)).copy()


def down(img: np.ndarray, scale: int) -> np.ndarray:
    h, w = img.shape[:2]
    return np.einsum("ya,axc,bx->ybc", P.down_matrix(h, scale), img.astype(np.float32), P.down_matrix(w, scale))


@pytest.mark.parametrize("n,scale", [(64, 8), (96, 16), (512, 32), (32, 32)])
def test_matrices_keep_a_flat_image_flat(n: int, scale: int) -> None:
    d, u = P.down_matrix(n, scale), P.up_matrix(n, scale)
    assert d.shape == (n // scale, n) and u.shape == (n, n // scale)
    np.testing.assert_allclose(d.sum(axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(u.sum(axis=1), 1, atol=1e-6)
    assert (d >= -0.2).all() and d.max() < 1  # a spread kernel with small negative lobes


def test_downscale_is_pillows_bicubic_within_rounding_inside() -> None:
    img = smooth(256, 384, seed=1)
    pil = np.asarray(Image.fromarray(img).resize((12, 8), Image.Resampling.BICUBIC)).astype(np.float32)
    ours = down(img, 32)
    assert np.abs(ours - pil)[1:-1, 1:-1].max() <= 1.0


def test_projection_pulls_the_low_band_onto_the_lr_image() -> None:
    # a decode with fine detail, and an LR image of another, coarser picture (no clipping either way)
    img = (100 + smooth(256, 384, seed=2, cell=2) // 5).astype(np.uint8)
    lr = np.rint(80 + down(smooth(256, 384, seed=3, cell=64), 32) / 2.5).astype(np.uint8)
    out = P.project_onto_lr(img, lr, 32)
    before = np.abs(down(img, 32) - lr).mean()
    after = np.abs(down(out, 32) - lr).mean()
    assert after < 0.2 * before
    # the change is a smooth image (an upscaled LR residual): the decode's detail stays
    change = out.astype(np.float32) - img
    assert np.abs(np.diff(change, axis=1)).mean() < 0.1 * np.abs(np.diff(img.astype(np.float32), axis=1)).mean()


def test_a_consistent_flat_image_is_left_alone() -> None:
    img = np.full((64, 96, 3), 117, np.uint8)
    lr = np.full((2, 3, 3), 117, np.uint8)
    assert np.array_equal(P.project_onto_lr(img, lr, 32), img)


def test_strips_do_not_show() -> None:
    img, lr = smooth(512, 256, seed=4), smooth(16, 8, seed=5)
    whole = P.project_onto_lr(img, lr, 32, strip=512).astype(int)
    for strip in (32, 96, 160):
        assert np.abs(P.project_onto_lr(img, lr, 32, strip=strip).astype(int) - whole).max() <= 1


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="is not x32"):
        P.project_onto_lr(np.zeros((64, 64, 3), np.uint8), np.zeros((3, 2, 3), np.uint8), 32)
    with pytest.raises(ValueError, match="is not x16"):
        project_torch(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 3, 4), 16)


@pytest.mark.parametrize("n,scale", [(64, 8), (96, 16), (512, 32)])
def test_resized_matrices_at_the_full_size_are_the_plain_ones(n: int, scale: int) -> None:
    d, u = P.resized_matrices(n, n, n // scale, scale)
    np.testing.assert_allclose(d, P.down_matrix(n, scale), atol=1e-6)
    np.testing.assert_allclose(u, P.up_matrix(n, scale), atol=1e-6)


def resized_down(img: np.ndarray, size: tuple[int, int], scale: int) -> np.ndarray:
    (w, h), (oh, ow) = size, img.shape[:2]
    dy, _ = P.resized_matrices(oh, h, -(-h // scale), scale)
    dx, _ = P.resized_matrices(ow, w, -(-w // scale), scale)
    return np.einsum("ya,axc,bx->ybc", dy, img.astype(np.float32), dx)


@pytest.mark.parametrize("out", [(200, 150), (333, 250), (100, 75), (451, 338)])
def test_resized_projection_pulls_any_rendering_onto_the_lr_image(out: tuple[int, int]) -> None:
    """A 203x151 image at x32 (7x5 LR pixels, the last ones half padding), rendered at other sizes."""
    size = (203, 151)
    lr = np.rint(80 + down(smooth(160, 224, seed=3, cell=64), 32) / 2.5).astype(np.uint8)
    img = (100 + smooth(out[1], out[0], seed=2, cell=2) // 5).astype(np.uint8)
    got = P.project_onto_lr_resized(img, lr, 32, size)
    assert got.shape == img.shape
    before = np.abs(resized_down(img, size, 32) - lr).mean()
    after = np.abs(resized_down(got, size, 32) - lr).mean()
    assert after < 0.25 * before, (before, after)
    # the change is the LR residual upscaled (no clipping here), so the rendering's detail stays
    (w, h), (oh, ow) = size, img.shape[:2]
    _, uy = P.resized_matrices(oh, h, lr.shape[0], 32)
    _, ux = P.resized_matrices(ow, w, lr.shape[1], 32)
    residual = lr.astype(np.float32) - resized_down(img, size, 32)
    expected = img + np.einsum("ay,ybc,xb->axc", uy, residual, ux)
    assert np.abs(got - expected).max() <= 0.51  # rounding, and float32 sums in another order
    whole = P.project_onto_lr_resized(img, lr, 32, size, strip=1024).astype(int)
    assert np.abs(P.project_onto_lr_resized(img, lr, 32, size, strip=48).astype(int) - whole).max() <= 1


def test_resized_projection_at_the_plain_size_is_the_plain_projection() -> None:
    img, lr = smooth(128, 192, seed=10), smooth(8, 12, seed=11)
    plain = P.project_onto_lr(img, lr, 16).astype(int)
    assert np.abs(P.project_onto_lr_resized(img, lr, 16, (192, 128)).astype(int) - plain).max() <= 1


def test_resized_projection_refuses_what_it_cannot_do() -> None:
    lr = np.zeros((5, 7, 3), np.uint8)
    assert P.can_project_resized((13, 10), (203, 151), 32) and not P.can_project_resized((12, 10), (203, 151), 32)
    with pytest.raises(ValueError, match="too coarse"):
        P.project_onto_lr_resized(np.zeros((9, 12, 3), np.uint8), lr, 32, (203, 151))
    with pytest.raises(ValueError, match="is not the x32 LR image of a 203x151 image"):
        P.project_onto_lr_resized(np.zeros((100, 100, 3), np.uint8), lr[:4], 32, (203, 151))


def test_torch_is_the_decoders_operator_and_passes_gradients() -> None:
    img, lr = smooth(128, 192, seed=6), smooth(8, 12, seed=7)
    ref = P.project_onto_lr(img, lr, 16).astype(int)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1
    l_ = (torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 127.5 - 1).requires_grad_(True)
    got = project_torch(x, l_, 16)
    as_u8 = ((got[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).detach().numpy().astype(int)
    assert np.abs(as_u8 - ref).max() <= 1
    got.square().mean().backward()
    assert l_.grad is not None and l_.grad.abs().sum() > 0


# ------------------------------------------------------------------ the model flag


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("proj")
    return (make_random_model_dir(root / "plain", 16, seed=1),
            make_random_model_dir(root / "proj", 16, seed=1, lr_projection=True))


def test_model_json_carries_the_flag_only_when_on(folders) -> None:
    """Off is written as no key at all, so folders saved before the flag existed keep their digest."""
    plain, proj = folders
    assert json.loads((proj / "model.json").read_text())["lr_projection"] is True
    d = json.loads((plain / "model.json").read_text())
    assert "lr_projection" not in d and TadmConfig.from_dict(d).lr_projection is False
    assert TadmConfig.from_dict({**d, "lr_projection": False}).lr_projection is False


def test_decode_is_the_plain_decode_projected(folders) -> None:
    plain, proj = (TadmRescaler(load_model_dir(f)) for f in folders)
    assert not plain.lr_projection and proj.lr_projection
    img = smooth(80, 120, seed=8)  # 120 is not a multiple of 16: the projection runs on the padded decode
    lr = proj.downscale(img, 16)
    assert np.array_equal(lr, plain.downscale(img, 16))  # same weights: the flag changes the decode only
    proj.enable_lr_projection(False)
    assert np.array_equal(proj.upscale(lr, 16, (120, 80)), plain.upscale(lr, 16, (120, 80)))
    proj.enable_lr_projection(True)
    image, _, path = proj.render(lr, 16, (120, 80), None)
    assert path == "VAE decoder, LR back-projection" and image.shape == (80, 120, 3)
    proj.disable_tiling()
    padded = proj.model.decode_latent(proj._enhance(proj._gd(proj.model.dfrm.from_lr(
        torch.from_numpy(lr.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1)))[0])
    from tadmcodec.tadm.tiling import to_uint8_image

    expected = P.project_onto_lr(to_uint8_image(padded), lr, 16)[:80, :120]
    assert np.abs(proj.upscale(lr, 16, (120, 80)).astype(int) - expected).max() <= 1
    assert not np.array_equal(image, plain.upscale(lr, 16, (120, 80)))


def test_the_flag_is_part_of_the_digest(folders) -> None:
    from tadmcodec import registry

    plain, proj = folders
    spec = registry.get("tadm-tiny-x16")
    assert registry.with_weights_dir(spec, plain).digest() != registry.with_weights_dir(spec, proj).digest()


# ------------------------------------------------------------------ the benchmark script


def test_benchmark_script_end_to_end(tmp_path, folders) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(smooth(96, 128, seed=9)).save(photos / "p1.png")
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "lr_projection.py"), "--model", f"tadm-tiny-x16={folders[1]}",
           "--scale", "16", "--images", str(photos), "--out", str(out), "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "tadm-tiny-x16-x16.json").read_text())
    assert doc["trained_with_projection"] is True
    row = doc["photos"]["p1"]
    assert set(row) == {"bicubic", "lr_up", "lr_fidelity", "off", "on", "bicubic_lr"} and row["on"] != row["off"]
    assert row["bicubic_lr"] != row["on"]  # the model's LR image is not the bicubic one
    spec = importlib.util.spec_from_file_location("lr_projection_bench", ROOT / "benchmarks" / "lr_projection.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r2 = TadmRescaler(load_model_dir(folders[1]))
    img = np.asarray(Image.open(photos / "p1.png").convert("RGB"))
    again = mod.row(r2, img, 16)
    assert again == pytest.approx(row, abs=1e-3) and r2.lr_projection  # the model's own setting restored
