"""Cached latents for stages 1-3 (`tadmcodec.train.latent_cache`): windows of whole-photo latents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tadmcodec.tadm import backbone as bb
from tadmcodec.tadm.testing import micro_vae_config
from tadmcodec.train.data import PhotoCrops, to_model_range
from tadmcodec.train.latent_cache import LatentCrops, cache_key


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lc")
    rng = np.random.default_rng(1)
    for i, size in enumerate([(100, 75), (64, 90), (131, 70)]):  # sizes off the 8-pixel grid
        small = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(root / f"p{i}.png")
    torch.manual_seed(0)
    vae = bb.build_vae(micro_vae_config()).eval()
    return root, vae


def encoder(vae, calls: list | None = None):
    def encode(x: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append(tuple(x.shape))
        return vae.encode(x).latent_dist.mode()
    return encode


def test_a_crop_latent_is_the_window_of_the_whole_photo_latent(setup, tmp_path):
    root, vae = setup
    photos = PhotoCrops(root, crop=32, seed=3)
    lc = LatentCrops(photos, encoder(vae), cache_key(photos, vae), log=lambda _: None)
    wholes = []  # (array, its latent, flipped) for each photo and mirror image
    for img in lc.images:
        for flipped, arr in ((False, img), (True, img[:, ::-1])):
            x = to_model_range(torch.from_numpy(arr.copy()).permute(2, 0, 1)[None])
            with torch.no_grad():
                wholes.append((arr, vae.encode(x).latent_dist.mode()[0], flipped))
    flips = 0
    for i in range(40):
        patch, z = lc.sample(i)
        assert patch.shape == (32, 32, 3) and z.shape == (4, 4, 4)
        hits = [(full, y, x, flipped) for arr, full, flipped in wholes
                for y in range(0, arr.shape[0] - 31, 8) for x in range(0, arr.shape[1] - 31, 8)
                if np.array_equal(arr[y:y + 32, x:x + 32], patch)]
        assert hits, f"crop {i} is not on the 8-pixel grid of any photo"
        full, y, x, flipped = hits[0]
        assert torch.allclose(z, full[:, y // 8:y // 8 + 4, x // 8:x // 8 + 4], atol=1e-5)
        flips += flipped
    assert 5 < flips < 35  # both orientations are drawn


def test_the_stream_is_a_function_of_seed_and_index_and_batches_are_disjoint(setup):
    root, vae = setup
    a = LatentCrops(PhotoCrops(root, crop=32, seed=3), encoder(vae), "k", log=lambda _: None)
    b = LatentCrops(PhotoCrops(root, crop=32, seed=3), encoder(vae), "k", log=lambda _: None)
    xa, za = a.batch(5, 4)
    xb, zb = b.batch(5, 4)
    assert torch.equal(xa, xb) and torch.equal(za, zb)
    assert xa.shape == (4, 3, 32, 32) and xa.dtype == torch.uint8 and za.shape == (4, 4, 4, 4)
    x0, _ = a.batch(5, 4, rank=0, world=2)
    x1, _ = a.batch(5, 4, rank=1, world=2)
    assert torch.equal(x0[0], torch.from_numpy(np.ascontiguousarray(a.sample(40)[0])).permute(2, 0, 1))
    assert torch.equal(x1[0], torch.from_numpy(np.ascontiguousarray(a.sample(44)[0])).permute(2, 0, 1))


def test_the_cache_file_is_reused_and_rebuilt_when_the_key_changes(setup, tmp_path):
    root, vae = setup
    photos = PhotoCrops(root, crop=32, seed=0)
    key = cache_key(photos, vae)
    path = tmp_path / "latents.pt"
    calls: list = []
    first = LatentCrops(photos, encoder(vae, calls), key, path, log=lambda _: None)
    assert len(calls) == 2 * len(photos) and path.is_file()
    calls.clear()
    again = LatentCrops(photos, encoder(vae, calls), key, path, log=lambda _: None)
    assert calls == [] and torch.equal(again.batch(2, 3)[1], first.batch(2, 3)[1])
    # other encoder weights: another key, so the cache is rebuilt
    with torch.no_grad():
        vae.encoder.conv_in.weight.add_(0.01)
    try:
        key2 = cache_key(photos, vae)
        assert key2 != key
        LatentCrops(photos, encoder(vae, calls), key2, path, log=lambda _: None)
        assert len(calls) == 2 * len(photos)
    finally:
        with torch.no_grad():
            vae.encoder.conv_in.weight.sub_(0.01)
    # a torn file is rebuilt, not trusted
    path.write_bytes(b"not a checkpoint")
    calls.clear()
    LatentCrops(photos, encoder(vae, calls), key, path, log=lambda _: None)
    assert len(calls) == 2 * len(photos)
