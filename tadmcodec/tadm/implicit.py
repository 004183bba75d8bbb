"""The implicit decoder: the final latent rendered at any output size (after Kim & Kim).

    z --VAE decoder blocks at latent resolution (no upsampling)--> features (1, C, h, w)
      --3x3 unfolding, folded into the first layer: a 3x3 conv--> h0 (1, hidden, h, w)
    output pixel q: for each of its four nearest latent cells k (the local ensemble),
      MLP(relu(h0[k] + W (offset of q from k's centre, q's cell size))) -> RGB_k;
      RGB(q) = the RGB_k blended with bilinear (opposite-area) weights

This is a Local Implicit Image Function (LIIF) on the VAE decoder's features. Its
first linear layer on the unfolded 3x3 features equals a 3x3 convolution of the
features, which is computed once per latent cell instead of once per output
pixel; the offset and cell terms are separable in rows and columns, so a block of
output pixels costs one gather of h0 and the remaining layers.

Coordinates, in latent cells: latent cell k covers image pixels [8k, 8k + 8), so
its centre is at k. Output pixel j of an output of n_out pixels across an image
of n_img pixels has its centre at image position (j + 0.5) * n_img / n_out, i.e.
at u = that / 8 - 0.5 in latent cells. Its cell size is n_img / n_out image
pixels (1 at the original size, 4 at zoom 0.25), which is what the MLP gets.
The latent may cover more than n_img pixels (it covers the image padded to the
scale); only the image part is rendered.

Memory stays bounded on large outputs as in the VAE tiling (`tiling.VaeTiler`):
features are computed tile by tile with a halo wider than the receptive field,
with every GroupNorm using statistics shared by all tiles (estimated on a grid of
sample tiles), and the output is rendered `render_pixels` at a time.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tadmcodec.errors import ModelError
from tadmcodec.tadm.blocks import receptive_radius
from tadmcodec.tadm.spec import ImplicitDecoderConfig
from tadmcodec.tadm.tiling import _axis_tiles, grid_stats

FACTOR = 8
"""Image pixels per latent cell."""


# ------------------------------------------------------------------ coordinates


@dataclass(frozen=True)
class AxisQueries:
    """The queries along one axis of the output: for each output pixel, its two nearest cells.

    idx: (2, n) int64 latent indices (floor and floor + 1 of the pixel's centre, clamped to the
    latent); rel: (2, n) offsets of the centre from those cells' centres, in cells; weight:
    (2, n) their ensemble weights (linear, summing to 1); cell: the output pixel's size in image
    pixels (image pixels per output pixel).
    """

    idx: torch.Tensor
    rel: torch.Tensor
    weight: torch.Tensor
    cell: float

    def __len__(self) -> int:
        return int(self.idx.shape[1])

    def part(self, lo: int, hi: int, offset: int = 0) -> "AxisQueries":
        """Output pixels [lo, hi), indices relative to a feature crop starting at cell `offset`."""
        return AxisQueries(self.idx[:, lo:hi] - offset, self.rel[:, lo:hi], self.weight[:, lo:hi], self.cell)


def axis_queries(n_out: int, n_img: int, n_lat: int, start: float = 0.0) -> AxisQueries:
    """Queries of `n_out` output pixels spread over `n_img` image pixels, on a latent of `n_lat` cells.

    `start` (image pixels) shifts the rendered window: training renders a window of a crop.
    """
    if n_out < 1 or n_img < 1 or n_lat < 1:
        raise ValueError(f"need positive sizes, got n_out={n_out} n_img={n_img} n_lat={n_lat}")
    px = n_img / n_out
    centre = start + (np.arange(n_out, dtype=np.float64) + 0.5) * px
    u = centre / FACTOR - 0.5
    i0 = np.floor(u)
    t = u - i0
    idx = np.stack([np.clip(i0, 0, n_lat - 1), np.clip(i0 + 1, 0, n_lat - 1)]).astype(np.int64)
    rel = u[None, :] - idx
    weight = np.stack([1.0 - t, t])
    return AxisQueries(torch.from_numpy(idx), torch.from_numpy(rel).float(), torch.from_numpy(weight).float(), px)


# ------------------------------------------------------------------- the module


def shared_modules(vae: nn.Module, config: ImplicitDecoderConfig) -> list[nn.Module]:
    """The VAE's own modules the implicit decoder runs first (in order; their weights stay the VAE's)."""
    dec = vae.decoder
    if config.shared_blocks + config.own_blocks > len(dec.up_blocks):
        raise ModelError(f"implicit_decoder: {config.shared_blocks} shared + {config.own_blocks} own blocks, "
                         f"but the VAE decoder has {len(dec.up_blocks)} up blocks")
    mods: list[nn.Module] = []
    if getattr(vae, "post_quant_conv", None) is not None:
        mods.append(vae.post_quant_conv)
    mods += [dec.conv_in, dec.mid_block]
    for block in dec.up_blocks[:config.shared_blocks]:
        mods += list(block.resnets)
    return mods


def shared_fingerprint(vae: nn.Module, config: ImplicitDecoderConfig) -> str:
    """SHA-256 over the shared VAE tensors (names and float32 values): what the decoder was trained on.

    Values, not bytes: -0.0 counts as 0.0 (the packaged tiny-x32 VAE holds the backbone's values
    with some zeros negative, so its file's bytes differ from the backbone's).
    """
    h = hashlib.sha256(f"shared{config.shared_blocks}".encode())
    for i, m in enumerate(shared_modules(vae, config)):
        for name, t in sorted(m.state_dict().items()):
            h.update(f"{i}.{name}".encode())
            h.update((t.detach().to("cpu", torch.float32) + 0.0).contiguous().numpy().tobytes())
    return h.hexdigest()


class ImplicitDecoder(nn.Module):
    """Own decoder blocks at latent resolution and the LIIF head (the VAE's shared blocks are passed in).

    Its state dict is what `implicit_decoder.safetensors` holds: `blocks.*` (the copied and
    trained up blocks) and the head (`unfold`, `coord`, `mlp.*`, `out`).
    """

    def __init__(self, config: ImplicitDecoderConfig, vae: nn.Module) -> None:
        super().__init__()
        self.config = config
        shared_modules(vae, config)  # checks the block counts
        up = vae.decoder.up_blocks[config.shared_blocks:config.shared_blocks + config.own_blocks]
        self.blocks = nn.ModuleList([copy.deepcopy(r) for b in up for r in b.resnets])
        channels = self.blocks[-1].conv2.out_channels
        hid = config.hidden
        self.unfold = nn.Conv2d(channels, hid, 3, padding=1)  # 3x3 unfolding + the first linear layer
        self.coord = nn.Linear(4, hid, bias=False)  # (rel_y, rel_x, cell_y, cell_x)
        self.mlp = nn.ModuleList([nn.Linear(hid, hid) for _ in range(config.layers)])
        self.out = nn.Linear(hid, 3)

    def receptive_radius(self, vae: nn.Module) -> int:
        """Latent cells of context one feature cell depends on (the halo must cover it, plus one)."""
        return sum(receptive_radius(m) for m in shared_modules(vae, self.config)) \
            + sum(receptive_radius(b) for b in self.blocks) + receptive_radius(self.unfold)

    def features(self, vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latent (B, C, h, w) -> h0 (B, hidden, h, w): blocks at latent resolution, then unfolding."""
        x = z.to(self.unfold.weight.dtype)
        for m in shared_modules(vae, self.config):
            x = m(x) if isinstance(m, nn.Conv2d) else m(x, None)
        for b in self.blocks:
            x = b(x, None)
        return self.unfold(x)

    def render(self, h0: torch.Tensor, qy: list[AxisQueries] | AxisQueries,
               qx: list[AxisQueries] | AxisQueries) -> torch.Tensor:
        """h0 (B, hidden, h, w) and each item's row and column queries -> RGB (B, 3, rows, cols) in about [-1, 1].

        qy/qx: one AxisQueries per batch item (or one for all); all items have the same numbers
        of rows and columns.
        """
        b = h0.shape[0]
        qy = qy if isinstance(qy, list) else [qy] * b
        qx = qx if isinstance(qx, list) else [qx] * b
        dev, dt = h0.device, h0.dtype
        feats = h0.permute(0, 2, 3, 1)  # (B, h, w, hidden)
        iy = torch.stack([q.idx for q in qy]).to(dev)  # (B, 2, R)
        ix = torch.stack([q.idx for q in qx]).to(dev)
        ry = torch.stack([q.rel for q in qy]).to(dev, dt)
        rx = torch.stack([q.rel for q in qx]).to(dev, dt)
        wy = torch.stack([q.weight for q in qy]).to(dev, dt)
        wx = torch.stack([q.weight for q in qx]).to(dev, dt)
        cells = torch.tensor([[q1.cell, q2.cell] for q1, q2 in zip(qy, qx)], device=dev, dtype=dt)  # (B, 2)
        w = self.coord.weight.to(dt)  # (hidden, 4)
        term_y = ry[..., None] * w[:, 0]  # (B, 2, R, hidden)
        term_x = rx[..., None] * w[:, 1]
        term_c = cells @ w[:, 2:].T  # (B, hidden)
        bidx = torch.arange(b, device=dev)[:, None, None]
        out: torch.Tensor | None = None
        for a in (0, 1):
            for c in (0, 1):
                g = feats[bidx, iy[:, a][:, :, None], ix[:, c][:, None, :]]  # (B, R, C, hidden)
                x = g + term_y[:, a][:, :, None] + term_x[:, c][:, None, :] + term_c[:, None, None]
                for lin in self.mlp:
                    x = lin(F.relu(x))
                y = self.out(F.relu(x))  # (B, R, C, 3)
                y = y * (wy[:, a][:, :, None, None] * wx[:, c][:, None, :, None])
                out = y if out is None else out + y
        assert out is not None
        return out.permute(0, 3, 1, 2)


# -------------------------------------------------------------------- rendering


def _render_block(dec: ImplicitDecoder, h0: torch.Tensor, qy: AxisQueries, qx: AxisQueries,
                  image: np.ndarray, y0: int, x0: int, budget: int) -> None:
    """Render rows qy x columns qx into image[y0:, x0:], `budget` output pixels at a time."""
    rows_at_once = max(1, budget // max(1, len(qx)))
    cols_at_once = min(len(qx), max(1, budget))
    for r0 in range(0, len(qy), rows_at_once):
        r1 = min(r0 + rows_at_once, len(qy))
        for c0 in range(0, len(qx), cols_at_once):
            c1 = min(c0 + cols_at_once, len(qx))
            rgb = dec.render(h0, qy.part(r0, r1), qx.part(c0, c1))
            px = torch.round((rgb[0].float().clamp(-1, 1) + 1.0) * 127.5).to(torch.uint8)
            image[y0 + r0:y0 + r1, x0 + c0:x0 + c1] = px.permute(1, 2, 0).cpu().numpy()


def _owner_ranges(q: AxisQueries, cuts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """For each core [c0, c1) of latent cells: the output pixels whose first (floor) cell lies in it."""
    first = q.idx[0].numpy()
    return [(int(np.searchsorted(first, c0, "left")), int(np.searchsorted(first, c1, "left"))) for c0, c1 in cuts]


def render_latent(vae: nn.Module, dec: ImplicitDecoder, z: torch.Tensor, image_size: tuple[int, int],
                  out_size: tuple[int, int], tiled: bool = True) -> np.ndarray:
    """Unscaled latent (1, C, h, w) of an image of image_size (W, H) -> uint8 (out_H, out_W, 3).

    Tiled (the default) when the latent is larger than `untiled_area`: each tile's features
    are computed with a halo of `feature_halo` cells and GroupNorm statistics shared by all
    tiles, and its output pixels rendered from them; memory is that of one tile's features
    and the output image.
    """
    cfg = dec.config
    (w_img, h_img), (w_out, h_out) = image_size, out_size
    h, w = z.shape[-2:]
    qy, qx = axis_queries(h_out, h_img, h), axis_queries(w_out, w_img, w)
    image = np.empty((h_out, w_out, 3), dtype=np.uint8)
    core, halo = cfg.feature_tile, cfg.feature_halo
    if not tiled or (h <= core + 2 * halo and w <= core + 2 * halo) or h * w <= cfg.untiled_area:
        _render_block(dec, dec.features(vae, z), qy, qx, image, 0, 0, cfg.render_pixels)
        return image
    rows, cols = _axis_tiles(h, core, halo, 0), _axis_tiles(w, core, halo, 0)
    # A core's output pixels read their floor cell and the one after: one more cell below and right.
    rows = [(c0, c1, a0, min(a1 + 1, h), lo, wt) for (c0, c1, a0, a1, lo, wt) in rows]
    cols = [(c0, c1, a0, min(a1 + 1, w), lo, wt) for (c0, c1, a0, a1, lo, wt) in cols]
    holder = nn.ModuleList([vae, dec])  # every GroupNorm the features pass through
    stats = grid_stats(holder, rows, cols, cfg.stats_grid, lambda crop: dec.features(vae, crop),
                       lambda a0, a1, b0, b1: z[:, :, a0:a1, b0:b1])
    row_out = _owner_ranges(qy, [(r[0], r[1]) for r in rows])
    col_out = _owner_ranges(qx, [(c[0], c[1]) for c in cols])
    with stats.applying(holder):
        for (_, _, a0, a1, _, _), (p0, p1) in zip(rows, row_out):
            if p1 <= p0:
                continue
            for (_, _, b0, b1, _, _), (s0, s1) in zip(cols, col_out):
                if s1 <= s0:
                    continue
                h0 = dec.features(vae, z[:, :, a0:a1, b0:b1])
                _render_block(dec, h0, qy.part(p0, p1, a0), qx.part(s0, s1, b0), image, p0, s0,
                              cfg.render_pixels)
    return image


__all__ = ["AxisQueries", "FACTOR", "ImplicitDecoder", "axis_queries", "render_latent", "shared_fingerprint",
           "shared_modules"]
