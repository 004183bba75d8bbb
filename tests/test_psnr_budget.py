"""`benchmarks/psnr_budget.py`: the steps it measures are the ones it names, and the script end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tadmcodec.metrics import psnr
from tadmcodec.rescaler import BicubicRescaler
from tadmcodec.tadm.loader import load_model_dir
from tadmcodec.tadm.pipeline import TadmRescaler
from tadmcodec.tadm.testing import make_random_model_dir

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("psnr_budget", ROOT / "benchmarks" / "psnr_budget.py")
psnr_budget = importlib.util.module_from_spec(spec)
spec.loader.exec_module(psnr_budget)


def photo(w: int = 128, h: int = 96) -> np.ndarray:
    small = np.random.default_rng(3).integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))


def test_steps_are_what_they_say(tmp_path) -> None:
    r = TadmRescaler(load_model_dir(make_random_model_dir(tmp_path / "m", 16)))
    img = photo()
    got = psnr_budget.budget(r, img, 16)
    bic = BicubicRescaler()
    assert got["psnr_bicubic"] == psnr(img, bic.upscale(bic.downscale(img, 16), 16, (128, 96)))
    assert got["psnr_codec"] == psnr(img, r.upscale(r.downscale(img, 16), 16, (128, 96)))
    assert got["l1_dfrm"] > 0 and got["mse_dfrm"] > got["l1_dfrm"] ** 2 * 0.999  # MSE >= L1² (Jensen)
    # a DFRM that returned z itself would decode exactly as the VAE round trip, at distance 0
    m = r.model
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    with torch.inference_mode():
        z = m.encode_latent(x)
    m.dfrm.decode_features = lambda z_lr: z.clone()
    perfect = psnr_budget.budget(r, img, 16)
    assert perfect["l1_dfrm"] == 0 and perfect["psnr_dfrm"] == perfect["psnr_vae"]


def test_script_end_to_end(tmp_path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(photo()).save(photos / "p1.png")
    micro = make_random_model_dir(tmp_path / "micro", 16)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "psnr_budget.py"), "--model", f"tadm-tiny-x16={micro}",
           "--scale", "16", "--images", str(photos), "--out", str(out), "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "tadm-tiny-x16-x16.json").read_text())
    assert list(doc["photos"]) == ["p1"] and set(doc["photos"]["p1"]) >= {"psnr_codec", "psnr_dfrm", "l1_dfrm"}
    md = (out / "tadm-tiny-x16-x16.md").read_text()
    assert md.startswith("# PSNR budget: tadm-tiny-x16 x16") and "| mean |" in md
    bad = subprocess.run(cmd[:3] + ["nope", "--scale", "16", "--images", str(photos), "--out", str(tmp_path / "o2")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "nope" in bad.stderr
    assert not (tmp_path / "o2").exists()
