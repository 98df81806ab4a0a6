"""Top vs bottom vs random modules: the CULNIG paper's fine-tuning comparison, as one command.

Every choice is trained from the same loaded weights with the same seed and data order; the
baseline (step 0) is evaluated once and shared.  After each choice the chosen modules are put
back bit for bit (checked), so the next choice starts from the model as loaded.  The report
(``RUN/report/``, replaced as a unit) holds the curves with bootstrap bands, a table of
accuracy changes with paired-bootstrap intervals and McNemar tests against step 0, and the
head-to-head difference of the final models on the cultural items.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_folder, now_iso, write_text
from .modules import CHOICES, check_sets_hold_neurons, module_choice
from .train import FinetuneSettings, Run, evaluate, weights_sha256


REPORT_LEGACY = ("comparison.json", "finetune.md", "finetune-curves.png")  # RUN/report/ before output markers


@dataclass(frozen=True)
class CompareSettings:
    choices: tuple[str, ...] = CHOICES
    budget: float = 0.1
    module_seed: int = 0

    def __post_init__(self):
        unknown = [c for c in self.choices if c not in CHOICES]
        if unknown or not self.choices:
            raise ValueError(f"--choices {','.join(self.choices)}: use some of {', '.join(CHOICES)}")


def _snapshot(model, names: set[str]) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n in names}


def _restore(model, snapshot: dict[str, torch.Tensor]) -> None:
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in snapshot.items():
            named[name].copy_(tensor)
    changed = [n for n, t in snapshot.items() if not torch.equal(named[n], t)]
    if changed:  # cannot happen unless copy_ is lossy; the next choice would not start clean
        raise RuntimeError(f"restoring the loaded weights failed for {changed[:3]}")


def run_compare(lm, neuron_sets, data, settings: FinetuneSettings, compare: CompareSettings, out: Path,
                model_args: str, force: bool = False, progress: bool = True) -> Path:
    from ..model.states import ReusedTasks

    out = Path(out)
    model = lm.model
    check_sets_hold_neurons(neuron_sets)
    choices = {c: module_choice(model, neuron_sets, c, compare.budget, compare.module_seed) for c in compare.choices}
    for name, choice in choices.items():
        write_text(out / name / "modules.json", json.dumps(choice.to_dict(), indent=1))
    touched = {p for c in choices.values() for p in c.trainable_parameters}
    snapshot = _snapshot(model, touched)
    weights = weights_sha256(model)  # every choice starts from these weights (restored after each)
    baseline = _stored_baseline(out, settings, model_args) if not force else None
    curves = {}
    for name, choice in choices.items():
        if baseline is None:  # evaluated once, shared by every choice (the same loaded model)
            baseline = {"tasks": evaluate(lm, settings.all_eval_tasks, settings.eval_limit, ReusedTasks())}
            write_text(out / "baseline.json", json.dumps({"key": _baseline_key(settings, model_args), **baseline}))
        run = Run(lm, data, choice.target_modules, settings, out / name, model_args, label=name,
                  baseline=baseline, progress=progress, weights=weights)
        curves[name] = run.run(force=force)
        _restore(model, snapshot)
    return write_report(out / "report", curves, choices, settings, compare, model_args)


def _baseline_key(settings: FinetuneSettings, model_args: str) -> str:
    """What the step-0 evaluation depends on: model, tasks, limit and the data files named."""
    import hashlib
    import os

    data = {k: v for k, v in sorted(os.environ.items()) if k.startswith("CULNIG_")}
    raw = json.dumps([model_args, settings.all_eval_tasks, settings.eval_limit, data])
    return hashlib.sha256(raw.encode()).hexdigest()


def read_baseline(out: Path) -> dict | None:
    """``RUN/baseline.json`` (the shared step-0 evaluation), None when absent; refused with one
    line naming it when it is not what :func:`run_compare` writes (call it before the model loads)."""
    path = Path(out) / "baseline.json"
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not readable JSON ({err}); delete it, or use --force to evaluate step 0 again") \
            from None
    tasks = body.get("tasks") if isinstance(body, dict) else None
    if not isinstance(tasks, dict) or not all(isinstance(v, dict) and isinstance(v.get("items"), list)
                                              and isinstance(v.get("acc"), (int, float)) for v in tasks.values()):
        raise ValueError(f"{path}: not a step-0 evaluation of culnig-finetune compare (needs 'key' and 'tasks' "
                         "with acc and items); delete it, or use --force to evaluate step 0 again")
    return body


def _stored_baseline(out: Path, settings: FinetuneSettings, model_args: str) -> dict | None:
    body = read_baseline(out)
    if body is None:
        return None
    return {"tasks": body["tasks"]} if body.get("key") == _baseline_key(settings, model_args) else None


# -- analysis (numbers first; rendering below only formats them) ---------------------------
def _band(items: list[float], seed: int = 0, resamples: int = 1000) -> tuple[float, float]:
    from ..report.stats import bootstrap_indices

    values = np.asarray(items, dtype=float)
    means = np.concatenate([values[idx].mean(axis=1) for idx in bootstrap_indices(values.size, resamples, seed)])
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def analyse(curves: dict[str, list[dict]]) -> dict:
    from ..report.stats import mcnemar_exact, paired_bootstrap_ci

    rows, points = [], {}
    for name, curve in curves.items():
        first, last = curve[0], curve[-1]
        points[name] = [{"step": p["step"], "loss": p.get("loss"),
                         **{t: {"acc": v["acc"], "band": _band(v["items"])} for t, v in p["tasks"].items()}}
                        for p in curve]
        for task in last["tasks"]:
            a, b = last["tasks"][task]["items"], first["tasks"][task]["items"]
            ci = paired_bootstrap_ci(a, b)
            rows.append({"choice": name, "task": task, "step": last["step"], "start": first["tasks"][task]["acc"],
                         "end": last["tasks"][task]["acc"], "delta": float(np.mean(a) - np.mean(b)),
                         "ci": [ci.low, ci.high], "mcnemar_p": mcnemar_exact(a, b), "items": len(a)})
    head_to_head = []
    names = list(curves)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            for task in curves[x][-1]["tasks"]:
                a, b = curves[x][-1]["tasks"][task]["items"], curves[y][-1]["tasks"][task]["items"]
                ci = paired_bootstrap_ci(a, b)
                head_to_head.append({"a": x, "b": y, "task": task, "difference": float(np.mean(a) - np.mean(b)),
                                     "ci": [ci.low, ci.high], "mcnemar_p": mcnemar_exact(a, b), "items": len(a)})
    return {"rows": rows, "points": points, "head_to_head": head_to_head}


def verdict(analysis: dict, cultural: list[str], task: str | None) -> list[str]:
    """Plain sentences from the numbers: did top erode cultural accuracy more, at what task gain?"""
    from ..report.stats import sample_size_caveat

    by = {(r["choice"], r["task"]): r for r in analysis["rows"]}
    pairs = {(h["a"], h["b"], h["task"]): h for h in analysis["head_to_head"]}
    lines = []
    for culture_task in cultural:
        if ("top", culture_task) not in by:
            continue
        for other in ("bottom", "random"):
            h = pairs.get(("top", other, culture_task)) or pairs.get((other, "top", culture_task))
            if h is None:
                continue
            diff = h["difference"] if h["a"] == "top" else -h["difference"]
            lo, hi = sorted((h["ci"][0], h["ci"][1]) if h["a"] == "top" else (-h["ci"][1], -h["ci"][0]))
            gains = ""
            if task and ("top", task) in by and (other, task) in by:
                gains = (f" (task gain: top {100 * by[('top', task)]['delta']:+.1f}, "
                         f"{other} {100 * by[(other, task)]['delta']:+.1f} points)")
            if hi < 0:
                finding = "top ends LOWER than"
            elif lo > 0:
                finding = "top ends HIGHER than"
            else:
                finding = "no clear difference between top and"
            caveat = sample_size_caveat(h.get("items"))
            if caveat:  # too few items for the interval (1 item: zero width) or the test to mean much
                finding = "too few items to tell top from"
            lines.append(f"{culture_task}: {finding} {other}: {100 * diff:+.1f} points "
                         f"[95% CI {100 * lo:+.1f}, {100 * hi:+.1f}], McNemar p={h['mcnemar_p']:.3g}{gains}"
                         + (f" ({caveat}: {h['items']} item(s))" if caveat else ""))
    return lines


def write_report(folder: Path, curves: dict[str, list[dict]], choices: dict, settings: FinetuneSettings,
                 compare: CompareSettings, model_args: str) -> Path:
    from .report import curves_figure, render

    analysis = analyse(curves)
    cultural = [t for t in settings.eval_tasks if t != settings.train_eval_task]
    sentences = verdict(analysis, cultural, settings.train_eval_task)
    body = {"format": "culnig-finetune-compare/1", "written": now_iso(), "model_args": model_args,
            "settings": asdict(settings), "compare": asdict(compare),
            "modules": {n: {"target_modules": c.target_modules, "chosen_parameters": c.chosen_parameters,
                            "total_parameters": c.total_parameters,
                            "neurons_held": c.neurons_held}
                        for n, c in choices.items()},
            "analysis": analysis, "verdict": sentences}
    with atomic_folder(folder, legacy=REPORT_LEGACY) as staging:
        write_text(staging / "comparison.json", json.dumps(body, indent=1))
        tasks = settings.all_eval_tasks
        curves_figure(staging / "finetune-curves.png", analysis["points"], tasks)
        write_text(staging / "finetune.md", render(body))
    return folder / "finetune.md"
