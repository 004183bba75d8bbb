"""The conv feature trunks (AlexNet, VGG16) that LPIPS and DISTS read features from.

Written from the layer shapes in `arch.py`; the pretrained weights are loaded by
the metric modules from the converted cache. Parameters never train here: the
trunks are frozen (`requires_grad=False`), yet stay differentiable with respect
to their input so LPIPS/DISTS can serve as training losses.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tadmcodec.errors import ModelError
from tadmcodec.metrics.arch import Stage, flat_convs
from tadmcodec.metrics.weights import SETUP_HINT


class L2Pool(nn.Module):
    """DISTS's anti-aliased replacement for max pooling: sqrt(blur(x**2)), stride 2.

    The blur is the 3x3 outer product of the inner Hann(5) taps [0.5, 1, 0.5],
    normalised to sum 1, applied per channel with zero padding 1.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor([0.5, 1.0, 0.5])
        kernel = taps[:, None] * taps[None, :]
        kernel = kernel / kernel.sum()
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x * x, self.kernel, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class FeatureTrunk(nn.Module):
    """Conv+ReLU stages; `forward` returns the last ReLU output of every stage."""

    def __init__(self, stages: tuple[Stage, ...], pool: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.stages = stages
        self.convs = nn.ModuleList(
            nn.Conv2d(s.c_in, s.c_out, s.kernel, stride=s.stride, padding=s.padding) for s in flat_convs(stages)
        )
        # pools[k] precedes stage k (Identity where the network has none); it is
        # built for the channels coming out of stage k-1.
        self.pools = nn.ModuleList(
            pool(stages[k - 1].channels) if stage.pool_before else nn.Identity() for k, stage in enumerate(stages)
        )

    def load_converted(self, tensors: dict[str, torch.Tensor], prefix: str = "trunk.") -> None:
        """Load `trunk.<i>.weight|bias` from a converted weight file and freeze."""
        state = {}
        for i in range(len(self.convs)):
            for kind in ("weight", "bias"):
                key = f"{prefix}{i}.{kind}"
                if key not in tensors:
                    raise ModelError(f"metric weight file lacks {key}; {SETUP_HINT} --force")
                state[f"convs.{i}.{kind}"] = tensors[key]
        try:
            result = self.load_state_dict(state, strict=False)  # pools hold only fixed buffers
        except RuntimeError as exc:  # shape mismatch
            raise ModelError(f"metric weight file does not fit the trunk: {str(exc).splitlines()[0]}") from None
        missing = [k for k in result.missing_keys if not k.startswith("pools.")]
        if missing or result.unexpected_keys:
            raise ModelError(f"metric weight file does not fit the trunk (missing {missing})")
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # channels-last runs the convs about a third faster on CPU (oneDNN) and
        # changes values only by float rounding (< 1e-4 on the features).
        x = x.contiguous(memory_format=torch.channels_last)
        feats = []
        i = 0
        for stage, pool in zip(self.stages, self.pools):
            x = pool(x)
            for _ in stage.convs:
                x = F.relu(self.convs[i](x), inplace=True)  # conv output is not kept otherwise
                i += 1
            feats.append(x)
        return feats


def max_pool_for(kernel: int) -> Callable[[int], nn.Module]:
    """Factory of the (channel-independent) max pool torchvision uses: kernel k, stride 2, no padding."""
    return lambda _channels: nn.MaxPool2d(kernel, stride=2)
