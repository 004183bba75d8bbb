"""`tadm demo`: our default model against JPEG on photos that ship inside scikit-image.

It needs no input and no download of pictures: the sample photos are files in
the scikit-image wheel (`skimage/data/*.png`, not the pooch-fetched extras).
For each photo it encodes with the default model, then picks the JPEG quality
whose file is the closest in size *not below* ours (so JPEG never gets fewer
bytes than we do; at extreme scales even quality 1 may be larger, and the
table says so) and the best AVIF file *within* ours (the best setting at 1x,
2x and 4x pre-shrink, the lowest LPIPS-Alex of the three: what a user would
pick instead; absent when even the smallest is larger), and measures them all
against the original.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tadmcodec import registry
from tadmcodec.bench.classic import best_avif_within
from tadmcodec.codec import Codec, check_scale
from tadmcodec.errors import InputError, TadmError

SAMPLES: tuple[tuple[str, str], ...] = (
    ("astronaut", "astronaut.png"),
    ("coffee", "coffee.png"),
    ("chelsea", "chelsea.png"),
    ("rocket", "rocket.jpg"),
    ("motorcycle", "motorcycle_left.png"),
)
"""Colour photographs shipped in the scikit-image wheel (name, file in skimage/data)."""

DEMO_METRICS: tuple[str, ...] = ("psnr", "lpips_alex", "dists")


@dataclass(frozen=True)
class DemoRow:
    image: str
    method: str  # "ours" | "jpeg" | "avif"
    label: str
    n_bytes: int
    bpp: float
    psnr: float
    lpips: float
    dists: float


def sample_photos(count: int, max_size: int | None) -> list[tuple[str, np.ndarray]]:
    """The first `count` bundled photos as uint8 RGB, shrunk (Lanczos) to `max_size` on the long side."""
    if not 1 <= count <= len(SAMPLES):
        raise InputError(f"--images must be 1..{len(SAMPLES)}")
    if max_size is not None and max_size < 64:
        raise InputError("--max-size must be at least 64 pixels")
    try:
        folder = resources.files("skimage.data")
    except ModuleNotFoundError:
        raise TadmError("tadm demo needs scikit-image: pip install 'tadmcodec[bench]' (or run bin/setup)") from None
    out = []
    for name, file in SAMPLES[:count]:
        ref = folder / file
        if not ref.is_file():
            raise TadmError(f"scikit-image has no bundled {file}: reinstall scikit-image")
        with ref.open("rb") as f:
            img = Image.open(io.BytesIO(f.read())).convert("RGB")
        if max_size is not None and max(img.size) > max_size:
            k = max_size / max(img.size)
            img = img.resize((max(32, round(img.width * k)), max(32, round(img.height * k))), Image.Resampling.LANCZOS)
        out.append((name, np.asarray(img)))
    return out


def jpeg_not_smaller(image: np.ndarray, n_bytes: int) -> tuple[int, bytes]:
    """(quality, file) of the smallest optimised JPEG at least `n_bytes` long, else the largest (q=95).

    JPEG size is not strictly monotone in quality, so every quality is tried.
    """
    best: tuple[int, bytes] | None = None
    for q in range(1, 96):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=q, optimize=True)
        data = buf.getvalue()
        if len(data) >= n_bytes and (best is None or len(data) < len(best[1])):
            best = (q, data)
    if best is None:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=95, optimize=True)
        best = (95, buf.getvalue())
    return best


def run_demo(
    out: Path, count: int = 3, max_size: int | None = None, model: str | None = None,
    scale: int | None = None, device: str = "cpu",
) -> tuple[list[DemoRow], Path]:
    """Code the sample photos with the model, JPEG and AVIF; write the files and the side-by-side picture."""
    from tadmcodec.metrics.evaluation import Evaluator

    spec = registry.get(model) if model else registry.default_model(scale)
    ok, why = spec.availability()
    if not ok:
        raise TadmError(f"model {spec.name} is not available: {why}")
    scale = check_scale(spec, scale)
    codec = Codec(device=device)
    photos = sample_photos(count, max_size)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[DemoRow] = []
    panels: list[list[tuple[np.ndarray, str]]] = []
    for name, px in photos:
        h, w = px.shape[:2]
        data = codec.encode(px, model=spec.name, scale=scale)
        ours = codec.decode(data).pixels
        q, jpeg = jpeg_not_smaller(px, len(data))
        jpeg_px = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        (out / f"{name}.tadm").write_bytes(data)
        (out / f"{name}.jpg").write_bytes(jpeg)
        Image.fromarray(ours).save(out / f"{name}.decoded.png")
        ours_label = f"{spec.name} x{scale}"
        measure = Evaluator(px, metrics=DEMO_METRICS, device=device)  # the original's features once for all
        coded = [("ours", ours_label, len(data), ours), ("jpeg", f"JPEG q={q}", len(jpeg), jpeg_px)]
        avif = best_avif_within(px, len(data), lambda im: measure(im, only=("lpips_alex",))["lpips_alex"])
        if avif is not None:
            label, c = avif
            coded.append(("avif", label, c.n_bytes, c.decoded))
        shown = {}  # method -> (pixels, caption)
        for method, label, n, test in coded:
            v = measure(test)
            row = DemoRow(name, method, label, n, 8.0 * n / (w * h), v["psnr"], v["lpips_alex"], v["dists"])
            rows.append(row)
            shown[method] = (test, f"{label}: {row.bpp:.3f} bpp, LPIPS {row.lpips:.3f}")
        panels.append([(px, f"{name} original {w}x{h}"),
                       *(shown[m] for m in ("jpeg", "avif", "ours") if m in shown)])
    picture = out / "side_by_side.png"
    side_by_side(panels).save(picture)
    return rows, picture


def side_by_side(rows: list[list[tuple[np.ndarray, str]]]) -> Image.Image:
    """One row of captioned panels per entry of `rows` (the demo: original | JPEG | AVIF | ours).

    Captions may have several lines ("\\n"); each row is as tall as its tallest panel and caption.
    """
    font = _font(14)
    gap = 6
    widths = [sum(img.shape[1] for img, _ in row) + (len(row) + 1) * gap for row in rows]
    caps = [8 + 16 * max(text.count("\n") + 1 for _, text in row) for row in rows]
    heights = [max(img.shape[0] for img, _ in row) + cap + gap for row, cap in zip(rows, caps)]
    canvas = Image.new("RGB", (max(widths), sum(heights) + gap), "white")
    draw = ImageDraw.Draw(canvas)
    y = gap
    for row, height in zip(rows, heights):
        x = gap
        for img, text in row:
            canvas.paste(Image.fromarray(img), (x, y))
            draw.multiline_text((x + 2, y + img.shape[0] + 4), text, fill="black", font=font, spacing=2)
            x += img.shape[1] + gap
        y += height
    return canvas


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def table(rows: list[DemoRow]) -> str:
    """Plain-text table for the terminal."""
    head = f"{'image':<11} {'codec':<22} {'bytes':>7} {'bpp':>7} {'PSNR':>6} {'LPIPS':>6} {'DISTS':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.image:<11} {r.label:<22} {r.n_bytes:>7} {r.bpp:>7.4f} {r.psnr:>6.2f} {r.lpips:>6.3f} {r.dists:>6.3f}"
        )
    return "\n".join(lines)
