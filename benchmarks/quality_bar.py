"""Does a model clear the default bar and the headline bar (issue #16)? Per image and on the means, on Urban100.

    python benchmarks/quality_bar.py --model tadm-tiny-x16 --scale 16
    python benchmarks/quality_bar.py --model tadm-tiny-x32=runs/x32/export --scale 32 --limit 8

For each photo the model's file sets the budget; JPEG, WebP, AVIF and JPEG XL, each unshrunk and
pre-shrunk 2x and 4x, get their best setting within that budget; bicubic codes the photo at the
same scale. The bars (tadmcodec/bench/bar.py): the default bar beats bicubic on PSNR, LPIPS-Alex
and DISTS on the means and on at least 90 % of the images; the headline bar has LPIPS-Alex and
DISTS at least as good as the best classic file and PSNR at least 0.5 dB above bicubic, on every
image and on the means. Output: <out>/<model>-x<scale>.md and .json (default out: benchmarks/results/quality_bar).
Exit status 0 when the check ran (the verdict is in the files and the last line), 1 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tadmcodec.lr_choice import DEFAULT_EFFORT, EFFORTS  # noqa: E402  (no numpy: --help stays instant)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="NAME[=DIR]", help="model id, optionally with a weights folder")
    p.add_argument("--scale", type=int, choices=(8, 16, 32), required=True)
    p.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "urban100",
                   help="folder of photos (default: ../shared/data/urban100)")
    p.add_argument("--names", nargs="+", help="file stems to use (default: all)")
    p.add_argument("--limit", type=int, help="only the first N photos")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality_bar")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--effort", type=int, choices=EFFORTS, default=DEFAULT_EFFORT,
                   help="the model's encoder effort (tadmcodec.lr_choice; default: tadm encode's)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tadmcodec.bench import bar
    from tadmcodec.bench.runner import read_image, torch_threads
    from tadmcodec.bench.script_args import models_and_dirs, named_photos
    from tadmcodec.codec import Codec
    from tadmcodec.errors import TadmError

    try:
        (model,), dirs = models_and_dirs([args.model])
        photos = named_photos(args.images, args.names, args.limit)
        codec = Codec(device="cpu", model_dirs=dirs)
        checks = []
        with torch_threads(args.threads):
            for i, (name, path) in enumerate(photos, 1):
                print(f"[{i}/{len(photos)}] {name}", file=sys.stderr, flush=True)
                checks.append(bar.check_image(name, read_image(str(path)), codec, model, args.scale,
                                              effort=args.effort))
    except TadmError as exc:
        print(f"quality_bar: {exc}", file=sys.stderr)
        return 1
    stem = f"{model}-x{args.scale}"
    command = "python benchmarks/quality_bar.py " + " ".join(argv if argv is not None else sys.argv[1:])
    doc = {"command": command, "model": args.model, "scale": args.scale, **bar.to_json(checks)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    text = bar.markdown(checks, f"Quality bar: {model} x{args.scale}") + f"\nCommand: `{command}`\n"
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    bars = doc["summary"]["bars"]
    verdict = {True: "met", False: "NOT met"}
    print(f"{stem}: default bar {verdict[bars['default']['passes']]}, headline bar {verdict[bars['headline']['passes']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
