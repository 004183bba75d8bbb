"""Benchmark outputs: results.csv, one CompressAI-style JSON per curve, BD-rates, summary.md.

Aggregation follows CompressAI's `eval_model`: a curve point is one setting,
and its bpp and each metric are the plain means over images (PSNR is averaged
in dB per image, not recomputed from a mean MSE). Speed is total seconds over
total megapixels of the originals, so large images weigh by their size.

BD-rates are computed on these mean curves (see `bdrate.py`), against:
- `jpeg`: plain JPEG at full resolution (Pillow, optimised Huffman tables);
- `best-classic`: for each metric, the Pareto front of the mean points of every
  classic setting (every codec at every pre-shrink), i.e. the best a user could
  get by choosing, per target rate, one classic codec, quality and pre-shrink
  for the whole image set.
"""

from __future__ import annotations

import csv
import json
import math
import platform
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path

from tadmcodec.bench.bdrate import LOWER_IS_BETTER, bd_quality, bd_rate, overlap, pareto_front
from tadmcodec.bench.runner import ALL_METRICS, BenchRun

CSV_COLUMNS = (
    "image", "width", "height", "setting", "label", "curve", "kind", "codec", "param_name", "param",
    "shrink", "lr_codec", "bytes", "bpp", *ALL_METRICS, "enc_s", "dec_s", "enc_s_per_mp", "dec_s_per_mp",
)
METRIC_TITLES = {"psnr": "PSNR", "ssim": "SSIM", "lpips_alex": "LPIPS-Alex", "lpips_vgg": "LPIPS-VGG", "dists": "DISTS"}
ANCHOR_JPEG = "jpeg"
ANCHOR_BEST = "best-classic"


def _clean(x):
    """JSON/CSV-safe number: inf/nan (a lossless PSNR) become None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if _clean(r.get(k)) is None else r.get(k)) for k in CSV_COLUMNS})


def aggregate(run: BenchRun) -> list[dict]:
    """One mean point per setting, in the run's setting order."""
    by_setting: OrderedDict[str, list[dict]] = OrderedDict((s.key, []) for s in run.settings)
    for r in run.rows:
        by_setting[r["setting"]].append(r)
    points = []
    for s in run.settings:
        rs = by_setting[s.key]
        mp = sum(r["width"] * r["height"] for r in rs) / 1e6
        p = {
            "setting": s.key, "label": s.label, "curve": s.curve, "kind": rs[0]["kind"], "param_name": s.param_name,
            "param": s.param, "shrink": s.shrink, "n": len(rs),
            "bpp": _mean([r["bpp"] for r in rs]),
            "enc_s_per_mp": sum(r["enc_s"] for r in rs) / mp,
            "dec_s_per_mp": sum(r["dec_s"] for r in rs) / mp,
            "encoding_time": _mean([r["enc_s"] for r in rs]),
            "decoding_time": _mean([r["dec_s"] for r in rs]),
        }
        for m in run.config.metrics:
            p[m] = _mean([r[m] for r in rs])
        points.append(p)
    return points


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def curves(points: list[dict]) -> OrderedDict[str, list[dict]]:
    """Points grouped by curve, each curve sorted by bpp."""
    out: OrderedDict[str, list[dict]] = OrderedDict()
    for p in points:
        out.setdefault(p["curve"], []).append(p)
    for c in out.values():
        c.sort(key=lambda p: p["bpp"])
    return out


def curve_json(name: str, pts: list[dict], metrics: tuple[str, ...], n_images: int) -> dict:
    """CompressAI `eval_model` schema: name, description, results of equal-length lists."""
    first = pts[0]
    if first["kind"] == "ours":
        desc = f"tadmcodec model {name.rsplit('-', 1)[0]}, LR image stored with {name.rsplit('-', 1)[1]}; one point per scale"
    else:
        desc = f"{first['label'].split()[0]}, {first['param_name']} sweep" + (
            f", image shrunk {first['shrink']}x (Lanczos) before coding and enlarged after" if first["shrink"] > 1 else ""
        )
    results: dict[str, list] = {"bpp": [p["bpp"] for p in pts]}
    for m in metrics:
        results[m] = [_clean(p[m]) for p in pts]
    if "lpips_alex" in metrics:
        results["lpips"] = results["lpips_alex"]
    results[first["param_name"]] = [p["param"] for p in pts]
    for k in ("encoding_time", "decoding_time", "enc_s_per_mp", "dec_s_per_mp"):
        results[k] = [p[k] for p in pts]
    return {
        "name": name,
        "description": f"{desc}; mean over {n_images} images",
        "results": results,
        "settings": [p["setting"] for p in pts],
    }


def best_classic(points: list[dict], metric: str) -> list[dict]:
    """Pareto front of every classic mean point for one metric, sorted by bpp."""
    classic = [p for p in points if p["kind"] == "classic" and _clean(p[metric]) is not None]
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    rates, quals = pareto_front([p["bpp"] for p in classic], [sign * p[metric] for p in classic])
    chosen = []
    for r, q in zip(rates, quals):
        chosen.append(next(p for p in classic if p["bpp"] == r and sign * p[metric] == q))
    return chosen


def bd_rates(points: list[dict], metrics: tuple[str, ...]) -> dict:
    """BD-rate of every curve against JPEG and against the best classic front, per metric."""
    cs = curves(points)
    results = []
    fronts = {m: best_classic(points, m) for m in metrics}
    for name, pts in cs.items():
        for m in metrics:
            low = m in LOWER_IS_BETTER
            anchors = []
            if ANCHOR_JPEG in cs and name != ANCHOR_JPEG:
                anchors.append((ANCHOR_JPEG, cs[ANCHOR_JPEG]))
            if fronts[m]:
                anchors.append((ANCHOR_BEST, fronts[m]))
            for aname, apts in anchors:
                args = ([p["bpp"] for p in apts], [p[m] for p in apts], [p["bpp"] for p in pts], [p[m] for p in pts])
                ok = all(_clean(v) is not None for v in args[1] + args[3])
                value = bd_rate(*args, lower_is_better=low) if ok else None
                span = overlap(args[1], args[3], args[0], args[2], lower_is_better=low) if ok else None
                dq = bd_quality(*args, lower_is_better=low) if ok else None
                results.append({
                    "test": name, "kind": pts[0]["kind"], "anchor": aname, "metric": m,
                    "bd_rate": value, "overlap": list(span) if span else None, "bd_quality": dq,
                })
    return {
        "method": "Bjontegaard delta rate, percent (negative = fewer bits than the anchor at equal quality); "
        "log-rate vs quality interpolated with monotone piecewise cubic (PCHIP) on each curve's Pareto front, "
        "integrated over the overlapping quality range; null = no overlap (n/a). bd_quality: mean metric "
        "difference (test - anchor) at equal rate over the overlapping log-rate range (BD-PSNR for PSNR; "
        "negative is better for LPIPS and DISTS)",
        "anchors": {
            ANCHOR_JPEG: "plain JPEG (Pillow, optimised Huffman tables) at full resolution",
            ANCHOR_BEST: "per metric, the Pareto front of the mean points of all classic settings "
            "(every codec, quality and pre-shrink)",
        },
        "best_classic": {
            m: {"bpp": [p["bpp"] for p in f], m: [p[m] for p in f], "settings": [p["setting"] for p in f]}
            for m, f in fronts.items()
        },
        "results": results,
    }


def _fmt_bd(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1f}%"


def _fmt_dq(x: float | None, metric: str) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.2f} dB" if metric == "psnr" else f"{x:+.4f}"


def bdrate_markdown(bd: dict, metrics: tuple[str, ...], field: str = "bd_rate") -> str:
    """Table: one row per curve, BD-rate (or BD-quality) vs JPEG and vs the best classic front per metric."""
    shown = [m for m in ("lpips_alex", "lpips_vgg", "dists", "psnr", "ssim") if m in metrics]
    table: OrderedDict[str, dict] = OrderedDict()
    for r in bd["results"]:
        table.setdefault(r["test"], {"kind": r["kind"]})[(r["anchor"], r["metric"])] = r[field]
    head = ["curve"] + [f"{METRIC_TITLES[m]} vs {a}" for m in shown for a in (ANCHOR_JPEG, ANCHOR_BEST)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(table.items(), key=lambda kv: (kv[1]["kind"] != "ours", kv[0]))
    fmt = _fmt_bd if field == "bd_rate" else _fmt_dq
    for name, vals in order:
        cells = [f"`{name}`"] + [
            "—" if (a == ANCHOR_JPEG and name == ANCHOR_JPEG)
            else (fmt(vals.get((a, m))) if field == "bd_rate" else fmt(vals.get((a, m)), m))
            for m in shown for a in (ANCHOR_JPEG, ANCHOR_BEST)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bd_markdown(bd: dict, metrics: tuple[str, ...]) -> str:
    """bdrate.md: the BD-rate table, then the BD-quality table."""
    return "\n".join([
        "## BD-rate (bits saved at equal quality; negative = fewer bits)\n",
        bdrate_markdown(bd, metrics, "bd_rate"),
        "## BD-quality (metric difference at equal rate; PSNR/SSIM: positive is better, "
        "LPIPS/DISTS: negative is better)\n",
        bdrate_markdown(bd, metrics, "bd_quality"),
    ])


def _f(x: float | None, digits: int) -> str:
    x = _clean(x)
    return "—" if x is None else f"{x:.{digits}f}"


def points_markdown(points: list[dict], metrics: tuple[str, ...]) -> str:
    digits = {"psnr": 2, "ssim": 4, "lpips_alex": 4, "lpips_vgg": 4, "dists": 4}
    shown = [m for m in ALL_METRICS if m in metrics]
    head = ["setting", "bpp"] + [METRIC_TITLES[m] for m in shown] + ["enc s/MP", "dec s/MP"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, pts in sorted(curves(points).items(), key=lambda kv: (kv[1][0]["kind"] != "ours", kv[0])):
        for p in pts:
            cells = [p["label"], f"{p['bpp']:.4f}"] + [_f(p[m], digits[m]) for m in shown]
            cells += [f"{p['enc_s_per_mp']:.3f}", f"{p['dec_s_per_mp']:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_markdown(run: BenchRun, points: list[dict], bd: dict, versions: str) -> str:
    cfg = run.config
    n_px = sum(i.width * i.height for i in run.images) / len(run.images) / 1e6
    parts = [
        "# R-D benchmark\n",
        f"{len(run.images)} images (mean {n_px:.2f} MP), {len(run.settings)} settings, grid `{cfg.grid}`, "
        f"metrics at full resolution. bpp = 8 x stored bytes / original pixels (our `.tadm` container counts "
        f"in full). Means over images per setting, as CompressAI's eval_model averages. Speed: seconds per "
        f"megapixel of the original on {platform.machine()} with {cfg.jobs} job(s), CPU `{cfg.device}`.\n",
        f"Images: {_image_list([i.name for i in run.images])}.\n",
        f"Libraries: {versions}. Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.\n",
        *_reuse_note(run.rows),
        "`best-classic` = the Pareto front of every classic codec x quality x pre-shrink (per metric); "
        "n/a = the curves' quality (BD-rate) or rate (BD-quality) ranges do not overlap.\n",
        bd_markdown(bd, cfg.metrics),
        "## Mean per setting\n",
        points_markdown(points, cfg.metrics),
    ]
    return "\n".join(parts)


def _reuse_note(rows: list[dict]) -> list[str]:
    """The rows taken from an earlier run (`tadm bench --reuse`): how many, and whose timings they carry."""
    reused = [r for r in rows if r.get("reused_from")]
    if not reused:
        return []
    sources = ", ".join(f"`{s}`" for s in sorted({r["reused_from"] for r in reused}))
    kinds = [k for k, present in (("classic", any(r["kind"] == "classic" for r in reused)),
                                  ("bicubic", any(r["codec"] == "bicubic" for r in reused))) if present]
    checked = " and ".join(f"one {k} row" for k in kinds)  # seed_cache re-measures one of each kind it reuses
    return [f"Reused: {len(reused)} of {len(rows)} rows (classic codecs and bicubic) come from {sources} "
            f"(`tadm bench --reuse`, after {checked} {'were' if len(kinds) > 1 else 'was'} measured again and "
            "matched); their speed columns are that run's.\n"]


def _image_list(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 12 else f"{', '.join(names[:3])}, ..., {names[-1]}"


def write_all(run: BenchRun, versions: str) -> dict[str, Path]:
    """Write every report file into run.config.out; returns name -> path."""
    out = run.config.out
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    files["csv"] = out / "results.csv"
    write_csv(files["csv"], run.rows)
    points = aggregate(run)
    for name, pts in curves(points).items():
        p = out / f"{name}.json"
        p.write_text(json.dumps(curve_json(name, pts, run.config.metrics, len(run.images)), indent=2) + "\n")
        files[f"curve:{name}"] = p
    bd = bd_rates(points, run.config.metrics)
    files["bdrate_json"] = out / "bdrate.json"
    files["bdrate_json"].write_text(json.dumps(bd, indent=2) + "\n")
    files["bdrate_md"] = out / "bdrate.md"
    files["bdrate_md"].write_text(bd_markdown(bd, run.config.metrics))
    files["summary"] = out / "summary.md"
    files["summary"].write_text(summary_markdown(run, points, bd, versions))
    from tadmcodec.bench.plot import plot_rd

    files["plot"] = out / "rd.png"
    plot_rd(points, run.config.metrics, files["plot"], title=f"{len(run.images)} images")
    return files
