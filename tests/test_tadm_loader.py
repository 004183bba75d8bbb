"""Model folders: model.json schema, safetensors-only loading, clear errors, digests, sd21-style backbones."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tadmcodec import registry
from tadmcodec.errors import ModelError
from tadmcodec.tadm import spec as S
from tadmcodec.tadm.devices import resolve_device, resolve_dtype
from tadmcodec.tadm.loader import (
    build_model, describe_diffusers_backbone, load_model_dir, load_tadm, save_model_dir,
)
from tadmcodec.tadm.testing import make_random_model, make_random_model_dir


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_random_model_dir(tmp_path_factory.mktemp("m") / "x16", 16, seed=0)


def spec_for(path: Path, name: str = "tadm-tiny-x16"):
    return registry.with_weights_dir(registry.get(name), path)


def copy_dir(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def image(h: int = 48, w: int = 80, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def test_folder_layout_and_config_roundtrip(folder: Path) -> None:
    names = {p.name for p in folder.iterdir()}
    assert names == {"model.json", *S.required_files(S.read_config(folder))}
    cfg = S.read_config(folder)
    assert cfg.scale == 16 and cfg.t0 == 50 and (cfg.tpm.t_min, cfg.tpm.t_max) == (10, 200)
    assert cfg.tiling.latent_tile == 96 and cfg.tiling.latent_stride == 64
    assert cfg.lora_unet.rank == 2 and cfg.scheduler["beta_schedule"] == "scaled_linear"
    assert S.TadmConfig.from_dict(cfg.to_dict()) == cfg
    assert spec_for(folder).availability() == (True, str(folder))


def test_saved_and_loaded_model_computes_the_same(tmp_path: Path) -> None:
    mem = make_random_model(16, seed=4)
    save_model_dir(tmp_path / "a", mem, fp32=True, adapters=True)
    loaded = load_model_dir(tmp_path / "a")  # LoRA merged on load
    mem.merge_lora()
    z = torch.randn(1, 4, 6, 8)
    with torch.no_grad():
        a, ta = mem.enhance(z)
        b, tb = loaded.enhance(z)
        assert torch.allclose(a, b, atol=1e-5) and torch.allclose(ta, tb)
        assert torch.allclose(mem.decode_latent(a), loaded.decode_latent(a), atol=1e-5)
    with pytest.raises(ModelError, match="merged"):
        save_model_dir(tmp_path / "b", loaded, adapters=True)  # a merged model cannot be saved as adapters
    half = make_random_model(16, seed=4)
    save_model_dir(tmp_path / "h", half)  # fp16 by default
    assert all(v.dtype == torch.float16 for v in load_file(str(tmp_path / "h" / S.DFRM_FILE)).values())


def test_loading_prints_nothing(folder: Path, capfd) -> None:
    load_tadm(spec_for(folder), device="cpu")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_missing_and_broken_files_are_named(folder: Path, tmp_path: Path) -> None:
    d = copy_dir(folder, tmp_path / "d")
    (d / S.TPM_FILE).unlink()
    ok, why = spec_for(d).availability()
    assert not ok and S.TPM_FILE in why
    with pytest.raises(ModelError, match=S.TPM_FILE):
        load_tadm(spec_for(d), device="cpu")

    d2 = copy_dir(folder, tmp_path / "d2")
    (d2 / S.DFRM_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match=S.DFRM_FILE):
        load_tadm(spec_for(d2), device="cpu")

    d3 = copy_dir(folder, tmp_path / "d3")
    state = load_file(str(d3 / S.REFINER_FILE))
    key = "zero_conv_out.conv_in.weight"
    state[key] = torch.zeros(5, 1, 1, 1)
    save_file(state, str(d3 / S.REFINER_FILE))
    with pytest.raises(ModelError, match=key):
        load_tadm(spec_for(d3), device="cpu")

    d4 = copy_dir(folder, tmp_path / "d4")
    cfg = json.loads((d4 / "model.json").read_text())
    cfg["dfrm"]["wings"] = 2
    (d4 / "model.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="wings"):
        load_tadm(spec_for(d4), device="cpu")
    assert not spec_for(d4).availability()[0]

    d5 = copy_dir(folder, tmp_path / "d5")
    cfg = json.loads((d5 / "model.json").read_text())
    cfg["dfrm"]["latent_width"] = 32  # weights no longer fit the architecture
    (d5 / "model.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=S.DFRM_FILE):
        load_tadm(spec_for(d5), device="cpu")


def test_wrong_scale_for_the_spec(folder: Path) -> None:
    with pytest.raises(ModelError, match="x16"):
        load_tadm(spec_for(folder, "tadm-tiny-x32"), device="cpu")


def test_digest_covers_config_and_weights(folder: Path, tmp_path: Path) -> None:
    base = spec_for(folder).digest()
    assert len(base) == registry.DIGEST_SIZE
    d = copy_dir(folder, tmp_path / "w")
    assert spec_for(d).digest() == base
    state = load_file(str(d / S.TPM_FILE))
    k = next(iter(state))
    state[k] = state[k] + 1e-3
    save_file(state, str(d / S.TPM_FILE))
    assert spec_for(d).digest() != base
    c = copy_dir(folder, tmp_path / "c")
    cfg = json.loads((c / "model.json").read_text())
    cfg["t0"] = 51
    (c / "model.json").write_text(json.dumps(cfg))
    assert spec_for(c).digest() != base


def test_diffusers_folder_backbone(tmp_path: Path, monkeypatch) -> None:
    """The sd21 layout: SD folder + separate VAE folder outside, adapters in the model folder."""
    mem = make_random_model(16, seed=6)
    fresh = build_model(mem.config, load_weights=False)  # plain backbone to play "Stable Diffusion"
    sd, vae_dir = tmp_path / "sd", tmp_path / "vae"
    base_unet = type(fresh.unet).from_config(mem.config.backbone.unet)
    base_vae = type(fresh.vae).from_config(mem.config.backbone.vae)
    base_unet.save_pretrained(sd / "unet", safe_serialization=True)
    base_vae.save_pretrained(vae_dir, safe_serialization=True)
    backbone = describe_diffusers_backbone(sd, vae_dir, sd_env="T_SD", vae_env="T_VAE")
    assert set(backbone.files) == {"sd:unet/config.json", "sd:unet/diffusion_pytorch_model.safetensors",
                                   "vae:config.json", "vae:diffusion_pytorch_model.safetensors"}
    cfg = dataclasses.replace(mem.config, backbone=backbone)
    mem.config = cfg
    d = save_model_dir(tmp_path / "model", mem, fp32=True)
    assert not (d / S.UNET_FILE).exists() and (d / S.UNET_ADAPTER_FILE).exists()

    monkeypatch.delenv("T_SD", raising=False)
    ok, why = spec_for(d, "tadm-sd21-x16").availability()
    assert not ok and "T_SD" in why
    with pytest.raises(ModelError, match="T_SD"):
        load_tadm(spec_for(d, "tadm-sd21-x16"), device="cpu")
    monkeypatch.setenv("T_SD", str(sd))
    monkeypatch.setenv("T_VAE", str(vae_dir))
    assert spec_for(d, "tadm-sd21-x16").availability()[0]
    r = load_tadm(spec_for(d, "tadm-sd21-x16"), device="cpu")
    lr = r.downscale(image(), 16)
    assert lr.shape == (3, 5, 3)
    assert r.upscale(lr, 16, (80, 48)).shape == (48, 80, 3)

    # a different VAE file in the same place is refused (the digest could not vouch for it)
    w = vae_dir / "diffusion_pytorch_model.safetensors"
    state = load_file(str(w))
    k = next(iter(state))
    state[k] = state[k] + 1
    save_file(state, str(w))
    with pytest.raises(ModelError, match="diffusion_pytorch_model.safetensors"):
        load_tadm(spec_for(d, "tadm-sd21-x16"), device="cpu")


def test_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype(torch.device("cpu")) == torch.float32
    with pytest.raises(ModelError, match="fp16"):
        resolve_dtype(torch.device("cpu"), "fp16")
    with pytest.raises(ModelError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ModelError, match="CUDA"):
            resolve_device("cuda")
    assert resolve_dtype(torch.device("cuda"), "bf16") == torch.bfloat16
    assert resolve_dtype(torch.device("cuda")) == torch.float16
