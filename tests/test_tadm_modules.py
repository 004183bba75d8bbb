"""The TADM networks on their own: INN, quantiser, DFRM, TPM, hybrid scheduler, autograd.

Key names and shapes are checked against the official checkpoints' layout
(official default sizes), so a later importer can map their keys 1:1.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import DDPMScheduler

from tadmcodec.tadm.dfrm import DFRM, dequantize, quantize, quantize_ste
from tadmcodec.tadm.inn import build_inv_module, inn_forward, inn_inverse
from tadmcodec.tadm.scheduler import FixedStep, Refiner
from tadmcodec.tadm.spec import SD_SCHEDULER, DfrmConfig, TpmConfig
from tadmcodec.tadm.testing import MICRO_DFRM, make_random_model, randomize
from tadmcodec.tadm.tpm import TimeMapping


def _random_inn(dtype: torch.dtype = torch.float32) -> torch.nn.ModuleList:
    torch.manual_seed(0)
    inn = build_inv_module(4, 3, 1, 1.0, 8)
    randomize(inn, torch.Generator().manual_seed(1), std=0.1)  # conv5 starts at zero: make it count
    return inn.to(dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_inn_is_invertible_in_float(dtype: torch.dtype, tol: float) -> None:
    inn = _random_inn(dtype)
    x = torch.randn(2, 3, 12, 10, dtype=dtype, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = inn_forward(inn, x)
        assert (y - x).abs().max() > 1e-2  # not the identity
        assert torch.allclose(inn_inverse(inn, y), x, atol=tol, rtol=0)
        assert torch.allclose(inn_forward(inn, inn_inverse(inn, x)), x, atol=tol, rtol=0)


def test_inn_starts_as_identity() -> None:
    inn = build_inv_module(12, 3, 1, 1.0, 32)  # official size, official init
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(inn_forward(inn, x), x)


def test_quantise_rounds_to_the_8bit_grid_deterministically() -> None:
    q = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(quantize(dequantize(q)), q)  # every code value survives
    y = torch.linspace(-1.3, 1.3, 10001).reshape(1, 1, 1, -1)
    a, b = quantize(y), quantize(y.clone())
    assert torch.equal(a, b) and a.dtype == torch.uint8
    assert a.min() == 0 and a.max() == 255  # clamped, not wrapped
    inside = (y.abs() <= 1)
    err = (dequantize(a) - y).abs()[inside]
    assert err.max() <= 0.5 / 127.5 + 1e-6  # nearest code, never noise


def test_straight_through_quantiser() -> None:
    y = torch.tensor([-0.3, 0.1234, 0.9], requires_grad=True)
    out = quantize_ste(y)
    assert torch.equal(out.detach(), dequantize(quantize(y.detach())))
    out.sum().backward()
    assert torch.equal(y.grad, torch.ones(3))


@pytest.mark.parametrize("scale", [8, 16, 32])
def test_dfrm_shapes(scale: int) -> None:
    torch.manual_seed(0)
    d = DFRM(scale, MICRO_DFRM)
    x = torch.rand(2, 3, 2 * scale, 3 * scale) * 2 - 1
    z = torch.randn(2, 4, 2 * scale // 8, 3 * scale // 8)
    with torch.no_grad():
        out = d(x, z)
    assert out["z_lr"].shape == (2, 3, 2, 3)
    assert out["y"].shape == out["y_q"].shape == (2, 3, 2, 3)
    assert out["z_hat"].shape == out["z_hat_direct"].shape == z.shape


@pytest.mark.parametrize("scale", [8, 32])
def test_dfrm_tail_starts_as_the_identity_and_then_trains(scale: int) -> None:
    torch.manual_seed(0)
    plain = DFRM(scale, MICRO_DFRM)
    tailed = DFRM(scale, dataclasses.replace(MICRO_DFRM, tail_blocks=2, tail_width=8))
    assert plain.tail_module is None and "tail_module.0.conv_in.weight" in tailed.state_dict()
    missing = tailed.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("tail_module.") for k in missing)
    z_lr = torch.randn(2, 3, 2, 3)
    assert torch.equal(tailed.decode_features(z_lr), plain.decode_features(z_lr))
    tailed.decode_features(z_lr).square().sum().backward()
    assert tailed.tail_module[-1].weight.grad.abs().sum() > 0  # zero start, yet it learns


def test_dfrm_keys_match_the_official_layout() -> None:
    sd16 = DFRM(16, DfrmConfig()).state_dict()
    expected = {
        "down_module.0.conv_in.weight": (16, 3, 3, 3),
        "down_module.1.downsample.1.weight": (32, 64, 1, 1),
        "down_module.2.res_block.0.weight": (32, 32, 3, 3),
        "down_module.9.conv_in.weight": (16, 256, 3, 3),
        "latent_module.0.conv_in.weight": (128, 4, 3, 3),
        "latent_module.8.res_block.2.weight": (128, 128, 3, 3),
        "latent_module.10.conv_in.weight": (128, 512, 3, 3),
        "fusing_module.0.res_block.0.weight": (144, 144, 3, 3),
        "fusing_module.8.conv_in.weight": (3, 144, 3, 3),
        "final_module.0.conv_in.weight": (128, 3, 3, 3),
        "final_module.10.conv_in.weight": (4, 32, 3, 3),
        "inv_module.3.F.conv1.weight": (32, 2, 3, 3),
        "inv_module.11.G.conv5.weight": (2, 129, 3, 3),
        "inv_module.0.H.conv5.bias": (2,),
    }
    for key, shape in expected.items():
        assert tuple(sd16[key].shape) == shape, key
    sd32 = DFRM(32, DfrmConfig()).state_dict()
    assert tuple(sd32["latent_module.12.conv_in.weight"].shape) == (128, 512, 3, 3)
    assert tuple(sd32["final_module.10.conv_in.weight"].shape) == (32, 32, 3, 3)
    assert tuple(sd32["final_module.12.conv_in.weight"].shape) == (4, 8, 3, 3)
    sd8 = DFRM(8, DfrmConfig()).state_dict()
    assert tuple(sd8["latent_module.9.conv_in.weight"].shape) == (128, 128, 3, 3)
    assert tuple(sd8["final_module.9.conv_in.weight"].shape) == (4, 128, 3, 3)


def test_tpm_keys_and_range() -> None:
    tpm = TimeMapping(TpmConfig())
    sd = tpm.state_dict()
    assert tuple(sd["noise_esti.0.conv_in.weight"].shape) == (32, 4, 3, 3)
    assert tuple(sd["noise_esti.6.conv2.weight"].shape) == (32, 32, 3, 3)
    assert tuple(sd["time_predict.fuse_mlp.0.weight"].shape) == (512, 64)
    assert tuple(sd["time_predict.fuse_mlp.9.weight"].shape) == (1, 512)
    randomize(tpm, torch.Generator().manual_seed(0), std=1.0)
    with torch.no_grad():
        t = tpm(torch.randn(5, 4, 12, 12) * 10)
    assert t.shape == (5,)
    assert ((t >= 10) & (t <= 200)).all()


def test_refiner_starts_at_zero_and_keys() -> None:
    r = Refiner()
    sd = r.state_dict()
    assert tuple(sd["zero_conv_out.conv_in.weight"].shape) == (4, 64, 3, 3)
    assert tuple(sd["time_embedding.linear_1.weight"].shape) == (64, 64)
    assert tuple(sd["resnet_blocks.0.conv_in.weight"].shape) == (64, 8, 3, 3)
    with torch.no_grad():
        out = r(torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10.0, 150.0]))
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_fixed_step_is_the_ddpm_step_at_t0(prediction: str) -> None:
    cfg = {**SD_SCHEDULER, "prediction_type": prediction}
    sched = DDPMScheduler(**cfg, clip_sample=False)  # as Stable Diffusion's scheduler config
    z, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    # The official one-step schedule's prev_sample is the x0 prediction (alpha-bar_prev = 1)
    # plus 1e-10-scaled noise; diffusers' pred_original_sample is that x0 without the noise.
    ref = sched.step(eps, 50, z, generator=torch.Generator().manual_seed(0)).pred_original_sample
    ours = FixedStep(cfg, 50)(z, eps)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.equal(ours, FixedStep(cfg, 50)(z, eps))


def test_training_forward_has_gradients_everywhere() -> None:
    model = make_random_model(16, seed=3).train()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    out = model(x)
    assert out["x_hat"].shape == x.shape and out["t"].shape == (1,)
    loss = (out["x_hat"] - x).abs().mean() + (out["z_hat"] - out["z"]).abs().mean() + out["y"].abs().mean()
    loss.backward()
    for name, mod in (("dfrm", model.dfrm), ("tpm", model.tpm), ("refiner", model.refiner)):
        grads = [p.grad for p in mod.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name
    lora = [p for n, p in model.unet.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None for p in lora)
    assert model.tpm.time_predict.fuse_mlp[0].weight.grad.abs().sum() > 0  # t is learned through the step
