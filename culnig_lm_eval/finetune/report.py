"""Formatting of the fine-tuning comparison: a curve figure and a Markdown page (numbers come in computed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..report.figures import new_figure, palette, save_figure
from ..report.markdown import table
from ..report.stats import MIN_INTERVAL_ITEMS, sample_size_caveat


def _ci_cell(row: dict) -> str:
    caveat = sample_size_caveat(row["items"])
    if caveat.endswith("no interval"):
        return f"n/a ({caveat})"
    text = f"[{100 * row['ci'][0]:+.1f}, {100 * row['ci'][1]:+.1f}]"
    return f"{text} ({caveat})" if caveat else text


def curves_figure(path: Path, points: dict[str, list[dict]], tasks: list[str]) -> Path:
    """One panel per task: accuracy vs step, one line per module choice, 95% bootstrap band."""
    fig = new_figure(4.2 * len(tasks) + 1.5, 3.6)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    colors = dict(zip(points, palette(len(points))))
    for ax, task in zip(axes, tasks):
        for name, series in points.items():
            steps = [p["step"] for p in series if task in p]
            acc = np.array([p[task]["acc"] for p in series if task in p])
            lo = np.array([p[task]["band"][0] for p in series if task in p])
            hi = np.array([p[task]["band"][1] for p in series if task in p])
            ax.plot(steps, acc, marker="o", markersize=3, color=colors[name], label=name)
            ax.fill_between(steps, lo, hi, color=colors[name], alpha=0.15, linewidth=0)
        ax.set_title(task)
        ax.set_xlabel("update step")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return save_figure(fig, path)


def render(body: dict) -> str:
    s = body["settings"]
    lines = [
        "# Fine-tuning: top vs bottom vs random modules",
        "",
        f"Model `{body['model_args']}`; {s['steps']} updates of batch {s['batch_size']} x {s['grad_accum']} "
        f"accumulation, learning rate {s['learning_rate']:g}, seed {s['seed']}"
        + (f", LoRA r={s['lora']['r']}" if s.get("lora") else ", full update of the chosen modules") + ".",
        f"Evaluated every {s['eval_every']} updates on {', '.join(s['eval_tasks'])}"
        + (f" and the training task `{s['train_eval_task']}`" if s.get("train_eval_task") else "")
        + (f" (at most the first {s['eval_limit']} items of each)" if s.get("eval_limit") else "") + ".",
        "",
    ]
    lines += table(["choice", "modules", "parameters", "share", "distinct neurons of the sets they hold"],
                   [[name, len(m["target_modules"]), f"{m['chosen_parameters']:,}",
                     f"{m['chosen_parameters'] / m['total_parameters']:.1%}", m["neurons_held"]]
                    for name, m in body["modules"].items()])
    lines += ["", "![curves](finetune-curves.png)", "",
              "Change from step 0 to the last step (paired bootstrap 95% interval, exact McNemar test):", ""]
    lines += table(["choice", "task", "start", "end", "change (points)", "95% CI", "McNemar p", "items"],
                   [[r["choice"], r["task"], f"{r['start']:.3f}", f"{r['end']:.3f}", f"{100 * r['delta']:+.1f}",
                     _ci_cell(r), f"{r['mcnemar_p']:.3g}", r["items"]]
                    for r in body["analysis"]["rows"]])
    small = sorted({r["items"] for r in body["analysis"]["rows"] if sample_size_caveat(r["items"])})
    if small:
        lines += ["", f"**Small samples:** {', '.join(map(str, small))} item(s) per task: with fewer than "
                      f"{MIN_INTERVAL_ITEMS} items the intervals are far too narrow (1 item: none shown) and the "
                      "McNemar test can hardly reach significance; treat these rows as anecdotes."]
    lines += ["", "Final models head to head (same items):", ""]
    lines += [f"- {v}" for v in body["verdict"]] or ["- (no cultural task to compare)"]
    lines.append("")
    return "\n".join(lines)
