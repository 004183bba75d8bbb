"""Argument handling shared by the scripts in benchmarks/ (crops, quality bar)."""

from __future__ import annotations

from pathlib import Path

from tadmcodec import registry
from tadmcodec.errors import InputError

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")


def models_and_dirs(items: list[str]) -> tuple[list[str], dict[str, Path]]:
    """`NAME[=DIR]` items -> model names (first occurrence order) and the weights folders given."""
    names: list[str] = []
    dirs: dict[str, Path] = {}
    for item in items:
        name, _, folder = item.partition("=")
        registry.get(name)  # one-line error for an unknown id
        if folder:
            if not Path(folder).is_dir():
                raise InputError(f"weights folder {folder} for {name} does not exist")
            dirs[name] = Path(folder)
        if name not in names:
            names.append(name)
    return names, dirs


def named_photos(folder: Path, names: list[str] | None = None, limit: int | None = None) -> list[tuple[str, Path]]:
    """(stem, path) of the photos in `folder`: the `names` given, in that order, else all sorted."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder (the Urban100 photos live in ../shared/data/urban100)")
    files = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES}
    if names:
        missing = [n for n in names if n not in files]
        if missing:
            raise InputError(f"no photo named {', '.join(missing)} in {folder}")
        chosen = [(n, files[n]) for n in names]
    else:
        chosen = sorted(files.items())
    if not chosen:
        raise InputError(f"no photos in {folder}")
    return chosen[:limit] if limit else chosen
