"""One time-boxed GPU session: train tadm-tiny-x16 and -x32 side by side, then a CUDA check.

    python -m tadmcodec.train.gpu_job OUT_DIR --train-dir D --backbone B --budget-s 420 \
        [--stage-minutes 2.5,2.5,0.8] [--init x16=W16 --init x32=W32] [--config x16=C] [--cpu --steps 2]

Both models train as two background processes on the one GPU (they are small), each
running stages 1 -> 2 -> 3 with its time share, checkpointing every minute. Whatever
happens to training (a crash, the budget running out), every model that has a
checkpoint is exported, and the CUDA check runs on the x16 model (or x32) in the
time left. OUT_DIR receives few, small files: logs.tar, x16.safetensors/x32.safetensors
(float16 trainable weights, 5.5 MB each; `tadm train --export DIR --weights FILE` rebuilds the
model folder on the same backbone) and cuda_check.json.

`--init TAG=FILE` starts that model's stage 1 from trainable weights (`tadm train
--save-weights`, or the previous call's TAG.safetensors), so a CPU run or an earlier call
continues: calls are limited to minutes and the machine may be a fresh one each time. A
stage given 0 minutes only hands its start weights on (`--stage-minutes 0,4,2` continues
stages 2 and 3 from the init weights).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

CONFIGS = {"x16": "tadmcodec/train/configs/tadm-tiny-x16.json", "x32": "tadmcodec/train/configs/tadm-tiny-x32.json"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--train-dir", required=True)
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--budget-s", type=float, required=True, help="seconds for training, all stages")
    ap.add_argument("--stage-minutes", default="2.5,2.5,0.8")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tadm-gpu-job"))
    ap.add_argument("--steps", type=int, help="steps per stage (CPU smoke runs)")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--no-dists", action="store_true", help="DISTS weight 0 (its VGG weights not carried)")
    ap.add_argument("--photo", help="photo for the CUDA check")
    ap.add_argument("--init", action="append", default=[], metavar="TAG=FILE",
                    help="start model TAG (x16/x32) from these trainable weights")
    ap.add_argument("--config", action="append", default=[], metavar="TAG=FILE",
                    help="train model TAG from this config instead of the shipped one (a variant)")
    args = ap.parse_args()

    def tagged(items: list[str], option: str) -> dict[str, str]:
        out = {}
        for item in items:
            tag, sep, path = item.partition("=")
            if not sep or tag not in CONFIGS or not Path(path).is_file():
                ap.error(f"{option} wants TAG=FILE with TAG in {sorted(CONFIGS)} and an existing FILE, got {item!r}")
            out[tag] = path
        return out

    inits = tagged(args.init, "--init")
    configs = {**CONFIGS, **tagged(args.config, "--config")}
    sys.path.insert(0, os.getcwd())
    import torch

    from tadmcodec.train import stages as S
    t_start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    job_log = open(args.out / "job.log", "a", buffering=1)

    def log(msg: str) -> None:
        job_log.write(f"[{time.monotonic() - t_start:7.1f}s] {msg}\n")

    minutes = [float(m) for m in args.stage_minutes.split(",")]
    procs = {}
    for tag, path in configs.items():
        cfg = S.load_config(path)  # with its defaults and any config it extends
        cfg["backbone"]["dir"] = args.backbone
        cfg["data"]["train_dir"] = args.train_dir
        for s, m in zip(("stage1", "stage2", "stage3"), minutes):
            cfg[s]["max_minutes"] = m
            if args.steps:
                cfg[s].update(steps=args.steps, batch_size=2, crop=128)
            if args.no_dists:
                cfg[s]["dists_weight"] = 0.0
        if args.steps:
            cfg["val"].update(every_steps=args.steps, crop=128)
            cfg["data"]["val_count"] = 2
        cfg_path = args.work / f"{tag}.json"
        cfg_path.write_text(json.dumps(cfg, indent=1))
        cmd = [sys.executable, "-m", "tadmcodec.cli_train", "--config", str(cfg_path), "--stage", "all",
               "--run-dir", str(args.work / tag)] + (["--cpu"] if args.cpu else []) \
            + (["--init", inits[tag]] if tag in inits else [])
        out = open(args.out / f"{tag}.log", "w", buffering=1)
        procs[tag] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log(f"started {tag}: {' '.join(cmd)}")
    deadline = t_start + args.budget_s
    while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
        time.sleep(2)
    for tag, p in procs.items():
        if p.poll() is None:
            log(f"{tag} over budget: terminating")
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        log(f"{tag} exit code {p.returncode}")

    # Trainable weights of whatever each run reached (small), and a full export for the check.
    exported = {}
    for tag in CONFIGS:
        try:
            cfg = S.load_config(args.work / f"{tag}.json")
            S.save_trainable(cfg, args.work / tag, args.out / f"{tag}.safetensors", torch.float16)
            exported[tag] = S.export(cfg, args.work / tag, args.work / f"{tag}-export")
            log(f"{tag}: exported {exported[tag]}")
        except Exception as exc:  # noqa: BLE001 - keep going to the CUDA check
            log(f"{tag}: export failed: {type(exc).__name__}: {exc}")
    with tarfile.open(args.out / "logs.tar", "w") as tar:
        for tag in CONFIGS:
            for f in sorted((args.work / tag).glob("stage*/log.jsonl")):
                tar.add(f, arcname=f"{tag}/{f.parent.name}.jsonl")
    model = exported.get("x16") or exported.get("x32")
    if model is not None and not args.cpu:
        photo = args.photo or str(sorted(Path(args.train_dir).iterdir())[0])
        r = subprocess.run([sys.executable, "-m", "tadmcodec.train.cuda_check", str(model), photo,
                            str(args.out / "cuda_check.json")], capture_output=True, text=True)
        log(f"cuda check exit {r.returncode}: {r.stderr[-2000:]}")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
