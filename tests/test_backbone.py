"""The tiny backbone: shapes, SD's schedule, size budget, fp16 save/load round trip."""

from __future__ import annotations

import json

import pytest
import torch

from tadmcodec.errors import ModelError
from tadmcodec.tadm import backbone as bb

SMALL_VAE = {**bb.tiny_vae_config(), "block_out_channels": [8, 8, 16, 16], "norm_num_groups": 4}
SMALL_UNET = {**bb.tiny_unet_config(), "block_out_channels": [16, 16, 32], "norm_num_groups": 4,
              "attention_head_dim": 8, "cross_attention_dim": 16}


def test_vae_latent_is_image_over_8_with_4_channels() -> None:
    vae = bb.build_vae(SMALL_VAE).eval()
    x = torch.rand(2, 3, 48, 80) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode()
        y = vae.decode(z).sample
    assert z.shape == (2, 4, 6, 10)
    assert y.shape == x.shape


def test_unet_predicts_noise_of_latent_shape() -> None:
    unet = bb.build_unet(SMALL_UNET).eval()
    z = torch.randn(2, 4, 12, 8)
    cond = bb.empty_prompt_embedding(16, 3).expand(2, -1, -1)
    with torch.no_grad():
        eps = unet(z, torch.tensor([10, 500]), encoder_hidden_states=cond).sample
    assert eps.shape == z.shape


def test_noise_schedule_is_stable_diffusions() -> None:
    s = bb.make_noise_scheduler()
    assert s.config.num_train_timesteps == 1000
    assert s.config.prediction_type == "epsilon"
    # SD's scaled-linear schedule: sqrt-space linear between 0.00085 and 0.012.
    assert s.betas[0].item() == pytest.approx(0.00085, rel=1e-5)
    assert s.betas[-1].item() == pytest.approx(0.012, rel=1e-5)
    assert s.alphas_cumprod[-1].item() == pytest.approx(0.0047, abs=2e-4)


def test_shipped_sizes_fit_the_budget() -> None:
    n = bb.count_parameters(bb.build_vae()) + bb.count_parameters(bb.build_unet())
    assert n <= 9_000_000, n  # leaves ~3M of the 12M (25 MB fp16) for DFRM, TPM, refiner, LoRA


def test_empty_prompt_is_fixed_by_its_seed() -> None:
    assert torch.equal(bb.empty_prompt_embedding(16, 4, seed=3), bb.empty_prompt_embedding(16, 4, seed=3))
    assert not torch.equal(bb.empty_prompt_embedding(16, 4, seed=3), bb.empty_prompt_embedding(16, 4, seed=4))


def test_wrong_latent_layout_is_refused() -> None:
    with pytest.raises(ModelError):
        bb.build_vae({**SMALL_VAE, "latent_channels": 8})
    with pytest.raises(ModelError):
        bb.build_unet({**SMALL_UNET, "in_channels": 3})


def test_save_and_load_round_trip_in_fp16(tmp_path) -> None:
    torch.manual_seed(0)
    vae, unet = bb.build_vae(SMALL_VAE).eval(), bb.build_unet(SMALL_UNET).eval()
    empty = bb.empty_prompt_embedding(16, 3)
    bb.save_backbone(tmp_path, vae, unet, empty, scaling_factor=0.25)
    meta = json.loads((tmp_path / bb.BACKBONE_JSON).read_text())
    assert meta["scaling_factor"] == 0.25 and meta["vae"]["scaling_factor"] == 0.25
    loaded = bb.load_backbone(tmp_path)
    assert loaded.scaling_factor == 0.25
    assert torch.allclose(loaded.empty_prompt, empty, atol=1e-3)
    w = vae.state_dict()["decoder.conv_out.weight"]
    assert torch.equal(loaded.vae.state_dict()["decoder.conv_out.weight"], w.half().float())
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = loaded.encode(x)
        ref = vae.encode(x).latent_dist.mode() * 0.25
        assert torch.allclose(z, ref, atol=2e-2)
        assert loaded.predict_noise(z, torch.tensor([50])).shape == z.shape
        assert loaded.decode(z).shape == x.shape


def test_missing_files_give_a_model_error(tmp_path) -> None:
    with pytest.raises(ModelError, match="lacks"):
        bb.load_backbone(tmp_path)
