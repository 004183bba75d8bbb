"""The LR back-projection of `tadmcodec.lr_projection` in torch, differentiable, for training.

The same matrices as the decoder's numpy pass, so a model trained through the projection is
scored on exactly the operator that `tadm decode` applies.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from tadmcodec.lr_projection import down_matrix, up_matrix


@lru_cache(maxsize=16)
def _matrices(n: int, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(down_matrix(n, scale)), torch.from_numpy(up_matrix(n, scale))


def project_onto_lr(x: torch.Tensor, lr: torch.Tensor, scale: int) -> torch.Tensor:
    """x + U(L - D(x)) for (B, C, H, W) images and (B, C, H/scale, W/scale) LR images, any one range."""
    h, w = x.shape[-2:]
    if lr.shape[-2:] != (h // scale, w // scale) or h % scale or w % scale:
        raise ValueError(f"image {tuple(x.shape)} is not x{scale} of LR {tuple(lr.shape)}")
    dy, uy = (m.to(x.device, torch.float32) for m in _matrices(h, scale))
    dx, ux = (m.to(x.device, torch.float32) for m in _matrices(w, scale))
    xf = x.float()
    low = dy @ xf @ dx.T
    return xf + uy @ (lr.float() - low) @ ux.T
