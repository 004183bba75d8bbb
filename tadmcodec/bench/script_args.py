"""Argument handling and the per-photo loop shared by the scripts in benchmarks/ (crops, quality bar,
PSNR budget, hatching, LR projection)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from tadmcodec import registry
from tadmcodec.errors import InputError

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")


def models_and_dirs(items: list[str]) -> tuple[list[str], dict[str, Path]]:
    """`NAME[=DIR]` items -> model names (first occurrence order) and the weights folders given."""
    names: list[str] = []
    dirs: dict[str, Path] = {}
    for item in items:
        name, _, folder = item.partition("=")
        registry.get(name)  # one-line error for an unknown id
        if folder:
            if not Path(folder).is_dir():
                raise InputError(f"weights folder {folder} for {name} does not exist")
            dirs[name] = Path(folder)
        if name not in names:
            names.append(name)
    return names, dirs


def named_photos(folder: Path, names: list[str] | None = None, limit: int | None = None) -> list[tuple[str, Path]]:
    """(stem, path) of the photos in `folder`: the `names` given, in that order, else all sorted."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder (the Urban100 photos live in ../shared/data/urban100)")
    files = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES}
    if names:
        missing = [n for n in names if n not in files]
        if missing:
            raise InputError(f"no photo named {', '.join(missing)} in {folder}")
        chosen = [(n, files[n]) for n in names]
    else:
        chosen = sorted(files.items())
    if not chosen:
        raise InputError(f"no photos in {folder}")
    return chosen[:limit] if limit else chosen


def one_model_parser(description: str, default_out: Path, default_images: Path) -> argparse.ArgumentParser:
    """The options of the scripts that study one TADM model on some photos at one scale."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", required=True, metavar="NAME[=DIR]")
    ap.add_argument("--scale", type=int, required=True, choices=(8, 16, 32))
    ap.add_argument("--images", type=Path, default=default_images)
    ap.add_argument("--names", nargs="+")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", type=Path, default=default_out)
    return ap


def load_cpu_tadm(item: str, threads: int | None = None):
    """(name, TadmRescaler on the CPU) for a `NAME[=DIR]` item; sets torch's threads first if given."""
    import torch

    from tadmcodec.tadm.loader import load_tadm

    if threads:
        torch.set_num_threads(threads)
    (name,), dirs = models_and_dirs([item])
    spec = registry.get(name)
    if name in dirs:
        spec = registry.with_weights_dir(spec, dirs[name])
    return name, load_tadm(spec, device="cpu")


def photo_rows(args: argparse.Namespace, row: Callable[[Any], dict[str, float]]) -> dict[str, dict[str, float]]:
    """`row(image)` for each photo `args` names, cropped to a multiple of `args.scale` (uint8 RGB);
    one progress line per photo on stderr."""
    import numpy as np
    from PIL import Image

    rows = {}
    for stem, path in named_photos(args.images, args.names, args.limit):
        img = np.asarray(Image.open(path).convert("RGB"))
        h, w = (img.shape[0] // args.scale) * args.scale, (img.shape[1] // args.scale) * args.scale
        rows[stem] = row(np.ascontiguousarray(img[:h, :w]))
        print(stem, json.dumps({k: round(v, 4) for k, v in rows[stem].items()}), file=sys.stderr, flush=True)
    return rows


def write_results(out: Path, stem: str, markdown: str, doc: dict[str, Any]) -> None:
    """<out>/<stem>.md and .json, and the table on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(markdown)
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown)
