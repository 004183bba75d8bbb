"""`tadm encode/decode --engine ray`: the batch commands on a Ray cluster, with their local semantics.

`tadmcodec.cli` calls in here only when `--engine ray` is given, so neither the
CLI nor the package imports Ray otherwise. The work runs as a Ray Data
`map_batches` stage (`tadmcodec.distributed`); what a user sees stays as with
`--engine local`:

- inputs and outputs are paired by the same rules (folder trees mirrored under
  -d), before anything runs, and may also be URIs (`s3://`, `gs://`, ...);
- an existing output is refused without -f (checked before its file is coded);
- outputs are written atomically: local ones here, by `files.write_target`,
  URIs by the workers (`distributed.write_bytes`);
- each failed file is one line with its reason, the others are done, exit 1;
- a progress bar on a terminal (Ray Data's own bars are switched off).

The cluster is `$RAY_ADDRESS` (or the one `ray start` left on this machine),
as for Ray's own tools; without one, Ray starts a local one for the command.
"""

from __future__ import annotations

import logging
import os
import contextlib
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import click

from tadmcodec import container, distributed as td, registry
from tadmcodec.cli import Reporter, _name
from tadmcodec.errors import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, TadmError
from tadmcodec.files import STDIO, Job, write_target
from tadmcodec.imageio import INPUT_EXTENSIONS, output_format


def _workers() -> int | None:
    """-j N given: N Ray workers; not given: as many as the cluster has slots for (the local default is 1)."""
    ctx = click.get_current_context()
    if ctx.get_parameter_source("jobs") == click.core.ParameterSource.DEFAULT:
        return None
    return int(ctx.params["jobs"])


def _refuse_stdio(inputs: tuple[str, ...], output: str | None) -> None:
    if STDIO in inputs or output == STDIO:
        raise TadmError("--engine ray codes files and folders, not stdin or stdout (use --engine local)")


def _batch_size(items: int, workers: int) -> int:
    """Rows per map_batches call: about four calls per worker, so the last ones do not run alone."""
    return max(1, min(16, items // (4 * workers)))


@contextmanager
def ray_session() -> Iterator[Any]:
    """Connect to the cluster (or start a local Ray), quietly, and always let it go again.

    Ray's and Ray Data's own logs and progress bars are turned down to errors:
    the command's stderr keeps to its one line per failed file and its own bar
    (TADM_DEBUG=1 shows the workers' logs).
    """
    ray = td.require_ray()
    debug = bool(os.environ.get("TADM_DEBUG"))
    started = not ray.is_initialized()
    if started:
        if not debug:
            # Ray's C++ core logs to this process's stderr; Ray 2.60 logs an ERROR line for every Ray Data
            # actor pool (ray-project/ray#53727). Fatal only, and the line saying so goes to /dev/null.
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        try:
            with (contextlib.nullcontext() if debug else _stderr_silenced()):
                ray.init(include_dashboard=False, log_to_driver=debug,
                         logging_level=logging.INFO if debug else logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = os.environ.get("RAY_ADDRESS")
            raise TadmError(f"cannot start Ray{f' at RAY_ADDRESS={where}' if where else ''}: "
                            f"{_first_line(exc)}") from None
    import ray.data

    if not debug:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    except ray.exceptions.RayError as exc:  # Ray itself failed (a node lost, a worker killed...)
        raise TadmError(f"Ray failed: {_first_line(exc)}") from None
    finally:
        if started:
            ray.shutdown()


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for a moment (what C++ code prints there, Python cannot filter)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _run(jobs: list[Job], force: bool, quiet: bool, verbose: bool, label: str,
         start: Callable[[list[Job]], Any], done: Callable[[Job, dict[str, Any], Reporter], None]) -> int:
    """Report each job's outcome as the cluster returns it, and the exit code, as `cli.run_jobs` does."""
    codes: list[int] = []
    with Reporter(len(jobs), quiet, verbose, label) as rep:

        def fail(job: Job, message: str, code: int) -> None:
            codes.append(code)
            rep.say(f"tadm: {_name(job.source)}: {message}")
            rep.advance()

        todo = []
        for job in jobs:  # local outputs that are there already: refused before any work, as locally after it
            if not force and not td.is_uri(job.target) and os.path.exists(job.target):
                fail(job, f"{job.target} exists (use -f to overwrite)", EXIT_USAGE)
            else:
                todo.append(job)
        if todo:
            by_source = {j.source: j for j in todo}
            with ray_session():
                for row in start(todo).iter_rows():
                    job = by_source[row["path"]]
                    error = row["error"]
                    if error:
                        internal = error.startswith(td.INTERNAL_ERROR)
                        fail(job, error, EXIT_SOME_FAILED if internal else EXIT_USAGE)
                        continue
                    try:
                        done(job, row, rep)
                    except TadmError as exc:  # a local write: exists, a directory, disk full...
                        fail(job, str(exc), exc.exit_code)
                        continue
                    rep.advance()
    if not codes:
        return EXIT_OK
    if len(jobs) == 1:
        return codes[0]
    rep.say(f"tadm: {len(codes)} of {len(jobs)} files failed")
    return EXIT_SOME_FAILED


def _rows(jobs: list[Job], formats: Callable[[Job], str] | None = None) -> list[dict[str, str]]:
    if formats is None:
        return [{"path": j.source, "target": j.target} for j in jobs]
    return [{"path": j.source, "target": j.target, "format": formats(j)} for j in jobs]


def encode_on_ray(inputs: tuple[str, ...], output: str | None, outdir: str | None, force: bool, quiet: bool,
                  verbose: bool, max_pixels: int, device: str, precision: str, codec: Any, model: str,
                  scale: int, lr_codec: str, metadata: str, flatten: tuple[int, int, int] | None,
                  effort: int) -> int:
    """`tadm encode --engine ray`: the arguments as `cli.encode` has parsed and checked them."""
    from tadmcodec.codec import bits_per_pixel

    _refuse_stdio(inputs, output)
    td.require_ray()  # before planning: a missing extra is the first thing to say
    jobs = td.plan(inputs, INPUT_EXTENSIONS, output, outdir, ".tadm")
    gpu_model = codec.spec(model).kind != "bicubic"

    def start(todo: list[Job]):
        res = td.plan_resources(device, _workers(), items=len(todo), gpu_model=gpu_model)
        return td.encode_dataset(
            td.jobs_dataset(_rows(todo)), model, scale, lr_codec=lr_codec, metadata=metadata, flatten=flatten,
            effort=effort,
            max_pixels=max_pixels, device=device, precision=precision,
            model_dirs={k: str(v) for k, v in codec.model_dirs.items()}, column="path", workers=res.workers,
            num_gpus=res.num_gpus, num_cpus=res.num_cpus, batch_size=_batch_size(len(todo), res.workers),
            _write_uris=True, _force=force,
        )

    def done(job: Job, row: dict[str, Any], rep: Reporter) -> None:
        for note in (row["notes"] or "").splitlines():
            rep.warn(f"{_name(job.source)}: {note}")
        if row["tadm"] is not None:
            write_target(job.target, row["tadm"], force)
        w, h, n = int(row["width"]), int(row["height"]), int(row["tadm_size"])
        rep.info(f"{_name(job.source)} -> {_name(job.target)}: {w}x{h}, {n} bytes, "
                 f"{bits_per_pixel(n, w, h):.4f} bpp, {model} x{scale}, {row['seconds']:.2f} s")

    return _run(jobs, force, quiet, verbose, "encoding", start, done)


def decode_on_ray(inputs: tuple[str, ...], output: str | None, outdir: str | None, force: bool, quiet: bool,
                  verbose: bool, max_pixels: int, device: str, precision: str, model_dir: str | None,
                  sd_dir: str | None, vae_dir: str | None, fmt: str | None, timestep_map: str | None) -> int:
    """`tadm decode --engine ray`."""
    from tadmcodec.cli import _make_codec
    from tadmcodec.codec import bits_per_pixel

    _refuse_stdio(inputs, output)
    if timestep_map is not None:
        raise TadmError("--timestep-map works with one input file: use --engine local")
    td.require_ray()
    jobs = td.plan(inputs, (".tadm",), output, outdir, "." + (fmt or "png"))
    default = (fmt or "png").upper().replace("JPG", "JPEG")
    formats = {j.target: output_format(j.target, default=default) for j in jobs}  # a bad -o extension: exit 2 now
    codec = _make_codec(device, precision, _model_of_dir(model_dir, jobs), model_dir, sd_dir, vae_dir)

    def start(todo: list[Job]):
        res = td.plan_resources(device, _workers(), items=len(todo))
        return td.decode_dataset(
            td.jobs_dataset(_rows(todo, lambda j: formats[j.target])), max_pixels=max_pixels, device=device,
            precision=precision, model_dirs={k: str(v) for k, v in codec.model_dirs.items()}, column="path",
            workers=res.workers, num_gpus=res.num_gpus, num_cpus=res.num_cpus,
            batch_size=_batch_size(len(todo), res.workers), _write_uris=True, _force=force,
        )

    def done(job: Job, row: dict[str, Any], rep: Reporter) -> None:
        if row["image_bytes"] is not None:
            write_target(job.target, row["image_bytes"], force)
        w, h, n = int(row["width"]), int(row["height"]), int(row["tadm_size"])
        rep.info(f"{_name(job.source)} -> {_name(job.target)}: {w}x{h}, {n} bytes, "
                 f"{bits_per_pixel(n, w, h):.4f} bpp, {row['model']} x{int(row['scale'])}, {row['seconds']:.2f} s")

    return _run(jobs, force, quiet, verbose, "decoding", start, done)


def _model_of_dir(model_dir: str | None, jobs: list[Job]) -> str | None:
    """With --model-dir, the model it replaces is the one the first file names (as `cli._model_of_dir`)."""
    if model_dir is None:
        return None
    header = container.unpack(td.read_bytes(jobs[0].source), max_pixels=2**62)
    spec = registry.by_number(header.model_number)
    if spec is None:
        raise TadmError(f"file was made with model number {header.model_number}, unknown to this version of tadmcodec")
    return spec.name
