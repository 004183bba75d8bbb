"""Training stages 1-3 on a micro model (CPU, seconds): losses, what each stage may change,
checkpoint + resume, export -> load -> TadmRescaler, and the `tadm train` CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tadmcodec.errors import InputError
from tadmcodec.tadm import backbone as bb
from tadmcodec.tadm.testing import (
    MICRO_DFRM, MICRO_REFINER, MICRO_TPM, micro_unet_config, micro_vae_config,
)
from tadmcodec.train import stages as S
from tadmcodec.train.stage0 import _merge, latest_checkpoint

SCALE = 16


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A micro backbone folder and six smooth synthetic photos (no shared data needed)."""
    root = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    vae, unet = bb.build_vae(micro_vae_config()), bb.build_unet(micro_unet_config())
    bb.save_backbone(root / "backbone", vae, unet, torch.randn(1, 4, 16), 0.5, dtype=torch.float32)
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((128, 96), Image.Resampling.BICUBIC).save(photos / f"p{i}.png")
    return root


def micro_cfg(ws: Path, **over) -> dict:
    stage = {"steps": 2, "batch_size": 2, "crop": 64, "schedule": "halve", "halve_every": 3,
             "lpips_weight": 0.0, "dists_weight": 0.0}
    base = {
        "name": "micro-x16", "scale": SCALE,
        "backbone": {"kind": "inline", "dir": str(ws / "backbone")},
        "model": {"dfrm": dataclasses.asdict(MICRO_DFRM), "tpm": dataclasses.asdict(MICRO_TPM),
                  "refiner": dataclasses.asdict(MICRO_REFINER),
                  "lora_unet": {"rank": 2, "alpha": 4.0}, "lora_vae": {"rank": 2, "alpha": 4.0}},
        "data": {"train_dir": str(ws / "photos"), "val_count": 0},
        "checkpoint": {"every_steps": 1000, "every_minutes": 100.0, "keep": 2},
        "log_every": 1,
        "val": {"every_steps": 2, "crop": 64, "lpips": False},
        "stage1": dict(stage), "stage2": dict(stage), "stage3": dict(stage),
    }
    return S.load_config(None, _merge(base, over))


def _acc():
    return S._accelerator(cpu=True)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_stage1_trains_only_the_dfrm(workspace, tmp_path):
    cfg = micro_cfg(workspace, data={"val_count": 2})
    model = S.build_training_model(cfg)
    before = _snapshot(model)
    result = S.train_stage("stage1", cfg, tmp_path, accelerator=_acc(), model=model, log=lambda m: None)
    assert math.isfinite(result["loss"]) and result["rec"] > 0 and result["gui"] > 0
    changed = _changed(before, _snapshot(model))
    assert changed and all(k.startswith("dfrm.") for k in changed)
    assert not any(k.startswith("vae.") for k in changed)  # the VAE stays frozen
    log = [json.loads(line) for line in (tmp_path / "stage1" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
    val = [r for r in log if "val_bpp" in r]
    assert val and all(r["val_bpp"] > 0 and math.isfinite(r["val_psnr"]) for r in val)


def test_stage1_decoded_l1_reaches_the_dfrm_only(workspace, tmp_path):
    """pix_weight adds |D(Gd(F^-1(Q(y)))) - x|_1 through the frozen decoder: it changes the DFRM's
    gradients (so its weights after one step) and never the VAE."""
    def one_step(pix: float, run: Path):
        cfg = micro_cfg(workspace, stage1={"steps": 1, "pix_weight": pix, "pix_samples": 1})
        model = S.build_training_model(cfg)
        before = _snapshot(model)
        result = S.train_stage("stage1", cfg, run, accelerator=_acc(), model=model, log=lambda m: None)
        changed = _changed(before, _snapshot(model))
        assert changed and all(k.startswith("dfrm.") for k in changed)
        return result, model.dfrm.state_dict()

    plain, w0 = one_step(0.0, tmp_path / "a")
    with_pix, w1 = one_step(4.0, tmp_path / "b")
    assert "pix" not in plain and 0 < with_pix["pix"] < 2
    assert with_pix["loss"] == pytest.approx(with_pix["rec"] + with_pix["gui"] + 4.0 * with_pix["pix"], rel=1e-5)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)


def test_stage3_mse_weight_adds_the_decoded_squared_error(workspace, tmp_path):
    """mse_weight puts the decoded image's mean squared error into the stage-3 loss beside its L1,
    and so changes where one step takes the weights."""
    def one_step(mse: float, run: Path):
        cfg = micro_cfg(workspace, stage3={"steps": 1, "mse_weight": mse})
        model = S.build_training_model(cfg)
        result = S.train_stage("stage3", cfg, run, accelerator=_acc(), model=model, log=lambda m: None)
        return result, model.dfrm.state_dict()

    plain, w0 = one_step(0.0, tmp_path / "a")
    with_mse, w1 = one_step(10.0, tmp_path / "b")
    assert "mse" not in plain and 0 < with_mse["mse"] < 4
    expected = with_mse["l1"] + 10.0 * with_mse["mse"] + with_mse["rec"] + with_mse["gui"]
    assert with_mse["loss"] == pytest.approx(expected, rel=1e-5)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)


def test_stage3_scores_the_back_projected_image_when_the_model_projects(workspace, tmp_path):
    """model.lr_projection: stage 3's image losses are those of the projected decode (what
    `tadm decode` gives), and the exported model.json turns the projection on for decoding."""
    from tadmcodec.tadm.projection import project_onto_lr

    def one_step(on: bool, run: Path):
        cfg = micro_cfg(workspace, model={"lr_projection": on}, stage3={"steps": 1})
        model = S.build_training_model(cfg)
        result = S.train_stage("stage3", cfg, run, accelerator=_acc(), model=model, log=lambda m: None)
        return cfg, model, result

    cfg, model, on = one_step(True, tmp_path / "a")
    _, _, off = one_step(False, tmp_path / "b")
    assert model.config.lr_projection and on["l1"] != off["l1"]
    out = S.export(cfg, tmp_path / "a", tmp_path / "export", fp32=True)
    assert json.loads((out / "model.json").read_text())["lr_projection"] is True
    # the model's own forward pass projects too
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        fw = model(x)
        plain = model.decode_latent(fw["z0"])
    assert torch.allclose(fw["x_hat"], project_onto_lr(plain, fw["y_q"], SCALE), atol=1e-5)


def test_stage2_trains_only_lora_tpm_refiner(workspace, tmp_path):
    cfg = micro_cfg(workspace)
    model = S.build_training_model(cfg)
    S.train_stage("stage1", cfg, tmp_path, accelerator=_acc(), model=model, log=lambda m: None)
    before = _snapshot(model)
    result = S.train_stage("stage2", cfg, tmp_path, accelerator=_acc(), model=model, log=lambda m: None)
    assert math.isfinite(result["loss"]) and result["l1"] > 0
    changed = _changed(before, _snapshot(model))
    allowed = lambda k: (k.startswith(("tpm.", "refiner.", "scheduler.refiner.", "unet.conv_in.")) or ".lora_" in k)  # noqa: E731
    assert changed and all(allowed(k) for k in changed), sorted(k for k in changed if not allowed(k))[:3]
    assert any(".lora_" in k and k.startswith("vae.decoder.") for k in changed)
    assert any(".lora_" in k and k.startswith("unet.") for k in changed)
    assert any(k.startswith("tpm.") for k in changed)


@pytest.mark.parametrize("cpu_bf16", [False, True])
def test_stage3_trains_dfrm_and_enhancement(workspace, tmp_path, cpu_bf16):
    cfg = micro_cfg(workspace, cpu_bf16=cpu_bf16)
    model = S.build_training_model(cfg)
    before = _snapshot(model)
    result = S.train_stage("stage3", cfg, tmp_path, accelerator=_acc(), model=model, log=lambda m: None)
    assert all(math.isfinite(result[k]) for k in ("loss", "l1", "rec", "gui"))
    changed = _changed(before, _snapshot(model))
    assert any(k.startswith("dfrm.") for k in changed) and any(".lora_" in k for k in changed)
    assert not any(k.startswith("vae.encoder.") or k.endswith(".base_layer.weight") for k in changed)


def test_resume_continues_at_the_same_step_and_rng(workspace, tmp_path):
    straight = micro_cfg(workspace, stage1={"steps": 4})
    m1 = S.build_training_model(straight)
    S.train_stage("stage1", straight, tmp_path / "a", accelerator=_acc(), model=m1, log=lambda m: None)

    half = micro_cfg(workspace, stage1={"steps": 2})
    m2 = S.build_training_model(half)
    S.train_stage("stage1", half, tmp_path / "b", accelerator=_acc(), model=m2, log=lambda m: None)
    saved_rng = torch.load(tmp_path / "b" / "stage1" / "rng-00000002-rank0.pt", weights_only=False)["torch"]

    m3 = S.build_training_model(straight)  # a fresh process: new model, resume from disk
    torch.manual_seed(12345)  # disturb the RNG; resuming must restore it
    runner = S.StageRunner("stage1", straight, tmp_path / "b", m3, _acc(), resume=True, log=lambda m: None)
    assert runner.step == 2
    assert torch.equal(torch.get_rng_state(), saved_rng)
    S.train_stage("stage1", straight, tmp_path / "b", resume=True, accelerator=_acc(), model=m3,
                  log=lambda m: None)
    assert latest_checkpoint(tmp_path / "b" / "stage1").name == "ckpt-00000004.pt"
    a, b = m1.dfrm.state_dict(), m3.dfrm.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # same data, optimiser state, schedule


def test_cached_latents_train_every_stage_and_resume_exactly(workspace, tmp_path):
    """data.cached_latents: the photos are encoded once per stage (a file beside the checkpoints),
    stages 1-3 train from the cut windows, and 2+2 resumed steps equal 4 straight ones."""
    logs: list[str] = []
    straight = micro_cfg(workspace, data={"cached_latents": True}, stage1={"steps": 4})
    m1 = S.build_training_model(straight)
    S.train_stage("stage1", straight, tmp_path / "a", accelerator=_acc(), model=m1, log=logs.append)
    assert (tmp_path / "a" / "latents-crop64.pt").is_file()
    assert any("encoded 6 photos" in line for line in logs)
    half = micro_cfg(workspace, data={"cached_latents": True}, stage1={"steps": 2})
    m2 = S.build_training_model(half)
    S.train_stage("stage1", half, tmp_path / "b", accelerator=_acc(), model=m2, log=lambda m: None)
    logs.clear()
    S.train_stage("stage1", straight, tmp_path / "b", resume=True, accelerator=_acc(), model=m2, log=logs.append)
    assert any("latent cache: 6 photos from" in line for line in logs)  # not encoded again
    a, b = m1.dfrm.state_dict(), m2.dfrm.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    for stage in ("stage2", "stage3"):  # the same crop size: stage 1's cache serves them
        before = _snapshot(m1)
        logs.clear()
        result = S.train_stage(stage, straight, tmp_path / "a", accelerator=_acc(), model=m1, log=logs.append)
        assert any("latent cache: 6 photos from" in line for line in logs)
        assert math.isfinite(result["loss"]) and _changed(before, _snapshot(m1))
        assert not any(k.startswith("vae.encoder") for k in _changed(before, _snapshot(m1)))


def test_time_box_counts_the_stage_over_resumed_runs(workspace, tmp_path):
    """`max_minutes` bounds the stage's total time, as the cosine schedule reads it: a resumed run
    does not get a fresh box (it once did, and trained on at the 5 % floor learning rate)."""
    cfg = micro_cfg(workspace, stage1={"steps": 2})
    S.train_stage("stage1", cfg, tmp_path, accelerator=_acc(), model=S.build_training_model(cfg),
                  log=lambda m: None)
    ckpt = latest_checkpoint(tmp_path / "stage1")
    state = torch.load(ckpt, weights_only=False)
    state["elapsed_s"] = 90.0  # as if the first run had taken 1.5 minutes
    torch.save(state, ckpt)

    def resume(max_minutes: float) -> list[str]:
        more = micro_cfg(workspace, stage1={"steps": 4, "max_minutes": max_minutes, "schedule": "cosine"})
        logs: list[str] = []
        S.train_stage("stage1", more, tmp_path, resume=True, accelerator=_acc(),
                      model=S.build_training_model(more), log=logs.append)
        return logs

    logs = resume(1.0)
    assert any("time limit of 1.0 min reached at step 2" in m for m in logs)
    assert latest_checkpoint(tmp_path / "stage1").name == "ckpt-00000002.pt"
    logs = resume(2.0)  # a larger box continues the stage
    assert not any("time limit" in m for m in logs)
    assert latest_checkpoint(tmp_path / "stage1").name == "ckpt-00000004.pt"


def _stage_weights(run: Path, stage: str) -> dict[str, torch.Tensor]:
    return torch.load(latest_checkpoint(run / stage), weights_only=True)["weights"]


@pytest.mark.parametrize("kind", ["safetensors", "checkpoint"])
def test_init_starts_a_stage_from_weights_trained_elsewhere(workspace, tmp_path, kind):
    cfg = micro_cfg(workspace)
    S.train_stage("stage1", cfg, tmp_path / "a", accelerator=_acc(), model=S.build_training_model(cfg),
                  log=lambda m: None)
    trained = _stage_weights(tmp_path / "a", "stage1")
    if kind == "safetensors":
        init = S.save_trainable(cfg, tmp_path / "a", tmp_path / "w.safetensors")
    else:
        init = latest_checkpoint(tmp_path / "a" / "stage1")
    # a 0-minute box trains no step (how gpu_job skips a stage): the checkpoint holds the start
    zero = micro_cfg(workspace, stage1={"steps": 4, "max_minutes": 0})
    logs: list[str] = []
    S.train_stage("stage1", zero, tmp_path / "b", accelerator=_acc(), model=S.build_training_model(zero),
                  log=logs.append, init=init)
    assert latest_checkpoint(tmp_path / "b" / "stage1").name == "ckpt-00000000.pt"
    start = _stage_weights(tmp_path / "b", "stage1")
    assert start.keys() == trained.keys() and all(torch.equal(start[k], trained[k]) for k in trained)
    assert any(f"starting from {init}" in m for m in logs)
    fresh = S.build_training_model(zero)  # without init the same stage starts elsewhere
    S.train_stage("stage1", zero, tmp_path / "c", accelerator=_acc(), model=fresh, log=lambda m: None)
    assert _changed(trained, _stage_weights(tmp_path / "c", "stage1"))


def test_init_continues_an_exported_model_folder(workspace, tmp_path):
    """A packaged model (tadmcodec/weights/<model>/) is enough to go on training: its heads' files
    and train_adapters.safetensors give back every trained tensor, LoRA included."""
    cfg = micro_cfg(workspace, stage1={"steps": 1}, stage2={"steps": 1}, stage3={"steps": 1})
    model = S.build_training_model(cfg)
    for stage in S.STAGES:
        S.train_stage(stage, cfg, tmp_path / "a", accelerator=_acc(), model=model, log=lambda m: None)
    trained = _stage_weights(tmp_path / "a", "stage3")
    assert any(".lora_" in k for k in trained)
    exact = S.export(cfg, tmp_path / "a", tmp_path / "exp32", fp32=True)
    half = S.export(cfg, tmp_path / "a", tmp_path / "exp16")
    assert (Path(half) / S.TRAIN_ADAPTERS_FILE).is_file()
    got = S.read_trainable(Path(exact))
    assert got.keys() == trained.keys() and all(torch.equal(got[k], trained[k]) for k in trained)
    got16 = S.read_trainable(Path(half))
    assert all(torch.allclose(got16[k], trained[k], rtol=1e-3, atol=1e-3) for k in trained)
    zero = micro_cfg(workspace, stage3={"steps": 4, "max_minutes": 0})
    S.train_stage("stage3", zero, tmp_path / "b", accelerator=_acc(), model=S.build_training_model(zero),
                  log=lambda m: None, init=Path(half))
    start = _stage_weights(tmp_path / "b", "stage3")
    assert all(torch.equal(start[k], got16[k]) for k in trained)
    (Path(half) / S.TRAIN_ADAPTERS_FILE).unlink()
    with pytest.raises(InputError, match="missing train_adapters.safetensors"):
        S.read_trainable(Path(half))


def test_init_is_not_used_by_a_stage_that_resumes(workspace, tmp_path):
    cfg = micro_cfg(workspace)
    S.train_stage("stage1", cfg, tmp_path / "a", accelerator=_acc(), model=S.build_training_model(cfg),
                  log=lambda m: None)
    w = S.save_trainable(cfg, tmp_path / "a", tmp_path / "w.safetensors")
    other = micro_cfg(workspace, seed=5)
    S.train_stage("stage1", other, tmp_path / "b", accelerator=_acc(), model=S.build_training_model(other),
                  log=lambda m: None)
    own = _stage_weights(tmp_path / "b", "stage1")
    model, logs = S.build_training_model(other), []
    runner = S.StageRunner("stage1", other, tmp_path / "b", model, _acc(), resume=True, log=lambda m: None)
    assert runner.step == 2
    S.train_stage("stage1", other, tmp_path / "b", resume=True, accelerator=_acc(), model=model,
                  log=logs.append, init=w)
    assert any("is not used" in m for m in logs)
    got = model.dfrm.state_dict()
    assert all(torch.equal(got[k], own["dfrm." + k]) for k in got)  # steps 2 of 2: nothing trained


def test_init_from_another_architecture_is_a_one_line_error(workspace, tmp_path):
    from tadmcodec.errors import ModelError

    cfg = micro_cfg(workspace)
    S.train_stage("stage1", cfg, tmp_path / "a", accelerator=_acc(), model=S.build_training_model(cfg),
                  log=lambda m: None)
    w = S.save_trainable(cfg, tmp_path / "a", tmp_path / "w.safetensors")
    wide = micro_cfg(workspace, model={"dfrm": {"latent_width": 24}})
    with pytest.raises(ModelError, match="does not match the config: dfrm.* is"):
        S.train_stage("stage1", wide, tmp_path / "b", accelerator=_acc(), model=S.build_training_model(wide),
                      log=lambda m: None, init=w)
    assert not (tmp_path / "b" / "stage1").exists() or not any((tmp_path / "b" / "stage1").glob("ckpt-*"))


def test_init_grows_a_dfrm_tail_that_starts_as_the_identity(workspace, tmp_path):
    from tadmcodec.errors import ModelError

    cfg = micro_cfg(workspace)
    S.train_stage("stage1", cfg, tmp_path / "a", accelerator=_acc(), model=S.build_training_model(cfg),
                  log=lambda m: None)
    w = S.save_trainable(cfg, tmp_path / "a", tmp_path / "w.safetensors")
    tailed = micro_cfg(workspace, model={"dfrm": {"tail_blocks": 1, "tail_width": 8}},
                       stage1={"steps": 4, "max_minutes": 0})
    model, logs = S.build_training_model(tailed), []
    S.train_stage("stage1", tailed, tmp_path / "b", accelerator=_acc(), model=model, log=logs.append, init=w)
    assert any("(dfrm.tail_module) are not in" in m and "identity" in m for m in logs)
    plain = S.build_training_model(cfg)
    S.load_checkpoint_state(plain, S.read_trainable(w), w)
    z_lr = torch.randn(1, 3, 2, 3)
    with torch.no_grad():
        assert torch.equal(model.dfrm.decode_features(z_lr), plain.dfrm.decode_features(z_lr))
    with pytest.raises(ModelError, match="lacks"):  # only --init may leave a module out
        S.load_checkpoint_state(S.build_training_model(tailed), S.read_trainable(w), w)


def test_export_round_trip(workspace, tmp_path):
    from tadmcodec.tadm.loader import load_model_dir
    from tadmcodec.tadm.pipeline import TadmRescaler

    cfg = micro_cfg(workspace)
    model = S.build_training_model(cfg)
    S.train_stage("stage1", cfg, tmp_path, accelerator=_acc(), model=model, log=lambda m: None)
    out = S.export(cfg, tmp_path, tmp_path / "export", fp32=True)
    loaded = load_model_dir(out)
    trained = model.dfrm.state_dict()
    assert all(torch.equal(trained[k].cpu(), v) for k, v in loaded.dfrm.state_dict().items())
    r = TadmRescaler(loaded)
    img = np.random.default_rng(1).integers(0, 256, (40, 72, 3), dtype=np.uint8)
    lr = r.downscale(img, SCALE)
    assert lr.shape == (3, 5, 3) and lr.dtype == np.uint8
    assert r.upscale(lr, SCALE, (72, 40)).shape == (40, 72, 3)
    # the small trainable-weights file rebuilds the same folder on the same backbone
    S.save_trainable(cfg, tmp_path, tmp_path / "w.safetensors")
    again = S.export(cfg, tmp_path, tmp_path / "export2", fp32=True, weights=tmp_path / "w.safetensors")
    for f in out.glob("*.safetensors"):
        assert f.read_bytes() == (again / f.name).read_bytes(), f.name


@pytest.mark.parametrize("cpu_bf16", [False, True])
def test_perceptual_loss_when_weights_are_cached(workspace, tmp_path, cpu_bf16):
    from tadmcodec.metrics.weights import weights_path

    if not all(weights_path(n).is_file() for n in ("lpips_alex", "lpips_vgg", "dists")):
        pytest.skip("LPIPS/DISTS weights not in the cache (python -m tadmcodec.metrics.weights)")
    cfg = micro_cfg(workspace, cpu_bf16=cpu_bf16, stage2={"steps": 1, "lpips_weight": 1.0, "dists_weight": 1.0})
    result = S.train_stage("stage2", cfg, tmp_path, accelerator=_acc(), log=lambda m: None)
    assert 0 < result["lpips"] < 2 and 0 < result["dists"] < 1


def test_lr_schedules():
    assert S.lr_factor({"schedule": "halve", "halve_every": 10}, 25, 0) == 0.25
    assert S.lr_factor({"schedule": "constant"}, 99, 0) == 1.0
    cos = {"schedule": "cosine", "steps": 100, "max_minutes": 1.0}
    assert S.lr_factor(cos, 0, 0) == pytest.approx(1.0)
    assert S.lr_factor(cos, 10, 60.0) == pytest.approx(0.05)  # the time box ends the decay


def test_cli_errors_are_one_line(tmp_path, workspace):
    from tadmcodec.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["train", "--config", str(tmp_path / "nope.json")])
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"scale": 16, "stage1": {"crop": 100}}))
    res = runner.invoke(main, ["train", "--config", str(bad), "--cpu"])
    assert res.exit_code == 2 and "multiple of the scale" in res.output
    res = runner.invoke(main, ["train", "--config", str(bad), "--stage", "0a"])
    assert res.exit_code == 2 and "stage0_config" in res.output
    good = tmp_path / "good.json"
    good.write_text(json.dumps(micro_cfg(workspace)))
    for args, message in ((["--init", str(tmp_path / "none.safetensors")], "does not exist"),
                          (["--init", str(bad)], "cannot read"),
                          (["--init", str(bad), "--export", str(tmp_path / "e")], "exclude each other"),
                          (["--weights", str(bad)], "--weights goes with --export"),
                          (["--save-weights", str(tmp_path / "w.safetensors"), "--run-dir", str(tmp_path / "r")],
                           "nothing to save")):
        res = runner.invoke(main, ["train", "--config", str(good), "--cpu", *args])
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, (args, res.output)
        assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists() and not (tmp_path / "w.safetensors").exists()


def test_cli_trains_and_exports(workspace, tmp_path):
    from tadmcodec.cli import main

    cfg = micro_cfg(workspace, stage1={"steps": 1}, stage2={"steps": 1}, stage3={"steps": 1})
    path = tmp_path / "micro.json"
    path.write_text(json.dumps(cfg))
    res = CliRunner().invoke(main, ["train", "--config", str(path), "--run-dir", str(tmp_path / "run"), "--cpu"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "export" / "model.json").is_file()
    assert latest_checkpoint(tmp_path / "run" / "stage3").name == "ckpt-00000001.pt"
    # the small weights file carries the model to another run folder, which continues from it
    w = tmp_path / "w.safetensors"
    res = CliRunner().invoke(main, ["train", "--config", str(path), "--run-dir", str(tmp_path / "run"),
                                    "--save-weights", str(w)])
    assert res.exit_code == 0 and w.is_file(), res.output
    res = CliRunner().invoke(main, ["train", "--config", str(path), "--run-dir", str(tmp_path / "more"),
                                    "--stage", "3", "--init", str(w), "--cpu"])
    assert res.exit_code == 0, res.output
    assert latest_checkpoint(tmp_path / "more" / "stage3").name == "ckpt-00000001.pt"
    assert not (tmp_path / "more" / "stage1").exists()
    # so does the exported model folder itself
    res = CliRunner().invoke(main, ["train", "--config", str(path), "--run-dir", str(tmp_path / "again"),
                                    "--stage", "3", "--init", str(tmp_path / "run" / "export"), "--cpu"])
    assert res.exit_code == 0, res.output
    assert latest_checkpoint(tmp_path / "again" / "stage3").name == "ckpt-00000001.pt"


@pytest.mark.parametrize("native", [False, True])
def test_cli_drops_cpu_bf16_where_the_cpu_would_emulate_it(workspace, tmp_path, monkeypatch, native):
    from tadmcodec.cli import main
    from tadmcodec.train import stage0

    monkeypatch.setattr(stage0, "cpu_has_bf16", lambda: native)
    cfg = micro_cfg(workspace, cpu_bf16=True, stage1={"steps": 1})
    path = tmp_path / "micro.json"
    path.write_text(json.dumps(cfg))
    res = CliRunner().invoke(main, ["train", "--config", str(path), "--run-dir", str(tmp_path / "run"),
                                    "--stage", "1", "--cpu"])
    assert res.exit_code == 0, res.output
    assert ("no native bf16" in res.output) is not native
    assert json.loads((tmp_path / "run" / "config.json").read_text())["cpu_bf16"] is native


def test_gpu_job_trains_both_models_and_continues_from_their_weights(workspace, tmp_path):
    """The GPU session's job, as a CPU smoke run on micro configs: two models side by side, their
    small weight files, and a second call that starts from them (0-minute stages train nothing)."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    repo = Path(__file__).resolve().parents[1]
    configs = []
    for tag, scale in (("x16", 16), ("x32", 32)):
        path = tmp_path / f"{tag}.json"
        path.write_text(json.dumps(micro_cfg(workspace, name=f"micro-{tag}", scale=scale)))
        configs += ["--config", f"{tag}={path}"]

    def job(out: Path, *extra: str) -> str:
        cmd = [sys.executable, "-m", "tadmcodec.train.gpu_job", str(out), "--train-dir", str(workspace / "photos"),
               "--backbone", str(workspace / "backbone"), "--budget-s", "300", "--steps", "1", "--cpu",
               "--work", str(out / "work"), *configs, *extra]
        res = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        return (out / "job.log").read_text()

    log = job(tmp_path / "a", "--stage-minutes", "5,5,5")
    assert "x16: exported" in log and "x32: exported" in log, log
    first = {tag: load_file(str(tmp_path / "a" / f"{tag}.safetensors")) for tag in ("x16", "x32")}
    assert all(v.dtype == torch.float16 for v in first["x16"].values())
    log = job(tmp_path / "b", "--stage-minutes", "0,0,0", "--init", f"x16={tmp_path / 'a' / 'x16.safetensors'}")
    again = load_file(str(tmp_path / "b" / "x16.safetensors"))
    assert all(torch.equal(again[k], v) for k, v in first["x16"].items())
    other = load_file(str(tmp_path / "b" / "x32.safetensors"))  # no init: fresh heads, not the trained ones
    assert any(not torch.equal(other[k], v) for k, v in first["x32"].items())
    bad = subprocess.run([sys.executable, "-m", "tadmcodec.train.gpu_job", str(tmp_path / "c"), "--train-dir", "x",
                          "--backbone", "x", "--budget-s", "1", "--init", "x64=nope"], cwd=repo,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--init wants TAG=FILE" in bad.stderr
