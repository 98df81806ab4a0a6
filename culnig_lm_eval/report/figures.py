"""PNG figures of the reports (matplotlib's Agg canvas; pyplot and its global state are never used), and
the figure style every report shares (:func:`new_figure`, :func:`palette`, :func:`save_figure`)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

KIND_COLORS = {"mlp_gate": "#1f77b4", "mlp_up": "#ff7f0e", "attn_q": "#2ca02c", "attn_k": "#d62728",
               "attn_v": "#9467bd"}


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas, in the reports' size and layout (no pyplot state)."""
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (folders created) at the reports' resolution."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _wrap(label: str, width: int = 28) -> str:
    return "\n".join(textwrap.wrap(str(label), width)) or str(label)


def palette(n: int):
    """``n`` distinct colours of the reports' qualitative colour map."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def grouped_bars(path: Path, tasks: list[str], series: list[dict], title: str, ylabel: str,
                 zero_line: bool = False) -> Path:
    """``series``: dicts with ``label``, ``values`` (per task), optional ``low``/``high`` (error
    bar ends per task) and ``hatch``."""
    n_t, n_s = len(tasks), max(len(series), 1)
    width = min(28.0, max(7.0, 0.28 * n_t * n_s + 2.5))
    fig = new_figure(width, 5.2)
    ax = fig.add_subplot()
    x = np.arange(n_t)
    bw = 0.8 / n_s
    colors = palette(n_s)
    for i, s in enumerate(series):
        vals = np.asarray(s["values"], dtype=float)
        pos = x - 0.4 + bw * (i + 0.5)
        kw = {}
        if s.get("low") is not None:
            lo = np.asarray(s["low"], dtype=float)
            hi = np.asarray(s["high"], dtype=float)
            kw["yerr"] = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
            kw["capsize"] = 2
        ax.bar(pos, np.nan_to_num(vals), bw, label=_wrap(s["label"], 40), color=colors[i],
               hatch=s.get("hatch"), edgecolor="black" if s.get("hatch") else None, linewidth=0.4, **kw)
    ax.set_xticks(x, [_wrap(t, 18) for t in tasks], rotation=30 if n_t > 4 else 0, ha="right" if n_t > 4 else "center",
                  rotation_mode="anchor")
    ax.set_xlabel("task")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if zero_line:
        ax.axhline(0, color="black", linewidth=0.8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return save_figure(fig, path)


def culture_heatmap(path: Path, rows: list[str], cols: list[str], values: np.ndarray, title: str,
                    marks: np.ndarray | None = None, diagonal: list[tuple[int, int]] = (),
                    xlabel: str = "culture of the evaluated items (j)", ylabel: str = "masked neuron set (culture i)",
                    cbar_label: str = "Δ accuracy (masked - unmasked)") -> Path:
    """Diverging heatmap centred at 0; ``values[i, j]`` = accuracy change on culture j when
    masking set i.  NaN cells are grey."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    vmax = float(np.max(np.abs(finite))) if finite.size else 1.0
    vmax = vmax if vmax > 0 else 0.01
    fig = new_figure(max(6.0, 0.85 * len(cols) + 3.5), max(4.0, 0.6 * len(rows) + 2.8))
    ax = fig.add_subplot()
    from matplotlib import colormaps

    cmap = colormaps["RdBu"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax),
                   aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            txt = "n/a" if not math.isfinite(v) else f"{v:+.3f}" + ("*" if marks is not None and marks[i, j] else "")
            dark = math.isfinite(v) and abs(v) > 0.6 * vmax
            ax.text(j, i, txt, ha="center", va="center", fontsize=9, color="white" if dark else "black")
    for i, j in diagonal:
        ax.add_patch(_rect(j, i))
    ax.set_xticks(range(len(cols)), [_wrap(str(c).replace("_", " "), 12) for c in cols],
                  rotation=35 if len(cols) > 5 else 0, ha="right" if len(cols) > 5 else "center",
                  rotation_mode="anchor")
    ax.set_yticks(range(len(rows)), [_wrap(r, 30) for r in rows])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    cb = fig.colorbar(im, ax=ax, shrink=0.95, fraction=0.04)
    cb.set_label(cbar_label)
    return save_figure(fig, path)


def _rect(j, i):
    from matplotlib.patches import Rectangle

    return Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.8)


def neuron_layers(path: Path, sets: list[tuple[str, dict[str, list[int]], int]], title: str) -> Path:
    """One panel per set: neurons per layer, stacked by module kind; thirds shaded.

    ``sets``: (label, per_layer {kind: counts}, num_layers)."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    n = len(sets)
    fig = new_figure(10.0, max(2.8, 2.2 * n + 1.2))
    axes = fig.subplots(n, 1, squeeze=False, sharex=True)[:, 0]
    kinds_seen = []
    for ax, (label, per_layer, layers) in zip(axes, sets):
        layers = layers or max((len(v) for v in per_layer.values()), default=0)
        x = np.arange(layers)
        bottom = np.zeros(layers)
        for kind, counts in per_layer.items():
            c = np.zeros(layers)
            c[: len(counts)] = counts[:layers]
            ax.bar(x, c, 0.8, bottom=bottom, color=KIND_COLORS.get(kind), zorder=2)
            bottom += c
            if kind not in kinds_seen:
                kinds_seen.append(kind)
        top = max(float(bottom.max()) if bottom.size else 0.0, 1.0)
        ax.set_ylim(0, top * 1.28)
        for k, part in enumerate(np.array_split(np.arange(layers), 3)):
            if part.size:
                ax.axvspan(part[0] - 0.5, part[-1] + 0.5, color=("#eeeeee", "#ffffff", "#eeeeee")[k], zorder=0)
                ax.text((part[0] + part[-1]) / 2, 0.97, ("shallow", "middle", "deep")[k], transform=ax.get_xaxis_transform(),
                        ha="center", va="top", fontsize=8, color="#555555")
        ax.set_xlim(-0.6, layers - 0.4)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("neurons")
        ax.set_title(_wrap(label, 90), fontsize=10, loc="left", fontweight="bold")
    axes[-1].set_xlabel("layer")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.legend(handles=[Patch(color=KIND_COLORS.get(k), label=k) for k in kinds_seen], loc="outside upper right",
               ncols=len(kinds_seen), fontsize=8, frameon=False, title="module kind", title_fontsize=8)
    return save_figure(fig, path)


def instance_heatmap(path: Path, rows: list[str], cols: list[str], values: np.ndarray, title: str) -> Path:
    values = np.asarray(values, dtype=float)
    fig = new_figure(max(5.5, 0.9 * len(cols) + 3.5), max(3.6, 0.5 * len(rows) + 2.2))
    ax = fig.add_subplot()
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            ax.text(j, i, "n/a" if not math.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=9,
                    color="white" if math.isfinite(v) and v <= 0.6 else "black")
    ax.set_xticks(range(len(cols)), [_wrap(c, 14) for c in cols], rotation=30 if len(cols) > 4 else 0,
                  ha="right" if len(cols) > 4 else "center")
    ax.set_yticks(range(len(rows)), [_wrap(r, 24) for r in rows])
    ax.set_xlabel("topic")
    ax.set_ylabel("culture")
    ax.set_title(_wrap(title, 60))
    fig.colorbar(im, ax=ax, shrink=0.9).set_label("share of items, summed score > 0")
    return save_figure(fig, path)


def specificity_scatter(path: Path, points: list[dict], threshold: float, title: str) -> Path:
    """``points``: dicts with ``x`` (cultural accuracy drop), ``y`` (perplexity ratio), ``label``,
    ``random`` (bool) and ``group`` (the set a random point is matched to; a set's own label)."""
    fig = new_figure(8.5, 6.0)
    ax = fig.add_subplot()
    groups = []
    for p in points:
        g = p.get("group") or p["label"]
        if g not in groups:
            groups.append(g)
    colors = dict(zip(groups, palette(len(groups))))
    offsets = [(6, 5), (6, -11), (-6, 5), (-6, -11)]
    randoms_per_group = {g: sum(1 for p in points if p["random"] and (p.get("group") or p["label"]) == g)
                         for g in groups}
    for k, p in enumerate(points):
        group = p.get("group") or p["label"]
        color = colors[group]
        if p["random"]:
            ax.scatter(p["x"], p["y"], marker="x", color=color, s=45, zorder=3)
            if randoms_per_group[group] > 3:  # 20 seeds per set: the crosses say enough, names would pile up
                continue
        else:
            ax.scatter(p["x"], p["y"], marker="o", color=color, s=60, zorder=3, edgecolor="black", linewidth=0.6)
        dx, dy = offsets[k % len(offsets)] if p["random"] else (6, 5)
        ax.annotate(_wrap(p.get("short") or p["label"], 26), (p["x"], p["y"]), xytext=(dx, dy),
                    textcoords="offset points", fontsize=8, ha="left" if dx > 0 else "right",
                    color="#444444" if p["random"] else "black")
    ax.axhline(threshold, color="#555555", linestyle="--", linewidth=1, label=f"perplexity-ratio threshold {threshold:g}")
    ax.axhline(1.0, color="black", linewidth=0.6, alpha=0.5)
    ax.axvline(0.0, color="black", linewidth=0.6, alpha=0.5)
    for g in groups:
        ax.scatter([], [], marker="o", color=colors[g], edgecolor="black", label=_wrap(g, 40))
    ax.scatter([], [], marker="x", color="#777777", label="random baseline (one seed),\ncolour of its matched set")
    ax.set_xlabel("cultural accuracy drop (unmasked - masked)")
    ax.set_ylabel("general perplexity ratio (masked / unmasked)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    xs = [p["x"] for p in points if math.isfinite(p["x"])]
    ys = [p["y"] for p in points if math.isfinite(p["y"])] + [threshold, 1.0]
    if xs:
        pad = max(0.01, 0.15 * (max(xs) - min(xs)))
        ax.set_xlim(min(min(xs), 0) - 2 * pad, max(max(xs), 0) + 3 * pad)
    pad = max(0.01, 0.12 * (max(ys) - min(ys)))
    ax.set_ylim(min(ys) - pad, max(ys) + pad)
    return save_figure(fig, path)


def random_drop_histograms(path: Path, panels: list[dict], title: str) -> Path:
    """One panel per set: the histogram of its random sets' accuracy drops and a vertical line at
    the set's own drop.  ``panels``: dicts with ``label``, ``random_drops``, ``drop``, ``p``
    (empirical p) and ``n`` (random sets)."""
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = new_figure(4.3 * cols, 3.1 * rows + 0.7)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        drops = np.asarray([x for x in panel["random_drops"] if x is not None and math.isfinite(x)], dtype=float)
        own = panel["drop"]
        shown = np.concatenate([drops, [own] if math.isfinite(own) else []])
        lo, hi = (float(shown.min()), float(shown.max())) if shown.size else (-0.01, 0.01)
        pad = max(0.005, 0.08 * (hi - lo))
        bins = np.linspace(lo - pad, hi + pad, min(20, max(6, drops.size // 2)) + 1)
        ax.hist(drops, bins=bins, color="#9e9e9e", edgecolor="white", label=f"{drops.size} random sets")
        if math.isfinite(own):
            ax.axvline(own, color="#d62728", linewidth=2, label=f"the set: {own:+.4f}")
        ax.axvline(0.0, color="black", linewidth=0.6, alpha=0.5)
        p = panel.get("p")
        p_text = f"empirical p = {p:.3f} (n = {panel['n']})" if p is not None and math.isfinite(p) else "no p"
        ax.set_title(_wrap(panel["label"], 44) + "\n" + p_text, fontsize=9)
        ax.set_xlabel("accuracy drop (unmasked - masked)", fontsize=8)
        ax.set_ylabel("random sets", fontsize=8)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7, frameon=False)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return save_figure(fig, path)


def transfer_drops(path: Path, panels: list[dict], title: str) -> Path:
    """One panel per selection: per held-out culture the in-sample drop (the set selected on every
    culture), the held-out drop (the set selected without that culture) and its random sets' 5th-95th
    percentile range (bar) and mean (tick); drops in accuracy points.  ``panels``: dicts with
    ``label``, ``cultures``, ``in_sample``, ``held_out``, ``random_low``, ``random_high``,
    ``random_mean`` (lists, None or NaN where missing) and ``pooled`` (a text line)."""
    def points(values):
        return np.asarray([100 * v if v is not None and math.isfinite(v) else np.nan for v in values], dtype=float)

    width = max(5.0, min(16.0, 1.0 + 0.75 * max(len(p["cultures"]) for p in panels)))
    fig = new_figure(width, 3.4 * len(panels) + 0.6)
    axes = fig.subplots(len(panels), 1, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        x = np.arange(len(panel["cultures"]))
        low, high, mean = points(panel["random_low"]), points(panel["random_high"]), points(panel["random_mean"])
        ax.vlines(x, low, high, color="#9e9e9e", linewidth=7, alpha=0.55, label="random sets (5th-95th pct)")
        ax.scatter(x, mean, marker="_", s=160, color="#616161", label="random sets' mean", zorder=3)
        ax.scatter(x - 0.12, points(panel["in_sample"]), marker="o", s=36, facecolors="none",
                   edgecolors="#1f77b4", linewidths=1.5, label="in-sample (selected on every culture)", zorder=4)
        ax.scatter(x + 0.12, points(panel["held_out"]), marker="D", s=36, color="#d62728",
                   label="held out (selected without the culture)", zorder=4)
        ax.axhline(0.0, color="black", linewidth=0.6, alpha=0.5)
        ax.set_xticks(x, [_wrap(c, 12) for c in panel["cultures"]], fontsize=8)
        ax.set_xlim(-0.6, len(x) - 0.4)
        ax.set_ylabel("accuracy drop (points)", fontsize=8)
        ax.set_title(_wrap(f"{panel['label']}: {panel['pooled']}", 110), fontsize=9)
        ax.legend(fontsize=7, frameon=False, ncol=2)
    fig.suptitle(title)
    return save_figure(fig, path)
