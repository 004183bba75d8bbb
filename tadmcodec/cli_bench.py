"""`tadm bench` and `tadm demo`: the R-D benchmark and the no-input demo.

Registered by `tadmcodec.cli` (`bench_command`, `demo_command`). Progress goes
to stderr (a bar on a terminal, nothing with -q); stdout carries only the
result: the path of summary.md, or a JSON object with --json. Errors are one
line, `tadm: ...`, whichever way the command is invoked.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import click

from tadmcodec.errors import InputError, TadmError


def _one_line_errors(fn: Callable) -> Callable:
    """TadmError -> `tadm: message` on stderr and its exit code; Ctrl-C -> exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TadmError as exc:
            click.echo(f"tadm: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("tadm: interrupted (run the same command again to resume from the cache)", err=True)
            sys.exit(130)

    return wrapper


def _list(text: str | None, what: str, cast: Callable = str) -> tuple | None:
    if text is None:
        return None
    try:
        items = tuple(cast(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"{what}: cannot read {text!r} (comma-separated list expected)") from None
    return items


class _Bar:
    """Progress on stderr: a rich bar on a terminal, else a line at most once a minute (for logs)."""

    def __init__(self, enabled: bool, label: str, every_s: float = 60.0) -> None:
        self.progress = None
        self.enabled, self.label, self.every_s = enabled, label, every_s
        self.start = self.last = time.monotonic()
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=True,
            )
            self.task = self.progress.add_task(label, total=None)

    def __enter__(self) -> "_Bar":
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=done, total=total)
        elif self.enabled and time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            click.echo(f"tadm: {self.label}: {done}/{total} after {self.last - self.start:.0f} s", err=True)


@click.command("bench", context_settings={"help_option_names": ["-h", "--help"]},
               short_help="R-D benchmark against JPEG, WebP, AVIF and JPEG XL.")
@click.argument("inputs", nargs=-1, required=True, metavar="DIR|IMAGE...")
@click.option("-o", "--out", "out", type=click.Path(file_okay=False), default="tadm-bench", show_default=True,
              help="Output folder (results, plot, and cache/ for resuming).")
@click.option("--grid", type=click.Choice(["full", "standard", "quick"]), default="full", show_default=True,
              help="Classic-codec sweep (see docs/bench.md).")
@click.option("--codecs", metavar="LIST", help="Classic codecs to run, from jpeg,webp,avif,jxl (default: the grid's).")
@click.option("--shrink", metavar="LIST", help="Pre-shrink factors, e.g. 1,2,4 (default: the grid's).")
@click.option("--jpeg-quality", metavar="LIST", help="JPEG qualities (1-95) at every pre-shrink.")
@click.option("--webp-quality", metavar="LIST", help="WebP qualities (0-100) at every pre-shrink.")
@click.option("--avif-quality", metavar="LIST", help="AVIF qualities (0-100) at every pre-shrink.")
@click.option("--jxl-distance", metavar="LIST", help="JPEG XL distances (0.01-25) at every pre-shrink.")
@click.option("--avif-speed", type=click.IntRange(0, 10), default=6, show_default=True, help="libavif speed (0 slowest).")
@click.option("--jxl-effort", type=click.IntRange(1, 9), default=7, show_default=True, help="libjxl effort (9 slowest).")
@click.option("--models", metavar="LIST", help="Our models (default: every one available here; 'none' for classic only).")
@click.option("--scales", metavar="LIST", default="8,16,32", show_default=True, help="Scales for our models.")
@click.option("--lr-codecs", metavar="LIST", default="png,webp,jxl", show_default=True,
              help="Lossless LR codecs for our models (auto = smallest of them).")
@click.option("--metrics", metavar="LIST", default="psnr,ssim,lpips_alex,lpips_vgg,dists", show_default=True)
@click.option("--limit", type=click.IntRange(1), help="Only the first N images (sorted by path).")
@click.option("-j", "--jobs", type=click.IntRange(1), default=1, show_default=True,
              help="Worker processes (torch threads are split between them).")
@click.option("--threads", type=click.IntRange(1), help="Torch threads per job (default: CPU cores / jobs).")
@click.option("--device", default="cpu", show_default=True, help="Torch device for models and metrics.")
@click.option("--model-dir", "model_dirs", multiple=True, metavar="NAME=DIR", help="Weights folder for a model.")
@click.option("--reuse", type=click.Path(dir_okay=False), metavar="RESULTS.CSV",
              help="Take the classic and bicubic rows from an earlier run's results.csv (one of each is "
              "re-measured first and must match); learned models are always computed.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or messages on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout instead of the summary path.")
@_one_line_errors
def bench_command(inputs, out, grid, codecs, shrink, jpeg_quality, webp_quality, avif_quality, jxl_distance,
                  avif_speed, jxl_effort, models, scales, lr_codecs, metrics, limit, jobs, threads, device, model_dirs,
                  reuse, quiet, as_json):
    """Rate-distortion benchmark: our models and JPEG/WebP/AVIF/JPEG XL on every image.

    Writes results.csv, one CompressAI-style JSON per curve, bdrate.json/.md,
    rd.png and summary.md to --out. Rerunning the same command skips every
    image x setting already in --out/cache.
    """
    from tadmcodec.bench import report, runner
    from tadmcodec.bench.settings import parse_numbers

    overrides = {}
    for codec, text in (("jpeg", jpeg_quality), ("webp", webp_quality), ("avif", avif_quality), ("jxl", jxl_distance)):
        if text is not None:
            overrides[codec] = parse_numbers(text, f"--{codec}-" + ("distance" if codec == "jxl" else "quality"))
    dirs = {}
    for item in model_dirs:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--model-dir takes NAME=DIR, not {item!r}")
        dirs[name] = Path(path)
    model_list = _list(models, "--models")
    config = runner.BenchConfig(
        inputs=tuple(inputs),
        out=Path(out),
        grid=grid,
        codecs=_list(codecs, "--codecs"),
        shrinks=_list(shrink, "--shrink", int),
        overrides=overrides,
        avif_speed=avif_speed,
        jxl_effort=jxl_effort,
        models=() if model_list == ("none",) else model_list,
        scales=_list(scales, "--scales", int) or (),
        lr_codecs=_list(lr_codecs, "--lr-codecs") or (),
        metrics=_list(metrics, "--metrics") or (),
        jobs=jobs,
        threads=threads,
        device=device,
        limit=limit,
        model_dirs=dirs,
        reuse=Path(reuse) if reuse is not None else None,
    )
    with _Bar(not quiet, "bench") as bar:
        result = runner.run(config, progress=bar.update)
    files = report.write_all(result, _versions())
    seeded = result.reused
    if seeded is not None and not quiet:
        click.echo(f"tadm: bench: {seeded.rows} rows reused from {reuse} (re-measured and matching: "
                   f"{'; '.join(seeded.checked) or 'none'})", err=True)
    if not quiet:
        click.echo(
            f"tadm: bench: {len(result.images)} images x {len(result.settings)} settings, "
            f"{result.computed} computed, {result.cached} from cache, {result.seconds:.0f} s",
            err=True,
        )
    if as_json:
        click.echo(json.dumps({
            "out": str(config.out),
            "images": len(result.images),
            "settings": len(result.settings),
            "computed": result.computed,
            "cached": result.cached,
            "reused": seeded.rows if seeded else 0,
            "files": {k: str(v) for k, v in files.items()},
        }, indent=2))
    else:
        click.echo(str(files["summary"]))


def _versions() -> str:
    from importlib import metadata

    from tadmcodec import __version__

    names = ("pillow", "imagecodecs", "torch", "numpy")
    return ", ".join([f"tadmcodec {__version__}"] + [f"{n} {_version(metadata, n)}" for n in names])


def _version(metadata, name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


@click.command("demo", context_settings={"help_option_names": ["-h", "--help"]},
               short_help="Our default model vs JPEG on bundled photos (no input needed).")
@click.option("-o", "--out", "out", type=click.Path(file_okay=False), default="tadm-demo", show_default=True,
              help="Folder for the coded files and side_by_side.png.")
@click.option("--images", "count", type=click.IntRange(1), default=3, show_default=True,
              help="How many of scikit-image's bundled photos to use (up to 5).")
@click.option("--max-size", type=click.IntRange(1), help="Shrink the photos to at most this many pixels on the long side.")
@click.option("-m", "--model", metavar="NAME", help="Model (default: the first stable model, else bicubic).")
@click.option("-s", "--scale", type=click.Choice(["8", "16", "32"]), help="Scale (default: the model's, else 16).")
@click.option("--threads", type=click.IntRange(1), help="Torch threads (default: torch's).")
@click.option("--device", default="cpu", show_default=True, help="Torch device for models and metrics.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@_one_line_errors
def demo_command(out, count, max_size, model, scale, threads, device, as_json):
    """Our default model against JPEG of at least the same size and the best AVIF within it, on bundled photos.

    Needs no input: prints bpp, PSNR, LPIPS and DISTS per photo and writes the
    coded files (ours, JPEG) and a side-by-side picture (original | JPEG | AVIF | ours) to --out.
    """
    from tadmcodec.bench.demo import run_demo, table
    from tadmcodec.bench.runner import torch_threads

    with torch_threads(threads):
        rows, picture = run_demo(Path(out), count=count, max_size=max_size, model=model,
                                 scale=int(scale) if scale else None, device=device)
    if as_json:
        click.echo(json.dumps({"rows": [asdict(r) for r in rows], "picture": str(picture)}, indent=2))
    else:
        click.echo(table(rows))
        click.echo(f"\nside by side: {picture}")


__all__ = ["bench_command", "demo_command"]
