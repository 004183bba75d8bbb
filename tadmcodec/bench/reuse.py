"""Reuse an earlier run's measured rows: `tadm bench --reuse results.csv`.

Adding a model to a committed benchmark should not mean coding every photo with every classic
codec again (most of the 91 minutes of the Urban100 run). The rows of settings whose result
depends on no weights (the classic codecs, given their library versions, and `bicubic`) are copied
from the earlier run's `results.csv` into this run's cache, so the run computes only the rest.

Nothing is taken on trust: before seeding, one classic row and one bicubic row are coded and
measured again here, and a mismatch in bytes or in any metric refuses the whole file. Rows of
learned models are never reused, since a `results.csv` does not record their weights digest.
Reused rows keep their timing columns, measured when and where that run was made; they carry
`reused_from` in the cache, and the summary counts them and names the file.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from tadmcodec.bench.cache import ResultCache, cache_key
from tadmcodec.bench.settings import Setting
from tadmcodec.errors import InputError

if TYPE_CHECKING:  # runner imports this module inside run(): no import cycle at run time
    from tadmcodec.bench.runner import BenchImage, _Worker

_INT_COLUMNS = ("width", "height", "shrink", "bytes")
_TEXT_COLUMNS = ("image", "setting", "label", "curve", "kind", "codec", "param_name", "lr_codec")
_CHECK_TOLERANCE = 1e-4  # metrics recomputed here vs the file (float32 networks: tiny jitter only)


@dataclass
class Seeded:
    """What `seed_cache` did: rows put into the cache, and the two settings it re-measured."""

    rows: int
    checked: list[str]


def reusable(s: Setting) -> bool:
    """A setting whose result depends on no weights: a classic codec, or `bicubic`."""
    return s.classic or s.model == "bicubic"


def _typed(row: dict[str, str]) -> dict:
    """A CSV row back into the cache's types (empty cells, i.e. metrics not measured, are dropped)."""
    out: dict = {}
    for k, v in row.items():
        if v == "" or v is None:
            continue
        if k in _TEXT_COLUMNS:
            out[k] = v
        elif k in _INT_COLUMNS:
            out[k] = int(v)
        else:
            out[k] = float(v)
    return out


def read_results(path: Path) -> dict[tuple[str, str], dict]:
    """`results.csv` as {(image name, setting key): typed row}."""
    not_ours = InputError(f"--reuse: {path} is not a results.csv written by tadm bench")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = set(reader.fieldnames or ())
    except OSError as exc:
        raise InputError(f"--reuse: cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error):
        raise not_ours from None
    if not {"image", "setting", "kind", "bytes"} <= columns:
        raise not_ours
    try:
        return {(r["image"], r["setting"]): _typed(r) for r in rows}
    except (ValueError, TypeError):
        raise not_ours from None


def _mismatch(old: dict, new: dict, metrics: tuple[str, ...]) -> str | None:
    if old.get("bytes") != new["bytes"]:
        return f"{old.get('bytes')} bytes there, {new['bytes']} here"
    for m in metrics:
        a, b = old.get(m), new[m]
        if a is None or not (math.isclose(a, b, rel_tol=_CHECK_TOLERANCE, abs_tol=_CHECK_TOLERANCE)
                             or (math.isnan(a) and math.isnan(b))):
            return f"{m} {a} there, {b} here"
    return None


def seed_cache(results_csv: Path, cache: ResultCache, images: list[BenchImage], settings: list[Setting],
               versions: dict[str, str], metrics: tuple[str, ...], worker: Callable[[], _Worker]) -> Seeded:
    """Put the reusable rows of `results_csv` for this run's images x settings into `cache`.

    Called by `runner.run` with the images, settings and cache it has already built. Re-measures
    the first reusable classic and bicubic rows first (with `worker()`, the run's own worker) and
    raises an `InputError` when either differs, so rows from other library versions or other code
    are never mixed in.
    """
    old = read_results(results_csv)
    wanted = [(img, s) for img in images for s in settings if reusable(s) and (img.name, s.key) in old]
    checked: list[str] = []
    for pick in (lambda s: s.classic, lambda s: not s.classic):
        first = next(((img, s) for img, s in wanted if pick(s)), None)
        if first is None:
            continue
        img, s = first
        why = _mismatch(old[(img.name, s.key)], worker().row(img, s), metrics)
        if why:
            raise InputError(f"--reuse: {results_csv} does not match this machine for {s.key} on {img.name} "
                             f"({why}); run without --reuse")
        checked.append(f"{s.key} on {img.name}")
    n = 0
    for img, s in wanted:
        key = cache_key(s.key, versions["classic" if s.classic else s.model])
        row = old[(img.name, s.key)]
        if cache.get(img.sha, key, metrics) is None and all(m in row for m in metrics):
            cache.put(img.sha, key, dict(row, reused_from=str(results_csv)))  # the summary says so
            n += 1
    return Seeded(n, checked)


__all__ = ["Seeded", "read_results", "reusable", "seed_cache"]
