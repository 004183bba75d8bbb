"""`tadm train`: stages 0a/0b (the tiny backbone), 1-3 (TADM) and export, from one config file.

    tadm train --config tadmcodec/train/configs/tadm-tiny-x16.json --stage all
    tadm train --config ... --stage 2 --resume --max-minutes 30
    tadm train --config ... --export DIR          # write a model folder from the latest stage
    tadm train --config ... --save-weights W.safetensors  # its trainable weights alone (small)
    tadm train --config ... --stage 1 --run-dir runs/more --init W.safetensors  # continue elsewhere
    accelerate launch -m tadmcodec.cli_train --config ...   # several GPUs, same command

Stages 0a/0b read the stage-0 config that the model config names (`stage0_config`);
"all" runs stages 1, 2 and 3 and then exports to <run-dir>/export.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from tadmcodec.errors import InputError, TadmError

STAGE_CHOICES = ("0a", "0b", "1", "2", "3", "all")


@click.command("train")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True,
              help="Model training config (see tadmcodec/train/configs/).")
@click.option("--stage", type=click.Choice(STAGE_CHOICES), default="all", show_default=True,
              help="0a = backbone VAE, 0b = backbone UNet, 1-3 = TADM stages, all = 1, 2, 3 + export.")
@click.option("--resume", is_flag=True, help="Continue each stage from its latest checkpoint.")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Checkpoints and logs (default: runs/<name>).")
@click.option("--max-minutes", type=float,
              help="Time box per stage, counted over its resumed runs (overrides the config).")
@click.option("--steps", type=int, help="Steps per stage (overrides the config; for smoke runs).")
@click.option("--data", "train_dir", type=click.Path(file_okay=False), help="Override data.train_dir.")
@click.option("--backbone", "backbone_dir", type=click.Path(file_okay=False),
              help="Override backbone.dir (an inline stage-0 backbone folder).")
@click.option("--export", "export_dir", type=click.Path(file_okay=False),
              help="Only export the latest stage's weights as a model folder to DIR.")
@click.option("--weights", "weights_file", type=click.Path(dir_okay=False),
              help="With --export: take the weights from this trainable-weights safetensors.")
@click.option("--fp32", is_flag=True, help="Export (or save) float32 weights instead of float16.")
@click.option("--save-weights", "save_weights", type=click.Path(dir_okay=False),
              help="Only write the latest stage's trainable weights (float16 safetensors unless --fp32; "
                   "no backbone) to FILE: what --init and --export --weights read.")
@click.option("--init", "init_file", type=click.Path(),
              help="Start the first stage run from these trainable weights (a --save-weights file, a "
                   "stage checkpoint .pt or an exported model folder such as tadmcodec/weights/NAME) "
                   "instead of the previous stage's; fresh optimiser and schedule.")
@click.option("--cpu", is_flag=True, help="Train on the CPU even if a GPU is present.")
def train_command(config_path: str, stage: str, resume: bool, run_dir: str | None, max_minutes: float | None,
                  steps: int | None, train_dir: str | None, backbone_dir: str | None, export_dir: str | None,
                  weights_file: str | None, fp32: bool, save_weights: str | None, init_file: str | None,
                  cpu: bool) -> None:
    """Train a TADM model (stages 1-3) or its tiny backbone (0a/0b), resumably."""
    try:
        _train(config_path, stage, resume, run_dir, max_minutes, steps, train_dir, backbone_dir,
               export_dir, weights_file, fp32, save_weights, init_file, cpu)
    except TadmError as exc:  # one line, exit code 2 (also under `python -m` and accelerate)
        click.echo(f"tadm: {exc}", err=True)
        sys.exit(exc.exit_code)


def _train(config_path: str, stage: str, resume: bool, run_dir: str | None, max_minutes: float | None,
           steps: int | None, train_dir: str | None, backbone_dir: str | None, export_dir: str | None,
           weights_file: str | None, fp32: bool, save_weights: str | None, init_file: str | None,
           cpu: bool) -> None:
    from tadmcodec.train import stage0
    from tadmcodec.train import stages as S

    if sum(x is not None for x in (export_dir, save_weights, init_file)) > 1:
        raise InputError("--export, --save-weights and --init exclude each other")
    if weights_file and not export_dir:
        raise InputError("--weights goes with --export")
    if stage in ("0a", "0b"):
        if init_file or save_weights:
            raise InputError("--init and --save-weights are for stages 1-3")
        _stage0(config_path, stage, resume, run_dir, max_minutes, steps, train_dir, cpu)
        return
    over: dict[str, Any] = {s: {} for s in S.STAGES}
    for s in S.STAGES:
        if max_minutes is not None:
            over[s]["max_minutes"] = max_minutes
        if steps is not None:
            over[s]["steps"] = steps
    if train_dir:
        over["data"] = {"train_dir": train_dir}
    if backbone_dir:
        over["backbone"] = {"dir": backbone_dir}
    cfg = S.load_config(config_path, over)
    rdir = Path(run_dir or Path("runs") / cfg["name"])
    if export_dir:
        weights = Path(weights_file) if weights_file else None
        folder = S.export(cfg, rdir, Path(export_dir), fp32=fp32, weights=weights)
        click.echo(f"exported to {folder}")
        return
    if save_weights:
        import torch

        dtype = torch.float32 if fp32 else torch.float16
        click.echo(f"wrote {S.save_trainable(cfg, rdir, Path(save_weights), dtype)}")
        return
    init = Path(init_file) if init_file else None
    if init is not None:
        S.read_trainable(init)  # a bad file fails here, before any folder is made
    cfg["cpu_bf16"] = stage0.usable_cpu_bf16(bool(cfg["cpu_bf16"]), stage0.trains_on_cpu(cpu))
    acc = S._accelerator(cpu)
    rdir.mkdir(parents=True, exist_ok=True)
    if acc.is_main_process:
        (rdir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    todo = S.STAGES if stage == "all" else (f"stage{stage}",)
    model = S.build_training_model(cfg)
    for i, s in enumerate(todo):
        S.train_stage(s, cfg, rdir, resume=resume, accelerator=acc, model=model, log=acc.print,
                      init=init if i == 0 else None)
    if stage == "all" and acc.is_main_process:
        click.echo(f"exported to {S.export(cfg, rdir, rdir / 'export', fp32=fp32)}")


def _stage0(config_path: str, stage: str, resume: bool, run_dir: str | None, max_minutes: float | None,
            steps: int | None, train_dir: str | None, cpu: bool) -> None:
    """Stage 0a/0b through the backbone trainer, with the stage-0 config the model config names."""
    from tadmcodec.train import stage0

    try:
        model_cfg = json.loads(Path(config_path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read config {config_path}: {exc}") from None
    s0_path = model_cfg.get("stage0_config")
    if not s0_path:
        raise InputError(f"{config_path} names no stage0_config: stages 0a/0b need one")
    sub = "vae" if stage == "0a" else "unet"
    over: dict[str, Any] = {sub: {}}
    if max_minutes is not None:
        over[sub]["max_minutes"] = max_minutes
    if steps is not None:
        over[sub]["steps"] = steps
    if train_dir:
        over["data"] = {"train_dir": train_dir}
    cfg = stage0.load_config(s0_path, over)
    rdir = Path(run_dir or Path("runs") / cfg["name"])
    acc = stage0._accelerator(cpu, stage0.usable_cpu_bf16(bool(cfg.get("cpu_bf16", False)),
                                                          stage0.trains_on_cpu(cpu)))
    rdir.mkdir(parents=True, exist_ok=True)
    fn = stage0.train_vae if sub == "vae" else stage0.train_unet
    acc.print(f"[{sub}] result: {fn(cfg, rdir, resume, acc)}")
    if sub == "unet" and acc.is_main_process:
        click.echo(f"backbone exported to {stage0.export(rdir, rdir / 'export')}")


if __name__ == "__main__":  # `accelerate launch -m tadmcodec.cli_train`: errors one line, as `tadm train`
    from tadmcodec.cli import run_command

    run_command(train_command)
