"""Where a TADM model's PSNR goes: bicubic, the VAE alone, the DFRM alone, the whole codec.

The shipping bar asks for PSNR 0.5 dB above bicubic. This splits a model's decode into the
steps that can lose it, on whole Urban100 photos (cropped to a multiple of the scale):

    bicubic        the `bicubic` rescaler's round trip (the bar's reference)
    vae            VAE encode -> decode of the photo: the ceiling of any model on this backbone
    bicubic_latent the bicubic image's latent, decoded: what a DFRM that learned plain
                   bicubic upsampling in latent space would give
    dfrm           D(Gd(F^-1(y))): the DFRM's latent from the coded LR image, decoded, no UNet step
    codec          the full decode (UNet step, refiner, tiling), as `tadm decode` does it

and reports, for the two latents that try to approximate z = E(x), their L1 and MSE to it,
so a reader can see whether a latent nearer to z also decodes nearer to x.

    python benchmarks/psnr_budget.py --model tadm-tiny-x16=runs/x16-cpu-export --scale 16 --limit 3

Writes <out>/<model>-x<scale>.md and .json (default out: benchmarks/results/psnr_budget).
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEPS = ("bicubic", "vae", "bicubic_latent", "dfrm", "codec")


def budget(rescaler, img: np.ndarray, scale: int) -> dict[str, float]:
    """PSNR of each step, and latent L1/MSE to z of the DFRM's and the bicubic image's latents."""
    import torch

    from tadmcodec.metrics import psnr
    from tadmcodec.rescaler import BicubicRescaler
    from tadmcodec.tadm.dfrm import dequantize
    from tadmcodec.tadm.tiling import to_uint8_image

    m = rescaler.model
    h, w = img.shape[:2]
    bic = BicubicRescaler()
    bicubic = bic.upscale(bic.downscale(img, scale), scale, (w, h))

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float() / 127.5 - 1.0  # a writable copy

    lr = rescaler.downscale(img, scale)
    out: dict[str, float] = {}
    with torch.inference_mode():
        z = m.encode_latent(tensor(img))
        z_bic = m.encode_latent(tensor(bicubic))
        z_dfrm = m.dfrm.decode_features(m.dfrm.from_lr(dequantize(torch.from_numpy(lr).permute(2, 0, 1)[None])))
        images = {"vae": z, "bicubic_latent": z_bic, "dfrm": z_dfrm}
        decoded = {k: to_uint8_image(m.decode_latent(v))[:h, :w] for k, v in images.items()}
    decoded["bicubic"] = bicubic
    decoded["codec"] = rescaler.upscale(lr, scale, (w, h))
    for step in STEPS:
        out[f"psnr_{step}"] = psnr(img, decoded[step])
    for name, lat in (("bicubic_latent", z_bic), ("dfrm", z_dfrm)):
        out[f"l1_{name}"] = float((lat - z).abs().mean())
        out[f"mse_{name}"] = float(((lat - z) ** 2).mean())
    return out


def table(model: str, scale: int, rows: dict[str, dict[str, float]], command: str) -> str:
    names = list(rows)
    mean = {k: float(np.mean([rows[n][k] for n in names])) for k in rows[names[0]]}
    lines = [f"# PSNR budget: {model} x{scale}", "",
             f"{len(names)} photos. PSNR in dB against the original; latent distances to z = E(x) (unscaled).", "",
             "| photo | bicubic | VAE round trip | bicubic latent decoded | DFRM decoded | codec | "
             "latent L1 / MSE, bicubic | latent L1 / MSE, DFRM |", "|---|" + "---:|" * 7]
    for n, r in [*rows.items(), ("mean", mean)]:
        lines.append(f"| {n} | " + " | ".join(f"{r[f'psnr_{s}']:.2f}" for s in STEPS)
                     + f" | {r['l1_bicubic_latent']:.3f} / {r['mse_bicubic_latent']:.3f}"
                     + f" | {r['l1_dfrm']:.3f} / {r['mse_dfrm']:.3f} |")
    lines += ["", f"Command: `{command}`", ""]
    return "\n".join(lines)


def main() -> int:
    from tadmcodec.bench.script_args import load_cpu_tadm, one_model_parser, photo_rows, write_results
    from tadmcodec.errors import TadmError

    ap = one_model_parser(__doc__.split("\n")[0], ROOT / "benchmarks/results/psnr_budget",
                          ROOT.parent / "shared/data/urban100")
    args = ap.parse_args()
    try:
        name, rescaler = load_cpu_tadm(args.model, args.threads)
        rows = photo_rows(args, lambda img: budget(rescaler, img, args.scale))
    except TadmError as exc:
        print(f"psnr_budget: {exc}", file=sys.stderr)
        return 1
    command = "python benchmarks/psnr_budget.py " + " ".join(sys.argv[1:])
    write_results(args.out, f"{name}-x{args.scale}", table(name, args.scale, rows, command),
                  {"model": name, "scale": args.scale, "command": command, "machine": platform.machine(),
                   "photos": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
