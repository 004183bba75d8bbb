"""Side-by-side crops at 100 %: the original, JPEG, AVIF and each model.

Metrics and sizes are those of the whole image; the crop only shows a detailed region at its
native pixels (no resampling), so that blur, ringing, tile seams, colour shifts and invented
texture are visible as they are. The first model's file sets the budget:

- JPEG gets the smallest file that is not smaller (JPEG never has the smaller budget; at
  these rates even quality 1 is often larger);
- AVIF, the best classic codec of the Urban100 benchmark at these rates, gets the largest file
  that is not larger, pre-shrunk 1×, 2× or 4× (whichever has the lowest LPIPS-Alex): the
  comparison of the quality bar, "no more bits than ours".
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from tadmcodec.bench import classic
from tadmcodec.bench.demo import DemoRow, jpeg_not_smaller, side_by_side
from tadmcodec.errors import InputError

CROP_METRICS: tuple[str, ...] = ("psnr", "lpips_alex", "dists")

CropRow = DemoRow
"""One coded version of one photo, with whole-image figures: the same row as `tadm demo`'s
(`method` is "jpeg", "avif" or a model name)."""


def detail_window(image: np.ndarray, size: int) -> tuple[int, int]:
    """(x, y) of the `size`×`size` window with the most gradient energy: where codecs differ.

    Searched on a grid of stride size/4; ties go to the top-left-most window, so the choice is
    deterministic.
    """
    h, w = image.shape[:2]
    if size > min(h, w):
        raise InputError(f"crop of {size} px does not fit a {w}x{h} image")
    g = image.astype(np.float64).mean(axis=2)  # float64: the integral image of a large photo is big
    energy = np.zeros_like(g)
    energy[:, 1:] += np.abs(np.diff(g, axis=1))
    energy[1:, :] += np.abs(np.diff(g, axis=0))
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    stride = max(1, size // 4)
    best, best_xy = -1.0, (0, 0)
    for y in range(0, h - size + 1, stride):
        for x in range(0, w - size + 1, stride):
            s = integral[y + size, x + size] - integral[y, x + size] - integral[y + size, x] + integral[y, x]
            if s > best:
                best, best_xy = float(s), (x, y)
    return best_xy


def compare(name: str, image: np.ndarray, codec, models: list[tuple[str, int]],
            crop: int, device: str = "cpu") -> tuple[list[CropRow], Image.Image]:
    """Code `image` with JPEG, AVIF and each (model, scale); whole-image metrics rows and one crop strip.

    Rows and panels go JPEG, AVIF (absent when even quality 0 exceeds the budget), then the models.
    """
    from tadmcodec.metrics.evaluation import Evaluator

    if not models:
        raise InputError("give at least one model")
    h, w = image.shape[:2]
    measure = Evaluator(image, metrics=CROP_METRICS, device=device)
    coded: list[tuple[str, str, int, np.ndarray, dict[str, float]]] = []  # method, label, bytes, pixels, metrics
    for model, scale in models:
        data = codec.encode(image, model=model, scale=scale)
        px = codec.decode(data).pixels
        coded.append((model, f"{model} x{scale}", len(data), px, measure(px)))
    budget = coded[0][2]
    # the pick needs LPIPS only; the winner is measured fully
    avif = classic.best_avif_within(image, budget, lambda px: measure(px, only=("lpips_alex",))["lpips_alex"])
    if avif is not None:
        label, c = avif
        coded.insert(0, ("avif", label, c.n_bytes, c.decoded, measure(c.decoded)))
    q, jpeg = jpeg_not_smaller(image, budget)
    jpeg_px = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    coded.insert(0, ("jpeg", f"JPEG q={q}", len(jpeg), jpeg_px, measure(jpeg_px)))
    x, y = detail_window(image, crop)
    rows = []
    panels = [(image[y:y + crop, x:x + crop], f"{name} original\ncrop at ({x}, {y})")]
    for method, label, n, px, v in coded:
        row = CropRow(name, method, label, n, 8.0 * n / (w * h), v["psnr"], v["lpips_alex"], v["dists"])
        rows.append(row)
        panels.append((px[y:y + crop, x:x + crop],
                       f"{label}\n{row.bpp:.4f} bpp, {row.psnr:.2f} dB\nLPIPS {row.lpips:.3f}, DISTS {row.dists:.3f}"))
    return rows, side_by_side([panels])


def markdown(rows: list[CropRow], pictures: dict[str, str]) -> str:
    """Table of the whole-image figures, with a link to each image's crop strip."""
    lines = ["| image | codec | bytes | bpp | PSNR (dB) | LPIPS-Alex | DISTS |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.image} | {r.label} | {r.n_bytes} | {r.bpp:.4f} | {r.psnr:.2f} | {r.lpips:.3f} | {r.dists:.3f} |")
    lines.append("")
    lines += [f"![{name}]({pic})" for name, pic in pictures.items()]
    return "\n".join(lines) + "\n"


def save_picture(picture: Image.Image, path: Path) -> None:
    """PNG written next to its final name first, so an interrupted run leaves no half file."""
    tmp = path.with_name(path.name + ".part")
    picture.save(tmp, format="PNG", optimize=True)
    tmp.replace(path)
