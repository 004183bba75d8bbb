"""Stage 0: train the tiny backbone (0a: the VAE, 0b: the ε-prediction UNet on its latents).

    python -m tadmcodec.train.stage0 --config tadmcodec/train/configs/tiny.json [--stage all]
    python -m tadmcodec.train.stage0 --config ... --resume          # continue from the latest checkpoint
    python -m tadmcodec.train.stage0 --config ... --stage export --out DIR

The same command runs on CPU, one GPU, or several (`accelerate launch -m
tadmcodec.train.stage0 ...`); on CUDA it trains under bf16 autocast. Checkpoints go to
`runs/<name>/<vae|unet>/ckpt-<step>.pt` every N steps and every M minutes (model, EMA,
optimiser, step, per-process RNG states); the data stream is a pure function of
(seed, step), so a resumed run continues exactly where it stopped.

Why these choices:
- VAE loss = L1 + SSIM + multi-scale gradient + a tiny KL (LDM's 1e-6 relative to the
  per-pixel reconstruction sum): structure terms fight blur without pretrained networks.
- After 0a the latent `scaling_factor` is measured as 1/std of posterior modes over training
  crops (what SD did to get 0.18215), so scaled latents have unit variance as the schedule assumes.
- 0b samples time-steps with extra weight on [0, 300): TADM only runs the UNet at t ≤ 200
  (fixed branch t0 = 50), so that range gets most of the capacity, while a uniform share over
  [0, 1000) keeps it a genuine diffusion prior over the whole schedule.
- Both stages keep an EMA of the weights, which is what gets exported (a cheap substitute
  for the learning-rate decay a time-boxed run cannot plan).
"""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np
import torch
import torch.nn.functional as F

from tadmcodec.errors import InputError, TadmError
from tadmcodec.metrics import check_metric_names
from tadmcodec.tadm import backbone as bb
from tadmcodec.train import losses
from tadmcodec.train.data import PhotoCrops, load_rgb, to_model_range

DEFAULTS: dict[str, Any] = {
    "name": "stage0",
    "seed": 0,
    "cpu_bf16": False,  # bf16 autocast when training on a CPU (CUDA always uses it)
    "data": {"train_dir": "../shared/data/train", "limit": None},
    "checkpoint": {"every_steps": 1000, "every_minutes": 5.0, "keep": 2},
    "log_every": 50,
    "vae": {
        "model": {},  # overrides of backbone.tiny_vae_config()
        "steps": 20000,
        "max_minutes": None,
        "batch_size": 16,
        "crop": 256,
        "lr": 2e-4,
        "warmup_steps": 200,
        "weight_decay": 0.0,
        "grad_clip": 1.0,
        "ema_decay": 0.999,
        # lpips: LPIPS-Alex weight (0 = off); needs the metric weights in the cache
        "loss": {"l1": 1.0, "ssim": 0.25, "gradient": 0.5, "kl": 1e-6, "lpips": 0.0},
        "scaling_samples": 512,
    },
    "unet": {
        "model": {},  # overrides of backbone.tiny_unet_config()
        "steps": 20000,
        "max_minutes": None,
        "batch_size": 32,
        "crop": 384,
        "lr": 2e-4,
        "warmup_steps": 200,
        "weight_decay": 0.01,
        "grad_clip": 1.0,
        "ema_decay": 0.9995,
        "t_low_max": 300,
        "t_low_fraction": 0.7,
        "empty_prompt_length": bb.EMPTY_PROMPT_LENGTH,
    },
}


# ----------------------------------------------------------------------------- config


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULTS, then the JSON file, then `overrides` (nested dicts merge key by key)."""
    return merge_config(DEFAULTS, path, overrides)


def merge_config(defaults: dict[str, Any], path: str | Path | None,
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`defaults`, then the JSON file, then `overrides`; one-line InputError for a bad file.

    A file may start from another with `"extends": "other.json"` (relative to itself): the other
    file is merged first, so a CPU variant states only what it changes (batch sizes, minutes).
    """
    cfg = copy.deepcopy(defaults)
    if path is not None:
        cfg = _merge(cfg, _read_config(Path(path), ()))
    if overrides:
        cfg = _merge(cfg, overrides)
    return cfg


def _read_config(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    seen = seen + (path.resolve(),)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist") from None
    except ValueError as exc:
        raise InputError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold a JSON object")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base = (path.parent / parent).resolve()
    if base in seen:
        raise InputError(f"config file {path} extends itself through {parent}")
    return _merge(_read_config(base, seen), data)


# ----------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(acc, folder: Path, step: int, keep: int, payload: Callable[[], dict[str, Any]]) -> Path:
    """ckpt-<step>.pt from `payload()` (main process), rng-<step>-rank<r>.pt (every process), then
    prune to the newest `keep` checkpoints and their RNG files. Shared by every training stage."""
    acc.wait_for_everyone()
    _atomic_save(_rng_state(), folder / f"rng-{step:08d}-rank{acc.process_index}.pt")
    path = folder / f"ckpt-{step:08d}.pt"
    if acc.is_main_process:
        _atomic_save(payload(), path)
        for old in sorted(folder.glob("ckpt-*.pt"))[:-keep]:
            old.unlink()
        kept = {p.stem.removeprefix("ckpt-") for p in folder.glob("ckpt-*.pt")}
        for r in folder.glob("rng-*.pt"):
            if r.stem.split("-")[1] not in kept:
                r.unlink(missing_ok=True)
    acc.wait_for_everyone()
    return path


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint with the highest step in `folder` (None if there is none)."""
    ckpts = sorted(folder.glob("ckpt-*.pt"))
    return ckpts[-1] if ckpts else None


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _load(path: Path) -> dict[str, Any]:
    # Our own checkpoints hold python/numpy RNG states, which weights_only refuses.
    return torch.load(path, map_location="cpu", weights_only=False)


# ----------------------------------------------------------------------------- training loop


class _Ema:
    """Exponential moving average of a model's floating-point parameters and buffers."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        # Warm-up of the decay (as in common EMA implementations) so early weights fade fast.
        d = min(self.decay, (1 + step) / (10 + step))
        src = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                v.lerp_(src[k].to(v.dtype), 1 - d)


def _lr_lambda(warmup: int):
    return lambda step: min(1.0, (step + 1) / max(1, warmup))


class _Trainer:
    """The loop both stages share: steps, accelerate, EMA, checkpoints, logging, time box."""

    def __init__(self, stage: str, cfg: dict[str, Any], run_dir: Path, accelerator,
                 model: torch.nn.Module, resume: bool, extra_state: dict[str, Any] | None = None) -> None:
        self.stage, self.cfg, self.acc = stage, cfg, accelerator
        self.scfg = cfg[stage]
        self.dir = run_dir / stage
        self.dir.mkdir(parents=True, exist_ok=True)
        self.step = 0
        self.extra_state = extra_state or {}
        model.to(accelerator.device)
        ema = _Ema(model, self.scfg["ema_decay"])
        opt = torch.optim.AdamW(model.parameters(), lr=self.scfg["lr"],
                                weight_decay=self.scfg["weight_decay"], betas=(0.9, 0.99))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(self.scfg["warmup_steps"]))
        ckpt = latest_checkpoint(self.dir) if resume else None
        if ckpt is not None:
            state = _load(ckpt)
            model.load_state_dict(state["model"])
            ema.model.load_state_dict(state["ema"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            self.step = int(state["step"])
            self.extra_state = state.get("extra", {})
            rng = self.dir / f"rng-{self.step:08d}-rank{accelerator.process_index}.pt"
            if rng.is_file():
                _set_rng_state(_load(rng))
            else:
                seed_everything(cfg["seed"] + 7919 * accelerator.process_index + self.step)
            accelerator.print(f"[{stage}] resumed from {ckpt} at step {self.step}")
        elif resume:
            accelerator.print(f"[{stage}] nothing to resume in {self.dir}; starting at step 0")
        ema.model.to(accelerator.device)
        self.model, self.opt = accelerator.prepare(model, opt)
        self.sched = sched
        self.ema = ema
        self.log_path = self.dir / "log.jsonl"

    def save(self) -> Path:
        """Write ckpt-<step>.pt (main process) and rng-<step>-rank<r>.pt (every process)."""
        return save_checkpoint(self.acc, self.dir, self.step, int(self.cfg["checkpoint"]["keep"]), lambda: {
            "model": self.acc.unwrap_model(self.model).state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "step": self.step,
            "extra": self.extra_state,
            "config": self.cfg,
        })

    def run(self, loss_fn, total_steps: int, max_minutes: float | None) -> dict[str, float]:
        """Train until `total_steps` or `max_minutes`; returns the mean of the last logged losses."""
        from tqdm.auto import tqdm

        acc, ck = self.acc, self.cfg["checkpoint"]
        start = time.monotonic()
        last_ckpt = start
        window: dict[str, float] = {}
        n_window = 0
        last: dict[str, float] = {}
        bar = tqdm(total=total_steps, initial=self.step, desc=f"stage0 {self.stage}",
                   disable=not acc.is_local_main_process, mininterval=1.0 if sys.stderr.isatty() else 20.0,
                   dynamic_ncols=True)
        t_log = time.monotonic()
        step_at_log = self.step
        while self.step < total_steps:
            if max_minutes is not None and time.monotonic() - start > 60 * max_minutes:
                acc.print(f"[{self.stage}] time limit of {max_minutes} min reached at step {self.step}")
                break
            self.model.train()
            with acc.autocast():
                loss, parts = loss_fn(self.model, self.step)
            acc.backward(loss)
            if self.scfg["grad_clip"]:
                acc.clip_grad_norm_(self.model.parameters(), self.scfg["grad_clip"])
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            self.ema.update(acc.unwrap_model(self.model), self.step)
            self.step += 1
            for k, v in parts.items():
                window[k] = window.get(k, 0.0) + v
            n_window += 1
            bar.update(1)
            if self.step % self.cfg["log_every"] == 0 or self.step == total_steps:
                last = {k: v / n_window for k, v in window.items()}
                now = time.monotonic()
                rate = (self.step - step_at_log) / max(now - t_log, 1e-9)
                t_log, step_at_log = now, self.step
                bar.set_postfix({k: f"{v:.4f}" for k, v in last.items()}, refresh=False)
                if acc.is_main_process:
                    with open(self.log_path, "a") as f:
                        f.write(json.dumps({"step": self.step, "it_s": round(rate, 3),
                                            "elapsed_s": round(now - start, 1), **last}) + "\n")
                window, n_window = {}, 0
            now = time.monotonic()
            if self.step % ck["every_steps"] == 0 or now - last_ckpt > 60 * ck["every_minutes"]:
                self.save()
                last_ckpt = now
        bar.close()
        if n_window:
            last = {k: v / n_window for k, v in window.items()}
        self.save()
        return last


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 on this CPU (AVX-512 or Arm bf16); without it bf16 is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private op: absent from some builds
        return False


def trains_on_cpu(cpu: bool) -> bool:
    """Where training runs: the CPU when asked (``--cpu``) or when there is no GPU."""
    return cpu or not torch.cuda.is_available()


def usable_cpu_bf16(requested: bool, on_cpu: bool, warn: Callable[[str], None] | None = None) -> bool:
    """The config's ``cpu_bf16``, dropped with a warning where this CPU would emulate bf16.

    Why: on an AVX2-only CPU (the 2-core VM of 23 Nov) a stage-0 VAE step of 8×128² took 91 s under
    bf16 autocast and 3.1 s in float32, so a config written for an AVX-512 machine would crawl.
    """
    if requested and on_cpu and not cpu_has_bf16():
        (warn or (lambda m: click.echo(m, err=True)))("warning: cpu_bf16 is set, but this CPU has no native bf16 (oneDNN needs AVX-512): "
             "training in float32, which is many times faster here")
        return False
    return requested


def _accelerator(cpu: bool = False, cpu_bf16: bool = False):
    """bf16 autocast on CUDA always; on a CPU only when asked (config key ``cpu_bf16``).

    On a CPU with AVX512-BF16 a VAE step of batch 8×128² takes 0.63 s instead of 1.04 s in fp32
    (ad-hoc timing on the 2-core dev VM); without such units bf16 is slower, hence opt-in.
    """
    from accelerate import Accelerator

    use_cuda = not trains_on_cpu(cpu)
    if use_cuda:
        torch.backends.cudnn.benchmark = True  # fixed crop sizes: autotuning pays off at once
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    bf16 = use_cuda or cpu_bf16
    return Accelerator(cpu=not use_cuda, mixed_precision="bf16" if bf16 else "no")


def _dataset(cfg: dict[str, Any], crop: int) -> PhotoCrops:
    d = cfg["data"]
    return PhotoCrops(d["train_dir"], crop=crop, seed=cfg["seed"], limit=d.get("limit"))


def _device_batch(data: PhotoCrops, step: int, batch_size: int, acc) -> torch.Tensor:
    x = data.batch(step, batch_size, acc.process_index, acc.num_processes)
    return to_model_range(x.to(acc.device, non_blocking=True))


# ----------------------------------------------------------------------------- stage 0a


def train_vae(cfg: dict[str, Any], run_dir: Path, resume: bool = False, accelerator=None,
              data: PhotoCrops | None = None) -> dict[str, float]:
    """Stage 0a: train the VAE, then measure and store its latent scaling factor."""
    acc = accelerator or _accelerator()
    scfg = cfg["vae"]
    seed_everything(cfg["seed"] + 7919 * acc.process_index)
    data = data or _dataset(cfg, scfg["crop"])
    vae = bb.build_vae({**bb.tiny_vae_config(), **scfg["model"]})
    start_nearly_deterministic(vae)
    tr = _Trainer("vae", cfg, run_dir, acc, vae, resume)
    w = scfg["loss"]
    perceptual = None
    if w.get("lpips"):
        from tadmcodec.metrics import LPIPS

        perceptual = LPIPS(net="alex").to(acc.device).eval().requires_grad_(False)

    def loss_fn(model, step):
        x = _device_batch(data, step, scfg["batch_size"], acc)
        posterior = model.encode(x).latent_dist
        rec = model.decode(posterior.sample()).sample.float()
        posterior.mean, posterior.logvar = posterior.mean.float(), posterior.logvar.float()
        posterior.var, posterior.std = posterior.logvar.exp(), (0.5 * posterior.logvar).exp()
        l1 = (rec - x).abs().mean()
        ss = losses.ssim(rec, x)
        gr = losses.gradient_loss(rec, x)
        kl = posterior.kl().float().mean() / x[0].numel()
        loss = w["l1"] * l1 + w["ssim"] * (1 - ss) + w["gradient"] * gr + w["kl"] * kl
        parts = {"l1": l1.item(), "ssim": ss.item(), "kl": kl.item()}
        if perceptual is not None:
            lp = perceptual(rec, x).float().mean()
            loss = loss + w["lpips"] * lp
            parts["lpips"] = lp.item()
        return loss, {"loss": loss.item(), **parts}

    result = tr.run(loss_fn, scfg["steps"], scfg["max_minutes"])
    if acc.is_main_process:
        sf = measure_scaling_factor(tr.ema.model, data, scfg["scaling_samples"],
                                    scfg["batch_size"], acc.device)
        (tr.dir / "scaling.json").write_text(json.dumps({"scaling_factor": sf, "step": tr.step}) + "\n")
        acc.print(f"[vae] step {tr.step}: latent scaling factor {sf:.5f}")
        result["scaling_factor"] = sf
    acc.wait_for_everyone()
    return result


@torch.no_grad()
def start_nearly_deterministic(vae, logvar: float = -10.0) -> None:
    """Initialise the posterior's log-variance to `logvar` everywhere (std ≈ 0.007).

    With diffusers' default init the posterior starts with unit variance: the decoder
    then sees mostly noise, learns to output the mean colour, and the encoder escapes
    only by blowing its means up (KL in the thousands), which bf16 then rounds away. Both
    GPU runs with the default init stalled at L1 ≈ 0.45–0.5. The tiny KL term still lets
    the variance grow where that helps.
    """
    c = vae.config.latent_channels
    vae.quant_conv.weight[c:].zero_()
    vae.quant_conv.bias[c:].fill_(logvar)


@torch.no_grad()
def measure_scaling_factor(vae, data: PhotoCrops, samples: int, batch_size: int,
                           device: torch.device | str) -> float:
    """1 / std of the posterior modes over `samples` training crops (SD's recipe).

    Uses a fixed stream offset far from any training step so the estimate is reproducible.
    """
    vae.eval()
    zs = []
    offset = 10**9
    for i in range(0, samples, batch_size):
        n = min(batch_size, samples - i)
        x = to_model_range(torch.from_numpy(np.stack([data.sample(offset + i + j) for j in range(n)]))
                           .permute(0, 3, 1, 2).to(device))
        zs.append(vae.encode(x).latent_dist.mode().float().flatten())
    return float(1.0 / torch.cat(zs).std())


def _vae_state(run_dir: Path, accelerator, data: PhotoCrops | None, cfg: dict[str, Any]):
    """The trained VAE (EMA weights) and its scaling factor, re-measured if stale."""
    vdir = run_dir / "vae"
    ckpt = latest_checkpoint(vdir)
    if ckpt is None:
        raise TadmError(f"no VAE checkpoint in {vdir}: run stage vae first")
    state = _load(ckpt)
    vae = bb.build_vae({**bb.tiny_vae_config(), **state["config"]["vae"]["model"]})
    vae.load_state_dict(state["ema"])
    vae.to(accelerator.device).eval().requires_grad_(False)
    scaling = vdir / "scaling.json"
    meta = json.loads(scaling.read_text()) if scaling.is_file() else {}
    if meta.get("step") != state["step"]:
        data = data or _dataset(cfg, cfg["vae"]["crop"])
        sf = measure_scaling_factor(vae, data, cfg["vae"]["scaling_samples"], cfg["vae"]["batch_size"],
                                    accelerator.device)
        meta = {"scaling_factor": sf, "step": state["step"]}
        if accelerator.is_main_process:
            scaling.write_text(json.dumps(meta) + "\n")
    return vae, float(meta["scaling_factor"]), int(state["step"])


# ----------------------------------------------------------------------------- stage 0b


def sample_timesteps(n: int, scfg: dict[str, Any], num_train: int, device) -> torch.Tensor:
    """A `t_low_fraction` share from [0, t_low_max), the rest uniform over [0, num_train)."""
    low = torch.randint(0, scfg["t_low_max"], (n,), device=device)
    full = torch.randint(0, num_train, (n,), device=device)
    pick = torch.rand(n, device=device) < scfg["t_low_fraction"]
    return torch.where(pick, low, full)


def train_unet(cfg: dict[str, Any], run_dir: Path, resume: bool = False, accelerator=None,
               data: PhotoCrops | None = None) -> dict[str, float]:
    """Stage 0b: ε-prediction MSE on the frozen VAE's scaled latents."""
    acc = accelerator or _accelerator()
    scfg = cfg["unet"]
    seed_everything(cfg["seed"] + 1 + 7919 * acc.process_index)
    data = data or _dataset(cfg, scfg["crop"])
    vae, sf, vae_step = _vae_state(run_dir, acc, None, cfg)
    unet_cfg = {**bb.tiny_unet_config(), **scfg["model"]}
    unet = bb.build_unet(unet_cfg)
    empty = bb.empty_prompt_embedding(unet_cfg["cross_attention_dim"], scfg["empty_prompt_length"],
                                      seed=cfg["seed"])
    tr = _Trainer("unet", cfg, run_dir, acc, unet, resume,
                  extra_state={"empty_prompt": empty, "scaling_factor": sf, "vae_step": vae_step})
    if tr.extra_state.get("vae_step") != vae_step:
        acc.print(f"[unet] warning: checkpoint was trained on VAE step {tr.extra_state.get('vae_step')}, "
                  f"the VAE is now at step {vae_step}")
    empty = tr.extra_state["empty_prompt"].to(acc.device)
    sf = float(tr.extra_state["scaling_factor"])
    noise_sched = bb.make_noise_scheduler()
    alphas = noise_sched.alphas_cumprod.to(acc.device)
    n_train = noise_sched.config.num_train_timesteps

    def loss_fn(model, step):
        x = _device_batch(data, step, scfg["batch_size"], acc)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode().float() * sf
        noise = torch.randn_like(z)
        t = sample_timesteps(z.shape[0], scfg, n_train, z.device)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z + (1 - a).sqrt() * noise
        pred = model(zt, t, encoder_hidden_states=empty.expand(z.shape[0], -1, -1)).sample
        loss = F.mse_loss(pred.float(), noise)
        return loss, {"loss": loss.item()}

    return tr.run(loss_fn, scfg["steps"], scfg["max_minutes"])


# ----------------------------------------------------------------------------- export and eval


def export(run_dir: Path, out_dir: Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write the EMA weights of both stages as an fp16 backbone folder (see backbone.save_backbone)."""
    vdir, udir = run_dir / "vae", run_dir / "unet"
    vck, uck = latest_checkpoint(vdir), latest_checkpoint(udir)
    if vck is None or uck is None:
        raise TadmError(f"export needs checkpoints of both stages in {run_dir}")
    vstate, ustate = _load(vck), _load(uck)
    vae = bb.build_vae({**bb.tiny_vae_config(), **vstate["config"]["vae"]["model"]})
    vae.load_state_dict(vstate["ema"])
    unet = bb.build_unet({**bb.tiny_unet_config(), **ustate["config"]["unet"]["model"]})
    unet.load_state_dict(ustate["ema"])
    extra = ustate["extra"]
    info = {"trained_steps": {"vae": int(vstate["step"]), "unet": int(ustate["step"])},
            "unet_trained_on_vae_step": int(extra["vae_step"])}
    return bb.save_backbone(out_dir, vae, unet, extra["empty_prompt"], extra["scaling_factor"],
                            dtype=dtype, extra=info)


def round_trip_model(run_dir: Path, export_dir: Path) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """(what it is, image -> VAE encode -> decode) from the export, else the latest VAE checkpoint's EMA.

    The checkpoint route lets the round trip be checked while stage 0a is still running, before
    there is a UNet to export with it.
    """
    if (export_dir / bb.BACKBONE_JSON).is_file():
        b = bb.load_backbone(export_dir)
        return f"export {export_dir}", lambda x: b.decode(b.encode(x))
    ck = latest_checkpoint(run_dir / "vae")
    if ck is None:
        raise InputError(f"nothing to evaluate: no {export_dir / bb.BACKBONE_JSON} and no VAE checkpoint "
                         f"in {run_dir / 'vae'}")
    state = _load(ck)
    vae = bb.build_vae({**bb.tiny_vae_config(), **state["config"]["vae"]["model"]})
    vae.load_state_dict(state["ema"])
    vae.eval()
    return f"VAE EMA at step {int(state['step'])} ({ck})", lambda x: vae.decode(vae.encode(x).latent_dist.mode()).sample


@torch.no_grad()
def reconstruction_scores(round_trip: Callable[[torch.Tensor], torch.Tensor], paths: list[Path],
                          metrics: tuple[str, ...] = ("psnr",)) -> list[tuple[str, dict[str, float]]]:
    """`metrics` of `round_trip` for each photo (padded to ×8 by reflection, then cropped).

    With LPIPS/DISTS this is the backbone's ceiling: no TADM model on it decodes better than
    its VAE reconstructs, so it can be set against the quality bar before stages 1-3 are run.
    """
    from tadmcodec.metrics.evaluation import Evaluator
    from tadmcodec.rescaler import pad_to_multiple

    out = []
    for p in paths:
        img = load_rgb(p)
        h, w = img.shape[:2]
        x = to_model_range(torch.from_numpy(np.array(pad_to_multiple(img, 8))).permute(2, 0, 1)[None])
        rec = round_trip(x)[..., :h, :w]
        rec8 = ((rec.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
        out.append((p.name, Evaluator(img, metrics)(rec8)))
    return out


# ----------------------------------------------------------------------------- CLI


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True,
              help="JSON config (see tadmcodec/train/configs/).")
@click.option("--stage", type=click.Choice(["all", "vae", "unet", "export", "eval"]), default="all",
              show_default=True, help="all = vae, unet, export.")
@click.option("--resume", is_flag=True, help="Continue each stage from its latest checkpoint.")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Default: runs/<name>.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Export folder (default: <run-dir>/export).")
@click.option("--data", "train_dir", type=click.Path(file_okay=False), help="Override data.train_dir.")
@click.option("--vae-steps", type=int, help="Override vae.steps.")
@click.option("--unet-steps", type=int, help="Override unet.steps.")
@click.option("--vae-minutes", type=float, help="Stop stage 0a after this many minutes.")
@click.option("--unet-minutes", type=float, help="Stop stage 0b after this many minutes.")
@click.option("--images", type=click.Path(file_okay=False), help="eval: folder of photos to reconstruct.")
@click.option("--limit", type=int, default=5, show_default=True, help="eval: number of photos.")
@click.option("--metrics", default="psnr", show_default=True,
              help="eval: comma-separated metrics (psnr, ssim, lpips_alex, lpips_vgg, dists).")
@click.option("--cpu", is_flag=True, help="Train on the CPU even if a GPU is present.")
def main(config_path, stage, resume, run_dir, out_dir, train_dir, vae_steps, unet_steps,
         vae_minutes, unet_minutes, images, limit, metrics, cpu) -> None:
    """Train, export or evaluate the tiny diffusion backbone (stage 0)."""
    try:
        over: dict[str, Any] = {"vae": {}, "unet": {}}
        if train_dir:
            over["data"] = {"train_dir": train_dir}
        for key, val, sub in (("steps", vae_steps, "vae"), ("steps", unet_steps, "unet"),
                              ("max_minutes", vae_minutes, "vae"), ("max_minutes", unet_minutes, "unet")):
            if val is not None:
                over[sub][key] = val
        cfg = load_config(config_path, over)
        rdir = Path(run_dir or Path("runs") / cfg["name"])
        odir = Path(out_dir or rdir / "export")
        if stage == "eval":
            if not images:
                raise InputError("--stage eval needs --images FOLDER")
            names = tuple(check_metric_names([m.strip() for m in metrics.split(",") if m.strip()] or [metrics]))
            what, fn = round_trip_model(rdir, odir)
            click.echo(f"round trip of {what}", err=True)
            scores = reconstruction_scores(fn, list_photos_for_eval(Path(images))[:limit], names)
            click.echo("\t".join(("photo",) + names))
            rows = scores + [("mean", {m: float(np.mean([s[m] for _, s in scores])) for m in names})]
            for name, values in rows:
                click.echo("\t".join([name] + [f"{values[m]:.2f}" if m == "psnr" else f"{values[m]:.4f}"
                                                for m in names]))
            return
        if stage in ("all", "vae", "unet"):
            acc = _accelerator(cpu, usable_cpu_bf16(bool(cfg["cpu_bf16"]), trains_on_cpu(cpu)))
            rdir.mkdir(parents=True, exist_ok=True)
            if acc.is_main_process:
                (rdir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
            if stage in ("all", "vae"):
                acc.print(f"[vae] result: {train_vae(cfg, rdir, resume, acc)}")
            if stage in ("all", "unet"):
                acc.print(f"[unet] result: {train_unet(cfg, rdir, resume, acc)}")
            if not acc.is_main_process:
                return
        if stage in ("all", "export"):
            click.echo(f"exported to {export(rdir, odir)}")
    except TadmError as exc:
        click.echo(f"tadm: {exc}", err=True)
        sys.exit(exc.exit_code)


def list_photos_for_eval(folder: Path) -> list[Path]:
    """Photos of an evaluation folder (benchmarks allowed here: nothing is trained on them)."""
    if not folder.is_dir():
        raise InputError(f"evaluation folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))


if __name__ == "__main__":
    main()
