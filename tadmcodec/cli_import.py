"""`tadm import-official`: turn the authors' x16/x32 checkpoints into a tadm-sd21 model folder.

Kept apart from `cli.py` so that `tadm info` and `tadm models` never import torch;
`tadmcodec.cli` registers this command when the module exists.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("import-official")
@click.option("--dfrm", "dfrm", required=True, metavar="FILE", help="Official DFRM checkpoint (x16 or x32).")
@click.option("--tadm", "tadm", required=True, metavar="FILE",
              help="Official TADM checkpoint of the same scale (LoRA, TPM, scheduler).")
@click.option("--base-model", required=True, metavar="DIR",
              help="Local Stable Diffusion 2.1-base diffusers folder (unet/, text_encoder/, tokenizer/, scheduler/).")
@click.option("--vae", metavar="DIR", help="Separate VAE folder (the official code uses sd-vae-ft-mse); "
                                           "default: the base model's vae/.")
@click.option("--out", required=True, metavar="DIR", help="Model folder to write (absent or empty).")
@click.option("--scale", type=click.Choice(["16", "32"]),
              help="Refuse a DFRM of another scale (default: read it from the DFRM).")
@click.option("--tpm-input", type=click.Choice(["unscaled", "scaled"]), default="unscaled", show_default=True,
              help="Latent the TPM sees: 'unscaled' as in the official training, 'scaled' (x0.18215) as in "
                   "the official tiled evaluation script.")
@click.option("--half", is_flag=True, help="Store the imported weights as fp16 (half the size; default fp32, exact).")
@click.option("-f", "--force", is_flag=True, help="Replace an existing model folder at --out.")
@click.option("--no-verify", is_flag=True, help="Skip loading the written folder once through the normal loader.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def import_official_command(dfrm, tadm, base_model, vae, out, scale, tpm_input, half, force, no_verify, quiet):
    """Import the official TADM checkpoints (github.com/wwangcece/TADM) as tadm-sd21-x16/-x32.

    Every tensor must map onto tadmcodec's modules (any missing or unexpected
    tensor, or wrong shape, is reported by name). The empty-prompt embedding is
    computed once here, so decoding needs no text encoder. Use the result with
    `tadm encode --model tadm-sd21-x16 --model-dir OUT` and `tadm decode --model-dir OUT`
    (with TADM_SD21_DIR, and TADM_SD_VAE_DIR if --vae was given, set).
    """
    from tadmcodec.tadm.official import import_official

    # a TadmError goes up to `tadmcodec.cli.entry`, which prints it as one line and exits 2
    report = import_official(
        dfrm, tadm, base_model, out, vae=vae, scale=int(scale) if scale else None,
        tpm_input_scaled=tpm_input == "scaled", half=half, force=force, verify=not no_verify,
    )
    for w in report.warnings:
        click.echo(f"tadm: warning: {w}", err=True)
    if quiet:
        return
    t = report.tensors
    here = lambda p: str(Path(p).expanduser().resolve())  # noqa: E731  (a hint that works from any folder)
    env = f"TADM_SD21_DIR={here(base_model)}" + (f" TADM_SD_VAE_DIR={here(vae)}" if vae else "")
    click.echo(
        f"imported {report.name} into {report.out} (digest {report.digest}): DFRM {t['dfrm']} tensors, "
        f"UNet LoRA rank {report.unet_rank} ({t['unet_adapter']} tensors), VAE LoRA rank {report.vae_rank} "
        f"({t['vae_adapter']} tensors), TPM {t['tpm']}, scheduler {t['refiner']}, "
        f"prompt embedding {'x'.join(map(str, report.prompt_shape))}\n"
        f"use it with: {env} tadm encode --model {report.name} --model-dir {here(report.out)} IMAGE",
        err=True,
    )
