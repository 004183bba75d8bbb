"""Batch coding on Ray Data: a Dataset of images becomes a Dataset of `.tadm` bytes, and back.

A photo archive or a dataset of millions of images outgrows one machine; its
users already run Ray Data for batch inference, so tadmcodec runs there as a
`map_batches` stage instead of shipping a scheduler of its own:

    import ray, tadmcodec.distributed as td
    ds = ray.data.read_binary_files("s3://bucket/photos", include_paths=True)
    out = td.encode_dataset(ds, model="bicubic", scale=16)   # columns: path, tadm, error, ...
    back = td.decode_dataset(out, format="png")              # columns: path, image_bytes, error, ...

Each Ray worker is an actor (a callable class), so it loads the model once and
keeps it for every batch it is given. A worker runs the same `Codec` as
`tadm encode`, so the bytes are the same as on one machine (on the same device,
precision and library versions). A file that cannot be coded does not fail the
Dataset: its row carries the reason in the `error` column and the others go on.

`tadm encode/decode --engine ray` (`tadmcodec.cli_ray`) builds on this module:
`plan` pairs inputs and outputs, local folders or any URI that pyarrow
understands (`s3://`, `gs://`, `file://`...), and `read_bytes`/`write_bytes`
read and write either kind. Ray is an optional extra (`tadmcodec[ray]`): this
module imports it only inside the functions that need it, so `import
tadmcodec.distributed` works without it and `require_ray` says what to install.
"""

from __future__ import annotations

import functools
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from tadmcodec import container
from tadmcodec.errors import InputError, TadmError
from tadmcodec import files as _files
from tadmcodec.files import STDIO, Job, expand_inputs, read_source, write_target
from tadmcodec.lr_choice import DEFAULT_EFFORT, user_effort

if TYPE_CHECKING:  # only for annotations: importing ray costs seconds and is optional
    import pyarrow.fs
    import ray.data

INSTALL_HINT = "pip install 'tadmcodec[ray]'"

# Environment variables that tell the model specs where weights live. A worker on
# another node does not inherit the driver's environment, so these travel with it.
MODEL_ENV_VARS = ("TADM_SD21_DIR", "TADM_SD_VAE_DIR", "TADM_SD21_X16", "TADM_SD21_X32")

ENCODE_INPUTS = ("image", "bytes", "path")
"""Input columns `encode_dataset` looks for, in this order: pixels (ray.data.read_images),
file bytes (ray.data.read_binary_files), or a path/URI the worker reads."""

DECODE_INPUTS = ("tadm", "bytes", "path")
"""Input columns `decode_dataset` looks for: `.tadm` bytes (encode_dataset's output),
file bytes, or a path/URI."""

METADATA_CHOICES = ("none", "icc", "exif", "all")

INTERNAL_ERROR = "internal error: "
"""Prefix of an `error` that is a bug rather than the input's fault (the CLI exits 1, not 2)."""


def require_ray():
    """Import ray and ray.data, or a one-line TadmError that names the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray without the [data] extra lacks its dependencies)
    except ImportError as exc:
        raise TadmError(f"--engine ray needs Ray Data ({exc}): {INSTALL_HINT}") from None
    return ray


# ----------------------------------------------------------------------------- files and URIs

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(name: str) -> bool:
    """True for `scheme://...` names (pyarrow filesystems); plain paths stay on tadmcodec.files."""
    return bool(_URI.match(name))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _io_errors() -> tuple[type[BaseException], ...]:
    """What pyarrow raises for an unreachable, missing or refused object (it has several bases)."""
    import pyarrow as pa

    return (OSError, ValueError, NotImplementedError, pa.lib.ArrowException)


@functools.lru_cache(maxsize=64)
def _filesystem(scheme: str, netloc: str, query: str) -> tuple[Any, str | None]:
    """A pyarrow filesystem for one store, and the prefix its paths carry before the URI's path.

    Cached per store because making an S3 filesystem can cost a round trip (the
    bucket's region), which millions of files must not pay each. The prefix is
    learnt from a sample path: the bucket for s3:// and gs://, nothing for file://;
    None for a scheme whose paths do not end with the URI's (each URI then goes
    to pyarrow alone).
    """
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(urlunsplit((scheme, netloc, "/x", query, "")))
    return fs, (path[:-2] if path.endswith("/x") else None)


def split_uri(uri: str) -> tuple["pyarrow.fs.FileSystem", str]:
    """(filesystem, path inside it) for a URI, as `pyarrow.fs.FileSystem.from_uri` gives them."""
    parts = urlsplit(uri)
    path = unquote(parts.path).rstrip("/")
    try:
        fs, prefix = _filesystem(parts.scheme, parts.netloc, parts.query)
        if prefix is None:
            import pyarrow.fs as pafs

            return pafs.FileSystem.from_uri(uri)
        return fs, (prefix + path) or "/"
    except _io_errors() as exc:
        raise TadmError(f"{uri}: {_one_line(exc)}") from None


def _uri_child(base: str, rel: str) -> str:
    """`base` URI joined with a relative POSIX path (query kept, special characters quoted)."""
    p = urlsplit(base)
    return urlunsplit((p.scheme, p.netloc, p.path.rstrip("/") + "/" + quote(rel), p.query, ""))


def _uri_with_suffix(uri: str, suffix: str) -> str:
    p = urlsplit(uri)
    return urlunsplit((p.scheme, p.netloc, quote(str(PurePosixPath(unquote(p.path)).with_suffix(suffix))), p.query, ""))


def read_bytes(source: str) -> bytes:
    """A file's bytes from a local path (as `tadm encode` reads it) or a URI."""
    if not is_uri(source):
        return read_source(source)
    fs, path = split_uri(source)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except _io_errors() as exc:
        raise TadmError(f"cannot read: {_one_line(exc)}") from None


def target_exists(target: str) -> bool:
    """Whether an output is already there (checked before coding, so a refused file costs nothing)."""
    if not is_uri(target):
        return Path(target).exists()
    import pyarrow.fs as pafs

    fs, path = split_uri(target)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except _io_errors() as exc:
        raise TadmError(f"cannot check {target}: {_one_line(exc)}") from None


def write_bytes(target: str, data: bytes, force: bool) -> None:
    """Write an output without ever leaving a partial one; refuse to replace one without `force`.

    Local paths go through `tadmcodec.files.write_target` (temp file, fsync, rename).
    A URI is written to a hidden temporary name beside the target and then moved:
    on an object store the move is a server-side copy and delete, so the final
    name only ever holds a complete object (a crash can leave a `.part` object).
    """
    if not is_uri(target):
        write_target(target, data, force)
        return
    import pyarrow.fs as pafs

    fs, path = split_uri(target)
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    tmp = f"{parent}/" * bool(parent) + f".{name}.{uuid.uuid4().hex[:12]}.part"
    try:
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.Directory:
            raise TadmError(f"{target} is a directory")
        if kind != pafs.FileType.NotFound and not force:
            raise TadmError(f"{target} exists (use -f to overwrite)")
        if parent:
            fs.create_dir(parent, recursive=True)  # nothing to do on object stores
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    except BaseException as exc:  # includes KeyboardInterrupt: try not to leave the .part behind
        try:
            fs.delete_file(tmp)
        except Exception:
            pass
        if isinstance(exc, _io_errors()):
            raise TadmError(f"cannot write {target}: {_one_line(exc)}") from None
        raise


def _expand_uri(item: str, extensions: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """Like `files.expand_inputs` for one URI: a folder (prefix) searched recursively, or one object."""
    import pyarrow.fs as pafs

    fs, path = split_uri(item)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            root = path.rstrip("/") + "/"
            names = sorted(i.path for i in found if i.type == pafs.FileType.File
                           and PurePosixPath(i.path).suffix.lower() in extensions)
            return [(_uri_child(item, p[len(root):]), item) for p in names if p.startswith(root)]
    except _io_errors() as exc:
        raise TadmError(f"{item}: {_one_line(exc)}") from None
    if info.type == pafs.FileType.File:
        return [(item, None)]
    raise TadmError(f"{item}: no such file or directory")


def plan(inputs: tuple[str, ...], extensions: tuple[str, ...], output: str | None, outdir: str | None,
         new_suffix: str) -> list[Job]:
    """`tadmcodec.files.plan`, extended to URIs: the same pairing rules and the same refusals.

    Without any URI it *is* `files.plan`. With URIs: folders are searched
    recursively and mirrored under -d, a file without -o/-d gets its output
    beside it, and an output that is an input, or two inputs sharing an output,
    are refused before anything runs.
    """
    names = [*inputs, *(n for n in (output, outdir) if n is not None)]
    if not any(is_uri(n) for n in names):
        return _files.plan(inputs, extensions, output, outdir, new_suffix)
    if output is not None and outdir is not None:
        raise TadmError("give -o or -d, not both")
    found: list[tuple[str, str | None]] = []
    for item in inputs:
        if item == STDIO:
            raise TadmError("stdin ('-') cannot be combined with URIs")
        if is_uri(item):
            found.extend(_expand_uri(item, extensions))
        else:
            found.extend((s, str(r) if r is not None else None) for s, r in expand_inputs((item,), extensions))
    if not found:
        raise TadmError("no input files found")
    if output is not None and len(found) > 1:
        raise TadmError(f"-o names one output but there are {len(found)} inputs: use -d OUTDIR")
    jobs = []
    for source, root in found:
        if output is not None:
            target = output
        elif outdir is not None:
            rel = PurePosixPath(_relative(source, root)).with_suffix(new_suffix).as_posix()
            target = _uri_child(outdir, rel) if is_uri(outdir) else str(Path(outdir) / rel)
        else:
            target = _uri_with_suffix(source, new_suffix) if is_uri(source) else str(Path(source).with_suffix(new_suffix))
        jobs.append(Job(source, target))
    _check_targets(jobs)
    return jobs


def _relative(source: str, root: str | None) -> str:
    """The part of `source` under the folder it was found in (its name when given directly)."""
    if root is None:
        return PurePosixPath(unquote(urlsplit(source).path)).name if is_uri(source) else Path(source).name
    if is_uri(source):
        return unquote(urlsplit(source).path)[len(unquote(urlsplit(root).path).rstrip("/")) + 1:]
    return Path(source).relative_to(root).as_posix()


def _key(name: str) -> str:
    return name if is_uri(name) else os.path.realpath(name)


def _check_targets(jobs: list[Job]) -> None:
    sources = {_key(j.source) for j in jobs}
    seen: set[str] = set()
    for j in jobs:
        key = _key(j.target)
        if key in sources:
            raise TadmError(f"{j.target}: output would overwrite an input")
        if key in seen:
            raise TadmError(f"{j.target}: two inputs would write the same output")
        seen.add(key)


# ----------------------------------------------------------------------------- the Ray workers


def _guard(fn: Callable[..., Any], *args: Any) -> tuple[Any, str | None]:
    """(fn(*args), None), or (None, the one-line reason) when this row cannot be coded."""
    try:
        return fn(*args), None
    except TadmError as exc:
        return None, str(exc)
    except Exception as exc:  # a bug, not the input's fault: still this row only, never the Dataset
        if os.environ.get("TADM_DEBUG"):
            raise
        return None, f"{INTERNAL_ERROR}{type(exc).__name__}: {exc}"


def _column(batch: Mapping[str, Any], wanted: str | None, choices: tuple[str, ...]) -> str:
    if wanted is not None:
        if wanted not in batch:
            raise KeyError(f"the Dataset has no column {wanted!r} (it has {', '.join(batch)})")
        return wanted
    for name in choices:
        if name in batch:
            return name
    raise KeyError(f"the Dataset needs one of the columns {', '.join(choices)} (it has {', '.join(batch)})")


def _passthrough(batch: Mapping[str, Any], consumed: str) -> dict[str, Any]:
    """The batch's other columns for the output; the input column too when it holds paths (names are light)."""
    col = batch[consumed]
    keep_input = len(col) > 0 and isinstance(col[0], str)
    return {k: v for k, v in batch.items() if k != consumed or keep_input}


def _file_bytes(value: Any) -> bytes:
    """A row's file: read from its path or URI (a str), or the bytes themselves."""
    if isinstance(value, str):
        return read_bytes(value)
    if value is None:
        raise TadmError("no data (null)")
    return bytes(value)


class _Worker:
    """What encoder and decoder actors share: one Codec per actor, outputs written or returned.

    `write_uris` is for the CLI: a row whose `target` is a URI is written there
    by the worker (the driver never sees those bytes), and with `force` false an
    existing target is refused before any coding. Local targets are returned to
    the driver, which writes them with `files.write_target` (its disk may not be
    the worker's).
    """

    def __init__(self, device: str, precision: str, model_dirs: Mapping[str, str], environ: Mapping[str, str],
                 write_uris: bool, force: bool) -> None:
        os.environ.update(environ)
        from tadmcodec.codec import Codec

        self.codec = Codec(device=device, precision=precision, model_dirs={k: Path(v) for k, v in model_dirs.items()})
        self.write_uris, self.force = write_uris, force

    def _check_target(self, target: str | None) -> None:
        if self.write_uris and target and is_uri(target) and not self.force and target_exists(target):
            raise TadmError(f"{target} exists (use -f to overwrite)")

    def _deliver(self, target: str | None, data: bytes) -> bytes | None:
        """Write a URI target here; otherwise hand the bytes back in the output column."""
        if self.write_uris and target and is_uri(target):
            write_bytes(target, data, self.force)
            return None
        return data


class _Encoder(_Worker):
    """map_batches callable: an image per row in, its `.tadm` bytes (or the reason it failed) out."""

    def __init__(self, model: str, scale: int, lr_codec: str, metadata: str, flatten: tuple[int, int, int] | None,
                 max_pixels: int, column: str | None, effort: int = DEFAULT_EFFORT, **common: Any) -> None:
        super().__init__(**common)
        self.model, self.scale, self.lr_codec, self.effort = model, scale, lr_codec, effort
        self.metadata, self.flatten, self.max_pixels, self.column = metadata, flatten, max_pixels, column
        if metadata != "none":
            # the very choice `tadm encode --metadata` makes, so the bytes cannot drift apart
            from tadmcodec.imageio import metadata_records

            self._records = metadata_records
        # Load the model now: once per actor, before the first batch, not inside it.
        self._broken: Exception | None = None
        try:
            spec = self.codec.spec(model)
            self.codec.rescaler(spec)
            self.codec.digest(spec)
        except Exception as exc:  # reported on every row, so each file says why it was not coded
            self._broken = exc

    def _one(self, value: Any, target: str | None) -> tuple[bytes | None, dict[str, Any]]:
        """One row: a path/URI (str), an image file (bytes) or pixels (an array)."""
        import numpy as np

        from tadmcodec.imageio import load_image

        if self._broken is not None:
            raise self._broken
        self._check_target(target)
        t0 = time.perf_counter()
        records: tuple[container.MetadataRecord, ...] = ()
        notes: list[str] = []
        if isinstance(value, np.ndarray) and value.dtype != object:
            pixels = value
        else:
            img = load_image(_file_bytes(value), max_pixels=self.max_pixels, flatten=self.flatten)
            pixels, notes = img.pixels, img.notes
            if self.metadata != "none":
                records = self._records(img, self.metadata)
        if pixels.ndim == 3 and pixels.shape[0] * pixels.shape[1] > self.max_pixels:
            raise TadmError(f"image has {pixels.shape[1]}x{pixels.shape[0]} pixels, over --max-pixels {self.max_pixels}")
        data = self.codec.encode(pixels, model=self.model, scale=self.scale, lr_codec=self.lr_codec, metadata=records,
                                 effort=self.effort)
        h, w = pixels.shape[:2]
        info = {"tadm_size": len(data), "width": w, "height": h, "notes": "\n".join(notes) or None,
                "seconds": time.perf_counter() - t0}
        return self._deliver(target, data), info

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import pyarrow as pa

        kind = _column(batch, self.column, ENCODE_INPUTS)
        targets = batch.get("target")
        out, errors, infos = [], [], []
        for i, value in enumerate(batch[kind]):
            res, err = _guard(self._one, value, targets[i] if targets is not None else None)
            data, info = res if res is not None else (None, {})
            out.append(data)
            errors.append(err)
            infos.append(info)
        result = _passthrough(batch, kind)
        result["tadm"] = pa.array(out, pa.binary())
        result["error"] = pa.array(errors, pa.string())
        result.update(_info_columns(infos, {"tadm_size": pa.int64(), "width": pa.int32(), "height": pa.int32(),
                                            "notes": pa.string(), "seconds": pa.float64()}))
        return result


class _Decoder(_Worker):
    """map_batches callable: `.tadm` bytes per row in, pixels or an image file (or the reason) out."""

    def __init__(self, format: str | None, max_pixels: int, column: str | None, **common: Any) -> None:
        super().__init__(**common)
        self.format, self.max_pixels, self.column = format, max_pixels, column

    def _one(self, value: Any, target: str | None, fmt: str | None) -> tuple[Any, dict[str, Any]]:
        """One row: a `.tadm` file's path/URI (str) or its bytes."""
        from tadmcodec.imageio import save_image

        self._check_target(target)
        t0 = time.perf_counter()
        data = _file_bytes(value)
        dec = self.codec.decode(data, max_pixels=self.max_pixels)
        hdr = dec.header
        info = {"tadm_size": len(data), "width": hdr.width, "height": hdr.height, "model": dec.model.name,
                "scale": hdr.scale}
        if fmt is None:
            info["seconds"] = time.perf_counter() - t0
            return dec.pixels, info
        meta = {r.kind: r.data for r in hdr.metadata}
        image_bytes = save_image(dec.pixels, fmt, icc=meta.get("icc"), exif=meta.get("exif"))
        info["seconds"] = time.perf_counter() - t0
        return self._deliver(target, image_bytes), info

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np
        import pyarrow as pa

        kind = _column(batch, self.column, DECODE_INPUTS)
        targets, formats = batch.get("target"), batch.get("format")
        out, errors, infos = [], [], []
        for i, value in enumerate(batch[kind]):
            res, err = _guard(self._one, value, targets[i] if targets is not None else None,
                              formats[i] if formats is not None else self.format)
            data, info = res if res is not None else (None, {})
            out.append(data)
            errors.append(err)
            infos.append(info)
        result = _passthrough(batch, kind)
        if self.format is None and formats is None:
            # pixels: a failed row gets an empty (0, 0, 3) image, since a tensor column has no nulls
            result["image"] = [a if a is not None else np.zeros((0, 0, 3), np.uint8) for a in out]
        else:
            result["image_bytes"] = pa.array(out, pa.binary())
        result["error"] = pa.array(errors, pa.string())
        result.update(_info_columns(infos, {"tadm_size": pa.int64(), "width": pa.int32(), "height": pa.int32(),
                                            "model": pa.string(), "scale": pa.int32(), "seconds": pa.float64()}))
        return result


def _info_columns(infos: list[dict[str, Any]], types: dict[str, Any]) -> dict[str, Any]:
    """Typed columns from per-row dicts (a null where a row failed), so an all-failed batch keeps its types."""
    import pyarrow as pa

    return {name: pa.array([i.get(name) for i in infos], t) for name, t in types.items()}


# ----------------------------------------------------------------------------- Datasets


@dataclass(frozen=True)
class Resources:
    """How many actors to run and what each asks of Ray."""

    workers: int
    num_gpus: float
    num_cpus: float | None


def plan_resources(device: str, workers: int | None = None, num_gpus: float | None = None,
                   num_cpus: float | None = None, items: int | None = None, gpu_model: bool = True) -> Resources:
    """Actors and their resources on the connected cluster.

    A GPU per actor when the cluster has CUDA devices, the device allows them and
    the model uses one (bicubic does not); otherwise a CPU per actor. Without
    `workers`, as many actors as the cluster has slots for, but no more than
    `items` (each actor loads the model, which is wasted on an idle one).
    """
    ray = require_ray()
    if not ray.is_initialized():
        ray.init()  # what Ray Data itself would do on first use: RAY_ADDRESS, a `ray start` cluster, or a local Ray
    res = ray.cluster_resources()
    gpus = float(res.get("GPU", 0))
    if device == "cuda" and gpus < 1:
        raise TadmError("--device cuda: the Ray cluster has no GPU")
    if num_gpus is None:
        num_gpus = 1.0 if gpu_model and device in ("auto", "cuda") and gpus >= 1 else 0.0
    if num_cpus is None and not num_gpus:
        num_cpus = 1.0
    if workers is None:
        slots = int(gpus // num_gpus) if num_gpus else int(float(res.get("CPU", 1)) // (num_cpus or 1))
        workers = max(1, min(slots, items) if items else slots)
    return Resources(workers=workers, num_gpus=float(num_gpus), num_cpus=num_cpus)


def _environ() -> dict[str, str]:
    return {k: os.environ[k] for k in MODEL_ENV_VARS if k in os.environ}


def _map(ds: "ray.data.Dataset", cls: type, kwargs: dict[str, Any], res: Resources, batch_size: int) -> "ray.data.Dataset":
    import ray.data

    extra: dict[str, Any] = {"num_gpus": res.num_gpus} if res.num_gpus else {}
    if res.num_cpus is not None:
        extra["num_cpus"] = res.num_cpus
    return ds.map_batches(
        cls, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=res.workers), **extra,
    )


def encode_dataset(
    ds: "ray.data.Dataset",
    model: str | None = None,
    scale: int | None = None,
    *,
    lr_codec: str = "auto",
    metadata: str = "none",
    flatten: tuple[int, int, int] | None = None,
    effort: int = DEFAULT_EFFORT,
    max_pixels: int = container.DEFAULT_MAX_PIXELS,
    device: str = "auto",
    precision: str = "auto",
    model_dirs: Mapping[str, str | os.PathLike] | None = None,
    column: str | None = None,
    workers: int | None = None,
    num_gpus: float | None = None,
    num_cpus: float | None = None,
    batch_size: int = 4,
    _write_uris: bool = False,
    _force: bool = False,
) -> "ray.data.Dataset":
    """A Dataset of images -> a Dataset of `.tadm` bytes (lazy, like every Ray Data transform).

    The input column is `column`, else the first of `image` (uint8 HxWx3 arrays,
    e.g. `ray.data.read_images(..., mode="RGB")`), `bytes` (image files, e.g.
    `ray.data.read_binary_files`) and `path` (local paths or URIs each worker
    reads). Files are read as `tadm encode` reads them (EXIF orientation, grey
    and 16-bit conversion, `flatten` for transparency, `metadata` kept); arrays
    are coded as they are. The output keeps the other columns and adds `tadm`
    (binary; null where the row failed), `error` (null, or the one-line reason),
    `tadm_size`, `width`, `height`, `notes` (warnings such as a 16-bit reduction) and
    `seconds`. `model` and `effort` (`tadmcodec.lr_choice`) default as `tadm encode`'s do; `workers`, `num_gpus` and
    `num_cpus` default to `plan_resources`'s choice on the connected cluster.
    """
    from tadmcodec import registry
    from tadmcodec.codec import Codec, check_scale

    dirs = {k: str(v) for k, v in (model_dirs or {}).items()}
    model = model or registry.default_model(scale).name
    spec = Codec(model_dirs={k: Path(v) for k, v in dirs.items()}).spec(model)
    scale = check_scale(spec, scale)
    if metadata not in METADATA_CHOICES:
        raise InputError(f"metadata must be one of {', '.join(METADATA_CHOICES)}, not {metadata!r}")
    if lr_codec not in ("auto", *container.LR_CODECS):
        raise InputError(f"lr_codec must be auto or one of {', '.join(container.LR_CODECS)}, not {lr_codec!r}")
    effort = user_effort(effort)
    res = plan_resources(device, workers, num_gpus, num_cpus, gpu_model=spec.kind != "bicubic")
    kwargs = dict(model=model, scale=scale, lr_codec=lr_codec, metadata=metadata, flatten=flatten, effort=effort,
                  max_pixels=max_pixels, column=column, device=device, precision=precision, model_dirs=dirs,
                  environ=_environ(), write_uris=_write_uris, force=_force)
    return _map(ds, _Encoder, kwargs, res, batch_size)


def decode_dataset(
    ds: "ray.data.Dataset",
    *,
    format: str | None = None,
    max_pixels: int = container.DEFAULT_MAX_PIXELS,
    device: str = "auto",
    precision: str = "auto",
    model_dirs: Mapping[str, str | os.PathLike] | None = None,
    column: str | None = None,
    workers: int | None = None,
    num_gpus: float | None = None,
    num_cpus: float | None = None,
    batch_size: int = 4,
    _write_uris: bool = False,
    _force: bool = False,
) -> "ray.data.Dataset":
    """A Dataset of `.tadm` bytes -> a Dataset of images (lazy).

    The input column is `column`, else the first of `tadm` (encode_dataset's
    output), `bytes` and `path`. Without `format` the output has an `image`
    column of uint8 HxWx3 arrays (an empty 0x0x3 array where the row failed);
    with `format` (a Pillow format name: PNG, WEBP, JPEG, TIFF, BMP, PPM) it has
    `image_bytes`, each file as `tadm decode` writes it, ICC and EXIF restored.
    Both keep the other columns and add `error`, `tadm_size` (the `.tadm` file's),
    `width`, `height`, `model`, `scale` and `seconds`. A file made by a model
    that the workers do not have is refused on its row, naming the model.
    """
    dirs = {k: str(v) for k, v in (model_dirs or {}).items()}
    fmt = format.upper().replace("JPG", "JPEG") if format else None
    res = plan_resources(device, workers, num_gpus, num_cpus)
    kwargs = dict(format=fmt, max_pixels=max_pixels, column=column, device=device, precision=precision,
                  model_dirs=dirs, environ=_environ(), write_uris=_write_uris, force=_force)
    return _map(ds, _Decoder, kwargs, res, batch_size)


def jobs_dataset(rows: Iterable[Mapping[str, Any]]) -> "ray.data.Dataset":
    """A Dataset of the CLI's (path, target[, format]) rows: only names travel, workers read the files."""
    ray = require_ray()
    return ray.data.from_items(list(rows))


__all__ = [
    "encode_dataset", "decode_dataset", "plan", "plan_resources", "read_bytes", "write_bytes", "is_uri",
    "require_ray", "INSTALL_HINT",
]
