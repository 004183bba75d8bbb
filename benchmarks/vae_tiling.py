"""Tiled against whole VAE decoding of a TADM model: seconds, peak memory and agreement.

Each measurement runs in a fresh subprocess (its own peak RSS). A photo is
resized to SIZE², encoded to a latent, and that latent is decoded by the VAE
tiler once with the model's tiling config and once with
`vae_decode_untiled_area` = 0 (tile anything over one tile, the old
behaviour); PSNR compares each with the whole (untiled) decode.

    python benchmarks/vae_tiling.py --model-dir runs/tiny-gpu1/tadm-tiny-x16 --sizes 1024 2048

Writes benchmarks/results/vae_tiling.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np, torch
    from PIL import Image
    sys.path.insert(0, {root!r})
    from tadmcodec import registry
    from tadmcodec.metrics import psnr
    from tadmcodec.tadm.loader import load_tadm
    torch.set_num_threads({threads})
    r = load_tadm(registry.with_weights_dir(registry.get("tadm-tiny-x16"), {model!r}), device="cpu")
    px = np.asarray(Image.open({photo!r}).convert("RGB").resize(({size}, {size}), Image.LANCZOS))
    tiler = r._vae
    with torch.inference_mode():
        z = r._encode_latent(torch.from_numpy(px.copy()).permute(2, 0, 1)[None])
        if {mode!r} == "always-tiled":
            tiler.dec_untiled_area = 0
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        out = tiler.decode(z)
        seconds = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tiler.dec_core, tiler.dec_untiled_area = 10**9, 0
        whole = tiler.decode(z) if {size} <= 1024 else None
    print(json.dumps({{"seconds": seconds, "peak_rss_mb": peak / 1024, "rss_before_mb": before / 1024,
                      "psnr_vs_whole": None if whole is None else psnr(whole, out)}}))
""")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", required=True, help="a tadm-tiny-x16 model folder")
    ap.add_argument("--sizes", nargs="+", type=int, default=[1024, 2048])
    ap.add_argument("--photo", default=str(ROOT.parent / "shared/data/urban100/img004.png"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = ap.parse_args()
    rows = []
    for size in args.sizes:
        for mode in ("default", "always-tiled"):
            code = _CHILD.format(root=str(ROOT), threads=args.threads, model=args.model_dir, photo=args.photo,
                                 size=size, mode=mode)
            p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
            if p.returncode != 0:
                print(f"vae_tiling: {size}² {mode} failed: {p.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                return 1
            row = {"size": size, "mode": mode, "threads": args.threads, **json.loads(p.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    machine = f"{platform.machine()}, {args.threads} torch thread(s)" + (f"; {args.note}" if args.note else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vae_tiling.json").write_text(json.dumps({"model_dir": args.model_dir, "photo": Path(args.photo).name,
                                                          "machine": machine, "rows": rows}, indent=1) + "\n")
    lines = [
        "# Whole against tiled VAE decoding",
        "",
        f"`python benchmarks/vae_tiling.py --model-dir {args.model_dir} --sizes {' '.join(map(str, args.sizes))}`"
        f" ({Path(args.photo).name} resized; {machine}). `default` = the model's tiling config (latents up to"
        " `vae_decode_untiled_area` decode whole); `always-tiled` = anything over one tile is tiled."
        " PSNR compares with a whole decode of the same latent (skipped above 1024²). Peak RSS is the whole"
        " process's, which had encoded the photo before the decode (the RSS before column); the statistics"
        " pass runs its sample tiles in parallel threads, so the peak of the same tiled decode varies by"
        " about a GB between runs.",
        "",
        "| size | mode | decode s | RSS before MB | peak RSS MB | PSNR vs whole |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        q = "-" if r["psnr_vs_whole"] is None else f"{r['psnr_vs_whole']:.2f}"
        lines.append(f"| {r['size']}² | {r['mode']} | {r['seconds']:.2f} | {r['rss_before_mb']:.0f} | {r['peak_rss_mb']:.0f} | {q} |")
    (args.out / "vae_tiling.md").write_text("\n".join(lines) + "\n")
    print(args.out / "vae_tiling.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
