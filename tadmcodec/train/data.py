"""Training photos: deterministic random crops from a folder, and a packer for the GPU machine.

Crops are a pure function of (seed, sample index): sample i of a run is the same crop
whatever the number of workers or GPUs, and a resumed run continues the exact data stream
from its step without saving any data-loader state. Photos are decoded once and kept in
memory as uint8 (400 photos of 512×~800 ≈ 0.5 GB), which keeps a GPU fed without workers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from tadmcodec.errors import InputError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
FORBIDDEN_PARTS = ("urban100",)
"""Folders that hold benchmark images: training on them would invalidate every evaluation."""


def list_photos(folder: str | Path) -> list[Path]:
    """Sorted photo paths in `folder`; refuses benchmark folders and empty ones."""
    d = Path(folder)
    if any(part.lower() in FORBIDDEN_PARTS for part in d.resolve().parts):
        raise InputError(f"refusing to train on {d}: it is a benchmark set")
    if not d.is_dir():
        raise InputError(f"training folder {d} does not exist")
    photos = sorted(p for p in d.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        raise InputError(f"no photos ({', '.join(PHOTO_SUFFIXES)}) in {d}")
    return photos


def load_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8, EXIF-rotated, alpha dropped."""
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except OSError as exc:
        raise InputError(f"cannot read training photo {path}: {exc}") from None


class PhotoCrops:
    """Random `crop`×`crop` patches with random horizontal flips from a folder of photos.

    `sample(i)` is deterministic in (seed, i). Photos smaller than the crop are upscaled
    (bicubic) just enough to fit, never padded: padding would teach the VAE fake borders.
    """

    def __init__(self, folder: str | Path, crop: int = 256, seed: int = 0,
                 limit: int | None = None) -> None:
        if crop < 8 or crop % 8:
            raise InputError(f"crop size must be a positive multiple of 8, got {crop}")
        self.paths = list_photos(folder)[:limit]
        self.crop = crop
        self.seed = seed
        self.images = [self._fit(load_rgb(p)) for p in self.paths]

    def _fit(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        if min(h, w) >= self.crop:
            return img
        f = self.crop / min(h, w)
        size = (max(self.crop, round(w * f)), max(self.crop, round(h * f)))
        return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BICUBIC))

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int) -> np.ndarray:
        """Crop number `index` of the stream: (crop, crop, 3) uint8."""
        rng = np.random.default_rng((self.seed, index))
        img = self.images[int(rng.integers(len(self.images)))]
        h, w = img.shape[:2]
        y = int(rng.integers(h - self.crop + 1))
        x = int(rng.integers(w - self.crop + 1))
        patch = img[y : y + self.crop, x : x + self.crop]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        return patch

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        """The uint8 batch (B, 3, crop, crop) that process `rank` of `world` trains on at `step`.

        Sample indices are disjoint across ranks and steps, so N GPUs see N× the data per step.
        """
        start = (step * world + rank) * batch_size
        arr = np.stack([self.sample(start + j) for j in range(batch_size)])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def to_model_range(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [-1, 1], the range SD's VAE works in."""
    return batch.float().div_(127.5).sub_(1.0)


def pack_photos(src: str | Path, dst: str | Path, short_side: int = 512, quality: int = 90) -> tuple[int, int]:
    """Write a compact JPEG copy of a photo folder (for carrying to the GPU machine).

    Downscales (Lanczos) only photos whose short side exceeds `short_side`; 4:4:4 chroma so
    colour edges survive. Returns (photos written, bytes written).
    """
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    paths = list_photos(src)
    for p in paths:
        img = Image.fromarray(load_rgb(p))
        w, h = img.size
        if min(w, h) > short_side:
            f = short_side / min(w, h)
            img = img.resize((round(w * f), round(h * f)), Image.Resampling.LANCZOS)
        target = out / (p.stem + ".jpg")
        img.save(target, quality=quality, subsampling=0)
        total += target.stat().st_size
    return len(paths), total
