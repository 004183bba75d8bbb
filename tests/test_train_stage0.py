"""Stage-0 training on CPU with tiny models: checkpoints, exact resume, export, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tadmcodec.errors import InputError
from tadmcodec.tadm import backbone as bb
from tadmcodec.train import stage0
from tadmcodec.train.data import PhotoCrops, list_photos

TINY = {
    "name": "t",
    "seed": 0,
    "checkpoint": {"every_steps": 1, "every_minutes": 60.0, "keep": 2},
    "log_every": 1,
    "vae": {"model": {"block_out_channels": [8, 8, 16, 16], "norm_num_groups": 4},
            "steps": 2, "batch_size": 2, "crop": 32, "warmup_steps": 1, "scaling_samples": 4},
    "unet": {"model": {"block_out_channels": [16, 16, 32], "norm_num_groups": 4,
                       "attention_head_dim": 8, "cross_attention_dim": 16},
             "steps": 2, "batch_size": 2, "crop": 32, "warmup_steps": 1, "empty_prompt_length": 2},
}


@pytest.fixture()
def photos(tmp_path):
    """Six smooth random 'photos' (no dependency on ../shared)."""
    d = tmp_path / "train"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((80, 48), Image.Resampling.BICUBIC).save(d / f"p{i}.png")
    return d


def _cfg(photos, **over):
    return stage0.load_config(None, {**TINY, "data": {"train_dir": str(photos)}, **over})


def test_crops_are_deterministic_and_flipped(photos) -> None:
    a, b = PhotoCrops(photos, crop=32, seed=1), PhotoCrops(photos, crop=32, seed=1)
    assert torch.equal(a.batch(3, 4), b.batch(3, 4))
    assert a.batch(3, 4).shape == (4, 3, 32, 32)
    assert not torch.equal(a.batch(3, 4), a.batch(4, 4))
    assert not torch.equal(a.batch(0, 2, rank=0, world=2), a.batch(0, 2, rank=1, world=2))


def test_benchmark_folder_is_refused(tmp_path) -> None:
    d = tmp_path / "urban100"
    d.mkdir()
    with pytest.raises(InputError, match="benchmark"):
        list_photos(d)


def test_bad_config_is_a_one_line_error(tmp_path) -> None:
    p = tmp_path / "c.json"
    p.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        stage0.load_config(p)


def test_two_steps_checkpoint_and_resume_is_exact(photos, tmp_path) -> None:
    cfg = _cfg(photos)
    run = tmp_path / "run"
    stage0.train_vae(cfg, run)
    ckpts = sorted((run / "vae").glob("ckpt-*.pt"))
    assert [p.name for p in ckpts] == ["ckpt-00000001.pt", "ckpt-00000002.pt"]
    assert (run / "vae" / "rng-00000002-rank0.pt").is_file()
    state = torch.load(ckpts[-1], weights_only=False)
    assert state["step"] == 2 and state["optimizer"]["state"]
    assert json.loads((run / "vae" / "scaling.json").read_text())["scaling_factor"] > 0

    # Resume to step 3 and compare with an uninterrupted 3-step run.
    stage0.train_vae(stage0.load_config(None, {**cfg, "vae": {**cfg["vae"], "steps": 3}}), run, resume=True)
    resumed = torch.load(run / "vae" / "ckpt-00000003.pt", weights_only=False)
    straight_dir = tmp_path / "straight"
    stage0.train_vae(stage0.load_config(None, {**cfg, "vae": {**cfg["vae"], "steps": 3}}), straight_dir)
    straight = torch.load(straight_dir / "vae" / "ckpt-00000003.pt", weights_only=False)
    assert resumed["step"] == straight["step"] == 3
    for k, v in straight["model"].items():
        assert torch.equal(resumed["model"][k], v), k
    rng_a = torch.load(run / "vae" / "rng-00000003-rank0.pt", weights_only=False)["torch"]
    rng_b = torch.load(straight_dir / "vae" / "rng-00000003-rank0.pt", weights_only=False)["torch"]
    assert torch.equal(rng_a, rng_b)
    log = [json.loads(line) for line in (run / "vae" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]


def test_unet_stage_and_export(photos, tmp_path) -> None:
    cfg = _cfg(photos)
    run = tmp_path / "run"
    stage0.train_vae(cfg, run)
    result = stage0.train_unet(cfg, run)
    assert np.isfinite(result["loss"])
    out = stage0.export(run, tmp_path / "export")
    meta = json.loads((out / bb.BACKBONE_JSON).read_text())
    assert meta["trained_steps"] == {"vae": 2, "unet": 2}
    sf = json.loads((run / "vae" / "scaling.json").read_text())["scaling_factor"]
    assert meta["scaling_factor"] == pytest.approx(sf)
    loaded = bb.load_backbone(out)
    assert loaded.empty_prompt.shape == (1, 2, 16)
    assert loaded.vae.dtype == torch.float32  # stored fp16, loaded to the requested dtype


def test_unet_stage_needs_a_vae(photos, tmp_path) -> None:
    with pytest.raises(stage0.TadmError, match="run stage vae first"):
        stage0.train_unet(_cfg(photos), tmp_path / "empty")


@pytest.fixture()
def fresh_accelerate_state():
    """accelerate keeps one process-wide state; a bf16 one must not leak into later tests."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_cpu_bf16_trains_both_stages_with_finite_losses(photos, tmp_path, fresh_accelerate_state) -> None:
    cfg = _cfg(photos, cpu_bf16=True)
    acc = stage0._accelerator(cpu=True, cpu_bf16=cfg["cpu_bf16"])
    assert acc.mixed_precision == "bf16"
    run = tmp_path / "run"
    vae = stage0.train_vae(cfg, run, accelerator=acc)
    assert all(np.isfinite(vae[k]) for k in ("loss", "l1", "ssim", "kl")) and 0 < vae["ssim"] <= 1
    assert np.isfinite(stage0.train_unet(cfg, run, accelerator=acc)["loss"])


def test_cpu_bf16_is_opt_in(fresh_accelerate_state) -> None:
    assert stage0._accelerator(cpu=True).mixed_precision == "no"


def test_cpu_bf16_is_dropped_with_a_warning_only_where_the_cpu_would_emulate_it(monkeypatch) -> None:
    said: list[str] = []
    monkeypatch.setattr(stage0, "cpu_has_bf16", lambda: False)
    assert stage0.usable_cpu_bf16(True, on_cpu=True, warn=said.append) is False
    assert len(said) == 1 and "float32" in said[0]
    assert stage0.usable_cpu_bf16(True, on_cpu=False, warn=said.append) is True  # CUDA: not the CPU's call
    assert stage0.usable_cpu_bf16(False, on_cpu=True, warn=said.append) is False and len(said) == 1
    monkeypatch.setattr(stage0, "cpu_has_bf16", lambda: True)
    assert stage0.usable_cpu_bf16(True, on_cpu=True, warn=said.append) is True and len(said) == 1


def test_eval_uses_the_vae_checkpoint_before_an_export_exists(photos, tmp_path) -> None:
    from click.testing import CliRunner

    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({**TINY, "data": {"train_dir": str(photos)}}))
    run = tmp_path / "run"
    args = ["--config", str(cfg_file), "--run-dir", str(run), "--stage", "eval", "--images", str(photos),
            "--limit", "2"]
    r = CliRunner().invoke(stage0.main, args)
    assert r.exit_code != 0 and "nothing to evaluate" in r.output and "Traceback" not in r.output
    stage0.train_vae(_cfg(photos), run)
    r = CliRunner().invoke(stage0.main, args)
    assert r.exit_code == 0, r.output
    lines = [ln.split("\t") for ln in r.stdout.strip().splitlines()]
    assert lines[0] == ["photo", "psnr"] and [ln[0] for ln in lines[1:]] == ["p0.png", "p1.png", "mean"]
    psnrs = [float(ln[1]) for ln in lines[1:]]
    assert all(0 < v < 60 for v in psnrs) and psnrs[2] == pytest.approx((psnrs[0] + psnrs[1]) / 2, abs=0.01)
    assert "VAE EMA at step 2" in r.stderr
    r = CliRunner().invoke(stage0.main, args + ["--metrics", "psnr,ssim"])
    assert r.exit_code == 0, r.output
    head, *rows = [ln.split("\t") for ln in r.stdout.strip().splitlines()]
    assert head == ["photo", "psnr", "ssim"] and all(0 < float(row[2]) <= 1 for row in rows)
    r = CliRunner().invoke(stage0.main, args + ["--metrics", "psnr,sharpness"])
    assert r.exit_code != 0 and "unknown metric 'sharpness'" in r.output and "Traceback" not in r.output


def test_vae_lpips_loss_when_weights_are_cached(photos, tmp_path) -> None:
    from tadmcodec.metrics.weights import weights_path

    if not weights_path("lpips_alex").is_file():
        pytest.skip("LPIPS weights not in the cache (python -m tadmcodec.metrics.weights)")
    cfg = _cfg(photos, vae={**TINY["vae"], "loss": {"lpips": 0.5}})
    result = stage0.train_vae(cfg, tmp_path / "run")
    assert 0 < result["lpips"] < 2
    plain = stage0.train_vae(_cfg(photos), tmp_path / "run2")
    assert "lpips" not in plain  # off by default
    # the LPIPS term is part of the loss: same crops and start, different total
    assert result["loss"] != pytest.approx(plain["loss"])


def test_config_extends_another_file(tmp_path) -> None:
    (tmp_path / "base.json").write_text(json.dumps({"name": "base", "vae": {"batch_size": 3, "crop": 64}}))
    (tmp_path / "child.json").write_text(json.dumps({"extends": "base.json", "vae": {"crop": 32}}))
    cfg = stage0.load_config(tmp_path / "child.json")
    assert cfg["name"] == "base" and cfg["vae"]["batch_size"] == 3 and cfg["vae"]["crop"] == 32
    assert "extends" not in cfg
    (tmp_path / "loop.json").write_text(json.dumps({"extends": "loop2.json"}))
    (tmp_path / "loop2.json").write_text(json.dumps({"extends": "loop.json"}))
    with pytest.raises(InputError, match="extends itself"):
        stage0.load_config(tmp_path / "loop.json")
    (tmp_path / "orphan.json").write_text(json.dumps({"extends": "missing.json"}))
    with pytest.raises(InputError, match="missing.json does not exist"):
        stage0.load_config(tmp_path / "orphan.json")


@pytest.mark.parametrize("scale", [16, 32])
def test_cpu_model_configs_train_the_same_model(scale) -> None:
    from pathlib import Path

    from tadmcodec.train import stages

    folder = Path(stage0.__file__).parent / "configs"
    gpu = stages.load_config(folder / f"tadm-tiny-x{scale}.json")
    cpu = stages.load_config(folder / f"tadm-tiny-x{scale}-cpu.json")
    assert cpu["model"] == gpu["model"] and cpu["scale"] == gpu["scale"] == scale
    assert cpu["stage2"]["lpips_weight"] == gpu["stage2"]["lpips_weight"] and cpu["cpu_bf16"]
    assert cpu["stage2"]["batch_size"] < gpu["stage2"]["batch_size"]
    # the shared stage-0 backbone, and latents encoded once (the VAE encoder is frozen in stages 1-3)
    assert cpu["backbone"]["dir"] == "../shared/checkpoints/stage0-tiny-cpu/export"
    assert cpu["data"]["cached_latents"] and not gpu["data"]["cached_latents"]
    assert cpu["data"]["train_dir"] == gpu["data"]["train_dir"] and cpu["data"]["val_count"] == gpu["data"]["val_count"]
