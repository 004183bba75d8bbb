"""Images per second of `tadm encode/decode` with --engine local -j 2 and with --engine ray, 2 workers.

    python benchmarks/ray_throughput.py                       # 24 Urban100 photos, bicubic and tiny x16
    python benchmarks/ray_throughput.py --count 3 --out /tmp/rt   # a quick check of the script itself

Every figure is the wall time of one whole `tadm` command, as a user runs it
(process start, model loading, Ray start or connection, reading and writing the
files included), on the same photos, all on this one machine, on the CPU:

- `local -j 2`: one process, two files at a time in threads;
- `local -j 2, 1 thread`: the same with OMP_NUM_THREADS=1, one torch thread per
  file, as each Ray worker has (Ray sets OMP_NUM_THREADS to the CPUs a worker
  holds). TADM models on the CPU round differently with other thread counts, so
  this is the run whose bytes the Ray runs must equal;
- `ray (own)`: `--engine ray -j 2` with no cluster running, so each command
  starts a local Ray and stops it (what one `tadm` command on a laptop costs);
- `ray (joined)`: `--engine ray -j 2` joining a 2-CPU Ray that this script
  started once, through RAY_ADDRESS (what a running cluster costs).

Each is timed on all photos and on one photo; `(N-1) / (t_N - t_1)` is the
images/s once started, so the fixed cost (start-up) and the throughput are
told apart. The Ray outputs are checked to be byte-identical to the 1-thread local ones.

The tiny model is a real-size `tadm-tiny-x16` with random weights (no trained
one ships; speed does not depend on the weight values), built from the training
config unless --tiny-dir names a model folder. Photos are read where they are
(../shared/data/urban100, read-only); outputs go to a temporary folder.
Results: benchmarks/results/ray_throughput.json and .md (or --out DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "data" / "urban100"
TADM = [sys.executable, "-m", "tadmcodec"]
ENGINES = {"local": "local -j 2", "local-1t": "local -j 2, 1 thread", "ray-own": "ray (own)",
           "ray-joined": "ray (joined)"}


def make_tiny(out: Path, seed: int = 0) -> Path:
    """A real-size tiny x16 (the shipped architecture, random backbone and heads) written to `out`."""
    import torch

    from tadmcodec.tadm import backbone as bb
    from tadmcodec.tadm.loader import build_model, quiet, save_model_dir
    from tadmcodec.tadm.testing import randomize
    from tadmcodec.train import stages

    cfg = stages.load_config(ROOT / "tadmcodec/train/configs/tadm-tiny-x16-cpu.json")
    unet = bb.tiny_unet_config()
    config = stages.tadm_config({**cfg, "name": "tadm-tiny-x16"}, bb.tiny_vae_config(), unet, bb.EMPTY_PROMPT_LENGTH)
    torch.manual_seed(seed)
    with quiet():
        model = build_model(config, load_weights=False)
    randomize(model, torch.Generator().manual_seed(seed + 1))  # the zero-initialised tensors too
    model.prompt_embeds = bb.empty_prompt_embedding(unet["cross_attention_dim"])
    return save_model_dir(out, model.eval())


def clean(environ: "os._Environ[str] | dict[str, str]") -> dict[str, str]:
    """The environment without a cluster address or a thread count: each engine sets its own."""
    return {k: v for k, v in environ.items() if k not in ("RAY_ADDRESS", "OMP_NUM_THREADS")}


def timed(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run([*TADM, *args], capture_output=True, env=env, timeout=3600)
    secs = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): tadm {' '.join(args)}\n{p.stderr.decode()}")
    return secs


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import ray
    import torch

    return {"cpu": cpu, "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray.__version__, "date": time.strftime("%Y-%m-%d %H:%M")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=PHOTOS, help="folder of photos (the first --count, by name)")
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--jobs", type=int, default=2, help="threads for local, workers for ray")
    ap.add_argument("--models", nargs="*", default=["bicubic", "tiny"], choices=["bicubic", "tiny"])
    ap.add_argument("--engines", nargs="*", default=list(ENGINES), choices=list(ENGINES),
                    help="which to run (both local ones always run: they are the baseline and the reference)")
    ap.add_argument("--tiny-dir", type=Path, help="a tadm-tiny-x16 model folder (default: a random real-size one)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="where the .json/.md go")
    ap.add_argument("--note", default="", help="recorded with the results (e.g. 'training ran beside it')")
    args = ap.parse_args()

    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[: args.count]
    if len(photos) < 2:
        raise SystemExit(f"need at least 2 photos in {args.photos}")
    work = Path(tempfile.mkdtemp(prefix="tadm-ray-bench-"))
    env = clean(os.environ)
    info = machine()
    models: dict[str, list[str]] = {}
    if "bicubic" in args.models:
        models["bicubic x16"] = ["-m", "bicubic", "-s", "16"]
    if "tiny" in args.models:
        tiny = args.tiny_dir or make_tiny(work / "tiny-x16")
        models["tiny x16" + ("" if args.tiny_dir else " (random weights)")] = [
            "-m", "tadm-tiny-x16", "--model-dir", str(tiny)]
    rows: list[dict[str, object]] = []
    cluster = None
    try:
        # ray (own) before ray (joined): a command without RAY_ADDRESS would also join a running cluster
        for engine in sorted({"local", "local-1t", *args.engines}, key=list(ENGINES).index):
            if engine == "ray-joined" and cluster is None:
                import ray

                cluster = ray.init(num_cpus=args.jobs, include_dashboard=False, log_to_driver=False)
                # after init: it sets RAY_AUTH_MODE=token (local clusters use token authentication from Ray 2.59),
                # which a joining driver needs too
                env = {**clean(os.environ), "RAY_ADDRESS": cluster.address_info["address"]}
            flags = ["-j", str(args.jobs), "--device", "cpu"] + (["--engine", "ray"] if engine.startswith("ray") else [])
            run_env = {**env, "OMP_NUM_THREADS": "1"} if engine == "local-1t" else env
            for label, model_args in models.items():
                tag = label.split()[0]
                for op in ("encode", "decode"):
                    if op == "encode":
                        inputs = [str(p) for p in photos]
                    else:  # the local engine's files: the same bytes for every engine
                        inputs = [str(p) for p in sorted((work / f"{tag}-encode-local").rglob("*.tadm"))]
                    extra = model_args if op == "encode" else (["--model-dir", model_args[-1]] if tag == "tiny" else [])
                    out = work / f"{tag}-{op}-{engine}"
                    t_all = timed([op, *inputs, "-d", str(out), *flags, *extra], run_env)
                    t_one = timed([op, inputs[0], "-d", str(work / f"{tag}-{op}-{engine}-one"), *flags, *extra], run_env)
                    same = tree(out) == tree(work / f"{tag}-{op}-local-1t") if engine.startswith("ray") else None
                    n = len(inputs)
                    rows.append({
                        "model": label, "op": op, "engine": engine, "images": n, "seconds": round(t_all, 2),
                        "images_per_s": round(n / t_all, 3), "one_image_seconds": round(t_one, 2),
                        "started_images_per_s": round((n - 1) / (t_all - t_one), 3) if t_all > t_one else None,
                        "same_output_as_local": same,
                    })
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        if cluster is not None:
            import ray

            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    write(args.out, rows, {**info, "jobs": args.jobs, "photos": f"{args.photos.name}: {photos[0].name}..{photos[-1].name}",
                           "note": args.note})


def write(out: Path, rows: list[dict[str, object]], meta: dict[str, object]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray_throughput.json").write_text(json.dumps({"machine": meta, "rows": rows}, indent=1) + "\n")
    local = {(r["model"], r["op"]): r for r in rows if r["engine"] == "local"}
    lines = [
        "# --engine local against --engine ray on one machine",
        "",
        f"`python benchmarks/ray_throughput.py` ({meta['photos']}, {rows[0]['images'] if rows else 0} photos; "
        f"{meta['cpu']}, {meta['cpu_count']} cores; Python {meta['python']}, torch {meta['torch']}, "
        f"Ray {meta['ray']}; {meta['date']}; load average {meta['load_average'][0]:.1f} at the start"
        + (f"; {meta['note']}" if meta.get("note") else "") + ").",
        "",
        "Wall time of whole `tadm` commands, CPU only, "
        f"{meta['jobs']} threads (local) or {meta['jobs']} workers (ray). `ray (own)`: each command starts "
        "and stops a local Ray; `ray (joined)`: commands join a running 2-CPU Ray through RAY_ADDRESS. "
        "`started` = (N-1)/(t_N - t_1), the images/s once the command has started; `overhead` = the "
        "command's seconds minus `local -j 2`'s. `same bytes`: the outputs equal those of `local -j 2, 1 thread` "
        "(Ray gives each worker one torch thread per CPU it holds).",
        "",
        "| model | op | engine | images/s | seconds | 1 image, s | started, images/s | overhead, s | same bytes |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        base = local.get((r["model"], r["op"]))
        over = f"{r['seconds'] - base['seconds']:+.1f}" if base is not None and r["engine"] != "local" else ""
        started = f"{r['started_images_per_s']:.2f}" if r["started_images_per_s"] else "-"
        same = {None: "", True: "yes", False: "**no**"}[r["same_output_as_local"]]
        lines.append(f"| {r['model']} | {r['op']} | {ENGINES.get(r['engine'], r['engine'])} | {r['images_per_s']:.2f} | "
                     f"{r['seconds']:.1f} | {r['one_image_seconds']:.1f} | {started} | {over} | {same} |")
    (out / "ray_throughput.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
