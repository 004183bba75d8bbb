"""Rates only: mean bpp of every classic setting of the `full` grid on a sample of images.

No quality metric is computed, so this takes minutes where the full benchmark
takes hours on a CPU. It is how the `standard` grid's qualities were placed:
each curve's lowest setting plus a few more up to about 0.2 bpp.

    python benchmarks/rate_sweep.py                        # every 5th Urban100 image
    python benchmarks/rate_sweep.py DIR --every 1          # every image of DIR

Writes benchmarks/results/rate_sweep.json ({setting key: mean bpp}) and
rate_sweep.md (one row per curve); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tadmcodec.bench import classic  # noqa: E402
from tadmcodec.bench.runner import read_image  # noqa: E402
from tadmcodec.bench.settings import GRIDS, classic_settings  # noqa: E402
from tadmcodec.files import expand_inputs  # noqa: E402
from tadmcodec.imageio import INPUT_EXTENSIONS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", nargs="?", default=str(ROOT.parent / "shared/data/urban100"))
    ap.add_argument("--every", type=int, default=5, help="take every Nth image (sorted by name)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = ap.parse_args()
    paths = sorted(p for p, _ in expand_inputs((args.data,), INPUT_EXTENSIONS) if p != "-")[:: args.every]
    if not paths:
        print(f"rate_sweep: no images in {args.data}", file=sys.stderr)
        return 2
    settings = classic_settings(GRIDS["full"])
    rates: dict[str, list[float]] = defaultdict(list)
    for path in paths:
        px = read_image(path)
        h, w = px.shape[:2]
        for s in settings:
            rates[s.key].append(8 * len(classic.encode(classic.shrink(px, s.shrink), s)) / (w * h))
        print(f"rate_sweep: {Path(path).name}", file=sys.stderr)
    means = {s.key: float(np.mean(rates[s.key])) for s in settings}
    args.out.mkdir(parents=True, exist_ok=True)
    names = [Path(p).name for p in paths]
    (args.out / "rate_sweep.json").write_text(
        json.dumps({"images": names, "classic_versions": classic.library_versions(), "mean_bpp": means}, indent=1) + "\n"
    )
    by_curve: dict[str, list[str]] = defaultdict(list)
    for s in settings:
        by_curve[s.curve].append(f"{s.param_name[0]} {s.param:g}: {means[s.key]:.3f}")
    lines = [
        f"# Mean bpp of the full grid's classic settings ({len(names)} images: {', '.join(names)})",
        "",
        f"Command: `python benchmarks/rate_sweep.py` ({classic.library_versions()})",
        "",
        "| curve | setting: mean bpp |",
        "|---|---|",
    ]
    lines += [f"| {curve} | {'; '.join(points)} |" for curve, points in by_curve.items()]
    (args.out / "rate_sweep.md").write_text("\n".join(lines) + "\n")
    print(args.out / "rate_sweep.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
