"""The one registry of named models.

Every model is a typed spec: a name users type, a compact number that `.tadm`
files store, its scale, and where its weights live. A file also records a digest
of the model's weights and config, and decoding with a model whose digest
differs is refused (naming the model needed).

This module imports no torch: `tadm info` and `tadm models` stay instant. The
TADM loader (`tadmcodec.tadm.loader`) is imported only when a TADM model runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from tadmcodec.errors import ModelError
from tadmcodec.rescaler import SCALES, BicubicRescaler, Rescaler

DIGEST_SIZE = 4
"""Bytes of the SHA-256 of (config, weights) stored in a `.tadm` file."""

PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class ModelSpec:
    """A named model.

    `number` is stored in every `.tadm` file and is never reused for another
    model. `kind` selects the loader. `weights_dir` returns the folder holding
    `model.json` (architecture config) and the `.safetensors` files, or None
    when the user has not configured one (then `needs` says how).
    """

    name: str
    number: int
    kind: str  # "bicubic" | "tadm"
    scales: tuple[int, ...]
    description: str
    needs: str = ""
    weights_dir: Callable[[], Path | None] = field(default=lambda: None, compare=False)

    @property
    def scale(self) -> int | None:
        """The one scale a learned model was trained for (None if it takes several)."""
        return self.scales[0] if len(self.scales) == 1 else None

    def availability(self) -> tuple[bool, str]:
        """(available, reason); the reason names the missing file or option."""
        if self.kind == "bicubic":
            return True, "built in"
        d = self.weights_dir()
        if d is None:
            return False, self.needs
        if not (d / "model.json").is_file():
            return False, f"missing {d / 'model.json'} ({self.needs})"
        from tadmcodec.tadm.spec import check_available  # torch-free

        return check_available(d)

    def config(self) -> dict:
        """The architecture config (model.json), or {} for bicubic."""
        if self.kind == "bicubic":
            return {"kind": "bicubic", "filter": "pillow-bicubic", "pad": "reflect"}
        ok, why = self.availability()
        if not ok:
            raise ModelError(f"model {self.name} is not available: {why}")
        d = self.weights_dir()
        assert d is not None
        try:
            return json.loads((d / "model.json").read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"model {self.name}: cannot read {d / 'model.json'}: {exc}") from None

    def digest(self) -> bytes:
        """First DIGEST_SIZE bytes of SHA-256 over the canonical config and every weight file.

        Computed afresh on every call (no cache keyed on file times, which can
        miss a rewrite); `Codec` keeps it for as long as it keeps the model loaded.
        """
        h = hashlib.sha256()
        h.update(json.dumps(self.config(), sort_keys=True, separators=(",", ":")).encode())
        if self.kind != "bicubic":
            d = self.weights_dir()
            assert d is not None
            for p in sorted(d.glob("*.safetensors")):
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
        return h.digest()[:DIGEST_SIZE]


def _package_dir(name: str) -> Callable[[], Path | None]:
    return lambda: PACKAGE_WEIGHTS / name


def _env_dir(var: str) -> Callable[[], Path | None]:
    def resolve() -> Path | None:
        value = os.environ.get(var)
        return Path(value).expanduser() if value else None

    return resolve


_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="bicubic",
        number=0,
        kind="bicubic",
        scales=SCALES,
        description="antialiased bicubic down, bicubic up (baseline, no network)",
    ),
    ModelSpec(
        name="tadm-tiny-x16",
        number=1,
        kind="tadm",
        scales=(16,),
        description="small TADM trained by this project, 16x (ships in the package)",
        needs="trained weights in the package (tadmcodec/weights/tadm-tiny-x16)",
        weights_dir=_package_dir("tadm-tiny-x16"),
    ),
    ModelSpec(
        name="tadm-tiny-x32",
        number=2,
        kind="tadm",
        scales=(32,),
        description="small TADM trained by this project, 32x (ships in the package)",
        needs="trained weights in the package (tadmcodec/weights/tadm-tiny-x32)",
        weights_dir=_package_dir("tadm-tiny-x32"),
    ),
    ModelSpec(
        name="tadm-sd21-x16",
        number=3,
        kind="tadm",
        scales=(16,),
        description="TADM on Stable Diffusion 2.1 (the paper's model), 16x",
        needs=(
            "a model folder made by `tadm import-official` (--model-dir or TADM_SD21_X16) and a local "
            "Stable Diffusion 2.1 diffusers folder (TADM_SD21_DIR)"
        ),
        weights_dir=_env_dir("TADM_SD21_X16"),
    ),
    ModelSpec(
        name="tadm-sd21-x32",
        number=4,
        kind="tadm",
        scales=(32,),
        description="TADM on Stable Diffusion 2.1 (the paper's model), 32x",
        needs=(
            "a model folder made by `tadm import-official` (--model-dir or TADM_SD21_X32) and a local "
            "Stable Diffusion 2.1 diffusers folder (TADM_SD21_DIR)"
        ),
        weights_dir=_env_dir("TADM_SD21_X32"),
    ),
)

MODELS: dict[str, ModelSpec] = {s.name: s for s in _SPECS}
_BY_NUMBER: dict[int, ModelSpec] = {s.number: s for s in _SPECS}


def get(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r} (known: {', '.join(MODELS)})") from None


def by_number(number: int) -> ModelSpec | None:
    return _BY_NUMBER.get(number)


def default_model(scale: int | None = None) -> ModelSpec:
    """The learned model for the scale if it is available here, else `bicubic`.

    Without a scale: tadm-tiny-x16 when available, else bicubic.
    """
    wanted = f"tadm-tiny-x{scale or 16}"
    spec = MODELS.get(wanted)
    if spec is not None and spec.availability()[0]:
        return spec
    return MODELS["bicubic"]


def with_weights_dir(spec: ModelSpec, path: str | os.PathLike) -> ModelSpec:
    """The same spec reading its weights from `path` (the CLI's --model-dir)."""
    if spec.kind == "bicubic":
        raise ModelError("--model-dir does not apply to the bicubic model")
    folder = Path(path).expanduser()
    return replace(spec, weights_dir=lambda: folder)


def load_rescaler(spec: ModelSpec, device: str = "auto", precision: str = "auto") -> Rescaler:
    """Build the runnable model; raises ModelError naming what is missing.

    precision: auto (fp16 on CUDA, fp32 elsewhere), fp32, fp16 or bf16.
    """
    if spec.kind == "bicubic":
        return BicubicRescaler()
    ok, why = spec.availability()
    if not ok:
        raise ModelError(f"model {spec.name} is not available: {why}")
    from tadmcodec.tadm.loader import load_tadm  # torch is imported only here

    return load_tadm(spec, device=device, precision=precision)
