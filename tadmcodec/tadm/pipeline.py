"""TADM as a codec `Rescaler`: uint8 photo -> uint8 LR image -> uint8 photo.

Encoding (deterministic: posterior mode, rounding):
    pad (reflect) to a multiple of the scale -> tiled VAE encode -> DFRM Ge (exact
    conv tiles) -> INN F -> round to 8 bits. The LR image is exactly
    ceil(W/scale) x ceil(H/scale).
Decoding:
    INN F^-1 -> Gd (exact conv tiles) -> pad the latent to the UNet's multiple ->
    Algorithm 1 (96/64 latent tiles, one predicted t per tile, UNet in batches,
    hybrid scheduler, Gaussian merge) -> crop -> tiled VAE decode -> crop to W x H.

Everything runs under `torch.inference_mode()`; no random numbers are drawn.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from tadmcodec.errors import FormatError, InputError, ModelError
from tadmcodec.lr_projection import can_project_resized, project_onto_lr, project_onto_lr_resized
from tadmcodec.rescaler import lanczos, lr_size, pad_to_multiple
from tadmcodec.tadm.blocks import receptive_radius
from tadmcodec.tadm.dfrm import dequantize, quantize
from tadmcodec.tadm.model import TadmModel
from tadmcodec.tadm.tiling import (
    GaussianMerger, VaeTiler, latent_tiles, pad_latent, tiled_conv, to_uint8_image,
)

LATENT_FACTOR = 8


class TadmRescaler:
    """A loaded TADM model implementing `tadmcodec.rescaler.Rescaler` for its one scale."""

    def __init__(self, model: TadmModel, name: str = "tadm") -> None:
        self.model = model
        self.name = name
        # One pass at a time: tiled VAE passes patch the model's GroupNorm layers while they run
        # (tiling.GroupNormStats), so a second thread (tadm encode/decode -j 2) using the model then
        # would go through the patch. torch already spreads one pass over the cores.
        self._lock = threading.Lock()
        self.scales = (model.config.scale,)
        self.latent_tiling = True
        self.vae_tiling = True
        self.channels_last = False
        self.lr_projection = model.config.lr_projection
        t = model.config.tiling
        self._vae = VaeTiler(
            model.vae, model.encode_latent, model.decode_latent, factor=LATENT_FACTOR,
            decode_tile=t.vae_decode_tile, decode_halo=t.vae_decode_halo,
            decode_untiled_area=t.vae_decode_untiled_area, encode_untiled_area=t.vae_encode_untiled_area,
            encode_tile=t.vae_encode_tile, encode_halo=t.vae_encode_halo,
            blend=t.vae_blend, stats_grid=t.stats_grid,
        )
        dfrm = model.dfrm
        # halos = receptive radius in LR pixels, so DFRM conv tiles are exact
        self._ge_halo = receptive_radius(dfrm.down_module) + receptive_radius(dfrm.latent_module) \
            + receptive_radius(dfrm.fusing_module)
        # (Gd's tail runs at the latent size, finer than the LR grid: counting its pixels as LR
        # pixels over-covers it)
        self._gd_halo = sum(receptive_radius(m) for m in dfrm.gd_modules())

    # ---------------------------------------------------------------- props
    @property
    def device(self) -> torch.device:
        return next(self.model.dfrm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The backbone's compute dtype (the DFRM, TPM and refiner always run in float32)."""
        return self.model.unet_dtype

    def enable_tiling(self, latent: bool = True, vae: bool = True) -> None:
        """Tiled inference (the default): Algorithm 1 for the UNet, tiled VAE and DFRM."""
        self.latent_tiling, self.vae_tiling = latent, vae

    def enable_channels_last(self, on: bool = True) -> None:
        """Keep the VAE and UNet weights (hence their activations) channels-last, or back to NCHW.

        Why: oneDNN's CPU convolutions run faster on NHWC; on the 2-core AVX2 VM a 768×512 x16
        decode with tiny took 2.6 s instead of 3.2 s. Decoded pixels may move by 1 level (another
        convolution algorithm), so a process decodes the same bytes only with the same setting;
        `load_tadm` turns it on for the CPU.
        """
        fmt = torch.channels_last if on else torch.contiguous_format
        for net in (self.model.vae, self.model.unet):
            net.to(memory_format=fmt)
        self.channels_last = on

    def enable_lr_projection(self, on: bool = True) -> None:
        """Back-project each VAE decode onto its LR image (`tadmcodec.lr_projection`), or not.

        On by default for a model trained with it (model.json's lr_projection); turning it off
        (or on for a model trained without it) shows what the step does, as the benchmarks do.
        The implicit decoder's renderings are projected at their own size (`_render_implicit`).
        """
        self.lr_projection = on

    def disable_tiling(self) -> None:
        """Run every stage on the whole image (more memory; one time-step for the whole image)."""
        self.latent_tiling = self.vae_tiling = False

    def _check_scale(self, scale: int) -> None:
        if scale not in self.scales:
            raise ModelError(f"model {self.name} rescales x{self.scales[0]} only, not x{scale}")

    # --------------------------------------------------------------- encode
    def downscale(self, image: np.ndarray, scale: int) -> np.ndarray:
        """(H, W, 3) uint8 -> (ceil(H/scale), ceil(W/scale), 3) uint8."""
        self._check_scale(scale)
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
                or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise InputError("the TADM encoder needs an 8-bit RGB image")
        h, w = image.shape[:2]
        padded = np.require(pad_to_multiple(image, scale), requirements=["C", "W"])  # torch wants writable
        with self._lock, torch.inference_mode():
            raw = torch.from_numpy(padded).permute(2, 0, 1)[None]  # uint8 view, (1, 3, H, W)
            z = self._encode_latent(raw)
            z_lr = self._ge(raw, z)
            q = quantize(self.model.dfrm.to_lr(z_lr))
        lr = np.ascontiguousarray(q[0].permute(1, 2, 0).cpu().numpy())
        lw, lh = lr_size(w, h, scale)
        assert lr.shape == (lh, lw, 3), (lr.shape, lh, lw)
        return lr

    def _to_input(self, raw: torch.Tensor) -> torch.Tensor:
        """uint8 crop -> float32 in [-1, 1] on the model's device."""
        return raw.to(self.device, torch.float32) / 127.5 - 1.0

    def _encode_latent(self, raw: torch.Tensor) -> torch.Tensor:
        if self.vae_tiling:
            return self._vae.encode(raw, self._to_input)
        return self.model.encode_latent(self._to_input(raw))

    def _ge(self, raw: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        s = self.model.config.scale
        size = (raw.shape[-2] // s, raw.shape[-1] // s)
        fn = lambda img, lat: self.model.dfrm.encode_features(self._to_input(img), lat)  # noqa: E731
        if not self.vae_tiling:
            return fn(raw, z)
        tile = self.model.config.tiling.dfrm_tile
        return tiled_conv(fn, [(raw, s), (z, s // LATENT_FACTOR)], size, 1, tile, self._ge_halo)

    # --------------------------------------------------------------- decode
    def upscale(self, lr: np.ndarray, scale: int, size: tuple[int, int]) -> np.ndarray:
        """LR uint8 -> (height, width, 3) uint8 where size = (width, height)."""
        return self.upscale_with_timestep_map(lr, scale, size)[0]

    def upscale_with_timestep_map(self, lr: np.ndarray, scale: int,
                                  size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """As `upscale`, plus the merged time-step map: float32 (ceil(H/8), ceil(W/8))."""
        image, tmap, _ = self.render(lr, scale, size, None)  # render checks the scale and the LR shape
        return image, tmap

    @property
    def implicit_decoder(self) -> bool:
        """Whether this model renders other output sizes with its implicit decoder."""
        return self.model.implicit is not None

    def render(self, lr: np.ndarray, scale: int, size: tuple[int, int], out_size: tuple[int, int] | None,
               method: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
        """Decode at `out_size` (W, H; None = the original `size`): (image, time-step map, path taken).

        The DFRM, the time-step prediction and the UNet step run as for `upscale`; only the
        last rendering differs. method "auto": without out_size, the VAE decoder (exactly
        `upscale`); with it, the implicit decoder when the model has one, else the VAE decoder
        at full size resampled with Lanczos. "implicit" / "vae" force one of them.
        """
        self._check_scale(scale)
        width, height = size
        lw, lh = lr_size(width, height, scale)
        if not isinstance(lr, np.ndarray) or lr.dtype != np.uint8 or lr.shape != (lh, lw, 3):
            got = f"{lr.dtype} {lr.shape}" if isinstance(lr, np.ndarray) else type(lr).__name__
            raise FormatError(f"LR image must be uint8 of shape {(lh, lw, 3)} for {width}x{height} "
                              f"at x{scale}, got {got}")
        if method not in ("auto", "implicit", "vae"):
            raise ValueError(f"unknown rendering method {method!r}")
        m = self.model
        use_implicit = method == "implicit" or (method == "auto" and out_size is not None and self.implicit_decoder)
        if use_implicit and not self.implicit_decoder:
            raise ModelError(f"model {self.name} has no implicit decoder" + (f" ({m.implicit_note})"
                                                                               if m.implicit_note else ""))
        with self._lock, torch.inference_mode():
            q = torch.from_numpy(np.require(lr, requirements=["C", "W"])).permute(2, 0, 1)[None].to(self.device)
            z_lr = m.dfrm.from_lr(dequantize(q))
            z_hat = self._gd(z_lr)
            z0, tmap = self._enhance(z_hat)
            image, path = self.render_final(z0, lr, scale, size, out_size, use_implicit)
        lat_h, lat_w = -(-height // LATENT_FACTOR), -(-width // LATENT_FACTOR)
        tmap_np = np.ascontiguousarray(tmap[:lat_h, :lat_w].cpu().numpy().astype(np.float32))
        return image, tmap_np, path

    def render_final(self, z0: torch.Tensor, lr: np.ndarray, scale: int, size: tuple[int, int],
                     out_size: tuple[int, int] | None, implicit: bool) -> tuple[np.ndarray, str]:
        """The last rendering of `render`, from the final latent z0 on: (image, path taken).

        The VAE path decodes at full size, back-projects (for a model with lr_projection), crops
        and resamples to out_size with Lanczos; the implicit one is `_render_implicit`. Public so
        that benchmarks time exactly this step of either path. Call it under inference_mode.
        """
        if implicit:
            return self._render_implicit(z0, lr, scale, size, out_size or size)
        m = self.model
        width, height = size
        image = self._vae.decode(z0) if self.vae_tiling else to_uint8_image(m.decode_latent(z0))
        path = "VAE decoder"
        if self.lr_projection:  # on the padded image, which is exactly scale x the LR image
            image, path = project_onto_lr(image, lr, scale), "VAE decoder, LR back-projection"
        image = np.ascontiguousarray(image[:height, :width])
        if out_size is not None and out_size != size:
            image = lanczos(image, out_size)
            path = "VAE decoder at full size, then Lanczos" + (f" ({m.implicit_note})" if m.implicit_note else "")
        return image, path

    def _render_implicit(self, z0: torch.Tensor, lr: np.ndarray, scale: int, size: tuple[int, int],
                         out_size: tuple[int, int]) -> tuple[np.ndarray, str]:
        """The implicit decoder at out_size; below its trained range, at the smallest trained size then Lanczos.

        With the LR back-projection on, the rendering is back-projected onto the LR image at the
        size it was rendered (`project_onto_lr_resized`), as the VAE path's decode is at full size.
        """
        from tadmcodec.tadm.implicit import render_latent

        dec = self.model.implicit
        assert dec is not None
        lo = dec.config.trained_zoom[0]
        target = tuple(max(o, min(s, int(np.ceil(s * lo)))) for o, s in zip(out_size, size))
        image = render_latent(self.model.vae, dec, z0, size, target, tiled=self.vae_tiling)  # type: ignore[arg-type]
        path = "implicit decoder"
        if self.lr_projection and can_project_resized(target, size, scale):  # type: ignore[arg-type]
            image, path = project_onto_lr_resized(image, lr, scale, size), "implicit decoder, LR back-projection"
        if target == tuple(out_size):
            return image, path
        return lanczos(image, out_size), f"{path} at {target[0]}x{target[1]}, then Lanczos"

    def _gd(self, z_lr: torch.Tensor) -> torch.Tensor:
        fn = self.model.dfrm.decode_features
        if not self.vae_tiling:
            return fn(z_lr)
        tile = self.model.config.tiling.dfrm_tile
        return tiled_conv(fn, [(z_lr, 1)], tuple(z_lr.shape[-2:]), self.model.config.scale // LATENT_FACTOR,
                          tile, self._gd_halo)

    def _enhance(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Algorithm 1: per-tile t, one UNet step per tile (batched), Gaussian merge.

        Returns z0 (1, 4, h, w) unscaled and the time-step map (h, w).
        """
        m = self.model
        h, w = z_hat.shape[-2:]
        t_cfg = m.config.tiling
        z = pad_latent(z_hat, m.unet_multiple)
        ph, pw = z.shape[-2:]
        if not self.latent_tiling or (ph <= t_cfg.latent_tile and pw <= t_cfg.latent_tile):
            z0, t = m.enhance(z)
            return z0[..., :h, :w], torch.full((h, w), float(t[0]), device=z0.device)
        th, tw, starts = latent_tiles(ph, pw, t_cfg.latent_tile, t_cfg.latent_stride)
        merger = GaussianMerger(tuple(z.shape), th, tw, t_cfg.tile_sigma, z.device)
        for i in range(0, len(starts), t_cfg.tile_batch):
            chunk = starts[i:i + t_cfg.tile_batch]
            batch = torch.cat([z[:, :, y:y + th, x:x + tw] for y, x in chunk], 0)
            z0, t = m.enhance(batch)
            for j, (y, x) in enumerate(chunk):
                merger.add(y, x, z0[j:j + 1], t[j])
        z0, tmap = merger.result()
        return z0[..., :h, :w], tmap[:h, :w]
