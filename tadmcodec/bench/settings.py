"""What a benchmark runs: settings (one point of one R-D curve) and the sweep grids.

A *setting* is one way to code an image: a classic codec at one quality on the
image shrunk by 1x/2x/4x first, or one of our models at one scale with one
lossless LR codec. A *curve* groups the settings that differ only in rate
(quality for classic codecs, scale for ours): each curve becomes one
CompressAI-style JSON file and one line on the plot.

Grids are denser at the low end because the product's range is 0.01-0.2 bpp;
together with the 2x/4x pre-shrink they reach from about 0.005 to about 1 bpp
on 1-megapixel photos (numbers in docs/bench.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from tadmcodec.errors import InputError

CLASSIC_CODECS: tuple[str, ...] = ("jpeg", "webp", "avif", "jxl")
SHRINKS: tuple[int, ...] = (1, 2, 4)

DEFAULT_AVIF_SPEED = 6
"""libavif speed 0 (slowest, best) .. 10: 6 is libavif's default trade-off."""
DEFAULT_JXL_EFFORT = 7
"""libjxl effort 1..9 (higher = slower, smaller): 7 is libjxl's default ("squirrel")."""
WEBP_METHOD = 6
"""libwebp method 0..6: 6 is the slowest and best; at these rates encode time is small."""


@dataclass(frozen=True)
class Setting:
    """One point of one curve. `param` is quality (JPEG/WebP/AVIF), distance (JPEG XL) or scale (ours)."""

    family: str  # "jpeg" | "webp" | "avif" | "jxl" | "model"
    param: float
    shrink: int = 1  # classic only: the image is shrunk this much before coding
    model: str = ""  # ours only: registry model name
    lr_codec: str = ""  # ours only
    option: int = 0  # AVIF speed, JPEG XL effort (part of the key: they change the output)

    @property
    def classic(self) -> bool:
        return self.family != "model"

    @property
    def curve(self) -> str:
        """Curve name, also the JSON file stem: `jpeg`, `webp-shrink4`, `bicubic-png`."""
        if not self.classic:
            return f"{self.model}-{self.lr_codec}"
        return self.family if self.shrink == 1 else f"{self.family}-shrink{self.shrink}"

    @property
    def param_name(self) -> str:
        return {"jxl": "distance", "model": "scale"}.get(self.family, "quality")

    @property
    def key(self) -> str:
        """Stable identifier used in the CSV and the cache."""
        if not self.classic:
            return f"{self.model}/{self.lr_codec}/x{int(self.param)}"
        opt = {"avif": f"/speed{self.option}", "jxl": f"/effort{self.option}", "webp": f"/m{WEBP_METHOD}"}
        return f"{self.family}/s{self.shrink}/{self.param_name[0]}{_num(self.param)}{opt.get(self.family, '')}"

    @property
    def label(self) -> str:
        """Short human label for tables."""
        if not self.classic:
            return f"{self.model} x{int(self.param)} ({self.lr_codec})"
        shrink = f" shrink {self.shrink}x" if self.shrink > 1 else ""
        return f"{self.family.upper()} {self.param_name[0]}={_num(self.param)}{shrink}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Grid:
    """Parameter lists per classic codec and pre-shrink: points[codec][shrink] = params."""

    points: dict[str, dict[int, tuple[float, ...]]]
    note: str = ""

    def params(self, codec: str, shrink: int) -> tuple[float, ...]:
        return self.points.get(codec, {}).get(shrink, ())

    @property
    def shrinks(self) -> tuple[int, ...]:
        return tuple(sorted({s for by_shrink in self.points.values() for s in by_shrink}))


def _everywhere(params: tuple[float, ...], shrinks: tuple[int, ...] = SHRINKS) -> dict[int, tuple[float, ...]]:
    return {s: params for s in shrinks}


GRIDS: dict[str, Grid] = {
    # Every quality a user might reach for, dense at the low end, at every pre-shrink:
    # 3 x (19 + 12 + 11 + 12) = 162 classic settings per image.
    "full": Grid(
        {
            "jpeg": _everywhere((1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 75, 85, 95)),
            "webp": _everywhere((0, 2, 5, 10, 15, 20, 30, 40, 50, 65, 80, 95)),
            "avif": _everywhere((0, 5, 10, 15, 20, 25, 30, 40, 50, 60, 75)),
            "jxl": _everywhere((25, 20, 15, 12, 10, 8, 6, 4, 3, 2, 1.5, 1)),
        },
        note="every codec at 1x/2x/4x pre-shrink, quality grids dense at the low end",
    ),
    # The committed urban100 run: every codec at every pre-shrink, 2-4 points per
    # curve placed from its lowest rate up to ~0.2 bpp (the product's range),
    # from a rate-only sweep of the full grid on every 5th Urban100 image
    # (docs/bench.md). 29 classic settings per image, about 3 min per image on
    # 2 CPU cores, where LPIPS-VGG and DISTS dominate the cost.
    "standard": Grid(
        {
            "jpeg": {1: (1, 5), 2: (1, 10, 30), 4: (1, 10, 60)},
            "webp": {1: (0, 2), 2: (0, 20), 4: (0, 20)},
            "avif": {1: (0, 25), 2: (0, 20, 40, 60), 4: (0, 20, 40)},
            "jxl": {1: (25, 15), 2: (25, 6), 4: (25, 6)},
        },
        note="JPEG, WebP, AVIF, JPEG XL at 1x/2x/4x pre-shrink, 2-4 qualities each from the lowest rate to ~0.2 bpp",
    ),
    # CI-sized: a few points spanning 0.03-0.2 bpp.
    "quick": Grid(
        {"jpeg": {1: (1, 5)}, "avif": {2: (0, 40)}},
        note="JPEG 1x (q 1, 5), AVIF 2x-shrunk (q 0, 40)",
    ),
}


def classic_settings(
    grid: Grid,
    codecs: tuple[str, ...] | None = None,
    avif_speed: int = DEFAULT_AVIF_SPEED,
    jxl_effort: int = DEFAULT_JXL_EFFORT,
    overrides: dict[str, tuple[float, ...]] | None = None,
    shrinks: tuple[int, ...] | None = None,
) -> list[Setting]:
    """Every classic setting of the grid; `overrides` replaces a codec's list at every shrink.

    `codecs` None means the grid's codecs (plus any with an override); a codec
    named explicitly must end up with at least one point.
    """
    out: list[Setting] = []
    if codecs is None:
        codecs = tuple(c for c in CLASSIC_CODECS if c in grid.points or c in (overrides or {}))
    for codec in codecs:
        if codec not in CLASSIC_CODECS:
            raise InputError(f"unknown classic codec {codec!r} (known: {', '.join(CLASSIC_CODECS)})")
        for s in shrinks or grid.shrinks:
            if s < 1:
                raise InputError(f"pre-shrink factor must be >= 1, not {s}")
            params = (overrides or {}).get(codec) or grid.params(codec, s)
            for p in params:
                _check_param(codec, p)
                option = avif_speed if codec == "avif" else jxl_effort if codec == "jxl" else 0
                out.append(Setting(family=codec, param=float(p), shrink=s, option=option))
        if not any(x.family == codec for x in out):
            raise InputError(f"the grid has no {codec} points at these pre-shrinks: give its quality list")
    return out


def _check_param(codec: str, p: float) -> None:
    limits = {"jpeg": (1, 95), "webp": (0, 100), "avif": (0, 100), "jxl": (0.01, 25)}
    lo, hi = limits[codec]
    if not lo <= p <= hi:
        what = "distance" if codec == "jxl" else "quality"
        raise InputError(f"{codec} {what} {p:g} is outside {lo:g}..{hi:g}")


def model_settings(models: list[str], scales: tuple[int, ...], lr_codecs: tuple[str, ...], model_scales: dict[str, tuple[int, ...]]) -> list[Setting]:
    """Our settings: each model at each of its scales that was asked for, with each LR codec."""
    out: list[Setting] = []
    for m in models:
        for s in model_scales[m]:
            if s not in scales:
                continue
            for lc in lr_codecs:
                out.append(Setting(family="model", param=float(s), model=m, lr_codec=lc))
    return out


def parse_numbers(text: str, what: str) -> tuple[float, ...]:
    """'1,5,10' -> (1.0, 5.0, 10.0); InputError naming the option otherwise."""
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise InputError(f"{what}: no values given")
    return values
