"""`tadm import-official` on synthetic official checkpoints and a tiny random SD-2.1-like backbone.

The real checkpoints cannot be downloaded here, so these tests build stand-ins
with exactly the official key names and shapes. The DFRM, TPM and refiner
layouts are enumerated below from a reading of the official code
(src/modules/ae_arch_inv_cnn.py, src/tpm_patch.py), independently of our
modules; the LoRA layouts come from the official recipe itself: diffusers'
`add_adapter` with the official target lists and adapter names, filtered the
way `TADM.save_model` filters. Every tensor is random and non-zero, so a key
that is dropped or mis-mapped changes what loads.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tadmcodec import registry
from tadmcodec.errors import ModelError
from tadmcodec.tadm import official

TADM = [sys.executable, "-m", "tadmcodec"]

OFFICIAL_UNET_TARGETS = [
    "to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_shortcut",
    "conv_out", "proj_in", "proj_out", "ff.net.2", "ff.net.0.proj",
]
OFFICIAL_VAE_TARGETS = r"^decoder\..*(conv1|conv2|conv_in|conv_shortcut|conv|conv_out|to_k|to_q|to_v|to_out\.0)$"
RANK_UNET, RANK_VAE = 6, 3  # the paper uses 48 / 16; small ranks keep the test fast, shapes still checked


# ------------------------------------------------------- official layouts


Layout = dict[str, tuple[int, ...]]


def _conv(p: str, cin: int, cout: int, k: int = 3) -> Layout:
    return {f"{p}.weight": (cout, cin, k, k), f"{p}.bias": (cout,)}


def _linear(p: str, cin: int, cout: int) -> Layout:
    return {f"{p}.weight": (cout, cin), f"{p}.bias": (cout,)}


def _conv_block(p: str, cin: int, cout: int) -> Layout:  # ConvBlock: conv_in + LeakyReLU
    return _conv(f"{p}.conv_in", cin, cout)


def _resblock(p: str, n: int) -> Layout:  # DFRM Resblock: res_block = (conv, lrelu, conv)
    return {**_conv(f"{p}.res_block.0", n, n), **_conv(f"{p}.res_block.2", n, n)}


def _dense(p: str, cin: int, cout: int, gc: int = 32) -> Layout:
    out: Layout = {}
    for i in range(4):
        out |= _conv(f"{p}.conv{i + 1}", cin + i * gc, gc)
    return out | _conv(f"{p}.conv5", cin + 4 * gc, cout)


def official_dfrm_layout(scale: int) -> Layout:
    """DFRM(4, 3, scale) of ae_arch_inv_cnn.py, key -> shape."""
    lay: Layout = _conv_block("down_module.0", 3, 16)
    ch, i = 16, 1
    for _ in range(int(math.log2(scale))):
        lay |= _conv(f"down_module.{i}.downsample.1", ch * 4, ch * 2, 1)  # PixelUnshuffle(2), 1x1 conv
        ch *= 2
        lay |= _resblock(f"down_module.{i + 1}", ch)
        i += 2
    lay |= _conv_block(f"down_module.{i}", ch, 16)
    lay |= _conv_block("latent_module.0", 4, 128)
    for j in range(1, 9):
        lay |= _resblock(f"latent_module.{j}", 128)
    lay |= _conv_block("latent_module.10", 512, 128)  # index 9 is a PixelUnshuffle
    if scale == 32:
        lay |= _conv_block("latent_module.12", 512, 128)
    for j in range(8):
        lay |= _resblock(f"fusing_module.{j}", 144)
    lay |= _conv_block("fusing_module.8", 144, 3)
    lay |= _conv_block("final_module.0", 3, 128)
    for j in range(1, 9):
        lay |= _resblock(f"final_module.{j}", 128)
    if scale == 16:
        lay |= _conv_block("final_module.10", 32, 4)
    else:
        lay |= _conv_block("final_module.10", 32, 32) | _conv_block("final_module.12", 8, 4)
    for b in range(12):  # InvBlockExp(1, 2)
        lay |= _dense(f"inv_module.{b}.F", 2, 1) | _dense(f"inv_module.{b}.G", 1, 2) | _dense(f"inv_module.{b}.H", 1, 2)
    return lay


def official_tpm_layout() -> Layout:
    """TimeMapping() of tpm_patch.py."""
    lay = _conv_block("noise_esti.0", 4, 32)
    for j in range(1, 7):
        lay |= _conv(f"noise_esti.{j}.conv1", 32, 32) | _conv(f"noise_esti.{j}.conv2", 32, 32)
    lay |= _linear("time_predict.fuse_mlp.0", 64, 512)
    for j in (2, 4, 6, 8):  # ReLU at odd indices
        lay |= _linear(f"time_predict.fuse_mlp.{j}", 512, 512)
    return lay | _linear("time_predict.fuse_mlp.9", 512, 1)


def official_refiner_layout() -> Layout:
    """Refiner() of tpm_patch.py."""
    lay = _linear("time_embedding.linear_1", 64, 64) | _linear("time_embedding.linear_2", 64, 64)
    lay |= _conv_block("resnet_blocks.0", 8, 64)
    for j in range(1, 7):
        lay |= _conv(f"resnet_blocks.{j}.conv1", 64, 64) | _conv(f"resnet_blocks.{j}.conv2", 64, 64)
    return lay | _conv_block("zero_conv_out", 64, 4)


def random_state(layout: Layout, gen: torch.Generator, std: float = 0.02) -> dict[str, torch.Tensor]:
    return {k: torch.randn(s, generator=gen) * std for k, s in layout.items()}


def official_lora_states(base: Path, vae_dir: Path, gen: torch.Generator) -> tuple[dict, dict]:
    """state_dict_unet / state_dict_vae as TADM.save_model writes them, with random values."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(str(base / "unet"))
    unet.add_adapter(LoraConfig(r=RANK_UNET, init_lora_weights="gaussian", target_modules=OFFICIAL_UNET_TARGETS))
    vae = AutoencoderKL.from_pretrained(str(vae_dir))
    vae.add_adapter(LoraConfig(r=RANK_VAE, init_lora_weights="gaussian", target_modules=OFFICIAL_VAE_TARGETS),
                    adapter_name="vae_skip")
    su = {k: v for k, v in unet.state_dict().items() if "lora" in k or "conv_in" in k}
    sv = {k: v for k, v in vae.state_dict().items() if "lora" in k or "skip_conv" in k}
    rnd = lambda s: {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in s.items()}  # noqa: E731
    return rnd(su), rnd(sv)


# ------------------------------------------------------- tiny backbone


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2/CLIP convention)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return [chr(c) for c in keep] + [chr(256 + n) for n in range(len(extra))]


def write_tokenizer(folder: Path) -> int:
    """A CLIP tokenizer folder in SD 2.1's form (vocab.json, merges.txt, config), bytes-only vocab."""
    folder.mkdir(parents=True)
    chars = _byte_chars()
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "!",
    }))
    return len(vocab)


def tiny_unet_config() -> dict:
    """SD 2.1-like in miniature: cross-attention with linear projections, conv up/down samplers."""
    return {
        "sample_size": 16, "in_channels": 4, "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [16, 32], "layers_per_block": 1, "attention_head_dim": [2, 4],
        "cross_attention_dim": 32, "norm_num_groups": 8, "use_linear_projection": True,
    }


def tiny_vae_config(scaling: float = 0.18215) -> dict:
    """latent = image / 8, 4 channels, mid-block attention (so the VAE LoRA targets to_q/k/v/out)."""
    return {
        "in_channels": 3, "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "latent_channels": 4,
        "norm_num_groups": 4, "sample_size": 64, "scaling_factor": scaling,
    }


def make_base_model(root: Path, seed: int = 0) -> Path:
    """A diffusers folder laid out like stable-diffusion-2-1-base, with tiny random networks."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    UNet2DConditionModel(**tiny_unet_config()).save_pretrained(str(root / "unet"))
    AutoencoderKL(**tiny_vae_config()).save_pretrained(str(root / "vae"))
    n = write_tokenizer(root / "tokenizer")
    text = CLIPTextConfig(vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                          bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=0)
    CLIPTextModel(text).save_pretrained(str(root / "text_encoder"))
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
        "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False,
    }))
    return root


class Kit:
    """Paths of one synthetic setup: base model, separate VAE, and official checkpoints per scale."""

    def __init__(self, root: Path) -> None:
        from diffusers import AutoencoderKL

        self.root = root
        self.base = make_base_model(root / "sd21-base")
        self.vae = root / "sd-vae-ft-mse"
        torch.manual_seed(1)
        AutoencoderKL(**tiny_vae_config()).save_pretrained(str(self.vae))
        gen = torch.Generator().manual_seed(2)
        self.dfrm = {s: random_state(official_dfrm_layout(s), gen) for s in (16, 32)}
        self.tpm = random_state(official_tpm_layout(), gen)
        self.refiner = random_state(official_refiner_layout(), gen)
        self.unet_lora, self.vae_lora = official_lora_states(self.base, self.base / "vae", gen)
        self.unet_lora_sep, self.vae_lora_sep = official_lora_states(self.base, self.vae, gen)

    def tadm_dict(self, separate_vae: bool = False) -> dict:
        return {
            "unet_lora_target_modules": list(OFFICIAL_UNET_TARGETS),
            "vae_lora_target_modules": OFFICIAL_VAE_TARGETS,
            "rank_vae": RANK_VAE, "rank_unet": RANK_UNET,
            "state_dict_vae": dict(self.vae_lora_sep if separate_vae else self.vae_lora),
            "state_dict_unet": dict(self.unet_lora_sep if separate_vae else self.unet_lora),
            "state_dict_timemapping": dict(self.tpm),
            "state_dict_refiner": dict(self.refiner),
        }

    def save(self, obj: object, name: str) -> Path:
        path = self.root / name
        torch.save(obj, path)
        return path


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    return Kit(tmp_path_factory.mktemp("official"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 64], axis=2) + rng.normal(0, 4, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def run_entry(args: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """Run `tadm ARGS` in this process through the console entry point; (exit code, stdout, stderr)."""
    from tadmcodec import cli

    monkeypatch.setattr(sys, "argv", ["tadm", *args])
    code = 0
    try:
        cli.entry()
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("scale", [16, 32])
def test_our_heads_have_the_official_layout(scale: int) -> None:
    """DFRM, TPM and refiner at the spec's default (official) sizes have exactly the official keys and shapes."""
    heads = official.head_layouts(scale)
    assert heads["dfrm"] == official_dfrm_layout(scale)
    assert heads["tpm"] == official_tpm_layout()
    assert heads["refiner"] == official_refiner_layout()


def test_import_maps_every_tensor(kit: Kit, tmp_path: Path) -> None:
    """In-process import with a separate VAE; the loaded model holds the checkpoint's tensors."""
    from tadmcodec.tadm.loader import load_model_dir

    dfrm = kit.save({"state_dict": kit.dfrm[16]}, "dfrm_wrapped.pth")  # DFRM.save_model's layout
    tadm = kit.save(kit.tadm_dict(separate_vae=True), "tadm_sep.pkl")
    out = tmp_path / "model"
    rep = official.import_official(dfrm, tadm, kit.base, out, vae=kit.vae)
    assert rep.name == "tadm-sd21-x16" and rep.scale == 16 and rep.prompt_shape == (1, 77, 32)
    assert sorted(p.name for p in out.iterdir()) == sorted([*official.MODEL_FILES, "model.json"])
    assert rep.tensors["unet_adapter"] == len(kit.unet_lora_sep) and rep.tensors["dfrm"] == len(kit.dfrm[16])
    cfg = json.loads((out / "model.json").read_text())
    assert cfg["lora_unet"]["rank"] == RANK_UNET and cfg["lora_vae"]["adapter_name"] == "vae_skip"
    assert cfg["backbone"]["vae_env"] == "TADM_SD_VAE_DIR" and cfg["text_len"] == 77
    assert cfg["tiling"]["vae_decode_untiled_area"] == 0  # SD's VAE: tile anything over one tile
    assert cfg["tiling"]["vae_encode_untiled_area"] == 0
    assert not list(tmp_path.glob(".*importing*"))
    assert all((p.stat().st_mode & 0o777) == 0o666 & ~_umask() for p in out.iterdir())

    model = load_model_dir(out, merge=False, sd_dir=kit.base, vae_dir=kit.vae)
    for mine, theirs in ((model.dfrm, kit.dfrm[16]), (model.tpm, kit.tpm), (model.refiner, kit.refiner)):
        state = mine.state_dict()
        assert all(torch.equal(state[k], v) for k, v in theirs.items())
    unet_state = model.unet.state_dict()
    assert all(torch.equal(unet_state[k], v) for k, v in kit.unet_lora_sep.items())  # conv_in replaced too
    vae_state = model.vae.state_dict()
    assert all(torch.equal(vae_state[k], v) for k, v in kit.vae_lora_sep.items())

    # the prompt is the text encoder's output for "" (SOT, EOT, then "!" padding), computed at import
    from transformers import CLIPTextModel

    enc = CLIPTextModel.from_pretrained(str(kit.base / "text_encoder")).eval()
    ids = torch.tensor([[len(_byte_chars()) * 2, len(_byte_chars()) * 2 + 1] + [0] * 75])
    with torch.no_grad():
        expected = enc(ids).last_hidden_state
    assert torch.allclose(model.prompt_embeds, expected, atol=1e-6)

    # merging applies peft's scaling alpha / r = 8 / rank to B @ A (official LoraConfig leaves alpha at 8)
    name = "down_blocks.0.attentions.0.proj_in"
    base_w = model.unet.get_submodule(name).base_layer.weight.detach().clone()
    a = kit.unet_lora_sep[f"{name}.lora_A.default.weight"]
    b = kit.unet_lora_sep[f"{name}.lora_B.default.weight"]
    model.merge_lora()
    merged = model.unet.get_submodule(name).weight
    assert torch.allclose(merged, base_w + (8.0 / RANK_UNET) * b @ a, atol=1e-6)


def test_flat_and_wrapped_dfrm_give_the_same_folder(kit: Kit, tmp_path: Path) -> None:
    tadm = kit.save(kit.tadm_dict(), "tadm32.pkl")
    flat = kit.save(kit.dfrm[32], "dfrm32_flat.pth")
    wrapped = kit.save({"state_dict": kit.dfrm[32]}, "dfrm32_wrapped.pth")
    a = official.import_official(flat, tadm, kit.base, tmp_path / "a", verify=False)
    b = official.import_official(wrapped, tadm, kit.base, tmp_path / "b", scale=32, verify=False)
    assert a.name == b.name == "tadm-sd21-x32"
    assert a.digest == b.digest
    with pytest.raises(ModelError, match="x32 DFRM, but --scale 16"):
        official.import_official(flat, tadm, kit.base, tmp_path / "c", scale=16, verify=False)
    # the TPM input choice is recorded in model.json, hence in the digest
    c = official.import_official(flat, tadm, kit.base, tmp_path / "d", tpm_input_scaled=True, verify=False)
    assert json.loads((tmp_path / "d" / "model.json").read_text())["tpm"]["input_scaled"] is True
    assert json.loads((tmp_path / "a" / "model.json").read_text())["tpm"]["input_scaled"] is False
    assert c.digest != a.digest


def _touch(path: Path) -> None:
    path.touch()


class Trap:
    """Unpickling this with plain pickle would create a file; weights-only loading must refuse it first."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_touch, (self.marker,))


def _refusal_cases(kit: Kit) -> list[tuple[str, str, dict, dict, str]]:
    """(case, which file is bad, dfrm object, tadm object, text the error must contain)."""
    good_t, good_d = kit.tadm_dict(), dict(kit.dfrm[16])
    no_tpm_key = kit.tadm_dict()
    del no_tpm_key["state_dict_timemapping"]["noise_esti.3.conv2.bias"]
    extra_ref = kit.tadm_dict()
    extra_ref["state_dict_refiner"]["zero_conv_out.conv_out.weight"] = torch.zeros(4, 64, 3, 3)
    extra_lora = kit.tadm_dict()
    extra_lora["state_dict_unet"]["time_embedding.linear_1.lora_A.default.weight"] = torch.zeros(RANK_UNET, 16)
    bad_shape = dict(kit.dfrm[16])
    bad_shape["fusing_module.8.conv_in.weight"] = torch.zeros(3, 144, 1, 1)
    no_rank = kit.tadm_dict()
    del no_rank["rank_vae"]
    extra_entry = {"state_dict": dict(kit.dfrm[16]), "optimizer": {"lr": torch.tensor(1.0)}}
    return [
        ("missing key", "tadm", good_d, no_tpm_key, "missing tensor 'noise_esti.3.conv2.bias'"),
        ("unexpected key", "tadm", good_d, extra_ref, "unexpected tensor 'zero_conv_out.conv_out.weight'"),
        ("unexpected LoRA key", "tadm", good_d, extra_lora,
         "unexpected tensor 'time_embedding.linear_1.lora_A.default.weight'"),
        ("wrong shape", "dfrm", bad_shape, good_t,
         "tensor 'fusing_module.8.conv_in.weight' has shape (3, 144, 1, 1), expected (3, 144, 3, 3)"),
        ("missing entry", "tadm", good_d, no_rank, "missing entry 'rank_vae'"),
        ("entry beside state_dict", "dfrm", extra_entry, good_t, "unexpected entry 'optimizer' beside 'state_dict'"),
    ]


def test_refusals_name_the_tensor_in_one_line(kit: Kit, tmp_path: Path, capsys, monkeypatch) -> None:
    for i, (case, bad, d, t, needle) in enumerate(_refusal_cases(kit)):
        dfrm, tadm = kit.save(d, f"r{i}_dfrm.pth"), kit.save(t, f"r{i}_tadm.pkl")
        out = tmp_path / f"out{i}"
        code, _, err = run_entry(["import-official", "--dfrm", str(dfrm), "--tadm", str(tadm),
                                  "--base-model", str(kit.base), "--out", str(out)], capsys, monkeypatch)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2, (case, err)
        assert len(lines) == 1 and lines[0].startswith("tadm: ") and "Traceback" not in err, (case, err)
        assert needle in lines[0], (case, lines[0])
        assert str({"dfrm": dfrm, "tadm": tadm}[bad]) in lines[0], (case, lines[0])
        assert not out.exists(), case  # nothing is written unless everything maps


def test_pickled_objects_are_refused_unexecuted(kit: Kit, tmp_path: Path, capsys, monkeypatch) -> None:
    marker = tmp_path / "code-ran"
    bad = kit.tadm_dict()
    bad["state_dict_refiner"]["zero_conv_out.conv_in.bias"] = Trap(marker)  # type: ignore[assignment]
    tadm = kit.save(bad, "trap.pkl")
    dfrm = kit.save(kit.dfrm[16], "trap_dfrm.pth")
    code, _, err = run_entry(["import-official", "--dfrm", str(dfrm), "--tadm", str(tadm),
                              "--base-model", str(kit.base), "--out", str(tmp_path / "o")], capsys, monkeypatch)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert f"{tadm}: refused: torch's weights-only loader rejects it" in lines[0]
    assert "Unsupported global" in lines[0] and "_touch" in lines[0]  # names what it refused
    assert not marker.exists()
    # a well-formed pickle with a non-tensor where a tensor belongs (allowed by weights-only) is refused too
    odd = kit.tadm_dict()
    odd["state_dict_timemapping"]["noise_esti.0.conv_in.bias"] = [0.0] * 32
    code, _, err = run_entry(["import-official", "--dfrm", str(dfrm), "--tadm", str(kit.save(odd, "odd.pkl")),
                              "--base-model", str(kit.base), "--out", str(tmp_path / "o")], capsys, monkeypatch)
    assert code == 2 and "entry 'noise_esti.0.conv_in.bias' is a list, not a tensor" in err
    # bytes that are no pickle at all
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(bytes(range(256)) * 8)
    code, _, err = run_entry(["import-official", "--dfrm", str(junk), "--tadm", str(tadm),
                              "--base-model", str(kit.base), "--out", str(tmp_path / "o")], capsys, monkeypatch)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and f"{junk}: refused" in lines[0], err


def test_out_folder_rules(kit: Kit, tmp_path: Path) -> None:
    dfrm, tadm = kit.save(kit.dfrm[16], "o_dfrm.pth"), kit.save(kit.tadm_dict(), "o_tadm.pkl")
    out = tmp_path / "m"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ModelError, match="not empty"):
        official.import_official(dfrm, tadm, kit.base, out, verify=False)
    with pytest.raises(ModelError, match="notes.txt"):
        official.import_official(dfrm, tadm, kit.base, out, force=True, verify=False)
    (out / "notes.txt").unlink()
    (out / "stale.safetensors").write_bytes(b"x")
    official.import_official(dfrm, tadm, kit.base, out, force=True, verify=False)
    assert not (out / "stale.safetensors").exists()  # it would change the digest
    no_sched = tmp_path / "no-scheduler"
    no_sched.mkdir()
    for sub in ("unet", "vae", "text_encoder", "tokenizer"):
        (no_sched / sub).symlink_to(kit.base / sub)
    with pytest.raises(ModelError, match="missing .*scheduler_config.json"):
        official.import_official(dfrm, tadm, no_sched, tmp_path / "n", verify=False)
    with pytest.raises(ModelError, match="unet.config.json"):
        official.import_official(dfrm, tadm, kit.vae, tmp_path / "n", verify=False)
    assert not (tmp_path / "n").exists()


@pytest.mark.slow
def test_cli_import_encode_decode(kit: Kit, tmp_path: Path, capsys, monkeypatch) -> None:
    """import-official -> encode --model tadm-sd21-x16 --model-dir -> decode --model-dir.

    Import and encode run in this process through the console entry point (the
    subprocess plumbing is covered by test_cli.py); decode runs as a fresh
    process with the text encoder moved away, so it can only use what the
    import stored.
    """
    from tadmcodec import container

    monkeypatch.setenv("TADM_SD21_DIR", str(kit.base))
    monkeypatch.delenv("TADM_SD21_X16", raising=False)
    dfrm, tadm = kit.save(kit.dfrm[16], "cli_dfrm.pth"), kit.save(kit.tadm_dict(), "cli_tadm.pkl")
    out = tmp_path / "sd21-x16"
    code, _, err = run_entry(["import-official", "--dfrm", str(dfrm), "--tadm", str(tadm),
                              "--base-model", str(kit.base), "--out", str(out)], capsys, monkeypatch)
    assert code == 0 and "imported tadm-sd21-x16" in err, err

    hidden = kit.root / "hidden"
    hidden.mkdir()
    for sub in ("text_encoder", "tokenizer"):
        (kit.base / sub).rename(hidden / sub)
    try:
        Image.fromarray(photo(72, 40)).save(tmp_path / "a.png")
        code, _, err = run_entry(["encode", str(tmp_path / "a.png"), "--model", "tadm-sd21-x16", "--model-dir",
                                  str(out), "-o", str(tmp_path / "a.tadm")], capsys, monkeypatch)
        assert code == 0, err
        p = subprocess.run([*TADM, "decode", str(tmp_path / "a.tadm"), "--model-dir", str(out),
                            "-o", str(tmp_path / "b.png")], capture_output=True, timeout=300, env=dict(os.environ))
        assert p.returncode == 0, p.stderr.decode()
    finally:
        for sub in ("text_encoder", "tokenizer"):
            (hidden / sub).rename(kit.base / sub)
        hidden.rmdir()
    dec = np.asarray(Image.open(tmp_path / "b.png"))
    assert dec.shape == (40, 72, 3) and dec.dtype == np.uint8

    f = container.unpack((tmp_path / "a.tadm").read_bytes())
    assert registry.by_number(f.model_number).name == "tadm-sd21-x16" and f.scale == 16
    assert (f.width, f.height) == (72, 40)
    spec = registry.with_weights_dir(registry.get("tadm-sd21-x16"), out)
    assert f.model_digest == spec.digest()

    # the digest covers the imported files: a changed prompt embedding is a different model
    from safetensors.torch import load_file, save_file

    prompt = load_file(str(out / "prompt.safetensors"))
    prompt["prompt_embeds"] = prompt["prompt_embeds"] + 0.01
    save_file(prompt, str(out / "prompt.safetensors"))
    code, _, err = run_entry(["decode", str(tmp_path / "a.tadm"), "--model-dir", str(out),
                              "-o", str(tmp_path / "c.png")], capsys, monkeypatch)
    assert code == 2 and "different tadm-sd21-x16" in err, err
    # ...and the backbone files are covered by their SHA-256 in model.json
    cfg = json.loads((out / "model.json").read_text())
    assert set(cfg["backbone"]["files"]) == {"sd:unet/config.json", "sd:unet/diffusion_pytorch_model.safetensors",
                                             "vae:config.json", "vae:diffusion_pytorch_model.safetensors"}
