"""Encode/decode speed (seconds per megapixel) and peak memory of each model on each device.

Each measurement runs in a fresh subprocess so its peak memory is its own:
peak RSS (the whole process: Python, torch, weights, buffers) on CPU, and
additionally torch's peak allocated GPU memory on CUDA. The encode run times
`downscale`, the decode run times `upscale` (model loading is timed apart).

    python benchmarks/speed.py                              # available models, cpu (+cuda)
    python benchmarks/speed.py --random-tiny --sizes 1024 --decode-sizes 8192
    python benchmarks/speed.py --model tadm-sd21-x16=/path/to/model --devices cuda

Whole `tadm` processes (issue 17: what a user waits for), with --cli:

    python benchmarks/speed.py --model tadm-tiny-x16=DIR --devices cpu --sizes 768x512 --repeat 5 \
        --cli --light --batch 24 --jobs 1 2

adds, per model and size, `start-up (process)` (a process that imports what `tadm` imports
and loads the model, touching no pixel: process start + imports + model load), `decode
(process)` and `encode (process)` (`tadm decode`/`tadm encode` of one file, spawn to exit;
their `load s` column is the start-up median, the rest is compute and I/O); --light adds
`tadm --help`, `tadm models` and `tadm info` as whole processes and says whether each imported
torch; --batch N adds `tadm decode -d OUT DIR` over N copies of the file for each --jobs value,
with images/s and the per-file cost after start-up beside the decode compute alone.

Results go to benchmarks/results/speed.json and speed.md (merged with what is
there, keyed by model, device and size), so runs on several machines add up.
A model named `random-micro-*` is an untrained random-weight micro model: its
numbers measure the pipeline's overheads and memory bounds, not the real models.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

WORKER = textwrap.dedent(r"""
    import json, resource, sys, time
    import numpy as np
    t0 = time.perf_counter()
    import torch
    from tadmcodec import registry
    name, folder, device, mode, w, h, lr_path = sys.argv[1:8]
    w, h = int(w), int(h)
    spec = registry.get(name.split("@")[0]) if not name.startswith("random-micro") else registry.get("tadm-tiny-x16")
    if folder != "-":
        spec = registry.with_weights_dir(spec, folder)
    t = time.perf_counter()
    model = registry.load_rescaler(spec, device=device)
    load_s = time.perf_counter() - t
    scale = model.scales[0] if len(model.scales) == 1 else 16
    if torch.cuda.is_available() and device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "encode":
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.stack([x * 255 / w, y * 255 / h, 128 + 60 * np.sin(x / 37) * np.cos(y / 23)], axis=2)
        img = np.clip(img + np.random.default_rng(0).normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        del x, y
        t = time.perf_counter()
        lr = model.downscale(img, scale)
        secs = time.perf_counter() - t
        np.save(lr_path, lr)
    else:
        lw, lh = -(-w // scale), -(-h // scale)
        lr = np.load(lr_path) if lr_path != "-" else np.random.default_rng(0).integers(0, 256, (lh, lw, 3), dtype=np.uint8)
        t = time.perf_counter()
        out = model.upscale(lr, scale, (w, h))
        secs = time.perf_counter() - t
        assert out.shape == (h, w, 3)
    res = {
        "seconds": secs, "s_per_mp": secs / (w * h / 1e6), "load_s": load_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss0 / 1024, "scale": scale,
        "dtype": str(getattr(model, "dtype", "uint8")).removeprefix("torch."),
    }
    if torch.cuda.is_available() and device != "cpu":
        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        res["gpu"] = torch.cuda.get_device_name()
    print("RESULT " + json.dumps(res))
""")


STARTUP_WORKER = textwrap.dedent(r"""
    import sys
    from tadmcodec.cli import main  # what `tadm` imports before it runs a command
    from tadmcodec.codec import Codec
    from pathlib import Path
    name, folder, device = sys.argv[1:4]
    codec = Codec(device=device, model_dirs={} if folder == "-" else {name: Path(folder)})
    spec = codec.spec(name)
    codec.digest(spec)  # decode checks the file's digest before it loads the model
    codec.rescaler(spec)
""")


LAUNCHER = textwrap.dedent(r"""
    import json, os, sys, time
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.execv(sys.argv[2], sys.argv[2:])
    _, status, usage = os.wait4(pid, 0)
    with open(sys.argv[1], "w") as f:
        json.dump({"seconds": time.perf_counter() - t, "rc": os.waitstatus_to_exitcode(status),
                   "peak_rss_mb": usage.ru_maxrss / 1024}, f)
""")
"""Times one process and reads its own peak RSS. A child forked straight from this script would
inherit this script's peak (torch is loaded here) through fork and exec, so a small launcher
forks it instead and reports its wait4 rusage."""


OWN_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
"""A process group of its own, to kill the launcher and its child together on a timeout, but not a
session of its own: with the kernel's autogroup scheduling a new session is a new scheduling group,
which shares the CPU equally with a `nice 19` training run instead of taking nearly all of it (the
first x16 rows of session 19 took 32 s to encode where the same command alone took 7 s)."""


def run_process(cmd: list[str], timeout: int, cwd: Path | None = None) -> dict:
    """One whole process: wall seconds from its fork to its exit and its own peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        report, err_path = Path(tmp) / "report.json", Path(tmp) / "stderr"
        with open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(report), *cmd], stdout=subprocess.DEVNULL,
                                    stderr=err, cwd=cwd or ROOT, **OWN_GROUP)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)  # the launcher and the process it runs
                proc.wait()
                return {"error": f"killed after {timeout} s"}
        if not report.is_file():
            return {"error": f"launcher failed (exit {proc.returncode})"}
        r = json.loads(report.read_text())
        if r["rc"] != 0:
            lines = err_path.read_text(errors="replace").strip().splitlines()
            return {"error": (lines or [f"exit {r['rc']}"])[-1]}
    return {"seconds": r["seconds"], "peak_rss_mb": r["peak_rss_mb"]}


def tadm_cmd(*args: str) -> list[str]:
    """`tadm ARGS` as this interpreter runs it (the console script is the same entry point)."""
    return [sys.executable, "-m", "tadmcodec", *args]


def imported_heavy(args: list[str]) -> list[str]:
    """The heavy packages a `tadm ARGS` process imports (torch, diffusers, peft, ...), from -X importtime."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "tadmcodec", *args], capture_output=True,
                       text=True, cwd=ROOT)
    names = {line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
    return sorted(names & {"torch", "diffusers", "peft", "transformers", "accelerate"})


def photo_png(path: Path, w: int, h: int) -> Path:
    """The worker's gradient-plus-noise photo as a PNG file (for the CLI rows)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x * 255 / w, y * 255 / h, 128 + 60 * np.sin(x / 37) * np.cos(y / 23)], axis=2)
    img = np.clip(img + np.random.default_rng(0).normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


def cli_rows(name: str, folder: str, device: str, size: int | str, tmp: Path, args: argparse.Namespace,
             compute: dict[str, float]) -> list[dict]:
    """Whole-process rows for one model and size: start-up, decode, encode, and the batches."""
    w, h = size_wh(size)
    mp = w * h / 1e6
    model_opts = ["-m", name.split("@")[0]] if not name.startswith("random-micro") else ["-m", "tadm-tiny-x16"]
    dir_opts = [] if folder == "-" else ["--model-dir", folder]
    work = tmp / f"cli-{name}-{device}-{w}x{h}"
    work.mkdir(parents=True, exist_ok=True)
    png, tadm = photo_png(work / "photo.png", w, h), work / "photo.tadm"
    made = run_process(tadm_cmd("encode", *model_opts, *dir_opts, "--device", device, "-q", "-f", str(png),
                                "-o", str(tadm)), args.timeout)
    if "error" in made:
        return [{"model": name, "device": device, "mode": "encode (process)", "size": size, **made}]
    spec_name = model_opts[1]
    start = repeated(args.repeat, lambda: run_process(
        [sys.executable, "-c", STARTUP_WORKER, spec_name, folder, device], args.timeout))
    load = start.get("seconds", float("nan"))
    rows = [{"model": name, "device": device, "mode": "start-up (process)", "size": size, **start,
             "note": "process start + imports + model load, no pixels"}]
    for op, cmd in (
        ("decode", tadm_cmd("decode", *dir_opts, "--device", device, "-q", "-f", str(tadm), "-o",
                            str(work / "out.png"))),
        ("encode", tadm_cmd("encode", *model_opts, *dir_opts, "--device", device, "-q", "-f", str(png), "-o",
                            str(work / "again.tadm"))),
    ):
        r = repeated(args.repeat, lambda: run_process(cmd, args.timeout))
        note = ""
        if "error" not in r and op in compute:
            note = f"start-up {load:.2f} s + the rest {r['seconds'] - load:.2f} s (compute alone {compute[op]:.2f} s)"
        rows.append({"model": name, "device": device, "mode": f"{op} (process)", "size": size, "load_s": load,
                     "s_per_mp": r.get("seconds", 0) / mp, **r, "note": note})
    if args.batch:
        src = work / "batch"
        src.mkdir(exist_ok=True)
        for i in range(args.batch):  # copies of one file: every decode is the same work, none is cached
            (src / f"f{i:02d}.tadm").write_bytes(tadm.read_bytes())
        for jobs in args.jobs:
            out = work / f"batch-out-{jobs}"
            r = repeated(args.repeat, lambda: run_process(
                tadm_cmd("decode", *dir_opts, "--device", device, "-q", "-f", "-j", str(jobs), "-d", str(out),
                         str(src)), args.timeout))
            note = ""
            if "error" not in r:
                per = (r["seconds"] - load) / args.batch
                note = (f"{args.batch / r['seconds']:.2f} images/s; per file after start-up {per:.2f} s"
                        + (f" (decode compute alone {compute['decode']:.2f} s)" if "decode" in compute else ""))
                r["images_per_s"] = args.batch / r["seconds"]
            rows.append({"model": name, "device": device, "mode": f"decode batch of {args.batch}, --jobs {jobs}",
                         "size": size, "load_s": load, "s_per_mp": r.get("seconds", 0) / (mp * args.batch), **r,
                         "note": note})
    return rows


def light_rows(args: argparse.Namespace, tmp: Path) -> list[dict]:
    """`tadm --help`, `tadm models` and `tadm info` as whole processes (issue 17: 0.3 s, no torch)."""
    png = photo_png(tmp / "light.png", 64, 48)
    f = tmp / "light.tadm"
    run_process(tadm_cmd("encode", "-m", "bicubic", "-s", "16", "-q", "-f", str(png), "-o", str(f)), args.timeout)
    rows = []
    for argv in (["--help"], ["models"], ["info", str(f)]):
        r = repeated(args.repeat, lambda: run_process(tadm_cmd(*argv), args.timeout))
        heavy = imported_heavy(argv)
        rows.append({"model": "-", "device": "cpu", "mode": f"tadm {argv[0]} (process)", "size": "-", **r,
                     "imports": heavy, "note": "imports " + (", ".join(heavy) if heavy else "no torch")})
    return rows


def parse_size(text: str) -> int | str:
    """'1024' (a square) or '768x512' (width x height); squares stay ints so earlier rows still match."""
    w, _, h = text.lower().partition("x")
    if not h or w == h:
        return int(w)
    return f"{int(w)}x{int(h)}"


def size_wh(size: int | str) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    w, h = size.split("x")
    return int(w), int(h)


def size_label(size: int | str) -> str:
    if size == "-":
        return "-"
    return f"{size}²" if isinstance(size, int) else str(size)


def run_worker(name: str, folder: str, device: str, mode: str, size: int | str, lr_path: str,
               timeout: int) -> dict:
    w, h = size_wh(size)
    cmd = [sys.executable, "-c", WORKER, name, folder, device, mode, str(w), str(h), lr_path]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (p.stderr.strip().splitlines() or ["failed"])[-1]}


def repeated(n: int, measure: Callable[[], dict]) -> dict:
    """The median run of n (each a cold process, as a user's `tadm` call is), with every time listed."""
    runs = [measure() for _ in range(max(n, 1))]
    ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["seconds"])
    if len(ok) < len(runs):
        return next(r for r in runs if "error" in r)
    if n <= 1:
        return ok[0]
    return {**ok[(len(ok) - 1) // 2], "seconds_all": [round(r["seconds"], 3) for r in runs]}


def available_models() -> list[tuple[str, str]]:
    from tadmcodec import registry

    return [(s.name, "-") for s in registry.MODELS.values() if s.availability()[0]]


def devices_here() -> list[str]:
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    info["simd"] = simd_level()
    return info


def simd_level() -> str:
    """The widest x86 vector extension (the lent VMs differ: AVX-512 with bf16 on some, AVX2 on others)."""
    try:
        flags = set(next(line.split(":", 1)[1].split() for line in open("/proc/cpuinfo")
                         if line.startswith("flags")))
    except (OSError, StopIteration):
        return "?"
    for flag, name in (("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2")):
        if flag in flags:
            return name
    return "no AVX2"


def run_key(r: dict) -> tuple:
    """Rows of the same model, op and size from different CPUs are kept side by side."""
    m = r.get("machine", {})
    return (r["model"], r["device"], r["mode"], r["size"], m.get("cpu"), m.get("simd"))


def write(results: list[dict], meta: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "speed.json"
    old = json.loads(path.read_text())["runs"] if path.exists() else []
    merged = {run_key(r): r for r in old}
    for r in results:
        r = {**r, "machine": meta}
        merged[run_key(r)] = r
    runs = sorted(merged.values(), key=lambda r: (r["model"], r["device"], r["mode"], _size_key(r["size"])))
    path.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    lines = ["# Speed and memory", "",
             "Written by `python benchmarks/speed.py`. s/MP = seconds per megapixel of the *original* image;",
             "peak RSS is the whole process (Python + torch + weights + buffers); GPU = torch's peak allocation.",
             "`random-micro-*` rows use an untrained micro model: pipeline overhead and memory bounds only.",
             "`(process)` rows time a whole `tadm` process from spawn to exit (peak RSS: that process's); "
             "for them `load s` is the start-up row (process start + imports + model load).", "",
             "| model | device | dtype | op | size | seconds | s/MP | peak RSS MB | peak GPU MB | load s | machine |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['device']} | | {r['mode']} | {size_label(r['size'])} | error: {r['error']} |"
                         " | | | | |")
            continue
        m = r.get("machine", {})
        simd = f", {m['simd']}" if m.get("simd") else ""
        where = f"{m.get('cpu', '?')}{simd} ({m.get('cpu_count', '?')} cores)" + (f", {r['gpu']}" if "gpu" in r else "")
        where += f"; {m['note']}" if m.get("note") else ""
        gpu = f"{r['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in r else "-"
        note = f"; {r['note']}" if r.get("note") else ""
        lines.append(
            f"| {r['model']} | {r['device']} | {r.get('dtype', '-')} | {r['mode']} | {size_label(r['size'])} | "
            f"{r['seconds']:.2f} | {_num(r, 's_per_mp', '.3f')} | {_num(r, 'peak_rss_mb', '.0f')} | {gpu} | "
            f"{_num(r, 'load_s', '.2f')} | {where}{note}{runs_of(r)} |")
    (RESULTS / "speed.md").write_text("\n".join(lines) + "\n")


def _num(r: dict, key: str, fmt: str) -> str:
    return format(r[key], fmt) if isinstance(r.get(key), (int, float)) else "-"


def _size_key(size: int | str) -> tuple[int, int]:
    return (0, 0) if size == "-" else size_wh(size)


def runs_of(r: dict) -> str:
    times = r.get("seconds_all")
    return f"; median of {len(times)} runs: {', '.join(f'{t:.2f}' for t in times)} s" if times else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=[], metavar="NAME[=DIR]",
                    help="a registry model (optionally with its folder); default: every available one")
    ap.add_argument("--random-tiny", action="store_true", help="also benchmark a random micro x16 model")
    ap.add_argument("--devices", nargs="*", help="default: cpu, and cuda when present")
    ap.add_argument("--sizes", nargs="*", type=parse_size, default=[1024],
                    help="sizes to encode and decode: 1024 (square) or 768x512")
    ap.add_argument("--decode-sizes", nargs="*", type=int, default=[],
                    help="square sizes to decode only (from a random LR image), e.g. 8192")
    ap.add_argument("--repeat", type=int, default=1,
                    help="fresh processes per measurement; the row keeps the median and lists them all")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--note", default="", help="recorded with each run (e.g. 'shared machine, load 6')")
    ap.add_argument("--cli", action="store_true",
                    help="also whole `tadm` processes per model and size: start-up, decode, encode")
    ap.add_argument("--light", action="store_true", help="also `tadm --help`, `models` and `info` as processes")
    ap.add_argument("--batch", type=int, default=0, metavar="N",
                    help="with --cli: `tadm decode -d OUT DIR` over N files, for each --jobs value")
    ap.add_argument("--jobs", type=int, nargs="*", default=[1, 2], help="--jobs values for --batch")
    ap.add_argument("--no-worker", action="store_true",
                    help="skip the in-process encode/decode rows (only with --cli or --light)")
    args = ap.parse_args()

    models = [(m.split("=")[0], m.split("=", 1)[1] if "=" in m else "-") for m in args.model]
    if not models:
        models = available_models()
    tmp = tempfile.TemporaryDirectory()
    if args.random_tiny:
        sys.path.insert(0, str(ROOT))
        from tadmcodec.tadm.testing import make_random_model_dir

        models.append(("random-micro-x16", str(make_random_model_dir(Path(tmp.name) / "micro", 16, adapters=False))))
    results = []
    for name, folder in models:
        for device in args.devices or devices_here():
            for size in args.sizes:
                lr_path = str(Path(tmp.name) / f"lr-{size}.npy")
                compute: dict[str, float] = {}
                for mode in ("encode", "decode"):
                    if args.no_worker:
                        continue
                    r = repeated(args.repeat, lambda: run_worker(name, folder, device, mode, size, lr_path,
                                                                 args.timeout))
                    results.append({"model": name, "device": device, "mode": mode, "size": size, **r})
                    print(json.dumps(results[-1]), flush=True)
                    if "error" not in r:
                        compute[mode] = r["seconds"]
                if args.cli:
                    for row in cli_rows(name, folder, device, size, Path(tmp.name), args, compute):
                        results.append(row)
                        print(json.dumps(row), flush=True)
            for size in args.decode_sizes:
                r = repeated(args.repeat, lambda: run_worker(name, folder, device, "decode", size, "-", args.timeout))
                results.append({"model": name, "device": device, "mode": "decode", "size": size, **r})
                print(json.dumps(results[-1]), flush=True)
    if args.light:
        for row in light_rows(args, Path(tmp.name)):
            results.append(row)
            print(json.dumps(row), flush=True)
    write(results, {**machine(), "note": args.note} if args.note else machine())
    tmp.cleanup()


if __name__ == "__main__":
    main()
