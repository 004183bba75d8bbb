"""`benchmarks/hatching.py`: the periodicity score tells a lattice from noise and blur, and the
paths it decodes are the ones it names."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tadmcodec.tadm.loader import load_model_dir
from tadmcodec.tadm.pipeline import TadmRescaler
from tadmcodec.tadm.testing import make_random_model_dir

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("hatching", ROOT / "benchmarks" / "hatching.py")
hatching = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hatching)


def photo(w: int = 256, h: int = 256, seed: int = 3) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))


def test_a_diagonal_hatching_scores_far_above_noise_and_blur() -> None:
    y0 = hatching.luma(photo())
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    noise = rng.normal(0, 8, y0.shape)
    hatch = 8 * np.sin(2 * np.pi * (xx + yy) / 4.0) + rng.normal(0, 2, y0.shape)
    blurred = np.asarray(Image.fromarray(y0.astype(np.uint8)).resize((32, 32)).resize((256, 256), Image.BICUBIC),
                         dtype=np.float64)
    s_noise, s_hatch, s_blur = (hatching.peakiness(e, y0) for e in (noise, hatch, blurred - y0))
    assert s_hatch > 5 * s_noise and s_hatch > 5 * s_blur
    # the same faint hatching on top of the blur's error: the blur does not hide it
    assert hatching.peakiness(blurred - y0 + 3 * np.sin(2 * np.pi * (xx + yy) / 3.0), y0) > 3 * s_blur
    # flat photos give no windows to judge
    assert np.isnan(hatching.peakiness(noise, np.zeros_like(y0)))


def test_paths_switch_the_enhancement_and_restore_it(tmp_path) -> None:
    r = TadmRescaler(load_model_dir(make_random_model_dir(tmp_path / "m", 16)))
    img = photo(128, 96)
    lr = r.downscale(img, 16)
    full = r.upscale(lr, 16, (128, 96))
    out = {}
    for p in ("dfrm", "fixed", "codec"):
        with hatching.path_of(r.model, p):
            out[p] = r.upscale(lr, 16, (128, 96))
    assert np.array_equal(out["codec"], full)
    assert not np.array_equal(out["dfrm"], full) and not np.array_equal(out["fixed"], full)
    assert not np.array_equal(out["dfrm"], out["fixed"])
    assert np.array_equal(r.upscale(lr, 16, (128, 96)), full)  # restored
    # dfrm: exactly the decoded latent of Gd(F^-1(y)), no UNet step
    m = r.model
    r.disable_tiling()
    with torch.inference_mode(), hatching.path_of(m, "dfrm"):
        alone = r.upscale(lr, 16, (128, 96))
    assert np.abs(alone.astype(int) - out["dfrm"].astype(int)).max() <= 2


def test_script_end_to_end(tmp_path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(photo(256, 160)).save(photos / "p1.png")
    micro = make_random_model_dir(tmp_path / "micro", 16)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hatching.py"), "--model",
                        f"tadm-tiny-x16={micro}", "--scale", "16", "--images", str(photos), "--out", str(out),
                        "--threads", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "tadm-tiny-x16-x16.json").read_text())
    row = doc["photos"]["p1"]
    assert set(row) == {f"{k}_{p}" for k in ("peak", "psnr") for p in hatching.PATHS}
    assert (out / "tadm-tiny-x16-x16-p1-codec.png").is_file() and (out / "tadm-tiny-x16-x16-p1-original.png").is_file()
    assert "| mean |" in (out / "tadm-tiny-x16-x16.md").read_text()
