"""Run every setting on every image, with a resumable cache and optional worker processes.

The unit of work is one (image, setting): code the image, measure the rate,
compute the quality metrics at full resolution against the original. Results
come back to this process, which alone writes the cache, so `--jobs` workers
never race on a file. Workers are spawned (not forked: forking a process that
has started torch's thread pool can deadlock) and each gets an equal share of
the CPU cores for torch, so N jobs do not oversubscribe the machine N-fold.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from tadmcodec import registry
from tadmcodec.bench import classic
from tadmcodec.bench.cache import ResultCache, cache_key, image_hash
from tadmcodec.bench.settings import (
    DEFAULT_AVIF_SPEED,
    DEFAULT_JXL_EFFORT,
    GRIDS,
    Setting,
    classic_settings,
    model_settings,
)
from tadmcodec.errors import InputError, ModelError, TadmError
from tadmcodec.files import expand_inputs
from tadmcodec.imageio import INPUT_EXTENSIONS, load_image

if TYPE_CHECKING:
    from tadmcodec.bench.reuse import Seeded
    from tadmcodec.metrics.evaluation import Evaluator

ALL_METRICS: tuple[str, ...] = ("psnr", "ssim", "lpips_alex", "lpips_vgg", "dists")
"""The metric names of `tadmcodec.metrics.METRICS` (kept here so --help needs no torch)."""

DEFAULT_LR_CODECS: tuple[str, ...] = ("png", "webp", "jxl")
MAX_PIXELS = 64_000_000


@dataclass
class BenchConfig:
    """Everything that selects what a benchmark run computes."""

    inputs: tuple[str, ...]
    out: Path
    grid: str = "full"
    codecs: tuple[str, ...] | None = None  # None: the grid's
    shrinks: tuple[int, ...] | None = None  # None: the grid's
    overrides: dict[str, tuple[float, ...]] = field(default_factory=dict)
    avif_speed: int = DEFAULT_AVIF_SPEED
    jxl_effort: int = DEFAULT_JXL_EFFORT
    models: tuple[str, ...] | None = None  # None: every model available here
    scales: tuple[int, ...] = (8, 16, 32)
    lr_codecs: tuple[str, ...] = DEFAULT_LR_CODECS
    metrics: tuple[str, ...] = ALL_METRICS
    jobs: int = 1
    threads: int | None = None  # torch threads per job; None: cores // jobs
    device: str = "cpu"
    limit: int | None = None  # only the first N images (sorted by path)
    model_dirs: dict[str, Path] = field(default_factory=dict)
    reuse: Path | None = None  # an earlier results.csv whose classic and bicubic rows seed the cache


@dataclass(frozen=True)
class BenchImage:
    name: str
    path: str
    sha: str
    width: int
    height: int


@dataclass
class BenchRun:
    """What a run produced: rows (one per image x setting) and how many were computed now."""

    config: BenchConfig
    images: list[BenchImage]
    settings: list[Setting]
    rows: list[dict]
    computed: int
    cached: int
    seconds: float
    reused: Seeded | None = None  # what --reuse put into the cache (counted in `cached`)


ProgressFn = Callable[[int, int], None]  # (done, total)


def select_models(config: BenchConfig) -> list[registry.ModelSpec]:
    """Models to run: those named (each must be available) or every available one."""
    from tadmcodec.codec import Codec

    codec = Codec(device=config.device, model_dirs=dict(config.model_dirs))
    if config.models is None:
        specs = [codec.spec(n) for n in registry.MODELS]
        return [s for s in specs if s.availability()[0]]
    out = []
    for name in config.models:
        spec = codec.spec(name)
        ok, why = spec.availability()
        if not ok:
            raise ModelError(f"model {name} is not available: {why}")
        out.append(spec)
    return out


def plan_settings(config: BenchConfig) -> tuple[list[Setting], dict[str, str]]:
    """All settings of the run, and the version tag (digest or library versions) per curve family."""
    if config.grid not in GRIDS:
        raise InputError(f"unknown grid {config.grid!r} (known: {', '.join(GRIDS)})")
    _check_lr_codecs(config.lr_codecs)
    for s in config.scales:
        if s not in (8, 16, 32):
            raise InputError(f"scale must be 8, 16 or 32, not {s}")
    settings = classic_settings(
        GRIDS[config.grid], config.codecs, config.avif_speed, config.jxl_effort, config.overrides, config.shrinks
    )
    specs = select_models(config)
    versions = {"classic": classic.library_versions()}
    for spec in specs:
        versions[spec.name] = f"{spec.name}@{spec.digest().hex()}"
    ours = model_settings([s.name for s in specs], config.scales, config.lr_codecs, {s.name: s.scales for s in specs})
    if not ours + settings:
        raise InputError("nothing to run: no classic codec and no model selected")
    return ours + settings, versions


def _check_lr_codecs(names: tuple[str, ...]) -> None:
    from tadmcodec.container import LR_CODECS

    for n in names:
        if n != "auto" and n not in LR_CODECS:
            raise InputError(f"unknown LR codec {n!r} (known: auto, {', '.join(LR_CODECS)})")


def find_images(config: BenchConfig) -> list[BenchImage]:
    """Load every input image once to name it and hash its pixels."""
    found = expand_inputs(config.inputs, INPUT_EXTENSIONS)
    found = [(p, root) for p, root in found if p != "-"]
    if not found:
        raise InputError("no images found in " + " ".join(config.inputs))
    if config.limit is not None:
        found = found[: config.limit]
    images: list[BenchImage] = []
    seen: set[str] = set()
    for path, root in found:
        pixels = read_image(path)
        name = str(Path(path).relative_to(root)) if root is not None else Path(path).name
        sha = image_hash(pixels)
        if sha in seen:
            continue  # the same picture twice would count twice in every mean
        seen.add(sha)
        images.append(BenchImage(name=name, path=path, sha=sha, width=pixels.shape[1], height=pixels.shape[0]))
    return images


def read_image(path: str) -> np.ndarray:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        img = load_image(data, max_pixels=MAX_PIXELS)
    except TadmError as exc:
        raise InputError(f"{path}: {exc}") from None
    if min(img.pixels.shape[:2]) < 32:
        raise InputError(f"{path}: image is smaller than 32 px on a side (the perceptual metrics need more)")
    return img.pixels


def run(config: BenchConfig, progress: ProgressFn | None = None) -> BenchRun:
    """Compute (or take from the cache) every row; the caller writes the reports."""
    start = time.perf_counter()
    if config.jobs < 1:
        raise InputError("--jobs must be at least 1")
    for m in config.metrics:
        if m not in ALL_METRICS:
            raise InputError(f"unknown metric {m!r} (known: {', '.join(ALL_METRICS)})")
    settings, versions = plan_settings(config)
    images = find_images(config)
    cache = ResultCache(config.out / "cache")
    worker: _Worker | None = None

    def local_worker() -> _Worker:  # one per run: the --reuse spot check and the local rows share it
        nonlocal worker
        if worker is None:
            keep_freed_memory()
            worker = _Worker(config.device, config.metrics, config.model_dirs)
        return worker

    reused = None
    if config.reuse is not None:
        from tadmcodec.bench.reuse import seed_cache

        with torch_threads(config.threads):
            reused = seed_cache(config.reuse, cache, images, settings, versions, config.metrics, local_worker)
    rows: dict[tuple[int, int], dict] = {}
    todo: list[tuple[int, int, str]] = []
    for i, img in enumerate(images):
        for j, s in enumerate(settings):
            key = cache_key(s.key, versions["classic" if s.classic else s.model])
            hit = cache.get(img.sha, key, config.metrics)
            if hit is not None:
                rows[(i, j)] = dict(hit, image=img.name)
            else:
                todo.append((i, j, key))
    total = len(images) * len(settings)
    cached = total - len(todo)
    done = cached
    if progress:
        progress(done, total)

    def finish(i: int, j: int, key: str, row: dict) -> None:
        nonlocal done
        cache.put(images[i].sha, key, row)
        rows[(i, j)] = dict(row, image=images[i].name)
        done += 1
        if progress:
            progress(done, total)

    if config.jobs == 1 or len(todo) <= 1:
        with torch_threads(config.threads):
            for i, j, key in todo:
                finish(i, j, key, local_worker().row(images[i], settings[j]))
    else:
        _run_pool(config, images, settings, todo, finish)
    ordered = [rows[(i, j)] for i in range(len(images)) for j in range(len(settings))]
    return BenchRun(config, images, settings, ordered, len(todo), cached, time.perf_counter() - start, reused)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the kernel.

    Full-resolution VGG16 feature maps are hundreds of MB each; glibc serves
    such blocks with mmap and unmaps them on free, so every metric pass
    page-faults its buffers in afresh. On the 2-core VM that kernel time was a
    third of a LPIPS-VGG evaluation (1.65 s of system time in 10.3 s; 0.08 s
    with this setting). Peak memory is unchanged, the process just keeps it.
    Returns False where there is no glibc (macOS, Windows, musl).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with n torch threads, then restore the previous count (None: leave torch's default).

    On a loaded machine fewer threads can be much faster: idle-spinning OpenMP
    workers compete with other processes for the same cores.
    """
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_pool(config: BenchConfig, images, settings, todo, finish) -> None:
    ctx = get_context("spawn")
    threads = config.threads or max(1, (os.cpu_count() or 1) // config.jobs)
    with ProcessPoolExecutor(
        max_workers=config.jobs,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(config.device, config.metrics, config.model_dirs, threads),
    ) as pool:
        futures = {pool.submit(_pool_row, images[i], settings[j]): (i, j, key) for i, j, key in todo}
        try:
            for fut in as_completed(futures):
                i, j, key = futures[fut]
                finish(i, j, key, fut.result())
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


class _Worker:
    """Codes and measures; keeps models, the current image and a metrics memo between calls."""

    def __init__(self, device: str, metrics: tuple[str, ...], model_dirs: dict[str, Path]) -> None:
        from tadmcodec.codec import Codec

        self.codec = Codec(device=device, model_dirs=dict(model_dirs))
        self.device = device
        self.metrics = metrics
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()
        self._memo: OrderedDict[tuple[str, str], dict[str, float]] = OrderedDict()
        self._evaluator: tuple[str, Evaluator] | None = None  # (image sha, Evaluator holding its features)

    def pixels(self, img: BenchImage) -> np.ndarray:
        if img.sha not in self._images:
            px = read_image(img.path)
            if image_hash(px) != img.sha:
                raise InputError(f"{img.path}: changed while the benchmark was running")
            self._images[img.sha] = px
            while len(self._images) > 2:
                self._images.popitem(last=False)
        return self._images[img.sha]

    def row(self, img: BenchImage, s: Setting) -> dict:
        ref = self.pixels(img)
        h, w = ref.shape[:2]
        if s.classic:
            coded = classic.code(ref, s)
            n_bytes, decoded, enc_s, dec_s = coded.n_bytes, coded.decoded, coded.encode_s, coded.decode_s
        else:
            t0 = time.perf_counter()
            data = self.codec.encode(ref, model=s.model, scale=int(s.param), lr_codec=s.lr_codec)
            t1 = time.perf_counter()
            decoded = self.codec.decode(data).pixels
            t2 = time.perf_counter()
            n_bytes, enc_s, dec_s = len(data), t1 - t0, t2 - t1
        if decoded.shape != ref.shape:
            raise TadmError(f"{s.label} decoded {decoded.shape}, expected {ref.shape}")
        values = self._measure(img.sha, ref, decoded)
        mp = w * h / 1e6
        row = {
            "image": img.name,
            "width": w,
            "height": h,
            "setting": s.key,
            "label": s.label,
            "curve": s.curve,
            "kind": "classic" if s.classic else "ours",
            "codec": s.family if s.classic else s.model,
            "param_name": s.param_name,
            "param": s.param,
            "shrink": s.shrink,
            "lr_codec": s.lr_codec,
            "bytes": n_bytes,
            "bpp": 8.0 * n_bytes / (w * h),
            **values,
            "enc_s": enc_s,
            "dec_s": dec_s,
            "enc_s_per_mp": enc_s / mp,
            "dec_s_per_mp": dec_s / mp,
        }
        return row

    def _measure(self, sha: str, ref: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
        """All metrics, once per distinct decoded picture (lossless LR codecs decode identically)."""
        key = (sha, hashlib.sha256(decoded.tobytes()).hexdigest())
        if key not in self._memo:
            if self._evaluator is None or self._evaluator[0] != sha:
                from tadmcodec.metrics.evaluation import Evaluator

                self._evaluator = None  # free the previous image's features first
                self._evaluator = (sha, Evaluator(ref, metrics=self.metrics, device=self.device))
            values = self._evaluator[1](decoded)
            self._memo[key] = {m: float(values[m]) for m in self.metrics}
            while len(self._memo) > 64:
                self._memo.popitem(last=False)
        return dict(self._memo[key])


_POOL_WORKER: _Worker | None = None


def _init_worker(device: str, metrics: tuple[str, ...], model_dirs: dict[str, Path], threads: int) -> None:
    global _POOL_WORKER
    import torch

    torch.set_num_threads(threads)
    keep_freed_memory()
    _POOL_WORKER = _Worker(device, metrics, model_dirs)


def _pool_row(img: BenchImage, s: Setting) -> dict:
    assert _POOL_WORKER is not None
    return _POOL_WORKER.row(img, s)
