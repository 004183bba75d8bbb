"""Training crops with their VAE latents cut from latents of whole photos, encoded once.

In stages 1-3 the VAE encoder is frozen, so encoding every training crop at every step (a
third of a stage-1 step on the 2-core CPU) teaches nothing new. Instead each photo, and its
mirror image, is encoded once, whole, and a crop's latent is the matching window of the photo's
latent. Crops start on the latent grid (multiples of 8 pixels) so that pixels and latent line up.

The windows are not what encoding the crop alone would give: the encoder's GroupNorm and its
borders see the whole photo. That is what the codec does at inference (`tadm encode` encodes
photos up to a megapixel whole), so the model trains on the latents it will be given.

The stream stays a pure function of (seed, sample index), as `PhotoCrops`'s, so `--resume`
continues it exactly. The latents are saved beside the run's checkpoints with a key over the
VAE weights and the photos, and rebuilt when either changes.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tadmcodec.train.data import PhotoCrops, to_model_range

FACTOR = 8
"""Pixels per latent pixel of the VAEs this project uses (SD's and the tiny backbone's)."""

CACHE_VERSION = 1


def cache_key(photos: PhotoCrops, vae: torch.nn.Module) -> str:
    """SHA-256 over the VAE encoder's weights, the photos' names and pixels' shapes, and the format."""
    h = hashlib.sha256(f"v{CACHE_VERSION} f{FACTOR} crop{photos.crop}".encode())
    for p, img in zip(photos.paths, photos.images):
        h.update(f"{p.name}:{img.shape}:{p.stat().st_size}".encode())
    for name, t in sorted(vae.state_dict().items()):
        if name.startswith(("encoder.", "quant_conv.")):
            h.update(name.encode())
            h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


class LatentCrops:
    """`crop`×`crop` patches with random mirror flips, and the latents of those patches.

    `encode` maps a (1, 3, H, W) float batch in [-1, 1] to its (1, C, H/8, W/8) latent (the VAE
    posterior mode, as `TadmModel.encode_latent`). `cache_file`, when given, keeps the latents
    between runs.
    """

    def __init__(self, photos: PhotoCrops, encode: Callable[[torch.Tensor], torch.Tensor],
                 key: str, cache_file: Path | None = None, log: Callable[[str], None] = print) -> None:
        if photos.crop % FACTOR:
            raise ValueError(f"crop {photos.crop} is not a multiple of {FACTOR}")
        self.photos = photos
        self.crop, self.seed = photos.crop, photos.seed
        # each photo cut to the latent grid, top-left anchored
        self.images = [img[: img.shape[0] // FACTOR * FACTOR, : img.shape[1] // FACTOR * FACTOR]
                       for img in photos.images]
        self.latents = self._load(cache_file, key) if cache_file is not None else None
        if self.latents is None:
            t0 = time.perf_counter()
            self.latents = [self._encode_both(encode, img) for img in self.images]
            log(f"encoded {len(self.images)} photos and their mirror images once "
                f"in {time.perf_counter() - t0:.0f} s (latent cache)")
            if cache_file is not None:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_file.with_suffix(".tmp")
                torch.save({"key": key, "latents": self.latents}, tmp)
                tmp.replace(cache_file)
        else:
            log(f"latent cache: {len(self.latents)} photos from {cache_file}")

    def _load(self, path: Path, key: str) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a torn or foreign file: rebuild it
            return None
        if state.get("key") != key or len(state.get("latents", ())) != len(self.images):
            return None
        return state["latents"]

    @staticmethod
    def _encode_both(encode: Callable[[torch.Tensor], torch.Tensor],
                     img: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent of the photo, latent of its mirror image), each (C, h/8, w/8) float32."""
        out = []
        for arr in (img, img[:, ::-1]):
            x = to_model_range(torch.from_numpy(arr.copy()).permute(2, 0, 1)[None])
            with torch.no_grad():
                out.append(encode(x)[0].float().cpu().contiguous())
        return out[0], out[1]

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int) -> tuple[np.ndarray, torch.Tensor]:
        """Crop number `index`: ((crop, crop, 3) uint8, (C, crop/8, crop/8) latent)."""
        rng = np.random.default_rng((self.seed, index))
        k = int(rng.integers(len(self.images)))
        img = self.images[k]
        h, w = img.shape[:2]
        y = FACTOR * int(rng.integers((h - self.crop) // FACTOR + 1))
        x = FACTOR * int(rng.integers((w - self.crop) // FACTOR + 1))
        flip = rng.random() < 0.5
        if flip:
            img = img[:, ::-1]
        z = self.latents[k][1 if flip else 0]
        c, f = self.crop, FACTOR
        return img[y : y + c, x : x + c], z[:, y // f : (y + c) // f, x // f : (x + c) // f]

    def batch(self, step: int, batch_size: int, rank: int = 0,
              world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 (B, 3, crop, crop), float32 (B, C, crop/8, crop/8)) for process `rank` at `step`.

        Indices are disjoint across ranks and steps, as in `PhotoCrops.batch`.
        """
        start = (step * world + rank) * batch_size
        pairs = [self.sample(start + j) for j in range(batch_size)]
        x = torch.from_numpy(np.stack([p for p, _ in pairs])).permute(0, 3, 1, 2).contiguous()
        return x, torch.stack([z for _, z in pairs])
