"""Tiled inference: latent tiles (Algorithm 1), exact DFRM conv tiles, tiled VAE with shared GroupNorm stats."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tadmcodec.tadm.blocks import receptive_radius
from tadmcodec.tadm.pipeline import TadmRescaler
from tadmcodec.tadm.testing import MICRO_DFRM, make_random_model
from tadmcodec.tadm.tiling import (
    GaussianMerger, GroupNormStats, VaeTiler, _axis_tiles, latent_tiles, pad_latent, tile_starts,
    tiled_conv, to_uint8_image,
)


@pytest.fixture(scope="module")
def model():
    m = make_random_model(16, seed=1)
    m.merge_lora()
    return m.eval().requires_grad_(False)


def smooth(shape: tuple[int, ...], seed: int = 0, cells: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(*shape[:2], cells, cells, generator=g), size=shape[2:], mode="bicubic")


def test_tile_positions_cover_everything() -> None:
    assert tile_starts(96, 96, 64) == [0]
    assert tile_starts(200, 96, 64) == [0, 64, 104]
    for n in (97, 128, 161, 300):
        starts = tile_starts(n, 96, 64)
        covered = np.zeros(n, bool)
        for s in starts:
            covered[s:s + 96] = True
            assert 0 <= s <= n - 96
        assert covered.all() and all(b - a <= 64 for a, b in zip(starts, starts[1:]))
    th, tw, pos = latent_tiles(40, 300, 96, 64)
    assert (th, tw) == (40, 96) and [x for _, x in pos] == [0, 64, 128, 192, 204]


def test_axis_tiles_partition_of_unity() -> None:
    for n, core, halo, blend, sub in ((100, 32, 8, 4, 1), (37, 8, 4, 2, 8), (64, 64, 16, 8, 1)):
        total = np.zeros(n * sub)
        for c0, c1, a0, a1, lo, w in _axis_tiles(n, core, halo, blend, sub):
            assert a0 <= lo and lo * sub + len(w) <= a1 * sub  # weights only where the tile has input
            total[lo * sub:lo * sub + len(w)] += w
        assert np.allclose(total, 1.0, atol=1e-6)


def test_gaussian_merge_keeps_constants_and_identity() -> None:
    z = torch.randn(1, 4, 150, 170)
    th, tw, pos = latent_tiles(150, 170, 96, 64)
    for field in (torch.full_like(z, 0.37), z):
        merger = GaussianMerger(tuple(z.shape), th, tw, 0.1, z.device)
        for y, x in pos:
            merger.add(y, x, field[:, :, y:y + th, x:x + tw], 42.0)
        out, tmap = merger.result()
        assert torch.allclose(out, field, atol=1e-5)
        assert torch.allclose(tmap, torch.full_like(tmap, 42.0), atol=1e-4)


def test_pipeline_latent_tiling_is_a_pure_merge(model, monkeypatch) -> None:
    """With a position-independent step, Algorithm 1's tiling must be invisible; t per tile shows in the map."""
    r = TadmRescaler(model)
    calls = []

    def fake_enhance(z):
        calls.append(z.shape)
        t = z.mean(dim=(1, 2, 3)) * 0 + torch.arange(len(z), dtype=torch.float32) + 10
        return 2 * z + 1, t

    monkeypatch.setattr(model, "enhance", fake_enhance)
    z = torch.randn(1, 4, 151, 201)  # odd sizes: padded to the UNet multiple, then cropped
    z0, tmap = r._enhance(z)
    assert z0.shape == z.shape and tmap.shape == (151, 201)
    assert torch.allclose(z0, 2 * z + 1, atol=1e-5)
    assert all(s[-2:] == (96, 96) for s in calls) and max(s[0] for s in calls) <= model.config.tiling.tile_batch
    assert tmap.min() >= 10 - 1e-4 and tmap.max() > tmap.min() + 1  # several tiles, several time-steps
    const = torch.full((1, 4, 151, 201), -0.25)
    z0, _ = r._enhance(const)
    assert torch.allclose(z0, torch.full_like(z0, 0.5), atol=1e-5)  # a constant latent stays constant


def test_pad_latent() -> None:
    z = torch.randn(1, 4, 5, 7)
    p = pad_latent(z, 4)
    assert p.shape == (1, 4, 8, 8) and torch.equal(p[..., :5, :7], z)
    tiny = pad_latent(torch.randn(1, 4, 1, 2), 8)  # too small to reflect: replicate
    assert tiny.shape == (1, 4, 8, 8)


def test_dfrm_conv_tiles_are_exact(model) -> None:
    d = model.dfrm
    s = model.config.scale
    h, w = 13, 11  # LR cells
    img = torch.rand(1, 3, h * s, w * s) * 2 - 1
    lat = torch.randn(1, 4, h * s // 8, w * s // 8)
    halo = receptive_radius(d.down_module) + receptive_radius(d.latent_module) + receptive_radius(d.fusing_module)
    with torch.no_grad():
        ref = d.encode_features(img, lat)
        tiled = tiled_conv(d.encode_features, [(img, s), (lat, s // 8)], (h, w), 1, 3, halo)
        assert torch.allclose(tiled, ref, atol=1e-5)
        ref_gd = d.decode_features(ref)
        tiled_gd = tiled_conv(d.decode_features, [(ref, 1)], (h, w), s // 8, 2, receptive_radius(d.final_module))
        assert torch.allclose(tiled_gd, ref_gd, atol=1e-5)


def test_gd_with_a_tail_tiles_exactly_in_the_pipeline() -> None:
    """The tail runs at the latent size; the pipeline's Gd halo must cover it too."""
    m = make_random_model(32, seed=3, dfrm=dataclasses.replace(MICRO_DFRM, tail_blocks=3, tail_width=8))
    m.merge_lora()
    m = m.eval().requires_grad_(False)
    with torch.no_grad():  # the tail is zero at start: give it weights so it matters
        for p in m.dfrm.tail_module.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    r = TadmRescaler(m)
    assert r._gd_halo == receptive_radius(m.dfrm.final_module) + receptive_radius(m.dfrm.tail_module)
    z_lr = torch.randn(1, 3, 13, 11)
    with torch.no_grad():
        ref = m.dfrm.decode_features(z_lr)
        tiled = tiled_conv(m.dfrm.decode_features, [(z_lr, 1)], (13, 11), 4, 2, r._gd_halo)
        loose = tiled_conv(m.dfrm.decode_features, [(z_lr, 1)], (13, 11), 4, 2,
                           receptive_radius(m.dfrm.final_module))
    assert torch.allclose(tiled, ref, atol=1e-5)
    assert not torch.allclose(loose, ref, atol=1e-5)  # the final module's halo alone is too small


def test_group_norm_stats_of_one_whole_sample_are_exact(model) -> None:
    z = smooth((1, 4, 12, 12))
    with torch.no_grad():
        ref = model.decode_latent(z)
        stats = GroupNormStats()
        stats.estimate(model.vae, model.decode_latent, [(lambda: z, (0.0, 1.0, 0.0, 1.0))])
        with stats.applying(model.vae):
            again = model.decode_latent(z)
    assert torch.allclose(again, ref, atol=1e-4)


def _tiler(model, **kw) -> VaeTiler:
    return VaeTiler(model.vae, model.encode_latent, model.decode_latent, **kw)


def test_vae_decode_one_tile_equals_untiled(model) -> None:
    z = smooth((1, 4, 20, 28))
    with torch.no_grad():
        ref = to_uint8_image(model.decode_latent(z))
        out = _tiler(model, decode_tile=16, decode_halo=6).decode(z)  # 28 <= 16 + 2 * 6
    assert np.array_equal(out, ref)


def test_vae_decode_tiles_cannot_be_told_apart(model) -> None:
    z = smooth((1, 4, 40, 40))
    with torch.no_grad():
        ref = to_uint8_image(model.decode_latent(z)).astype(np.float64)
        out = _tiler(model, decode_tile=12, decode_halo=8, stats_grid=4).decode(z).astype(np.float64)
    diff = out - ref
    assert np.abs(diff).mean() < 1.0  # shared statistics: no colour shift between tiles
    jumps = np.abs(np.diff(diff, axis=1)).mean(axis=(0, 2))
    seams = [c0 * 8 - 1 for c0, *_ in _axis_tiles(40, 12, 8, 4, 8)[1:]]
    assert max(jumps[s] for s in seams) <= 3 * jumps.mean() + 0.5  # no seam stands out


def _smooth_photo(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    raw = F.interpolate(torch.rand(1, 3, 8, 8, generator=g) * 255, size=(192, 192), mode="bicubic")
    return raw.clamp(0, 255).to(torch.uint8)


def prep(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1


def test_vae_encode_tiles(model) -> None:
    raw = _smooth_photo(3)
    with torch.no_grad():
        ref = model.encode_latent(prep(raw))
        one = _tiler(model, encode_tile=128, encode_halo=32).encode(raw, prep)
        assert torch.equal(one, ref)  # fits in one tile
        tiled = _tiler(model, encode_tile=64, encode_halo=32, stats_grid=3).encode(raw, prep)
    assert tiled.shape == ref.shape
    assert (tiled - ref).abs().mean() < 0.05 * ref.std()


def test_vae_encode_untiled_area(model) -> None:
    """An image over one tile but within encode_untiled_area (latent cells) encodes whole, exactly."""
    raw = _smooth_photo(4)
    with torch.no_grad():
        ref = model.encode_latent(prep(raw))
        whole = _tiler(model, encode_tile=64, encode_halo=32, encode_untiled_area=24 * 24).encode(raw, prep)
        tiled = _tiler(model, encode_tile=64, encode_halo=32, encode_untiled_area=24 * 24 - 1).encode(raw, prep)
    assert torch.equal(whole, ref)
    assert not torch.equal(tiled, ref)


def test_vae_decode_untiled_area(model) -> None:
    """A latent over one tile but within decode_untiled_area decodes whole, exactly as untiled."""
    z = smooth((1, 4, 40, 40))
    with torch.no_grad():
        ref = to_uint8_image(model.decode_latent(z))
        whole = _tiler(model, decode_tile=12, decode_halo=8, decode_untiled_area=40 * 40).decode(z)
        tiled = _tiler(model, decode_tile=12, decode_halo=8, decode_untiled_area=40 * 40 - 1).decode(z)
    assert np.array_equal(whole, ref)
    assert not np.array_equal(tiled, ref)


def test_concurrent_tiled_passes_on_one_model_match_serial_ones(tmp_path) -> None:
    """tadm encode/decode -j 2 share one model; a tiled VAE pass patches its GroupNorms while it
    runs, so two at once once failed ("'_thread._local' object has no attribute 'box'")."""
    from concurrent.futures import ThreadPoolExecutor

    from tadmcodec import container, registry
    from tadmcodec.codec import Codec
    from tadmcodec.tadm.testing import make_random_model_dir, with_tiling

    tiling = with_tiling(vae_encode_tile=32, vae_encode_halo=8, vae_encode_untiled_area=16,
                         vae_decode_tile=8, vae_decode_halo=4, vae_decode_untiled_area=16)
    folder = make_random_model_dir(tmp_path / "m", 16, tiling=tiling)
    codec = Codec(device="cpu", model_dirs={"tadm-tiny-x16": folder})
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(4)]
    serial = [codec.encode(im, model="tadm-tiny-x16") for im in images]
    with ThreadPoolExecutor(max_workers=2) as pool:
        parallel = list(pool.map(lambda im: codec.encode(im, model="tadm-tiny-x16"), images))
        decoded = list(pool.map(lambda d: codec.decode(d).pixels, serial))
    assert parallel == serial
    assert all(np.array_equal(a, codec.decode(d).pixels) for a, d in zip(decoded, serial))
    assert container.unpack(serial[0]).model_number == registry.get("tadm-tiny-x16").number
