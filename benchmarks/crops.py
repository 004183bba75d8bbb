"""Side-by-side crops at 100 % (original | JPEG | best AVIF within the bytes | each model) on benchmark photos.

    python benchmarks/crops.py                                    # the default model and bicubic, 4 Urban100 photos
    python benchmarks/crops.py --model tadm-tiny-x16 --model bicubic --scale 16
    python benchmarks/crops.py --model tadm-tiny-x16=runs/x16/export --model bicubic

The first model sets the byte budget: JPEG gets the smallest file not smaller than that
model's. Figures are for whole images; each strip shows the most detailed crop×crop window
at native resolution. Output: <out>/<image>-side-by-side.png, <out>/crops.md and <out>/crops.json
(default out: benchmarks/results/crops).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NAMES = ("img003", "img007", "img020", "img022")  # facade + statue, person, street, night


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "urban100",
                   help="folder of photos (default: ../shared/data/urban100)")
    p.add_argument("--names", nargs="+", default=list(DEFAULT_NAMES), help="file stems to use")
    p.add_argument("--model", action="append", metavar="NAME[=DIR]",
                   help="model id, optionally with a weights folder; repeat (default: the default model, then bicubic)")
    p.add_argument("--scale", type=int, choices=(8, 16, 32), default=None,
                   help="default: the first model's own (the default model's is 32; bicubic's 16)")
    p.add_argument("--crop", type=int, default=256, help="crop side in pixels")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "crops")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tadmcodec import registry
    from tadmcodec.bench import crops
    from tadmcodec.bench.runner import read_image, torch_threads
    from tadmcodec.bench.script_args import models_and_dirs, named_photos
    from tadmcodec.codec import Codec, check_scale
    from tadmcodec.errors import TadmError

    try:
        names, dirs = models_and_dirs(args.model or [registry.default_model(args.scale).name, "bicubic"])
        codec = Codec(device="cpu", model_dirs=dirs)
        scale = check_scale(codec.spec(names[0]), args.scale)  # the budget-setting model's own by default
        models = [(n, scale) for n in names]
        photos = named_photos(args.images, args.names)
        args.out.mkdir(parents=True, exist_ok=True)
        rows, pictures = [], {}
        with torch_threads(args.threads):
            for name, path in photos:
                print(f"{name} ...", file=sys.stderr, flush=True)
                got, picture = crops.compare(name, read_image(str(path)), codec, models, args.crop)
                picture_name = f"{name}-side-by-side.png"  # not <name>.png: it is no copy of the photo
                crops.save_picture(picture, args.out / picture_name)
                rows += got
                pictures[name] = picture_name
    except TadmError as exc:
        print(f"crops: {exc}", file=sys.stderr)
        return 1
    (args.out / "crops.json").write_text(json.dumps(
        {"command": "python benchmarks/crops.py " + " ".join(argv if argv is not None else sys.argv[1:]),
         "scale": scale, "crop": args.crop, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    (args.out / "crops.md").write_text(crops.markdown(rows, pictures))
    print(crops.markdown(rows, pictures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
