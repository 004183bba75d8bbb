"""Train the implicit decoder (`tadm.implicit`) on a frozen VAE, and install it into a model folder.

    python -m tadmcodec.train.liif train --config tadmcodec/train/configs/liif-tiny.json [--resume | --init DIR]
    python -m tadmcodec.train.liif export --config ...            # -> <run>/export (fp16)
    python -m tadmcodec.train.liif install runs/liif/export MODEL_FOLDER

Everything but the implicit decoder's own blocks and head is frozen, and the VAE's
shared blocks (`post_quant_conv`, `conv_in`, the mid block, the first up blocks)
run the same on every step: so their output is computed once per photo, whole
(as the codec computes it, up to a megapixel), and cached beside the run. A photo
is cached twice: as it is, and shrunk 2x with Lanczos (for outputs larger than
the encoded image, the target is then the photo itself).

Each training sample is a `window` x `window` block of one photo's output at a
random size ratio r (output / encoded image): r = 1 with probability
`p_one`, else log-uniform in [r_min, 1) from the photo as it is, or in (1, r_max]
from the shrunk photo. The target is the photo resampled to that output size with
Lanczos (Pillow, the block cut with `box`, which reads the pixels around it as a
whole resize would), the prediction the same block of the implicit decoder's
output grid, computed from a latent crop around it (at least `min_cells` a side,
so the GroupNorms see a fair sample). Loss: L1 + lpips_weight x LPIPS-Alex.

The run is resumable (`--resume`) from `<run>/checkpoint.pt`, written every
`checkpoint_minutes`; `max_minutes` counts training time over all its runs.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from PIL import Image

from tadmcodec.errors import InputError, ModelError
from tadmcodec.tadm import spec as S
from tadmcodec.tadm.implicit import FACTOR, ImplicitDecoder, axis_queries, shared_fingerprint, shared_modules
from tadmcodec.tadm.spec import ImplicitDecoderConfig

DEFAULTS: dict[str, Any] = {
    "name": "liif",
    "seed": 0,
    "vae_dir": "../shared/checkpoints/stage0-tiny-cpu/export",
    "train_dir": "../shared/data/train",
    "photos": 0,  # 0 = all
    "implicit": {},
    "steps": 100000,
    "max_minutes": 40.0,
    "batch_size": 8,
    "window": 48,
    "min_cells": 24,
    "lr": 5e-4,
    "lr_final": 5e-5,
    "lpips_weight": 0.1,
    "p_one": 0.4,
    "p_up": 0.3,
    "r_min": 0.125,
    "r_max": 2.0,
    "checkpoint_minutes": 3.0,
    "log_every": 20,
    "threads": 1,
}
EXPORT_JSON = "implicit_decoder.json"


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        user = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read config {path}: {exc}") from None
    cfg = {**DEFAULTS, **{k: v for k, v in user.items() if not k.startswith("_")}, **(overrides or {})}
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(unknown)}")
    return cfg


def implicit_config(cfg: dict[str, Any]) -> ImplicitDecoderConfig:
    body = dict(cfg["implicit"])
    if "trained_zoom" not in body:
        body["trained_zoom"] = [cfg["r_min"], cfg["r_max"]]
    return S._build(ImplicitDecoderConfig, body, "implicit")


# ----------------------------------------------------------------------- the VAE


def vae_config_of(folder: Path) -> dict[str, Any]:
    """The VAE config of a TADM model folder (model.json) or a stage-0 backbone folder (backbone.json)."""
    if (folder / "model.json").is_file():
        vae = S.read_config(folder).backbone.vae
        if vae is None:
            raise ModelError(f"{folder / 'model.json'}: the implicit decoder needs an inline VAE")
        return dict(vae)
    if (folder / "backbone.json").is_file():
        return dict(S.read_json_object(folder / "backbone.json")["vae"])
    raise ModelError(f"{folder} has neither model.json nor backbone.json")


def load_vae(folder: str | Path) -> torch.nn.Module:
    """The frozen float32 VAE of a model or backbone folder."""
    from tadmcodec.tadm.loader import _load_assign, diffusers_classes, quiet, read_weights

    folder = Path(folder)
    autoencoder_kl, _ = diffusers_classes()
    with quiet(), torch.device("meta"):
        vae = autoencoder_kl.from_config(vae_config_of(folder))
    _load_assign(vae, read_weights(folder / S.VAE_FILE), folder / S.VAE_FILE)
    return vae.float().eval().requires_grad_(False)


# ------------------------------------------------------------------------- cache


def _pad8(img: np.ndarray) -> np.ndarray:
    from tadmcodec.rescaler import pad_to_multiple

    return pad_to_multiple(img, FACTOR)


@torch.inference_mode()
def shared_features(vae: torch.nn.Module, icfg: ImplicitDecoderConfig, img: np.ndarray) -> torch.Tensor:
    """uint8 photo -> the shared blocks' output on its whole latent (C, h, w), float16."""
    x = torch.from_numpy(np.array(_pad8(img))).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    z = vae.encode(x).latent_dist.mode()
    for m in shared_modules(vae, icfg):
        z = m(z) if isinstance(m, torch.nn.Conv2d) else m(z, None)
    return z[0].half()


def build_cache(cfg: dict[str, Any], vae: torch.nn.Module, icfg: ImplicitDecoderConfig, run: Path,
                log=print) -> list[dict[str, Any]]:
    """Per photo: pixels, and the shared features of the photo and of its 2x Lanczos reduction (cached)."""
    paths = sorted(p for p in Path(cfg["train_dir"]).iterdir()
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if "urban100" in str(Path(cfg["train_dir"]).resolve()).lower():
        raise InputError("the implicit decoder is never trained on Urban100 (the benchmark)")
    if cfg["photos"]:
        paths = paths[:cfg["photos"]]
    if not paths:
        raise InputError(f"no photos in {cfg['train_dir']}")
    key = f"{shared_fingerprint(vae, icfg)}:{len(paths)}:{paths[0].name}:{paths[-1].name}"
    file = run / "cache.pt"
    if file.is_file():
        cached = torch.load(file, weights_only=True)
        if cached.get("key") == key:
            log(f"[liif] cache: {len(cached['items'])} photos from {file}")
            return [{k: (v.numpy() if k == "pixels" else v) for k, v in it.items()} for it in cached["items"]]
    items = []
    t0 = time.perf_counter()
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            img = np.asarray(im.convert("RGB"))
        half = np.asarray(Image.fromarray(img).resize((max(8, round(img.shape[1] / 2)), max(8, round(img.shape[0] / 2))),
                                                      Image.Resampling.LANCZOS))
        items.append({"pixels": img, "full": shared_features(vae, icfg, img),
                      "half": shared_features(vae, icfg, half),
                      "half_size": torch.tensor([half.shape[1], half.shape[0]])})
        if (i + 1) % 25 == 0:
            log(f"[liif] cached {i + 1}/{len(paths)} photos, {time.perf_counter() - t0:.0f} s")
    torch.save({"key": key, "items": [{k: (torch.from_numpy(v) if k == "pixels" else v) for k, v in it.items()}
                                      for it in items]}, file)
    return items


# ----------------------------------------------------------------------- samples


def sample(item: dict[str, Any], rng: random.Random, cfg: dict[str, Any], icfg: ImplicitDecoderConfig):
    """One training block: (feature crop (C, h, w), row and column queries, target (3, win, win) in [-1, 1])."""
    img = item["pixels"]
    H, W = img.shape[:2]
    win = cfg["window"]
    u = rng.random()
    if u < cfg["p_one"]:
        r, src = 1.0, "full"
    elif u < cfg["p_one"] + cfg["p_up"]:
        r, src = math.exp(rng.uniform(0.0, math.log(cfg["r_max"]))), "half"
    else:
        r, src = math.exp(rng.uniform(math.log(cfg["r_min"]), 0.0)), "full"
    feats = item[src]
    w_img, h_img = (W, H) if src == "full" else (int(item["half_size"][0]), int(item["half_size"][1]))
    w_out, h_out = max(win, round(w_img * r)), max(win, round(h_img * r))
    h_lat, w_lat = feats.shape[-2:]
    qy_all, qx_all = axis_queries(h_out, h_img, h_lat), axis_queries(w_out, w_img, w_lat)
    y0, x0 = rng.randrange(0, h_out - win + 1), rng.randrange(0, w_out - win + 1)

    def crop(q, o, n_lat):
        lo, hi = int(q.idx[:, o:o + win].min()), int(q.idx[:, o:o + win].max()) + 1
        margin = 6
        a0, a1 = max(0, lo - margin), min(n_lat, hi + margin)
        short = cfg["min_cells"] - (a1 - a0)
        if short > 0:
            a0 = max(0, a0 - short // 2 - short % 2)
            a1 = min(n_lat, a0 + cfg["min_cells"])
            a0 = max(0, min(a0, a1 - cfg["min_cells"]))
        return a0, a1

    a0, a1 = crop(qy_all, y0, h_lat)
    b0, b1 = crop(qx_all, x0, w_lat)
    qy, qx = qy_all.part(y0, y0 + win, a0), qx_all.part(x0, x0 + win, b0)
    # the target: the photo resized to (w_out, h_out) with Lanczos, this block of it
    py, px = H / h_out, W / w_out
    box = (x0 * px, y0 * py, (x0 + win) * px, (y0 + win) * py)
    tgt = np.asarray(Image.fromarray(img).resize((win, win), Image.Resampling.LANCZOS, box=box))
    target = torch.from_numpy(np.ascontiguousarray(tgt)).permute(2, 0, 1).float() / 127.5 - 1.0
    return feats[:, a0:a1, b0:b1], qy, qx, target, r


# ------------------------------------------------------------------------- train


class Trainer:
    def __init__(self, cfg: dict[str, Any], run: Path, log=print) -> None:
        self.cfg, self.run, self.log = cfg, run, log
        torch.set_num_threads(int(cfg["threads"]))
        self.vae = load_vae(cfg["vae_dir"])
        icfg = implicit_config(cfg)
        self.icfg = replace(icfg, vae_sha256=shared_fingerprint(self.vae, icfg))
        torch.manual_seed(cfg["seed"])
        self.dec = ImplicitDecoder(self.icfg, self.vae).float().train()
        self.opt = torch.optim.Adam(self.dec.parameters(), lr=cfg["lr"])
        self.step, self.elapsed = 0, 0.0
        from tadmcodec.metrics import LPIPS

        self.lpips = LPIPS(net="alex").eval().requires_grad_(False) if cfg["lpips_weight"] else None

    def save(self) -> None:
        tmp = self.run / "checkpoint.pt.tmp"
        torch.save({"step": self.step, "elapsed": self.elapsed, "model": self.dec.state_dict(),
                    "opt": self.opt.state_dict(), "config": self.cfg}, tmp)
        tmp.replace(self.run / "checkpoint.pt")

    def resume(self) -> None:
        f = self.run / "checkpoint.pt"
        if not f.is_file():
            self.log("[liif] no checkpoint: starting afresh")
            return
        ck = torch.load(f, weights_only=True)
        self.dec.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        self.step, self.elapsed = int(ck["step"]), float(ck["elapsed"])
        self.log(f"[liif] resumed at step {self.step}, {self.elapsed / 60:.1f} min trained")

    def init_from(self, export_dir: Path) -> None:
        """Start from an exported decoder (e.g. the committed dev-weights/liif-tiny): its weights,
        a fresh optimiser and schedule. It must be of this config's shape."""
        from tadmcodec.tadm.loader import _check_state, read_weights

        f = Path(export_dir) / S.IMPLICIT_FILE
        state = read_weights(f)
        _check_state(self.dec, state, f, "the config", counts=True)
        self.dec.load_state_dict({k: v.float() for k, v in state.items()})
        self.log(f"[liif] starting from {f}")

    def lr_at(self, frac: float) -> float:
        c = self.cfg
        return c["lr_final"] + 0.5 * (c["lr"] - c["lr_final"]) * (1 + math.cos(math.pi * min(1.0, frac)))

    def train(self, items: list[dict[str, Any]]) -> None:
        c = self.cfg
        budget = 60.0 * c["max_minutes"]
        rng = random.Random(c["seed"] * 1_000_003 + self.step)
        last_ck = time.perf_counter()
        hist: list[tuple[float, float]] = []
        while self.step < c["steps"] and self.elapsed < budget:
            t0 = time.perf_counter()
            for g in self.opt.param_groups:
                g["lr"] = self.lr_at(self.elapsed / budget)
            preds, targets = [], []
            for _ in range(c["batch_size"]):
                feats, qy, qx, target, _ = sample(items[rng.randrange(len(items))], rng, c, self.icfg)
                x = feats[None].float()
                for b in self.dec.blocks:
                    x = b(x, None)
                preds.append(self.dec.render(self.dec.unfold(x), qy, qx))
                targets.append(target[None])
            pred, tgt = torch.cat(preds), torch.cat(targets)
            l1 = (pred - tgt).abs().mean()
            loss = l1
            if self.lpips is not None:
                loss = loss + c["lpips_weight"] * self.lpips(pred, tgt).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step += 1
            self.elapsed += time.perf_counter() - t0
            hist.append((l1.item(), loss.item()))
            if self.step % c["log_every"] == 0:
                m = np.mean(hist[-c["log_every"]:], axis=0)
                self.log(f"[liif] step {self.step} l1 {m[0]:.4f} loss {m[1]:.4f} "
                         f"{self.elapsed / 60:.1f} min, {(time.perf_counter() - t0):.2f} s/step")
            if time.perf_counter() - last_ck > 60 * c["checkpoint_minutes"]:
                self.save()
                last_ck = time.perf_counter()
        self.save()
        self.log(f"[liif] done: step {self.step}, {self.elapsed / 60:.1f} min")

    def export(self, out: Path) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        state = {k: v.detach().to(torch.float16).contiguous() for k, v in self.dec.state_dict().items()}
        save_file(state, str(out / S.IMPLICIT_FILE))
        (out / EXPORT_JSON).write_text(json.dumps(asdict(self.icfg), indent=1, sort_keys=True) + "\n")
        return out


# ----------------------------------------------------------------------- install


def install(export_dir: str | Path, model_dir: str | Path) -> Path:
    """Add an exported implicit decoder to a model folder: its file, and its entry in model.json.

    Checks first that the folder's VAE is the one it was trained on and that the weights
    fit; model.json is replaced atomically. The folder's weights digest does not change
    (docs/models.md), so files made with it before still decode.
    """
    from tadmcodec.tadm.loader import _check_state, read_weights

    export_dir, model_dir = Path(export_dir), Path(model_dir)
    icfg_d = S.read_json_object(export_dir / EXPORT_JSON)
    icfg = S._build(ImplicitDecoderConfig, icfg_d, str(export_dir / EXPORT_JSON))
    config = S.read_config(model_dir)
    vae = load_vae(model_dir)
    here = shared_fingerprint(vae, icfg)
    if icfg.vae_sha256 and here != icfg.vae_sha256:
        raise ModelError(f"{model_dir}'s VAE is not the one this implicit decoder was trained on "
                         f"(vae_sha256 {here[:12]}..., trained on {icfg.vae_sha256[:12]}...): train it on "
                         f"this folder (vae_dir: {model_dir})")
    state = read_weights(export_dir / S.IMPLICIT_FILE)
    _check_state(ImplicitDecoder(icfg, vae), state, export_dir / S.IMPLICIT_FILE, "its config", counts=True)
    shutil.copyfile(export_dir / S.IMPLICIT_FILE, model_dir / (S.IMPLICIT_FILE + ".tmp"))
    (model_dir / (S.IMPLICIT_FILE + ".tmp")).replace(model_dir / S.IMPLICIT_FILE)
    new = replace(config, implicit_decoder=icfg)
    tmp = model_dir / "model.json.tmp"
    tmp.write_text(json.dumps(new.to_dict(), indent=1, sort_keys=True) + "\n")
    tmp.replace(model_dir / "model.json")
    return model_dir


# --------------------------------------------------------------------------- CLI


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train, export and install the implicit (any-size) decoder."""


@main.command("train")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--run-dir", type=click.Path(file_okay=False), help="Default: runs/<name>.")
@click.option("--resume", is_flag=True)
@click.option("--init", "init_dir", type=click.Path(file_okay=False, exists=True),
              help="Start from an exported decoder folder (fresh optimiser), e.g. dev-weights/liif-tiny.")
@click.option("--max-minutes", type=float)
@click.option("--steps", type=int)
@click.option("--export/--no-export", default=True, help="Export to <run>/export at the end (default).")
def train_cmd(config_path, run_dir, resume, init_dir, max_minutes, steps, export):
    if resume and init_dir:
        raise click.UsageError("give --resume or --init, not both")
    over = {k: v for k, v in (("max_minutes", max_minutes), ("steps", steps)) if v is not None}
    cfg = load_config(config_path, over)
    run = Path(run_dir or Path("runs") / cfg["name"])
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    tr = Trainer(cfg, run, log=lambda s: click.echo(s, err=True))
    if resume:
        tr.resume()
    elif init_dir:
        tr.init_from(Path(init_dir))
    items = build_cache(cfg, tr.vae, tr.icfg, run, log=lambda s: click.echo(s, err=True))
    tr.train(items)
    if export:
        click.echo(f"exported to {tr.export(run / 'export')}")


@main.command("export")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--run-dir", type=click.Path(file_okay=False))
def export_cmd(config_path, run_dir):
    cfg = load_config(config_path)
    run = Path(run_dir or Path("runs") / cfg["name"])
    tr = Trainer(cfg, run, log=lambda s: click.echo(s, err=True))
    tr.resume()
    click.echo(f"exported to {tr.export(run / 'export')}")


@main.command("install")
@click.argument("export_dir", type=click.Path(file_okay=False))
@click.argument("model_dir", type=click.Path(file_okay=False))
def install_cmd(export_dir, model_dir):
    """Copy EXPORT_DIR's implicit decoder into MODEL_DIR and name it in MODEL_DIR/model.json."""
    click.echo(f"installed into {install(export_dir, model_dir)}")


if __name__ == "__main__":
    from tadmcodec.cli import run_command

    run_command(main)
