"""LoRA through peft: merged weights compute what the unmerged adapters compute."""

from __future__ import annotations

import copy

import pytest
import torch

from tadmcodec.errors import ModelError
from tadmcodec.tadm.lora import adapter_state_dict, add_lora, has_lora, load_adapter, merge_lora
from tadmcodec.tadm.spec import UNET_LORA_TARGETS, VAE_LORA_TARGETS, LoraSpec
from tadmcodec.tadm.testing import make_random_model, micro_unet_config, randomize


@pytest.fixture(scope="module")
def model():
    return make_random_model(16, seed=5)


def test_lora_targets_official_layers(model) -> None:
    names = [n for n, _ in model.unet.named_modules() if n.endswith("lora_A")]
    assert any("attn1.to_q" in n for n in names) and any("resnets.0.conv1" in n for n in names)
    assert any("ff.net.0.proj" in n for n in names) and any(n.startswith("conv_out") for n in names)
    vae = [n for n, _ in model.vae.named_modules() if n.endswith("lora_A")]
    assert vae and all(n.startswith("decoder.") for n in vae)  # the decoder only
    assert not any(n.startswith("encoder.") for n in vae)


def test_merged_equals_unmerged(model) -> None:
    unet, vae = copy.deepcopy(model.unet).eval(), copy.deepcopy(model.vae).eval()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([20.0, 150.0])
    cond = torch.randn(2, 8, micro_unet_config()["cross_attention_dim"], generator=g)
    with torch.no_grad():
        before_u = unet(z, t, encoder_hidden_states=cond).sample
        before_v = vae.decode(z).sample
        base = copy.deepcopy(unet)
        for m in base.modules():  # with the adapters switched off the result must change
            if hasattr(m, "disable_adapters") and hasattr(m, "lora_A"):
                m.enable_adapters(False)
        assert not torch.allclose(base(z, t, encoder_hidden_states=cond).sample, before_u, atol=1e-4)
        merge_lora(unet)
        merge_lora(vae)
        assert not has_lora(unet) and not has_lora(vae)
        after_u = unet(z, t, encoder_hidden_states=cond).sample
        after_v = vae.decode(z).sample
    assert torch.allclose(after_u, before_u, atol=1e-5, rtol=1e-4)
    assert torch.allclose(after_v, before_v, atol=1e-5, rtol=1e-4)


def test_adapter_roundtrip_and_strict_keys(model) -> None:
    spec = model.config.lora_unet
    state = adapter_state_dict(model.unet, spec)
    assert any(".lora_A." in k for k in state) and "conv_in.weight" in state  # extra trained module kept
    fresh = copy.deepcopy(model.unet)
    randomize(fresh, torch.Generator().manual_seed(9), std=1.0)
    load_adapter(fresh, spec, state, "adapter.safetensors")
    for k, v in adapter_state_dict(fresh, spec).items():
        assert torch.equal(v, state[k])
    bad = dict(state)
    bad.pop(next(k for k in bad if ".lora_B." in k))
    with pytest.raises(ModelError, match="adapter.safetensors"):
        load_adapter(fresh, spec, bad, "adapter.safetensors")


def test_ranks_come_from_the_spec() -> None:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**micro_unet_config())
    add_lora(unet, LoraSpec(rank=3, targets=UNET_LORA_TARGETS))
    a = dict(unet.named_parameters())["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.default.weight"]
    assert a.shape[0] == 3
    with pytest.raises(ModelError, match="match no layer"):
        add_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), LoraSpec(rank=2, targets=VAE_LORA_TARGETS))
