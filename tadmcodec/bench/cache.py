"""Per-image result cache, so an interrupted benchmark resumes where it stopped.

One JSON-lines file per image under `<out>/cache/`, named by the SHA-256 of the
image's decoded pixels (so a renamed or re-saved file keeps its results). Each
line is one finished setting: `{"key": ..., "row": {...}}`, where the key joins
the setting, and what else changes its result: the model digest for our
models, the Pillow/imagecodecs versions for classic codecs. Lines are appended
and flushed one at a time; a line cut off by a crash is ignored on reading.
Only the process that owns the run writes (workers send results back).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np


def image_hash(pixels: np.ndarray) -> str:
    """SHA-256 over shape and pixels: identifies an image whatever its file name or format."""
    h = hashlib.sha256()
    h.update(repr(pixels.shape).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def cache_key(setting_key: str, version: str) -> str:
    return f"{setting_key}|{version}"


class ResultCache:
    """Finished rows of one benchmark output folder, keyed by image hash and cache key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._rows: dict[str, dict[str, dict]] = {}

    def _path(self, img_hash: str) -> Path:
        return self.folder / f"{img_hash[:32]}.jsonl"

    def load(self, img_hash: str) -> dict[str, dict]:
        """Rows already computed for an image (reads its file once)."""
        if img_hash not in self._rows:
            rows: dict[str, dict] = {}
            path = self._path(img_hash)
            if path.is_file():
                with open(path, encoding="utf-8") as f:
                    for line in f:
                        try:
                            item = json.loads(line)
                            rows[item["key"]] = item["row"]
                        except (ValueError, KeyError, TypeError):
                            continue  # partial last line after a crash
            self._rows[img_hash] = rows
        return self._rows[img_hash]

    def get(self, img_hash: str, key: str, metrics: tuple[str, ...]) -> dict | None:
        """The cached row if it has every metric asked for, else None."""
        row = self.load(img_hash).get(key)
        if row is None or any(m not in row for m in metrics):
            return None
        return row

    def put(self, img_hash: str, key: str, row: dict) -> None:
        self.load(img_hash)[key] = row
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self._path(img_hash), "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "row": row}, allow_nan=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
