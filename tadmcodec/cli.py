"""The `tadm` command line: thin wrappers over `tadmcodec.codec`.

Data goes to stdout only when asked for: with `-o -`, or when the input is
stdin (`-`) and neither -o nor -d is given, so `tadm encode - < a.png > a.tadm`
works as a filter (never onto a terminal). Messages, warnings and progress go
to stderr. Every user error is one line, `tadm: ...`, with exit
code 2; a batch reports each failed file and exits 1.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import click

from tadmcodec import __version__, container, registry
from tadmcodec.errors import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, TadmError
from tadmcodec.files import STDIO, Job, plan, read_source, write_target
from tadmcodec.lr_choice import DEFAULT_EFFORT, EFFORTS
from tadmcodec.sizes import bits_per_pixel, lr_size

# tadmcodec.imageio (numpy, Pillow) is imported inside encode and decode: `tadm --help`, `tadm info`
# and `tadm models` import neither (tests/test_startup.py).

METADATA_CHOICES = ("none", "icc", "exif", "all")


def _err(message: str) -> None:
    click.echo(f"tadm: {message}", err=True)


class Reporter:
    """Progress bar and per-file messages on stderr (bar only on a terminal, and not with -q)."""

    def __init__(self, total: int, quiet: bool, verbose: bool, label: str) -> None:
        self.quiet, self.verbose = quiet, verbose
        self._progress = None
        if total > 1 and not quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=True,
            )
            self._task = self._progress.add_task(label, total=total)

    def __enter__(self) -> "Reporter":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def say(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            click.echo(message, err=True)

    def info(self, message: str) -> None:
        if self.verbose:
            self.say(message)

    def warn(self, message: str) -> None:
        if not self.quiet:
            self.say(f"tadm: warning: {message}")


def run_jobs(jobs: list[Job], work: Callable[[Job, Reporter], None], jobs_n: int, quiet: bool, verbose: bool, label: str) -> int:
    """Run every job, report failures one line each, and return the exit code."""
    failures: list[tuple[Job, TadmError | Exception]] = []
    with Reporter(len(jobs), quiet, verbose, label) as rep:

        def one(job: Job) -> None:
            try:
                work(job, rep)
            except TadmError as exc:
                failures.append((job, exc))
                rep.say(f"tadm: {_name(job.source)}: {exc}")
            except Exception as exc:  # a bug, not the user's fault: still one line, never a traceback
                failures.append((job, exc))
                rep.say(f"tadm: {_name(job.source)}: internal error: {type(exc).__name__}: {exc}")
                if os.environ.get("TADM_DEBUG"):
                    raise
            finally:
                rep.advance()

        if jobs_n > 1 and len(jobs) > 1:
            with ThreadPoolExecutor(max_workers=jobs_n) as pool:
                list(pool.map(one, jobs))
        else:
            for job in jobs:
                one(job)
    if not failures:
        return EXIT_OK
    if len(jobs) == 1:
        exc = failures[0][1]
        return exc.exit_code if isinstance(exc, TadmError) else EXIT_SOME_FAILED
    rep.say(f"tadm: {len(failures)} of {len(jobs)} files failed")
    return EXIT_SOME_FAILED


OWN_PROCESS = "own_process"
"""Key of the click context object `entry` sets: this process runs the `tadm` command alone."""


def _own_process_imports() -> None:
    """In the `tadm` command's own process, the first TADM model load imports diffusers without
    transformers, peft and accelerate when its folder has no adapters (benchmarks/startup.py, rows b and f).

    Only there: diffusers then takes the three for not installed for the rest of the process
    (tadmcodec.tadm.diffusers_import says what that disables), which a library caller or a
    test invoking `main` in its own process may still need.
    """
    ctx = click.get_current_context(silent=True)
    if ctx is not None and (ctx.find_root().obj or {}).get(OWN_PROCESS):
        from tadmcodec.tadm import diffusers_import  # torch-free

        diffusers_import.allow()


def _name(source: str) -> str:
    return "<stdin>" if source == STDIO else source


def _check_binary_stdout(jobs: list[Job]) -> None:
    if any(j.target == STDIO for j in jobs) and sys.stdout.isatty():
        raise TadmError("refusing to write binary data to a terminal: use -o FILE or redirect stdout")


def _make_codec(device: str, precision: str, model: str | None, model_dir: str | None,
                sd_dir: str | None, vae_dir: str | None):
    from tadmcodec.codec import Codec  # keeps `tadm info`/`tadm models` light

    # The sd21 backbone folders are read from the environment by the model spec; the options set it.
    if sd_dir is not None:
        os.environ["TADM_SD21_DIR"] = sd_dir
    if vae_dir is not None:
        os.environ["TADM_SD_VAE_DIR"] = vae_dir
    dirs = {}
    if model_dir is not None:
        if model is None:
            raise TadmError("--model-dir needs --model NAME")
        dirs[model] = Path(model_dir)
    return Codec(device=device, precision=precision, model_dirs=dirs)


common_output = [
    click.option("-o", "--output", "output", metavar="OUT", help="Output file ('-' = stdout); one input only."),
    click.option("-d", "--outdir", "outdir", metavar="OUTDIR", help="Output folder; input folder trees are mirrored."),
    click.option("-f", "--force", is_flag=True, help="Overwrite existing output files (never inputs)."),
    click.option("-j", "--jobs", type=click.IntRange(1, 64), default=1, show_default=True, help="Files processed at once."),
    click.option("-q", "--quiet", is_flag=True, help="No progress bar or warnings."),
    click.option("-v", "--verbose", is_flag=True, help="Per-file sizes, bpp and timings on stderr."),
    click.option("--max-pixels", type=click.IntRange(1), default=container.DEFAULT_MAX_PIXELS, show_default=True,
                 help="Refuse images (and files) with more pixels than this."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True,
                 help="Where TADM models run."),
    click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto", show_default=True,
                 help="Network precision (auto: fp16 on CUDA, fp32 elsewhere)."),
    click.option("--model-dir", metavar="DIR", help="Read the --model's weights from DIR (e.g. an imported sd21 model)."),
    click.option("--sd-dir", metavar="DIR", help="Local Stable Diffusion 2.1 diffusers folder for sd21 models (else $TADM_SD21_DIR)."),
    click.option("--vae-dir", metavar="DIR", help="Separate VAE folder (e.g. sd-vae-ft-mse) for sd21 models (else $TADM_SD_VAE_DIR)."),
]


engine_option = click.option(
    "--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
    help="local: this process (-j threads); ray: Ray Data workers on the cluster at $RAY_ADDRESS, else on a "
         "local Ray (-j workers, default one per CPU or GPU; needs tadmcodec[ray]). Inputs and outputs may be URIs.")


def with_options(options):
    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco


class LazyGroup(click.Group):
    """A click group that imports a command's module only when that command is needed.

    The optional commands (bench, demo, train, import-official) live in their own
    modules; importing them all at start-up charged every `tadm info` and `tadm
    models` for code it never runs. Here they are registered by name: `tadm
    --help` and `tadm NAME` import the module, other commands never do. A module
    that is not installed is simply not listed.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, tuple[str, str]] = {}  # name -> (module, attribute)

    def list_commands(self, ctx: click.Context) -> list[str]:
        import importlib.util

        lazy = {n for n, (module, _) in self.lazy_commands.items() if importlib.util.find_spec(module) is not None}
        return sorted(set(super().list_commands(ctx)) | lazy)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in self.lazy_commands:
            return cmd
        import importlib

        module, attr = self.lazy_commands[cmd_name]
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            return None
        cmd = getattr(mod, attr)
        self.add_command(cmd, cmd_name)
        return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tadm")
def main() -> None:
    """tadm: extreme-ratio image codec (0.01-0.2 bpp) built on TADM."""


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IN...")
@with_options(common_output)
@click.option("-s", "--scale", type=click.Choice(["8", "16", "32"]), help="Downscaling factor (default: the model's, else 16).")
@click.option("-m", "--model", metavar="NAME",
              help="Model (see `tadm models`; default: the first stable model at the scale, else bicubic).")
@click.option("--lr-codec", type=click.Choice(["auto", *container.LR_CODECS]), default="auto", show_default=True,
              help="Lossless codec for the LR image (auto = smallest).")
@click.option("--metadata", type=click.Choice(METADATA_CHOICES), default="none", show_default=True,
              help="Input metadata to keep (costs bytes).")
@click.option("--flatten", metavar="COLOUR", help="Composite transparent images onto COLOUR (e.g. white) instead of refusing them.")
@click.option("-e", "--effort", type=click.Choice([str(e) for e in EFFORTS]), default=str(DEFAULT_EFFORT),
              show_default=True, help="1: store the model's LR image; 2: also try the bicubic LR image and keep "
              "whichever decodes closer to the photo (two trial decodes per image).")
@engine_option
def encode(inputs, output, outdir, force, jobs, quiet, verbose, max_pixels, device, precision, model_dir, sd_dir, vae_dir,
           scale, model, lr_codec, metadata, flatten, effort, engine):
    """Compress images (files, folders, or '-' for stdin) to .tadm."""
    _own_process_imports()
    scale_i = int(scale) if scale else None
    effort_i = int(effort)  # a click.Choice of EFFORTS, as text
    model_name = model or registry.default_model(scale_i).name
    codec = _make_codec(device, precision, model, model_dir, sd_dir, vae_dir)
    from tadmcodec.codec import check_scale
    from tadmcodec.imageio import INPUT_EXTENSIONS, load_image, metadata_records, parse_colour

    scale_i = check_scale(codec.spec(model_name), scale_i)
    bg = parse_colour(flatten) if flatten else None
    if engine == "ray":
        from tadmcodec.cli_ray import encode_on_ray

        sys.exit(encode_on_ray(inputs, output, outdir, force, quiet, verbose, max_pixels, device, precision, codec,
                               model_name, scale_i, lr_codec, metadata, bg, effort_i))
    job_list = plan(inputs, INPUT_EXTENSIONS, output, outdir, ".tadm")
    _check_binary_stdout(job_list)

    def work(job: Job, rep: Reporter) -> None:
        t0 = time.perf_counter()
        img = load_image(read_source(job.source), max_pixels=max_pixels, flatten=bg)
        for note in img.notes:
            rep.warn(f"{_name(job.source)}: {note}")
        records = metadata_records(img, metadata)
        enc = codec.encode_detailed(img.pixels, model=model_name, scale=scale_i, lr_codec=lr_codec,
                                    metadata=records, effort=effort_i)
        data = enc.data
        write_target(job.target, data, force)
        h, w = img.pixels.shape[:2]
        rep.info(
            f"{_name(job.source)} -> {_name(job.target)}: {w}x{h}, {len(data)} bytes, "
            f"{bits_per_pixel(len(data), w, h):.4f} bpp, {model_name} x{scale_i}, {time.perf_counter() - t0:.2f} s; "
            f"{enc.choice.describe()}"
        )

    sys.exit(run_jobs(job_list, work, jobs, quiet, verbose, "encoding"))


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IN...")
@with_options(common_output)
@click.option("--format", "fmt", type=click.Choice(["png", "webp", "jpg", "tiff", "bmp", "ppm"]),
              help="Output format when writing to stdout or to -d (default png); otherwise from the -o extension.")
@click.option("--timestep-map", metavar="FILE.png", help="Also write the predicted time-step map (one input only).")
@click.option("--size", "size_text", metavar="WxH",
              help="Output size in pixels; omit a side to keep the aspect ratio (1920x, x1080). "
                   "Rendered by the model's implicit decoder if it has one, else resampled (Lanczos).")
@click.option("--zoom", type=float, metavar="FACTOR",
              help="Output size as a factor of the original (0.1-4), as --size.")
@engine_option
def decode(inputs, output, outdir, force, jobs, quiet, verbose, max_pixels, device, precision, model_dir, sd_dir, vae_dir,
           fmt, timestep_map, size_text, zoom, engine):
    """Decompress .tadm files (files, folders, or '-' for stdin) to images."""
    _own_process_imports()
    from tadmcodec.codec import ZOOM_RANGE, parse_size

    if size_text is not None and zoom is not None:
        raise TadmError("--size and --zoom exclude each other: give one")
    size = parse_size(size_text) if size_text is not None else None
    if zoom is not None and not ZOOM_RANGE[0] <= zoom <= ZOOM_RANGE[1]:
        raise TadmError(f"--zoom {zoom:g} is outside {ZOOM_RANGE[0]:g}-{ZOOM_RANGE[1]:g} (times the original size)")
    if engine == "ray" and (size is not None or zoom is not None):
        raise TadmError("--size and --zoom work with --engine local only")
    if engine == "ray":
        from tadmcodec.cli_ray import decode_on_ray

        sys.exit(decode_on_ray(inputs, output, outdir, force, quiet, verbose, max_pixels, device, precision,
                               model_dir, sd_dir, vae_dir, fmt, timestep_map))
    suffix = "." + (fmt or "png")
    job_list = plan(inputs, (".tadm",), output, outdir, suffix)
    if timestep_map is not None and len(job_list) != 1:
        raise TadmError("--timestep-map works with one input file")
    _check_binary_stdout(job_list)
    codec = _make_codec(device, precision, _model_of_dir(model_dir, job_list), model_dir, sd_dir, vae_dir)
    from tadmcodec.imageio import output_format, save_image

    def work(job: Job, rep: Reporter) -> None:
        t0 = time.perf_counter()
        data = read_source(job.source)
        out_fmt = output_format(job.target, default=(fmt or "png").upper().replace("JPG", "JPEG"))
        dec = codec.decode(data, max_pixels=max_pixels, want_timestep_map=timestep_map is not None,
                           size=size, zoom=zoom)
        meta = {r.kind: r.data for r in dec.header.metadata}
        image_bytes = save_image(dec.pixels, out_fmt, icc=meta.get("icc"), exif=meta.get("exif"))
        if timestep_map is not None:
            write_target(timestep_map, _timestep_png(dec.timestep_map), force)
        write_target(job.target, image_bytes, force)
        hdr = dec.header
        out_h, out_w = dec.pixels.shape[:2]
        resized = f" -> {out_w}x{out_h} by {dec.path}" if (out_w, out_h) != (hdr.width, hdr.height) or \
            size is not None or zoom is not None else ""
        rep.info(
            f"{_name(job.source)} -> {_name(job.target)}: {hdr.width}x{hdr.height}{resized}, {len(data)} bytes, "
            f"{bits_per_pixel(len(data), hdr.width, hdr.height):.4f} bpp, {dec.model.name} x{hdr.scale}, "
            f"{time.perf_counter() - t0:.2f} s"
        )

    sys.exit(run_jobs(job_list, work, jobs, quiet, verbose, "decoding"))


def _model_of_dir(model_dir: str | None, jobs: list[Job]) -> str | None:
    """With --model-dir, the model it replaces is the one the (first) file names."""
    if model_dir is None:
        return None
    first = jobs[0]
    if first.source == STDIO:
        raise TadmError("--model-dir with stdin input: not supported (give the file name)")
    header = container.unpack(read_source(first.source), max_pixels=2**62)
    spec = registry.by_number(header.model_number)
    if spec is None:
        raise TadmError(f"file was made with model number {header.model_number}, unknown to this version of tadmcodec")
    return spec.name


def _timestep_png(tmap) -> bytes:
    """Time-steps as an 8-bit grey PNG at latent resolution: pixel value = time-step (TPM limits it to 10..200)."""
    import numpy as np
    from PIL import Image
    import io

    arr = np.clip(np.round(np.asarray(tmap, dtype=np.float64)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, format="PNG")
    return buf.getvalue()


@main.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file, one per line.")
@click.option("--max-pixels", type=click.IntRange(1), default=container.DEFAULT_MAX_PIXELS, show_default=True)
def info(files, as_json, max_pixels):
    """Show what a .tadm file holds (no model is loaded)."""
    failed = 0
    for name in files:
        try:
            data = read_source(name)
            f = container.unpack(data, max_pixels=max_pixels)
        except TadmError as exc:
            _err(f"{_name(name)}: {exc}")
            failed += 1
            continue
        spec = registry.by_number(f.model_number)
        lw, lh = lr_size(f.width, f.height, f.scale)
        meta_bytes = sum(len(r.data) for r in f.metadata)
        d = {
            "file": name,
            "version": f"{f.version[0]}.{f.version[1]}",
            "width": f.width,
            "height": f.height,
            "scale": f.scale,
            "lr_width": lw,
            "lr_height": lh,
            "lr_codec": f.lr_codec,
            "model": spec.name if spec else None,
            "model_number": f.model_number,
            "model_digest": f.model_digest.hex(),
            "bytes": len(data),
            "payload_bytes": len(f.payload),
            "metadata": [{"kind": r.kind, "bytes": len(r.data), "critical": r.critical} for r in f.metadata],
            "overhead_bytes": len(data) - len(f.payload) - meta_bytes,
            "bpp": round(bits_per_pixel(len(data), f.width, f.height), 6),
        }
        if as_json:
            click.echo(json.dumps(d))
        else:
            meta = ", ".join(f"{m['kind']} {m['bytes']} B" for m in d["metadata"]) or "none"
            click.echo(
                f"{name}: {f.width}x{f.height}, {d['bytes']} bytes, {d['bpp']:.4f} bpp\n"
                f"  model {d['model'] or 'unknown'} (#{f.model_number}, digest {d['model_digest']}), scale {f.scale}, "
                f"LR {lw}x{lh} {f.lr_codec} {d['payload_bytes']} B\n"
                f"  container v{d['version']}, overhead {d['overhead_bytes']} B, metadata: {meta}"
            )
    if failed:
        sys.exit(EXIT_USAGE if len(files) == 1 else EXIT_SOME_FAILED)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model, one per line.")
def models(as_json):
    """List the models, what each needs, and whether it is available here."""
    from tadmcodec.sizes import SCALES

    default = registry.default_model().name
    default_at = {s: registry.default_model(s).name for s in SCALES}  # what `tadm encode -s S` uses
    width = max(len(name) for name in registry.MODELS)
    for spec in registry.MODELS.values():
        ok, why = spec.availability()
        row = {
            "name": spec.name,
            "number": spec.number,
            "scales": list(spec.scales),
            "available": ok,
            "default": spec.name == default,
            "default_at": [s for s, name in default_at.items() if name == spec.name],
            "status": spec.status,
            "standing": spec.status_line(),
            "where" if ok else "needs": why,
            "description": spec.description,
        }
        if as_json:
            click.echo(json.dumps(row))
        else:
            mark = "*" if row["default"] else " "
            state = "available" if ok else "unavailable"
            scales = "/".join(f"x{s}" for s in spec.scales)
            click.echo(f"{mark} {spec.name:<{width}} {scales:<12} {state:<12} {spec.description}")
            if spec.status in ("experimental", "retired") and ok:
                click.echo(f"  {'':<{width}} {row['standing']}; runs only with -m {spec.name}"
                           if spec.status == "experimental" else f"  {'':<{width}} {row['standing']}")
            elif row["default_at"]:
                pinned = f", weights digest {spec.pinned_digest} pinned" if spec.pinned_digest else ""
                where = ("the default" if row["default"] else
                         "the default with " + " or ".join(f"-s {s}" for s in row["default_at"]))
                click.echo(f"  {'':<{width}} {row['standing']}{pinned}; {where}")
            if not ok:
                click.echo(f"  {'':<{width}} needs: {why}")


def _register_optional_commands() -> None:
    """Commands that live in their own modules (benchmark, demo, training, importer), by name only.

    Nothing is imported here (see `LazyGroup`): start-up work at import time is paid by every call.
    """
    main.lazy_commands.update({
        "bench": ("tadmcodec.cli_bench", "bench_command"),
        "demo": ("tadmcodec.cli_bench", "demo_command"),
        "import-official": ("tadmcodec.cli_import", "import_official_command"),
        "train": ("tadmcodec.cli_train", "train_command"),
    })


def usage_line(exc: click.ClickException) -> str:
    """A click error as the one line the README promises, without the `tadm: ` prefix.

    click itself prints the usage block, a help hint and `Error: ...` over four
    lines. Here a bad value names the option (`-s/--scale`) and click's reason,
    which lists the allowed values of a choice; a missing choice option lists
    them too; the command's help is pointed to at the end.
    """
    param = getattr(exc, "param", None)
    if isinstance(exc, click.BadParameter) and param is not None and exc.param_hint is None:
        is_option = isinstance(param, click.Option)
        name = "/".join(param.opts) if is_option else param.human_readable_name
        if isinstance(exc, click.MissingParameter):
            text = f"missing {'option' if is_option else 'argument'} {name}"
            if isinstance(param.type, click.Choice):
                text += f" (one of {', '.join(str(c) for c in param.type.choices)})"
        else:
            text = f"invalid value for {name}: {' '.join(exc.message.split()).rstrip('.')}"
    elif isinstance(exc, click.NoSuchOption):
        text = f"no such option {exc.option_name}"
        if exc.possibilities:
            text += f" (did you mean {' or '.join(exc.possibilities)}?)"
    else:
        text = " ".join(exc.format_message().split()).rstrip(".")
        if text[:2].istitle():  # "No such command" -> "no such command", as tadm's own messages
            text = text[0].lower() + text[1:]
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        text += f" (see '{ctx.command_path} -h')"
    return text


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())
"""click >= 8.2 raises it for a bare group (it shows the help); older click exits 0 after the help."""


def run_command(command: click.Command, obj: dict | None = None) -> None:
    """Run a click command as a console script: every error is one line and an exit code.

    Usage errors exit 2 like format errors (README, "Exit codes"); Ctrl-C exits 130.
    `obj` becomes the click context's object.
    """
    try:
        command.main(standalone_mode=False, obj=obj)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except _NO_ARGS_IS_HELP as exc:  # bare `tadm`: the help text is the answer
        exc.show()
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        _err(usage_line(exc))
        sys.exit(EXIT_USAGE)
    except click.exceptions.Abort:
        _err("aborted")
        sys.exit(130)
    except TadmError as exc:
        _err(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(EXIT_SOME_FAILED)


def entry() -> None:
    """Console-script entry: turns TadmError, usage errors and Ctrl-C into one line and an exit code.

    The process is then the `tadm` command's own, so encode and decode may import
    diffusers without transformers, peft and accelerate (`_own_process_imports`).
    """
    run_command(main, obj={OWN_PROCESS: True})


_register_optional_commands()
