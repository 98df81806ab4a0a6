"""The whole study from one config: score -> select -> evaluate masked vs unmasked -> report.

Every evaluation goes through lm-eval's ``simple_evaluate`` with ``log_samples`` and is saved
by lm-eval's own ``EvaluationTracker``, so the output folders are exactly what
``lm_eval --output_path ... --log_samples`` writes and ``culnig-report`` reads them the same
way.  One model is loaded once; each condition folds its neuron set into the weights and
restores them afterwards.  A finished (condition, task) folder is skipped on re-runs, keyed
by model, neuron-set file hash and task; ``force`` redoes everything.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

log = logging.getLogger("culnig-experiment")

DEFAULT_CONFIG = Path(__file__).parent / "experiments" / "smollm2-135m.yaml"


def load_config(path: str | Path | None) -> dict:
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"experiment config {path}: no such file (the default is {DEFAULT_CONFIG})")
    config = yaml.safe_load(path.read_text()) or {}
    missing = [k for k in ("model_args", "scoring", "evaluate") if k not in config]
    if missing:
        raise ValueError(f"experiment config {path}: missing section(s) {', '.join(missing)}")
    return config


@dataclass
class Condition:
    label: str  # folder name
    set_paths: list[Path]  # empty: unmasked

    @property
    def neurons_arg(self) -> str:
        return "+".join(str(p) for p in self.set_paths)


def _set_key(paths: list[Path]) -> str:
    from .neuron_set import file_sha256

    return "+".join(file_sha256(p)[:12] for p in paths) or "unmasked"


class Experiment:
    def __init__(self, config: dict, out: Path, force: bool = False):
        self.config, self.out, self.force = config, Path(out), force
        self.skipped: dict[str, str] = {}
        self._lm = None

    # -- environment ------------------------------------------------------------------
    @contextlib.contextmanager
    def environment(self):
        """Offline and data-source settings for the whole run (restored afterwards)."""
        env = {"CULNIG_DATA": str(self.config.get("data", "auto"))}
        if self.config.get("offline", True):
            env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    # -- steps ----------------------------------------------------------------------------
    def score(self) -> Path:
        from .cli.score import build_parser, run_scoring

        s = self.config["scoring"]
        argv = ["run", "--model_args", self.config["model_args"], "--out", str(self.out / "scores"),
                "--batch_size", str(s.get("batch_size", 8)), "--tasks", ",".join(s["tasks"]), "--no-select"]
        for role in ("control", "crc", "general"):
            if s.get(role):
                argv += [f"--{role}", ",".join(s[role])]
        for option in ("limit", "window", "stride"):
            if s.get(option):
                argv += [f"--{option}", str(s[option])]
        if s.get("attention"):
            argv.append("--attention")
        if self.force:
            argv.append("--force")
        self.score_files = run_scoring(build_parser().parse_args(argv))
        return self.out / "scores"

    def select(self) -> dict[str, dict[str, Path]]:
        """{selection name: {set label: path}} for every selection in the config."""
        from .neuron_set import NeuronSet, file_sha256
        from .scoring.run import load_table
        from .selection import Thresholds, select

        tables = {}
        for role, path in self.score_files.items():
            tables[role] = load_table(path)
            tables[role].meta["sha256"] = file_sha256(path)
        base = self.config.get("thresholds", {})
        seeds = list(self.config.get("random_seeds", [0, 1, 2]))
        written = {}
        for name, overrides in (self.config.get("selections") or {"paper": {}}).items():
            folder = self.out / "sets" / name
            thresholds = Thresholds(**{**base, **(overrides or {})})
            if thresholds.general_exclude is not None and "general" not in tables:
                self.skipped[f"selection {name}"] = "needs a general-prose score table (scoring.general)"
                continue
            # same score files, thresholds and seeds -> keep the sets (and so the finished evaluations)
            stamp = folder / "done.json"
            expected = {"scores": {r: t.meta["sha256"] for r, t in tables.items()},
                        "thresholds": vars(thresholds), "seeds": seeds}
            if stamp.exists() and not self.force and json.loads(stamp.read_text()) == expected:
                written[name] = json.loads((folder / "sets.json").read_text())
                continue
            sets = select(tables["task"], tables.get("control"), tables.get("crc"), tables.get("general"),
                          thresholds, model_name=self.config.get("name", ""))
            written[name] = {}
            for label, neuron_set in sets.items():
                written[name][label] = neuron_set.save(folder / f"{label}.pt")
            for seed in seeds:
                general = NeuronSet.load(written[name]["general"])
                written[name][f"random{seed}"] = general.random_like(seed).save(folder / f"random{seed}.pt")
            written[name] = {label: str(path) for label, path in written[name].items()}
            (folder / "sets.json").write_text(json.dumps(written[name], indent=1))
            stamp.write_text(json.dumps(expected))
        self.sets = written
        return written

    def conditions(self) -> list[tuple[Condition, list[str]]]:
        """(condition, tasks) pairs: every set on the cultural + general tasks, culture sets on per-culture ones."""
        ev = self.config["evaluate"]
        shared = list(ev.get("cultural", [])) + list(ev.get("general", [])) + list(ev.get("nlu", []))
        everything = list(dict.fromkeys(shared + list(ev.get("per_culture", []))))
        out = [(Condition("unmasked", []), everything)]
        per_culture = list(dict.fromkeys(list(ev.get("per_culture", [])) + list(ev.get("general", []))))
        culture_selections = ev.get("culture_sets_for", list(self.sets))
        for name, sets in self.sets.items():
            for label, path in sets.items():
                if label == "general" or label.startswith("random"):
                    tasks = shared
                else:  # a culture-specific set: its culture's items (and the general cost)
                    tasks = per_culture if name in culture_selections else []
                if tasks:
                    out.append((Condition(f"{name}/{label}", [Path(path)]), tasks))
        return out

    def _model(self):
        if self._lm is None:
            from .masked_hf import MaskedHFLM

            args = dict(kv.split("=", 1) for kv in self.config["model_args"].split(",") if kv)
            args.setdefault("device", "cpu")
            self._lm = MaskedHFLM(batch_size=self.config["evaluate"].get("batch_size", 8), **args)
        return self._lm

    def _available(self, tasks: list[str], manager) -> list[str]:
        """Drop tasks whose data cannot be loaded, recording why."""
        ok = []
        for task in tasks:
            if task in self.skipped:
                continue
            if task not in manager.all_tasks:
                self.skipped[task] = "unknown task name"
                continue
            try:
                manager.load([task])
                ok.append(task)
            except Exception as err:  # data missing offline, hub unreachable ...
                self.skipped[task] = f"{type(err).__name__}: {str(err).splitlines()[0][:240]}"
                log.warning("skipping %s: %s", task, self.skipped[task])
        return ok

    def evaluate(self):
        from lm_eval import simple_evaluate
        from lm_eval.loggers import EvaluationTracker
        from lm_eval.tasks import TaskManager

        from .ablation import Ablation
        from .neuron_set import load_sets

        manager = TaskManager()
        ev = self.config["evaluate"]
        for condition, tasks in self.conditions():
            tasks = self._available(tasks, manager)
            key = _set_key(condition.set_paths)
            for task in tasks:
                folder = self.out / "eval" / condition.label / task
                stamp = folder / "done.json"
                expected = {"model_args": self.config["model_args"], "sets": key, "task": task,
                            "limit": ev.get("limit")}
                if stamp.exists() and not self.force and json.loads(stamp.read_text()) == expected:
                    continue
                shutil.rmtree(folder, ignore_errors=True)
                lm = self._model()
                ablation = Ablation(lm.model, load_sets(condition.neurons_arg)) if condition.set_paths else None
                try:
                    model_args = self.config["model_args"] + (f",neurons={condition.neurons_arg}" if ablation else "")
                    tracker = EvaluationTracker(output_path=str(folder))
                    results = simple_evaluate(
                        model=lm, model_args=model_args, tasks=[task], task_manager=manager,
                        limit=ev.get("limit"), log_samples=True, evaluation_tracker=tracker,
                        bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                    )
                finally:
                    if ablation is not None:
                        ablation.remove()
                samples = results.pop("samples")
                tracker.save_results_aggregated(results=results, samples=samples)
                for name in results["configs"]:
                    tracker.save_results_samples(task_name=name, samples=samples[name])
                stamp.write_text(json.dumps(expected))
        (self.out / "eval").mkdir(parents=True, exist_ok=True)
        (self.out / "eval" / "skipped.json").write_text(json.dumps(self.skipped, indent=1))

    def instance_scores(self) -> Path | None:
        """Per test item, the summed attribution of each set's neurons (the report's instance view)."""
        import torch

        from .neuron_set import NeuronSet, atomic_write
        from .scoring.attribution import AttributionScorer, collate
        from .scoring.run import batches
        from .scoring.samples import load_tasks, samples_from_task

        task_name = self.config["evaluate"].get("instance_task")
        if not task_name or task_name in self.skipped:
            return None
        lm = self._model()
        tasks = load_tasks([task_name])
        samples = samples_from_task(task_name, tasks[task_name], lm, limit=self.config["evaluate"].get("limit"))
        kinds = ("mlp_gate",) + (("attn_q", "attn_k", "attn_v") if self.config["scoring"].get("attention") else ())
        scorer = AttributionScorer(lm.model, kinds)
        labels, per_set = [], []
        for name, sets in self.sets.items():
            for label, path in sets.items():
                labels.append(f"{name}/{label}")
                per_set.append(NeuronSet.load(path).masks(scorer.widths))
        # [sets, layers, width] per kind: one contraction per batch gives every set's summed score
        empty = {k: torch.zeros(scorer.num_layers, w, dtype=torch.bool) for k, w in scorer.widths.items()}
        stacked = {k: torch.stack([m.get(k, empty[k]) for m in per_set]).float() for k in kinds}
        rows = []
        pad = lm.tokenizer.pad_token_id or 0
        for chunk in batches(samples, self.config["evaluate"].get("batch_size", 8)):
            per_sample = scorer.sample_scores(collate(chunk, pad))  # {kind: [L, B, W]}
            totals = sum(torch.einsum("lbw,slw->sb", per_sample[k], m.to(per_sample[k].device)) for k, m in stacked.items())
            for label, values in zip(labels, totals.tolist()):
                rows += [{"set": label, "culture": s.culture, "topic": s.topic, "doc_id": s.doc_id, "score": v}
                         for s, v in zip(chunk, values)]
        path = self.out / "instance_scores.jsonl"
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        return path

    def report(self, instance_scores: Path | None) -> Path:
        from .report import build_report

        return build_report([self.out / "eval"], self.out / "report", instance_scores=instance_scores)

    def run(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        with self.environment():
            self.score()
            self.select()
            self.evaluate()
            instance = self.instance_scores()
            return self.report(instance)
