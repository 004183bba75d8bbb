"""Layer shapes of the metric trunks, kept torch-free so weight conversion can check them.

Both trunks are the ImageNet-trained torchvision feature extractors that LPIPS
and DISTS were built on. A `ConvSpec` per conv layer, grouped into stages: a
metric reads the ReLU output at the end of each stage, and the stages are
preceded by a pooling layer where the network has one (max pooling for
LPIPS, L2 pooling in DISTS's VGG16).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConvSpec:
    """One conv layer: channels in/out, square kernel, stride and zero padding."""

    c_in: int
    c_out: int
    kernel: int
    stride: int = 1
    padding: int = 1

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """Torch layout (O, I, kH, kW)."""
        return (self.c_out, self.c_in, self.kernel, self.kernel)


@dataclass(frozen=True)
class Stage:
    """Convs (each followed by ReLU) whose last ReLU output is one tapped feature map.

    `pool_before` says whether the trunk's pooling layer precedes this stage.
    """

    pool_before: bool
    convs: tuple[ConvSpec, ...]

    @property
    def channels(self) -> int:
        return self.convs[-1].c_out


# AlexNet (the torchvision variant, Krizhevsky 2014): LPIPS taps relu1..relu5;
# a 3x3 stride-2 max pool follows relu1 and relu2.
ALEXNET_STAGES: tuple[Stage, ...] = (
    Stage(False, (ConvSpec(3, 64, 11, stride=4, padding=2),)),
    Stage(True, (ConvSpec(64, 192, 5, padding=2),)),
    Stage(True, (ConvSpec(192, 384, 3),)),
    Stage(False, (ConvSpec(384, 256, 3),)),
    Stage(False, (ConvSpec(256, 256, 3),)),
)


def _vgg_stage(c_in: int, c_out: int, n: int) -> Stage:
    return Stage(c_in != 3, tuple(ConvSpec(c_in if i == 0 else c_out, c_out, 3) for i in range(n)))


# VGG16 (Simonyan & Zisserman 2015): taps relu1_2, relu2_2, relu3_3, relu4_3,
# relu5_3; a 2x2 stride-2 pool precedes every stage but the first.
VGG16_STAGES: tuple[Stage, ...] = (
    _vgg_stage(3, 64, 2),
    _vgg_stage(64, 128, 2),
    _vgg_stage(128, 256, 3),
    _vgg_stage(256, 512, 3),
    _vgg_stage(512, 512, 3),
)


def flat_convs(stages: tuple[Stage, ...]) -> list[ConvSpec]:
    """All conv layers in order (the numbering used by the weight files)."""
    return [spec for stage in stages for spec in stage.convs]


LPIPS_TRUNKS: dict[str, tuple[Stage, ...]] = {"alex": ALEXNET_STAGES, "vgg": VGG16_STAGES}
"""LPIPS trunk name -> its stages; LPIPS has one linear head per stage."""


DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)
"""DISTS compares the input itself plus the five VGG16 taps."""
