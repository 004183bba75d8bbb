"""The R-D plot: quality against bpp on a log axis, one panel per metric.

Panels: LPIPS-Alex and PSNR always (when computed), DISTS as a third when
computed. Classic codecs are thin lines, coloured by codec and dashed by
pre-shrink; our curves are thick, coloured by model and marked by LR codec. The product's
0.01-0.2 bpp range is shaded.
"""

from __future__ import annotations

from pathlib import Path

from tadmcodec.bench.report import METRIC_TITLES, curves

CODEC_COLOURS = {"jpeg": "tab:blue", "webp": "tab:green", "avif": "tab:purple", "jxl": "tab:orange"}
SHRINK_STYLES = {1: "-", 2: "--", 4: ":"}
OURS_COLOURS = ("tab:red", "black", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
LR_CODEC_MARKERS = {"auto": "o", "png": "s", "webp": "^", "jxl": "D"}  # LR-codec curves often coincide


def plot_rd(points: list[dict], metrics: tuple[str, ...], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in workers and CI
    import matplotlib.pyplot as plt

    panels = [m for m in ("lpips_alex", "psnr", "dists") if m in metrics] or list(metrics)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.2), squeeze=False)
    cs = curves(points)
    colour_of: dict[str, tuple[str, str]] = {}  # our curve -> (the model's colour, the LR codec's marker)
    model_colour: dict[str, str] = {}
    for name, pts in cs.items():
        if pts[0]["kind"] == "ours":
            model, lr_codec = pts[0]["setting"].split("/")[:2]  # "<model>/<lr codec>/x<scale>"
            colour = model_colour.setdefault(model, OURS_COLOURS[len(model_colour) % len(OURS_COLOURS)])
            colour_of[name] = (colour, LR_CODEC_MARKERS.get(lr_codec, "v"))
    for ax, m in zip(axes[0], panels):
        ax.axvspan(0.01, 0.2, color="0.93", zorder=0, label="_range")
        for name, pts in cs.items():
            xs = [p["bpp"] for p in pts]
            ys = [p[m] for p in pts]
            if pts[0]["kind"] == "ours":
                colour, marker = colour_of[name]
                ax.plot(xs, ys, "-", marker=marker, color=colour, lw=2.0, ms=7, mfc="none", mew=1.6, label=name, zorder=3)
            else:
                family = pts[0]["setting"].split("/")[0]
                style = SHRINK_STYLES.get(pts[0]["shrink"], "-.")
                ax.plot(xs, ys, style, marker=".", color=CODEC_COLOURS.get(family, "grey"), lw=1.2, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel (log)")
        low = m in ("lpips_alex", "lpips_vgg", "dists")
        ax.set_ylabel(f"{METRIC_TITLES.get(m, m)} ({'lower' if low else 'higher'} is better)")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{METRIC_TITLES.get(m, m)} vs rate" + (f" ({title})" if title else ""))
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
