"""What the LR back-projection does to a TADM model's PSNR, photo by photo.

`TadmConfig.lr_projection` back-projects the decode onto the LR image (tadmcodec/lr_projection.py).
This decodes each photo's `.tadm` LR image twice, with the step off and on
(`TadmRescaler.enable_lr_projection`), whatever the model's own setting, then the bicubic LR image
once with it on, and reports beside them:

    bicubic     the `bicubic` rescaler's round trip (the default bar's reference)
    lr_up       the model's own LR image upscaled with bicubic: what the projection imposes as the low band
    lr_fidelity PSNR of the model's LR image against the bicubic LR image (LR pixels)
    off / on    the codec's decode without and with the projection
    bicubic_lr  the codec's decode (projection on) of the bicubic LR image instead of the model's own:
                what the decode would give if the DFRM's LR image were the plain bicubic downscale

    python benchmarks/lr_projection.py --model tadm-tiny-x32 --scale 32 --threads 1

Writes <out>/<model>-x<scale>.md and .json (default out: benchmarks/results/lr_projection).
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COLUMNS = ("bicubic", "lr_up", "lr_fidelity", "off", "on", "bicubic_lr")
UPSCALES = ("lr_up", "off", "on", "bicubic_lr")  # the columns that are images, counted against bicubic


def _psnr_any(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 images of any size (`psnr` wants 32 px sides), 99 for identical ones."""
    from tadmcodec.metrics.psnr_ssim import psnr_unchecked

    return min(psnr_unchecked(a, b), 99.0)


def row(rescaler, img: np.ndarray, scale: int) -> dict[str, float]:
    from tadmcodec.metrics import psnr
    from tadmcodec.rescaler import BicubicRescaler

    h, w = img.shape[:2]
    bic = BicubicRescaler()
    b_lr = bic.downscale(img, scale)
    lr = rescaler.downscale(img, scale)
    out = {"bicubic": psnr(img, bic.upscale(b_lr, scale, (w, h))),
           "lr_up": psnr(img, bic.upscale(lr, scale, (w, h))),
           "lr_fidelity": _psnr_any(b_lr, lr)}
    own = rescaler.lr_projection
    try:
        for key, on, image in (("off", False, lr), ("on", True, lr), ("bicubic_lr", True, b_lr)):
            rescaler.enable_lr_projection(on)
            out[key] = psnr(img, rescaler.upscale(image, scale, (w, h)))
    finally:
        rescaler.enable_lr_projection(own)
    return out


def table(model: str, scale: int, own: bool, rows: dict[str, dict[str, float]], command: str) -> str:
    names = list(rows)
    mean = {k: float(np.mean([rows[n][k] for n in names])) for k in COLUMNS}
    above = {k: sum(rows[n][k] > rows[n]["bicubic"] for n in names) for k in UPSCALES}
    lines = [f"# LR back-projection: {model} x{scale}", "",
             f"{len(names)} photos, PSNR in dB against the original. The model was trained with the "
             f"projection {'on' if own else 'off'} (model.json lr_projection: {str(own).lower()}).", "",
             "| photo | bicubic | model's LR, bicubic up | LR vs bicubic LR | decode, projection off | "
             "decode, projection on | bicubic LR image decoded, projection on |", "|---|" + "---:|" * 6]
    for n, r in [*rows.items(), ("mean", mean)]:
        lines.append(f"| {n} | " + " | ".join(f"{r[k]:.2f}" for k in COLUMNS) + " |")
    lines += ["", f"Above bicubic: model's LR upscaled {above['lr_up']}, projection off {above['off']}, "
              f"projection on {above['on']}, the bicubic LR image decoded {above['bicubic_lr']} of {len(names)} photos.",
              "", f"Command: `{command}`", ""]
    return "\n".join(lines)


def main() -> int:
    from tadmcodec.bench.script_args import load_cpu_tadm, one_model_parser, photo_rows, write_results
    from tadmcodec.errors import TadmError

    ap = one_model_parser(__doc__.split("\n")[0], ROOT / "benchmarks/results/lr_projection",
                          ROOT.parent / "shared/data/urban100")
    args = ap.parse_args()
    try:
        name, rescaler = load_cpu_tadm(args.model, args.threads)
        own = rescaler.lr_projection
        rows = photo_rows(args, lambda img: row(rescaler, img, args.scale))
    except TadmError as exc:
        print(f"lr_projection: {exc}", file=sys.stderr)
        return 1
    command = "python benchmarks/lr_projection.py " + " ".join(sys.argv[1:])
    write_results(args.out, f"{name}-x{args.scale}", table(name, args.scale, own, rows, command),
                  {"model": name, "scale": args.scale, "trained_with_projection": own, "command": command,
                   "machine": platform.machine(), "photos": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
