"""Where a TADM model's repeated-pattern texture (hatching, lattices) comes from, measured.

Earlier CPU models covered flat areas with a fine diagonal hatching after the one-step UNet
update. This decodes each photo's LR image along four paths that share everything else
(tiling, VAE decoder) and measures how periodic each path's error is:

    bicubic   the `bicubic` rescaler (reference: no network)
    dfrm      D(Gd(F^-1(y))): no enhancement step at all
    fixed     the UNet step through the fixed scheduler branch only (refiner off)
    codec     the whole decode, fixed + learned branch, as `tadm decode` does it

Score ("peakiness"): the error e = decoded - original (luma) is cut into 128x128 windows; in each,
the Hann-windowed spectrum |FFT(e)| over periods of 2 to 32 pixels is whitened by the photo's own
spectrum and divided, ring by ring (bins of one frequency radius), by the ring's median; the score
is the mean of the 16 largest of those ratios (`peakiness`). Blur and noise leave each ring flat
(low score), even on periodic facades; a pattern the decoder adds where the photo has none lifts a
few bins far above their ring (high score). Each photo's score is the median over its windows that
are not flat in the original. The path whose
score jumps is where the pattern enters. PSNR is listed beside it.

    python benchmarks/hatching.py --model tadm-tiny-x32=runs/x32-export --scale 32 --limit 8

Writes <out>/<model>-x<scale>.md and .json (default out: benchmarks/results/hatching), and a
256x256 crop of each path for the first photo (`<model>-x<scale>-<photo>-<path>.png`).
"""

from __future__ import annotations

import json
import platform
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PATHS = ("bicubic", "dfrm", "fixed", "codec")
WINDOW = 128
TOP = 16


def luma(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def rings(n: int = WINDOW, min_period: float = 2.0, max_period: float = 32.0) -> list[np.ndarray]:
    """Flat indices of the spectrum bins (unshifted FFT layout) of each integer frequency radius
    whose period lies in [min_period, max_period] pixels."""
    k = np.fft.fftfreq(n) * n
    r = np.rint(np.hypot(*np.meshgrid(k, k, indexing="ij"))).astype(int).ravel()
    return [np.flatnonzero(r == radius) for radius in range(int(np.ceil(n / max_period)), int(n / min_period) + 1)]


def peakiness(error: np.ndarray, original: np.ndarray, min_std: float = 4.0) -> float:
    """Median over textured windows of the mean of the 16 largest whitened, ring-normalised error bins.

    Whitened: each error magnitude |E(f)| is divided by the photo's own |X(f)| (plus a tenth of its
    ring's median, so empty bins do not blow up). An error that only misses the photo's detail, as
    blur does (E = -X at high frequencies), whitens to a flat spectrum even where the photo is
    itself periodic (Urban100's facades); a pattern the decoder adds where the photo has none
    stands out. Ring-normalised: divided by the median of its ring (the bins at the same frequency
    radius), which takes out the fall-off with frequency.
    """
    hann = np.outer(np.hanning(WINDOW), np.hanning(WINDOW))
    band = rings()
    scores = []
    h, w = error.shape
    for y in range(0, h - WINDOW + 1, WINDOW):
        for x in range(0, w - WINDOW + 1, WINDOW):
            o = original[y:y + WINDOW, x:x + WINDOW]
            if o.std() < min_std:
                continue  # a flat window of the photo: nothing to judge the error against
            e = error[y:y + WINDOW, x:x + WINDOW]
            mag = np.abs(np.fft.fft2((e - e.mean()) * hann)).ravel()
            ref = np.abs(np.fft.fft2((o - o.mean()) * hann)).ravel()
            normed = []
            for idx in band:
                white = mag[idx] / (ref[idx] + 0.1 * float(np.median(ref[idx])) + 1e-9)
                normed.append(white / max(float(np.median(white)), 1e-12))
            scores.append(float(np.sort(np.concatenate(normed))[-TOP:].mean()))
    return float(np.median(scores)) if scores else float("nan")


@contextmanager
def path_of(model, name: str):
    """Switch the loaded model to one decoding path for the duration (restored after)."""
    import torch

    if name == "dfrm":
        enhance = model.enhance
        model.enhance = lambda z: (z, torch.zeros(z.shape[0], device=z.device))
        try:
            yield
        finally:
            model.enhance = enhance
    elif name == "fixed":
        class NoRefiner(torch.nn.Module):
            def forward(self, z, out, t):
                return torch.zeros_like(z)

        refiner = model.scheduler.refiner
        model.scheduler.refiner = NoRefiner()
        try:
            yield
        finally:
            model.scheduler.refiner = refiner
    else:
        yield


def main() -> int:
    from tadmcodec.bench.script_args import load_cpu_tadm, named_photos, one_model_parser
    from tadmcodec.errors import TadmError

    ap = one_model_parser(__doc__.split("\n")[0], ROOT / "benchmarks/results/hatching",
                          ROOT.parent / "shared/data/urban100")
    args = ap.parse_args()
    try:
        from PIL import Image

        from tadmcodec.metrics import psnr
        from tadmcodec.rescaler import BicubicRescaler

        name, rescaler = load_cpu_tadm(args.model, args.threads)
        photos = named_photos(args.images, args.names, args.limit)
        rows: dict[str, dict[str, float]] = {}
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"{name}-x{args.scale}"
        bic = BicubicRescaler()
        for i, (photo, path) in enumerate(photos):
            img = np.asarray(Image.open(path).convert("RGB"))
            h, w = img.shape[:2]
            lr = rescaler.downscale(img, args.scale)
            decoded = {"bicubic": bic.upscale(bic.downscale(img, args.scale), args.scale, (w, h))}
            for p in PATHS[1:]:
                with path_of(rescaler.model, p):
                    decoded[p] = rescaler.upscale(lr, args.scale, (w, h))
            y0 = luma(img)
            rows[photo] = {}
            for p in PATHS:
                rows[photo][f"peak_{p}"] = peakiness(luma(decoded[p]) - y0, y0)
                rows[photo][f"psnr_{p}"] = psnr(img, decoded[p])
            if i == 0:  # a crop of each path at 100 %, from the photo's centre
                cy, cx = max(0, h // 2 - 128), max(0, w // 2 - 128)
                for p in ("original", *PATHS):
                    px = img if p == "original" else decoded[p]
                    Image.fromarray(px[cy:cy + 256, cx:cx + 256]).save(args.out / f"{stem}-{photo}-{p}.png")
            print(photo, json.dumps({k: round(v, 3) for k, v in rows[photo].items()}), file=sys.stderr, flush=True)
    except TadmError as exc:
        print(f"hatching: {exc}", file=sys.stderr)
        return 1
    command = "python benchmarks/hatching.py " + " ".join(sys.argv[1:])
    names = list(rows)
    mean = {k: float(np.nanmean([rows[n][k] for n in names])) for k in rows[names[0]]}
    lines = [f"# Repeated-pattern score per decoding path: {name} x{args.scale}", "",
             f"{len(names)} photos. Peakiness of the error spectrum (periods 2-32 px; higher = more periodic), "
             "PSNR in dB. Paths: bicubic, DFRM alone, UNet step with the fixed branch only, the whole codec.", "",
             "| photo | " + " | ".join(f"peak {p}" for p in PATHS) + " | " + " | ".join(f"PSNR {p}" for p in PATHS)
             + " |", "|---|" + "---:|" * (2 * len(PATHS))]
    for n, r in [*rows.items(), ("mean", mean)]:
        lines.append(f"| {n} | " + " | ".join(f"{r[f'peak_{p}']:.2f}" for p in PATHS) + " | "
                     + " | ".join(f"{r[f'psnr_{p}']:.2f}" for p in PATHS) + " |")
    lines += ["", f"Command: `{command}`", ""]
    text = "\n".join(lines)
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"model": name, "scale": args.scale, "command": command, "machine": platform.machine(), "photos": rows},
        indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
