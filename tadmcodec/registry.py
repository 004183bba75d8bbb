"""The one registry of named models, and the rule that keeps users' files decodable.

Every model is a typed spec: a name users type, a compact number that `.tadm`
files store, its scale, and where its weights live. A file also records a digest
of the model's weights and config, and decoding with a model whose digest
differs is refused (naming the model needed).

The release rule (docs/models.md): a *stable* model (one that passed the default
bar) is pinned to its weights digest, and its number never changes meaning;
better weights ship under a new number, and the superseded weights stay in the
package under `<name>-n<number>` so that every file made by an earlier release
still decodes. An *experimental* model's weights may change between releases, so
its older files may be refused; it runs only when asked for by name and never
becomes the default. `check_release_rules` enforces this, and a test runs it on
the shipped registry.

This module imports no torch, numpy or Pillow: `tadm info` and `tadm models` stay
instant. The rescalers (`tadmcodec.rescaler`, numpy and Pillow) are imported when one
is built, and the TADM loader (`tadmcodec.tadm.loader`, torch) only when a TADM model runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tadmcodec.errors import ModelError
from tadmcodec.sizes import SCALES

if TYPE_CHECKING:
    from tadmcodec.rescaler import Rescaler

DIGEST_SIZE = 4
"""Bytes of the SHA-256 of (config, weights) stored in a `.tadm` file."""

PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "weights"
RELEASE_FILE = "release.json"
IMPLICIT_KEY = "implicit_decoder"  # = tadm.spec.IMPLICIT_KEY (spec is imported only when needed)
IMPLICIT_FILE = "implicit_decoder.safetensors"  # = tadm.spec.IMPLICIT_FILE
"""Beside a packaged model's weights: what was measured (status notes, bar results, steps). Not hashed."""

STATUSES = ("builtin", "stable", "retired", "experimental", "external")
"""builtin: bicubic. stable: passed the default bar, digest pinned. retired: a stable model's
superseded weights, kept so that old files decode. experimental: not yet past the default bar.
external: weights the user provides (sd21 imports)."""


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
    status: str = "external"  # one of STATUSES
    pinned_digest: str = ""  # hex; required for stable and retired models
    superseded_by: int | None = None  # retired: the number of the model that replaced it
    headline_passes: tuple[int, int, int] = (0, 0, 0)
    """Stable models: photos passing each headline term on the committed bar that promoted it
    (release.json's `bar`; a test checks the figures), in the order LPIPS-Alex vs the best classic
    file, DISTS vs the best classic file, PSNR +0.5 dB over bicubic. `default_rank` orders the
    stable models by them for the default."""

    @property
    def default_rank(self) -> tuple[int, int]:
        """(passes against the classic codecs, PSNR passes): larger is nearer the headline bar.

        The two terms against the best classic file come first because they say whether a user
        should pick this file over AVIF or JPEG at the same bytes, which is the product's claim;
        the PSNR term compares with our own bicubic baseline, so it only breaks ties
        (docs/models.md, "The default").
        """
        lpips, dists, psnr = self.headline_passes
        return lpips + dists, psnr

    @property
    def default_eligible(self) -> bool:
        """Only a stable model may be the default; experimental ones run only when named."""
        return self.status == "stable"

    def release_notes(self) -> dict:
        """The packaged `release.json` beside the weights ({} when absent or unreadable)."""
        d = self.weights_dir()
        if d is None:
            return {}
        try:
            notes = json.loads((d / RELEASE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return notes if isinstance(notes, dict) else {}

    def status_line(self) -> str:
        """What `tadm models` says of the model's standing, in words."""
        if self.status == "experimental":
            fails = self.release_notes().get("fails")
            return "experimental: " + (f"fails {fails}" if fails else "not yet measured against the default bar")
        if self.status == "retired":
            return f"retired: decodes files of earlier releases (superseded by model #{self.superseded_by})"
        return self.status

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

        The optional implicit decoder (model.json's `implicit_decoder` and its
        `implicit_decoder.safetensors`) is left out: it only renders the final latent
        at other sizes, so a file decodes the same at its own size with or without it,
        and adding one to a folder keeps every file made before decodable
        (docs/models.md). Computed afresh on every call (no cache keyed on file
        times, which can miss a rewrite); `Codec` keeps it for as long as it keeps
        the model loaded.
        """
        h = hashlib.sha256()
        config = {k: v for k, v in self.config().items() if k != IMPLICIT_KEY}
        h.update(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
        if self.kind != "bicubic":
            d = self.weights_dir()
            assert d is not None
            for p in sorted(q for q in d.glob("*.safetensors") if q.name != IMPLICIT_FILE):
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
        status="builtin",
    ),
    ModelSpec(
        name="tadm-tiny-x16-n1",
        number=1,
        kind="tadm",
        scales=(16,),
        description="small TADM trained by this project, 16x: the earlier weights, kept to decode files made with them",
        needs="trained weights, not in this release",
        weights_dir=_package_dir("tadm-tiny-x16-n1"),
        status="retired",  # stable from session 17 (bar: benchmarks/results/quality_bar/tiny-cpu-session16)
        pinned_digest="81b8d2bd",
        superseded_by=6,
        headline_passes=(0, 0, 3),
    ),
    ModelSpec(
        name="tadm-tiny-x32",
        number=2,
        kind="tadm",
        scales=(32,),
        description="small TADM trained by this project, 32x",
        needs="trained weights, not in this release",
        weights_dir=_package_dir("tadm-tiny-x32"),
        status="stable",  # passed the default bar in session 14 (benchmarks/results/quality_bar/tiny-cpu-session14)
        pinned_digest="eeeb3960",
        headline_passes=(2, 1, 6),
    ),
    ModelSpec(
        name="tadm-sd21-x16",
        number=3,
        kind="tadm",
        scales=(16,),
        description="TADM on Stable Diffusion 2.1 (the paper's model), 16x",
        needs=(
            "a model folder made by `tadm import-official`, given with --model-dir or the environment "
            "variable TADM_SD21_X16, and a local Stable Diffusion 2.1 diffusers folder (--sd-dir or TADM_SD21_DIR)"
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
            "a model folder made by `tadm import-official`, given with --model-dir or the environment "
            "variable TADM_SD21_X32, and a local Stable Diffusion 2.1 diffusers folder (--sd-dir or TADM_SD21_DIR)"
        ),
        weights_dir=_env_dir("TADM_SD21_X32"),
    ),
    ModelSpec(
        name="tadm-tiny-x8-n5",
        number=5,
        kind="tadm",
        scales=(8,),
        description="small TADM trained by this project, 8x (the weights of releases before session 20)",
        needs="trained weights, not in this release",
        weights_dir=_package_dir("tadm-tiny-x8-n5"),
        status="retired",  # stable from session 19 (bar: benchmarks/results/quality_bar/tiny-cpu-session18)
        pinned_digest="5dc856af",
        superseded_by=7,
        headline_passes=(0, 0, 13),
    ),
    ModelSpec(
        name="tadm-tiny-x16-n6",
        number=6,
        kind="tadm",
        scales=(16,),
        description="small TADM trained by this project, 16x (the weights of releases from session 19 to 21)",
        needs="trained weights, not in this release",
        weights_dir=_package_dir("tadm-tiny-x16-n6"),
        status="retired",  # stable from session 19 (bar: benchmarks/results/quality_bar/tiny-cpu-session19)
        pinned_digest="d26b6468",
        superseded_by=8,
        headline_passes=(0, 0, 4),
    ),
    ModelSpec(
        name="tadm-tiny-x8",
        number=7,
        kind="tadm",
        scales=(8,),
        description="small TADM trained by this project, 8x",
        needs="trained weights, not in this release",
        weights_dir=_package_dir("tadm-tiny-x8"),
        status="stable",  # beat number 5 on the bar in session 20 (benchmarks/results/quality_bar/tiny-cpu-session20)
        pinned_digest="4d2cdaa3",
        headline_passes=(0, 0, 14),
    ),
    ModelSpec(
        name="tadm-tiny-x16",
        number=8,
        kind="tadm",
        scales=(16,),
        description="small TADM trained by this project, 16x",
        needs="trained weights, not in this release",
        weights_dir=_package_dir("tadm-tiny-x16"),
        status="stable",  # beat number 6 on the bar in session 21 (benchmarks/results/quality_bar/tiny-cpu-session21)
        pinned_digest="b15351b8",
        headline_passes=(0, 0, 12),
    ),
)
"""Append only. To ship better weights of a stable model: move its folder to `<name>-n<number>`,
mark its spec retired (same number and pin, `superseded_by`), and add a new spec under the old
name with a number never used before (docs/models.md)."""


class Registry:
    """Name and number look-ups over a tuple of specs, and the default choice.

    The package has one (`REGISTRY`); tests build others to play an older and a newer release.
    """

    def __init__(self, specs: tuple[ModelSpec, ...]) -> None:
        self.specs = specs
        self.models: dict[str, ModelSpec] = {s.name: s for s in specs}
        self.by_numbers: dict[int, ModelSpec] = {s.number: s for s in specs}

    def get(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise ModelError(f"unknown model {name!r} (known: {', '.join(self.models)})") from None

    def by_number(self, number: int) -> ModelSpec | None:
        return self.by_numbers.get(number)

    def default_model(self, scale: int | None = None) -> ModelSpec:
        """The stable, available model (at `scale`, if given) nearest the headline bar; `bicubic` while none has passed.

        Nearest: the highest `default_rank` (headline passes against the classic codecs, then
        PSNR passes), the first in the registry on a tie. Every stable model has passed the
        default bar, so this picks among models that all beat bicubic by how close each comes to
        the classic codecs. Experimental models are never chosen: they run only when named.
        """
        ranked = sorted((s for s in self.specs if s.default_eligible and (scale is None or scale in s.scales)),
                        key=lambda s: s.default_rank, reverse=True)  # stable: registry order on a tie
        return next((s for s in ranked if s.availability()[0]), self.models["bicubic"])


def check_release_rules(reg: Registry) -> list[str]:
    """What breaks the release rule in `reg` (empty when it holds).

    Numbers and names unique; statuses known; stable and retired models pinned, their weights
    present and matching the pin (so weights never change under a number); a retired model
    names a successor that exists; an experimental model with weights says what it fails; a
    `release.json` that states a status agrees with the registry's.
    """
    problems: list[str] = []
    if len(reg.models) != len(reg.specs) or len(reg.by_numbers) != len(reg.specs):
        problems.append("model names and numbers must be unique")
    for spec in reg.specs:
        if spec.status not in STATUSES:
            problems.append(f"{spec.name}: unknown status {spec.status!r}")
        if spec.status in ("stable", "retired"):
            if not spec.pinned_digest:
                problems.append(f"{spec.name}: a {spec.status} model needs a pinned digest")
            elif not spec.availability()[0]:
                problems.append(f"{spec.name}: {spec.status}, but its weights are missing: {spec.availability()[1]}")
            elif spec.digest().hex() != spec.pinned_digest:
                problems.append(f"{spec.name}: weights digest {spec.digest().hex()} differs from the pinned "
                                f"{spec.pinned_digest}: ship changed weights under a new number")
        if spec.status == "retired" and reg.by_number(spec.superseded_by or -1) is None:
            problems.append(f"{spec.name}: retired without an existing successor")
        notes = spec.release_notes()
        if spec.status == "experimental" and spec.availability()[0] and not notes.get("fails"):
            problems.append(f"{spec.name}: experimental weights ship without {RELEASE_FILE} saying what they fail")
        noted = notes.get("status")
        if noted is not None and noted != spec.status:
            problems.append(f"{spec.name}: its {RELEASE_FILE} says {noted!r}, the registry {spec.status!r}")
    return problems


REGISTRY = Registry(_SPECS)
MODELS: dict[str, ModelSpec] = REGISTRY.models


def get(name: str) -> ModelSpec:
    return REGISTRY.get(name)


def by_number(number: int) -> ModelSpec | None:
    return REGISTRY.by_number(number)


def default_model(scale: int | None = None) -> ModelSpec:
    """The package's default (see `Registry.default_model`)."""
    return REGISTRY.default_model(scale)


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
        from tadmcodec.rescaler import BicubicRescaler  # numpy and Pillow are imported only here

        return BicubicRescaler()
    ok, why = spec.availability()
    if not ok:
        raise ModelError(f"model {spec.name} is not available: {why}")
    from tadmcodec.tadm.loader import load_tadm  # torch is imported only here

    return load_tadm(spec, device=device, precision=precision)


def __getattr__(name: str) -> Any:
    """`registry.BicubicRescaler` and `registry.Rescaler` still work, importing the rescaler module on first use."""
    if name in ("BicubicRescaler", "Rescaler"):
        from tadmcodec import rescaler

        return getattr(rescaler, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
