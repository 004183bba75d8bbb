"""Start-up levers of issue 17, each as a before/after pair of cold processes (median of N).

    python benchmarks/real_size_model.py --out runs/speed-x16                # merged (export's layout)
    python benchmarks/real_size_model.py --out runs/speed-x16-adapters --adapters
    git worktree add --detach /tmp/tadm-before <commit before the levers>
    python benchmarks/startup.py --merged runs/speed-x16 --adapters runs/speed-x16-adapters \
        --before-tree /tmp/tadm-before --repeat 5 --note "..."

Every figure is a fresh interpreter, as a user's `tadm` call is; the parent times the whole
process (spawn to exit) and the child reports its own phases. The variants of a row run in
turn (before, after, before, ...), so a changing background load hits both alike. Rows:

- (a) LoRA merged at export: loading the merged folder against the same model saved with
  adapter files (peft injects, loads and merges them at every start).
- (b) diffusers imports: `from diffusers import ...` against importing the model modules by
  path, beside `import torch` alone (the floor) and the same modules imported the way the
  `tadm` command imports them for a merged folder, without transformers, peft and accelerate
  (`tadmcodec.tadm.diffusers_import`), which shows what diffusers' optional imports cost.
- (c) meta device: building the modules on the meta device and assigning the file's tensors,
  against a random init overwritten by the file (heads only: the code before this change,
  whose backbone was already built on the meta device; and everything).
- (d) no work at import time: `tadm --help`, `tadm models` and `tadm info` as whole processes,
  the tree before the change (--before-tree) against this one, and whether torch is imported.
- all together: `tadm decode` / `tadm encode` of a 768x512 image as whole processes, the
  before tree on the adapter folder against this tree on the merged folder.
- (f) diffusers without its optional imports, as whole processes: `tadm decode` / `tadm encode`
  of the merged folder through the console entry (`python -m tadmcodec`, which leaves the three
  out) against the same command through the click group `tadmcodec.cli.main`, which does not
  (diffusers imported as a library caller's process imports it); same tree, same folder.

Results: benchmarks/results/startup.json and startup.md (replaced by each run), or --out DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
HEAVY = ("torch", "diffusers", "peft", "transformers", "accelerate", "scipy")

LOAD_CHILD = textwrap.dedent(r"""
    import json, sys, time
    t0 = time.perf_counter()
    import torch
    from tadmcodec import registry
    from tadmcodec.tadm.loader import diffusers_classes
    diffusers_classes()  # imports apart, so load_s is the model load alone
    t1 = time.perf_counter()
    spec = registry.with_weights_dir(registry.get("tadm-tiny-x16"), sys.argv[1])
    registry.load_rescaler(spec, device="cpu")
    t2 = time.perf_counter()
    print("RESULT " + json.dumps({"import_s": t1 - t0, "load_s": t2 - t1,
                                  "lora_module": "tadmcodec.tadm.lora" in sys.modules}))
""")

IMPORT_CHILD = textwrap.dedent(r"""
    import json, sys, time
    variant = sys.argv[1]
    t0 = time.perf_counter()
    import torch
    t1 = time.perf_counter()
    if variant == "package":
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from diffusers.models.embeddings import TimestepEmbedding
    elif variant == "lean":  # what `tadm encode`/`decode` does for a merged folder
        from pathlib import Path
        from tadmcodec.tadm import diffusers_import
        diffusers_import.allow()
        assert diffusers_import.import_model_modules(Path(sys.argv[3]))  # the merged folder
    elif variant == "modules":
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
        from diffusers.models.embeddings import TimestepEmbedding
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
        from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
    t2 = time.perf_counter()
    heavy = sorted({m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}
                   & set(json.loads(sys.argv[2])))
    print("RESULT " + json.dumps({"torch_s": t1 - t0, "import_s": t2 - t1, "total_s": t2 - t0, "heavy": heavy}))
""")

BUILD_CHILD = textwrap.dedent(r"""
    import contextlib, json, sys, time
    import torch
    from tadmcodec.tadm import loader, spec as S
    from tadmcodec.tadm.dfrm import DFRM
    from tadmcodec.tadm.model import TadmModel
    from tadmcodec.tadm.scheduler import Refiner
    from tadmcodec.tadm.tpm import TimeMapping
    loader.diffusers_classes()
    variant, folder = sys.argv[1], loader.Path(sys.argv[2])
    cfg = S.read_config(folder)
    heads = (("dfrm", S.DFRM_FILE), ("tpm", S.TPM_FILE), ("refiner", S.REFINER_FILE))
    t0 = time.perf_counter()
    if variant == "meta":  # the loader as shipped
        model = loader.build_model(cfg, folder)
    elif variant == "random-heads":  # the code before: backbone on the meta device, heads random then copied
        vae, unet = loader._backbone(cfg, folder, None, None, True, True)
        lat = cfg.dfrm.latent_channels
        mods = {"dfrm": DFRM(cfg.scale, cfg.dfrm), "tpm": TimeMapping(cfg.tpm, lat), "refiner": Refiner(cfg.refiner, lat)}
        for attr, name in heads:
            mods[attr].load_state_dict(loader.read_weights(folder / name), strict=True)
        prompt = loader.read_weights(folder / S.PROMPT_FILE)["prompt_embeds"]
        model = TadmModel(cfg, vae, unet, prompt.float(), mods["dfrm"], mods["tpm"], mods["refiner"])
    else:  # random-all: every module randomly initialised, then the file copied over it
        with loader.quiet():
            model = loader.build_model(cfg, load_weights=False)
        for attr, name in (("vae", S.VAE_FILE), ("unet", S.UNET_FILE), *heads):
            getattr(model, attr).load_state_dict(loader.read_weights(folder / name), strict=True)
    t1 = time.perf_counter()
    print("RESULT " + json.dumps({"build_s": t1 - t0}))
""")

MODULES_PROBE = "import sys, json, runpy; sys.argv = ['tadm', *sys.argv[1:]]\n" \
                "try:\n    runpy.run_module('tadmcodec', run_name='__main__')\nexcept SystemExit:\n    pass\n" \
                "print('MODULES ' + json.dumps(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)\n"


def env_for(tree: Path) -> dict[str, str]:
    """The environment that makes `tadmcodec` resolve to `tree` (cwd is a temp dir, not the checkout)."""
    return {**os.environ, "PYTHONPATH": str(tree)}


def timed(cmd: list[str], tree: Path, cwd: Path, timeout: int) -> dict:
    """Run one process; its wall time from spawn to exit and its RESULT line, if any."""
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env_for(tree), timeout=timeout)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]}
    out: dict = {"process_s": wall}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            out.update(json.loads(line[7:]))
    return out


def interleaved(n: int, *measures) -> list[dict]:
    """n cold runs of each measure, taken in turn (A B A B ...), each summarised by `summary`.

    Taking the variants in turn rather than one after the other spreads any drift in the
    background load (a training job, other processes) over all of them alike.
    """
    runs: list[list[dict]] = [[] for _ in measures]
    for _ in range(n):
        for i, measure in enumerate(measures):
            runs[i].append(measure())
    return [summary(r) for r in runs]


def summary(runs: list[dict]) -> dict:
    """The median of each timed key over the runs, with every value listed."""
    bad = [r for r in runs if "error" in r]
    if bad:
        return bad[0]
    keys = [k for k, v in runs[0].items() if k.endswith("_s")]
    out: dict = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["all"] = {k: [round(r[k], 3) for r in runs] for k in keys}
    out.update({k: v for k, v in runs[0].items() if not k.endswith("_s")})
    return out


def imports_torch(tree: Path, argv: list[str], cwd: Path) -> list[str]:
    """The heavy top-level packages a `tadm ARGV` process imported."""
    p = subprocess.run([sys.executable, "-c", MODULES_PROBE, *argv], capture_output=True, text=True,
                       cwd=cwd, env=env_for(tree), timeout=300)
    line = next((x for x in p.stderr.splitlines() if x.startswith("MODULES ")), "MODULES []")
    return sorted(set(json.loads(line[8:])) & set(HEAVY))


def machine(note: str) -> dict:
    info = {"python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                           if line.startswith("model name"))
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
        info["simd"] = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "other"
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if note:
        info["note"] = note
    return info


def photo(path: Path, w: int = 768, h: int = 512) -> Path:
    """The gradient-plus-noise test photo speed.py encodes, as a PNG."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x * 255 / w, y * 255 / h, 128 + 60 * np.sin(x / 37) * np.cos(y / 23)], axis=2)
    img = np.clip(img + np.random.default_rng(0).normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--merged", type=Path, required=True, help="real-size tiny x16, LoRA merged (export's layout)")
    ap.add_argument("--adapters", type=Path, required=True, help="the same model with adapter files")
    ap.add_argument("--before-tree", type=Path, help="a checkout of the commit before the levers (for d and e)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", default="abcdef", help="which groups to run (letters a-f; e = all together)")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for startup.json and startup.md")
    args = ap.parse_args()
    merged, adapters = args.merged.resolve(), args.adapters.resolve()
    before = args.before_tree.resolve() if args.before_tree else None
    py, n = sys.executable, args.repeat
    rows: list[dict] = []
    meta_start = machine(args.note)

    def row(lever: str, what: str, key: str, b: dict | None, a: dict, note: str = "") -> None:
        rows.append({"lever": lever, "measure": what, "key": key, "before": b, "after": a, "note": note})
        print(json.dumps(rows[-1]), flush=True)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run = lambda cmd, tree=ROOT: (lambda: timed(cmd, tree, tmp, args.timeout))  # noqa: E731
        if "a" in args.only:
            b, a = interleaved(n, run([py, "-c", LOAD_CHILD, str(adapters)]), run([py, "-c", LOAD_CHILD, str(merged)]))
            row("a", "model load (diffusers already imported)", "load_s", b, a,
                "before: adapter files, peft injects and merges them; after: merged at export")
            row("a", "whole load process (imports + load)", "process_s", b, a)
        if "b" in args.only:
            heavy = json.dumps(HEAVY)
            floor, b, a, lean = interleaved(n, *(run([py, "-c", IMPORT_CHILD, v, heavy, str(merged)])
                                                for v in ("torch", "package", "modules", "lean")))
            row("b", "diffusers imports after torch", "import_s", b, a,
                "before: from diffusers import ...; after: the model modules by path")
            row("b", "import torch alone (floor)", "torch_s", None, floor)
            row("b", "modules by path, without transformers/peft/accelerate (diffusers_import)",
                "import_s", a, lean, "before = the modules as a library caller imports them; "
                "after = as `tadm encode`/`decode` import them for a merged folder")
        if "c" in args.only:
            heads, full, meta = interleaved(n, *(run([py, "-c", BUILD_CHILD, v, str(merged)])
                                                 for v in ("random-heads", "random-all", "meta")))
            row("c", "build + load weights (heads random then copied -> all on meta)", "build_s", heads, meta,
                "before = the previous loader (its backbone was already on the meta device)")
            row("c", "build + load weights (everything random then copied -> all on meta)", "build_s", full, meta)
        tadm_file: dict[str, Path] = {}
        if any(g in args.only for g in "def"):
            png = photo(tmp / "photo.png")
            for kind, folder in (("merged", merged), ("adapters", adapters)):
                out = tmp / f"{kind}.tadm"
                subprocess.run([py, "-m", "tadmcodec", "encode", "-m", "tadm-tiny-x16", "--model-dir", str(folder),
                                "-q", "-f", str(png), "-o", str(out)], check=True, cwd=tmp, env=env_for(ROOT))
                tadm_file[kind] = out
        if "d" in args.only:
            for argv in (["--help"], ["models"], ["info", str(tadm_file["merged"])]):
                cmd = [py, "-m", "tadmcodec", *argv]
                b, a = interleaved(n, run(cmd, before), run(cmd)) if before else (None, *interleaved(n, run(cmd)))
                heavy_b = imports_torch(before, argv, tmp) if before else None
                heavy_a = imports_torch(ROOT, argv, tmp)
                row("d", f"tadm {argv[0]} (whole process)", "process_s", b, a,
                    f"heavy imports before {heavy_b}, after {heavy_a}")
        if "e" in args.only and before is not None:
            out = tmp / "out.png"
            for op in ("decode", "encode"):
                def cmd(kind: str) -> list[str]:
                    folder = merged if kind == "merged" else adapters
                    if op == "decode":
                        return [py, "-m", "tadmcodec", "decode", "--model-dir", str(folder), "-q", "-f",
                                str(tadm_file[kind]), "-o", str(out)]
                    return [py, "-m", "tadmcodec", "encode", "-m", "tadm-tiny-x16", "--model-dir", str(folder),
                            "-q", "-f", str(png), "-o", str(tmp / f"re-{kind}.tadm")]
                b, a = interleaved(n, run(cmd("adapters"), before), run(cmd("merged")))
                row("all", f"tadm {op} 768x512 (whole process)", "process_s", b, a,
                    "before: previous tree on the adapter folder; after: this tree on the merged folder")
        if "f" in args.only:
            out = tmp / "out.png"
            via_main = [py, "-c", "import sys; from tadmcodec.cli import main; sys.argv[0] = 'tadm'; main()"]
            for op in ("decode", "encode"):
                argv = (["decode", "--model-dir", str(merged), "-q", "-f", str(tadm_file["merged"]), "-o", str(out)]
                        if op == "decode" else
                        ["encode", "-m", "tadm-tiny-x16", "--model-dir", str(merged), "-q", "-f", str(png),
                         "-o", str(tmp / "re-merged.tadm")])
                b, a = interleaved(n, run([*via_main, *argv]), run([py, "-m", "tadmcodec", *argv]))
                row("f", f"tadm {op} 768x512, merged folder (whole process)", "process_s", b, a,
                    "before: through tadmcodec.cli.main (diffusers whole); after: the console entry "
                    "(without transformers/peft/accelerate)")
    meta = {**meta_start, "load_average_end": [round(x, 2) for x in os.getloadavg()]}
    write(rows, meta, args.repeat, args.out)


def write(rows: list[dict], meta: dict, repeat: int, folder: Path = RESULTS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "startup.json").write_text(json.dumps({"machine": meta, "repeat": repeat, "rows": rows}, indent=1) + "\n")
    where = f"{meta.get('cpu', '?')}, {meta.get('simd', '?')} ({meta.get('cpu_count', '?')} cores)"
    lines = ["# Start-up levers (issue 17)", "",
             f"Written by `python benchmarks/startup.py` (see its docstring). Median of {repeat} cold processes "
             f"each; {where}; load average {meta.get('load_average')} at the start, "
             f"{meta.get('load_average_end')} at the end." + (f" {meta['note']}" if meta.get("note") else ""), "",
             "| lever | measure | before s | after s | change | runs before / after | notes |",
             "|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        k, b, a = r["key"], r["before"], r["after"]

        def fig(x: dict | None) -> str:
            if x is None:
                return "-"
            return f"error: {x['error']}" if "error" in x else f"{x[k]:.2f}"

        def runs(x: dict | None) -> str:
            return ", ".join(f"{t:.2f}" for t in x["all"][k]) if x and "all" in x else "-"

        change = f"{a[k] - b[k]:+.2f}" if b and "error" not in b and "error" not in a else ""
        lines.append(f"| {r['lever']} | {r['measure']} | {fig(b)} | {fig(a)} | {change} | "
                     f"{runs(b)} / {runs(a)} | {r['note']} |")
    (folder / "startup.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
