"""Write a real-size tiny x16 model folder with random heads, for speed measurements.

    python benchmarks/real_size_model.py --out runs/speed-x16 \
        --backbone ../shared/checkpoints/stage0-tiny-cpu/export [--adapters] [--fp32]

Until a trained tiny model ships, the speed rows need a model of the shipped size: this
builds the `tadm-tiny-x16` training model (the configured DFRM, TPM, refiner and LoRA ranks
on a stage-0 backbone folder), gives every zero-initialised tensor (LoRA B matrices, INN output
convs, the refiner's zero conv) random values so merging and the pixels are not trivial, and
saves it the way `tadm train --export` does. Timing does not depend on the weight values.

By default the LoRA is merged into the saved backbone weights (what export writes since issue
17); `--adapters` writes the older layout with separate adapter files (loading it needs peft),
so the start-up cost of both can be compared. The same seed gives the same network either way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make(out: Path, backbone: Path, config: Path, adapters: bool, fp32: bool, seed: int = 0) -> Path:
    """Build, randomise and save the model; returns the folder."""
    import torch

    from tadmcodec.tadm.loader import save_model_dir
    from tadmcodec.tadm.testing import randomize
    from tadmcodec.train import stages

    cfg = stages.load_config(config, {"backbone": {"dir": str(backbone)}, "seed": seed})
    cfg["name"] = "tadm-tiny-x16"  # the registry name the folder stands in for
    model = stages.build_training_model(cfg)
    randomize(model, torch.Generator().manual_seed(seed + 1))
    return save_model_dir(out, model.eval(), fp32=fp32, adapters=adapters)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--backbone", type=Path, default=ROOT.parent / "shared/checkpoints/stage0-tiny-cpu/export",
                    help="a stage-0 backbone folder (backbone.json, vae/unet.safetensors)")
    ap.add_argument("--config", type=Path, default=ROOT / "tadmcodec/train/configs/tadm-tiny-x16-cpu.json")
    ap.add_argument("--adapters", action="store_true", help="keep the LoRA as adapter files (the older layout)")
    ap.add_argument("--fp32", action="store_true", help="float32 weights (default float16, as export)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    print(make(args.out, args.backbone, args.config, args.adapters, args.fp32, args.seed))


if __name__ == "__main__":
    main()
