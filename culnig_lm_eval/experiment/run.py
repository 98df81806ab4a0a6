"""The whole study from one config: score -> select -> evaluate masked vs unmasked -> report.

:class:`ExperimentConfig` is read from YAML and checked before anything loads;
:func:`run_experiment` loads the model ONCE (``lm.load_lm``) and passes it to the library
steps: ``scoring.run.score_roles``, ``selection.select_and_save``, then one lm-eval
``simple_evaluate`` per (condition, task) with ``log_samples``, saved by lm-eval's own
``EvaluationTracker`` (so the folders are exactly what ``lm_eval --output_path ...
--log_samples`` writes), the per-item set scores, and ``report.build_report``.  Each
condition applies its neuron set with ``MaskedHFLM.masked`` (folded into the weights and
restored afterwards), so the results file records the set that was applied.  A finished
step is skipped on re-runs when its stamp (model, set-file hashes, task, limit; for
selection the score hashes, thresholds and seeds) matches; ``force`` redoes everything.

Random baselines are a distribution, not a handful: ``random_seeds`` (20 by default) random sets
per evaluated set -- the culture-general set's ``random<seed>.pt`` written by ``select_and_save``,
and, drawn here (:func:`culture_random_sets`), the same number for every evaluated culture set
(``sets/<selection>/random/<culture>-random<seed>.pt``).  They run only on
``evaluate.random_tasks`` (default: the per-culture and general-perplexity tasks), so the report
can place each set's drop within the drops of its own random sets (an empirical p).  The
selection's stability is measured on ``scoring.stability_fold``: the task and control roles are
scored again on that fold of the items (``scores/half0/``) and ``select_and_save`` compares the
sets selected on the two halves (``set.meta["stability"]``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from .._io import atomic_folder, check_writable_folder, file_sha256, safe_name, write_text

log = logging.getLogger("culnig-experiment")

DEFAULT_CONFIG = Path(__file__).parent.parent / "experiments" / "smollm2-135m.yaml"
SCORING_KEYS = {"tasks", "control", "crc", "general", "limit", "window", "stride", "batch_size", "attention",
                "up_proj", "apply_chat_template", "num_fewshot", "culture_field", "stability_fold"}
EVALUATE_KEYS = {"batch_size", "limit", "cultural", "per_culture", "culture_sets_for", "general", "nlu",
                 "instance_task", "random_draws", "random_for", "random_tasks"}
# 20 random sets per evaluated set: with the observed set counted as one draw the smallest empirical
# p is 1/21 < 0.05, so a set that beats every random set can be called specific at 0.05
DEFAULT_RANDOM_SEEDS = list(range(20))
# the items of fold 0 of 2 are scored a second time; the sets selected on them and on the rest are
# compared (issue 11: are the selected neurons a property of the model or of the items?)
DEFAULT_STABILITY_FOLD = "0/2"
STABILITY_ROLES = ("task", "control")  # the roles scored again on the stability fold


class ConfigError(ValueError):
    """The experiment YAML is missing, malformed or names impossible settings."""


def _str_list(value, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of task names")
    return list(value)


@dataclass
class EvaluationPlan:
    """What is evaluated, for every condition (see :func:`conditions`)."""

    batch_size: int = 8
    limit: int | None = None
    cultural: list[str] = field(default_factory=list)  # every set
    per_culture: list[str] = field(default_factory=list)  # culture-specific sets (split by culture)
    culture_sets_for: list[str] | None = None  # selections whose culture sets are evaluated (None: all)
    general: list[str] = field(default_factory=list)  # general perplexity (every set)
    nlu: list[str] = field(default_factory=list)  # lm-eval's own general NLU
    instance_task: str | None = None  # per-item summed set scores (the report's instance view)
    # random baselines evaluated: "layer-matched" (random<seed>.pt, the same count per layer and
    # module kind) and/or "uniform" (random-uniform<seed>.pt, the reference's pooled draw).  The
    # report pools the evaluated draws matched to the same set into one baseline.
    random_draws: list[str] = field(default_factory=lambda: ["layer-matched"])
    random_for: list[str] | None = None  # selections whose random sets are evaluated (None: all)
    # tasks the random sets run on (None: per_culture + general).  Each random set costs one
    # evaluation per task here, and there are random_seeds of them per evaluated set, so this is
    # kept to the tasks the report's random distribution needs
    random_tasks: list[str] | None = None

    @property
    def unmasked_tasks(self) -> list[str]:
        """Every task the unmasked model runs (each masked condition runs a subset)."""
        return list(dict.fromkeys(self.cultural + self.general + self.nlu + self.per_culture))

    @property
    def tasks_for_random_sets(self) -> list[str]:
        if self.random_tasks is not None:
            return list(dict.fromkeys(self.random_tasks))
        return list(dict.fromkeys(self.per_culture + self.general))


@dataclass
class ExperimentConfig:
    name: str
    model_args: str
    role_tasks: dict[str, list[str]]  # scoring roles -> tasks
    scoring: "ScoringSettings"  # noqa: F821 (imported lazily: torch)
    thresholds: dict = field(default_factory=dict)  # shared by every selection
    selections: dict[str, dict] = field(default_factory=lambda: {"paper": {}})  # name -> threshold overrides
    random_seeds: list[int] = field(default_factory=lambda: list(DEFAULT_RANDOM_SEEDS))
    evaluate: EvaluationPlan = field(default_factory=EvaluationPlan)
    stability_fold: str | None = DEFAULT_STABILITY_FOLD  # scoring.stability_fold; None: no stability check
    data: str = "auto"  # CULNIG_DATA for the run
    offline: bool = True  # HF_HUB_OFFLINE=1 for the run
    # datasets that must come from files the user names (CULNIG_<KEY> or the hub with data: hub):
    # the run stops before the model loads rather than fall back to a shipped sample
    require_data: list[str] = field(default_factory=list)
    source: str = ""

    @classmethod
    def from_yaml(cls, path: str | Path | None) -> "ExperimentConfig":
        path = Path(path) if path else DEFAULT_CONFIG
        if not path.is_file():
            raise ConfigError(f"experiment config {path}: no such file (the default is {DEFAULT_CONFIG})")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            where = getattr(err, "problem_mark", None)
            at = f" at line {where.line + 1}" if where else ""
            raise ConfigError(f"experiment config {path}: not valid YAML{at}; fix the file") from None
        return cls.from_mapping(raw, path)

    @classmethod
    def from_mapping(cls, raw, path: str | Path = "<config>") -> "ExperimentConfig":
        from ..scoring.run import ScoringSettings, parse_fold
        from ..selection.rules import Thresholds

        if not isinstance(raw, dict):
            raise ConfigError(f"experiment config {path}: must be a mapping with model_args, scoring and evaluate")
        missing = [k for k in ("model_args", "scoring", "evaluate") if k not in raw]
        if missing:
            raise ConfigError(f"experiment config {path}: missing section(s) {', '.join(missing)}")
        scoring, evaluate = raw["scoring"], raw["evaluate"]
        for section, value, known in (("scoring", scoring, SCORING_KEYS), ("evaluate", evaluate, EVALUATE_KEYS)):
            if not isinstance(value, dict):
                raise ConfigError(f"experiment config {path}: '{section}' must be a mapping")
            unknown = sorted(set(value) - known)
            if unknown:
                raise ConfigError(f"experiment config {path}: unknown {section} key(s) {', '.join(unknown)} "
                                  f"(known: {', '.join(sorted(known))})")
        role_tasks = {role: _str_list(scoring.get(key), f"{path}: scoring.{key}")
                      for role, key in (("task", "tasks"), ("control", "control"), ("crc", "crc"), ("general", "general"))}
        role_tasks = {role: tasks for role, tasks in role_tasks.items() if tasks}
        if "task" not in role_tasks:
            raise ConfigError(f"experiment config {path}: scoring.tasks names no task")
        try:
            kinds = ("mlp_gate",) + (("mlp_up",) if scoring.get("up_proj") else ()) + (
                ("attn_q", "attn_k", "attn_v") if scoring.get("attention") else ())
            settings = ScoringSettings(
                model_args=str(raw["model_args"]), kinds=kinds, batch_size=int(scoring.get("batch_size", 8)),
                limit=scoring.get("limit"), window=int(scoring.get("window", 96)), stride=int(scoring.get("stride", 16)),
                num_fewshot=scoring.get("num_fewshot"), apply_chat_template=bool(scoring.get("apply_chat_template")),
                culture_field=str(scoring.get("culture_field", "culture")),
            )
            plan = EvaluationPlan(**{k: evaluate[k] for k in EVALUATE_KEYS if k in evaluate})
            for key in ("cultural", "per_culture", "general", "nlu"):
                _str_list(getattr(plan, key), f"evaluate.{key}")
            if plan.random_tasks is not None:
                # a random set's drop is measured against the unmasked run on the same task
                unknown = sorted(set(_str_list(plan.random_tasks, "evaluate.random_tasks"))
                                 - set(plan.unmasked_tasks))
                if unknown:
                    raise ValueError(f"evaluate.random_tasks names task(s) the unmasked model does not run: "
                                     f"{', '.join(unknown)} (list them in cultural, per_culture, general or nlu)")
            for key in ("culture_sets_for", "random_for"):
                unknown = sorted(set(_str_list(getattr(plan, key), f"evaluate.{key}"))
                                 - set(raw.get("selections") or {"paper": {}}))
                if unknown:
                    raise ValueError(f"evaluate.{key} names no configured selection: {', '.join(unknown)}")
            draws = _str_list(plan.random_draws, "evaluate.random_draws")
            if not set(draws) <= set(RANDOM_DRAWS):
                raise ValueError(f"evaluate.random_draws must list {' and/or '.join(RANDOM_DRAWS)}, not {draws}")
            thresholds = dict(raw.get("thresholds") or {})
            selections = {safe_name(name, "selection name"): dict(overrides or {})
                          for name, overrides in (raw.get("selections") or {"paper": {}}).items()}
            for name, overrides in selections.items():
                Thresholds(**{**thresholds, **overrides})  # every selection's thresholds are valid
            seeds = [int(s) for s in raw.get("random_seeds", DEFAULT_RANDOM_SEEDS)]
            if any(s < 0 or s > 2**63 - 1 for s in seeds):
                raise ValueError("random_seeds must be integers from 0 to 2**63-1")
        except (TypeError, ValueError) as err:
            raise ConfigError(f"experiment config {path}: {err}") from None
        fold = scoring.get("stability_fold", DEFAULT_STABILITY_FOLD)
        try:
            if fold is not None:
                parse_fold(fold if isinstance(fold, str) else repr(fold))
        except ValueError:
            raise ConfigError(f"experiment config {path}: scoring.stability_fold {fold!r} must be I/K with K >= 2 "
                              "folds and 0 <= I < K (e.g. 0/2), or null to skip the stability check") from None
        from ..taskdata.builders import SOURCES

        require = _str_list(raw.get("require_data"), f"{path}: require_data")
        unknown = sorted(set(require) - set(SOURCES))
        if unknown:
            raise ConfigError(f"experiment config {path}: require_data names unknown dataset(s) {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(SOURCES))})")
        data = str(raw.get("data", "auto"))
        if data not in ("auto", "hub", "sample"):
            raise ConfigError(f"experiment config {path}: data must be auto, hub or sample (got {data!r})")
        try:
            name = safe_name(raw.get("name", "experiment"), "name")
        except ValueError as err:
            raise ConfigError(f"experiment config {path}: {err}") from None
        return cls(name=name, model_args=str(raw["model_args"]),
                   role_tasks=role_tasks, scoring=settings, thresholds=thresholds, selections=selections,
                   random_seeds=seeds, evaluate=plan, stability_fold=fold, data=data,
                   offline=bool(raw.get("offline", True)), require_data=require, source=str(path))


def load_config(path: str | Path | None) -> ExperimentConfig:
    return ExperimentConfig.from_yaml(path)


@dataclass
class ConditionPlan:
    """One evaluated model state: ``label`` names its folder; no set files = unmasked."""

    label: str
    set_paths: list[Path]
    tasks: list[str]

    @property
    def neurons_arg(self) -> str:
        return "+".join(str(p) for p in self.set_paths)


# -- stamps: a finished step is skipped when what produced it is unchanged ---------------------
def _stamp_matches(stamp: Path, expected: dict) -> bool:
    try:
        return json.loads(stamp.read_text()) == json.loads(json.dumps(expected))
    except (OSError, ValueError):
        return False


def _write_stamp(stamp: Path, expected: dict):
    write_text(stamp, json.dumps(expected, indent=1))


@contextlib.contextmanager
def data_environment(config: ExperimentConfig):
    """Offline and data-source settings for the whole run (restored afterwards)."""
    env = {"CULNIG_DATA": config.data}
    if config.offline:
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


def check_required_data(config: ExperimentConfig) -> None:
    """Stop (before any model loads) when a dataset in ``require_data`` would not come from the
    user's file or the hub: a real-data study never falls back to the shipped sample silently."""
    from ..taskdata.builders import locate

    for key in config.require_data:
        kind, _ = locate(key, {})
        if kind == "sample":
            raise ConfigError(f"experiment config {config.source}: {key} must come from real data, but no file is named: "
                              f"set CULNIG_{key.upper()}=/path/to/the/file (or use data: hub with hub access)")


def stability_folder(fold: str) -> str:
    """``scores/<this>/`` of a fold's score files: ``half0`` for 0/2, ``fold1of3`` for 1/3.  Named
    by the fold, so changing ``scoring.stability_fold`` scores a new folder instead of clashing
    with files made for another fold."""
    from ..scoring.run import parse_fold

    index, folds = parse_fold(fold)
    return f"half{index}" if folds == 2 else f"fold{index}of{folds}"


def score_stability_half(lm, config: ExperimentConfig, scores: Path, tasks: dict) -> dict[str, Path] | None:
    """Score the task and control roles again on ``config.stability_fold`` of their items only,
    into ``scores/<stability_folder>`` ({role: score file}; None when the check is off).  Costs
    about 1/K of their full scoring (half of it for the default 0/2); reused like the full ones."""
    from ..scoring.run import score_roles

    if config.stability_fold is None:
        return None
    out = Path(scores) / stability_folder(config.stability_fold)
    roles = {role: config.role_tasks[role] for role in STABILITY_ROLES if role in config.role_tasks}
    settings = dataclasses.replace(config.scoring, fold=config.stability_fold)
    return score_roles(lm, roles, settings, out, tasks=tasks)


def _load_tables(score_files: dict[str, Path]) -> dict:
    from ..scoring.run import load_table

    tables = {role: load_table(path) for role, path in score_files.items()}
    for role, table in tables.items():
        table.meta["sha256"] = file_sha256(score_files[role])
    return tables


def select_all(config: ExperimentConfig, score_files: dict[str, Path], out: Path, force: bool,
               skipped: dict[str, str], half_files: dict[str, Path] | None = None) -> dict[str, dict[str, Path]]:
    """{selection name: {set label: path}}: ``select_and_save`` for each configured selection.

    ``half_files``: {role: score file} of the task and control roles scored on the stability fold
    (:func:`score_stability_half`); each set then records how stable its selection is."""
    from ..selection.rules import Thresholds, select_and_save

    tables = _load_tables(score_files)
    half_tables = _load_tables(half_files or {})
    written = {}
    for name, overrides in config.selections.items():
        thresholds = Thresholds(**{**config.thresholds, **overrides})
        if thresholds.general_exclude is not None and "general" not in tables:
            skipped[f"selection {name}"] = "needs a general-prose score table (scoring.general)"
            continue
        folder, stamp = out / name, out / f".{name}.done.json"
        expected = {"scores": {r: t.meta["sha256"] for r, t in sorted(tables.items())},
                    "thresholds": asdict(thresholds), "seeds": config.random_seeds}
        if half_tables:  # stamps written without the stability check stay valid when it is off
            expected["half_scores"] = {r: t.meta["sha256"] for r, t in sorted(half_tables.items())}
        if not force and folder.is_dir() and _stamp_matches(stamp, expected):
            files = json.loads((folder / "selection.json").read_text())["files"]
            written[name] = {label: folder / Path(path).name for label, path in files.items()}
            continue
        written[name] = select_and_save(tables, thresholds, folder, model_name=config.name,
                                        random_seeds=config.random_seeds, half_tables=half_tables or None)
        _write_stamp(stamp, expected)
    return written


RANDOM_DRAWS = {"layer-matched": "random", "uniform": "random-uniform"}  # draw -> file prefix (selection.py)


def _random_draw(label: str) -> str | None:
    """"uniform" for ``random-uniform<seed>``, "layer-matched" for ``random<seed>``, else None."""
    for draw, prefix in sorted(RANDOM_DRAWS.items(), key=lambda kv: -len(kv[1])):
        if label.startswith(prefix) and label[len(prefix):].isdigit():
            return draw
    return None


def _culture_selections(plan: EvaluationPlan, sets) -> list[str]:
    return plan.culture_sets_for if plan.culture_sets_for is not None else list(sets)


def _random_selections(plan: EvaluationPlan, sets) -> list[str]:
    return plan.random_for if plan.random_for is not None else list(sets)


def conditions(plan: EvaluationPlan, sets: dict[str, dict[str, Path]],
               culture_randoms: dict[str, dict[str, dict[str, Path]]] | None = None) -> list[ConditionPlan]:
    """Unmasked on everything; culture-general sets on the shared tasks; culture sets (of the
    selections in ``culture_sets_for``) on the per-culture tasks and general perplexity; random
    sets (the general set's in ``sets``, the culture sets' in ``culture_randoms``, see
    :func:`culture_random_sets`) on ``random_tasks`` only, after every set."""
    shared = list(dict.fromkeys(plan.cultural + plan.general + plan.nlu))
    per_culture = list(dict.fromkeys(plan.per_culture + plan.general))
    random_tasks = plan.tasks_for_random_sets
    culture_selections, random_selections = _culture_selections(plan, sets), _random_selections(plan, sets)
    out, randoms = [ConditionPlan("unmasked", [], plan.unmasked_tasks)], []
    for name, labelled in sets.items():
        for label, path in labelled.items():
            draw = _random_draw(label)
            if draw is not None:
                if draw in plan.random_draws and name in random_selections and random_tasks:
                    randoms.append(ConditionPlan(f"{name}/{label}", [Path(path)], random_tasks))
                continue
            tasks = shared if label == "general" else per_culture if name in culture_selections else []
            if tasks:
                out.append(ConditionPlan(f"{name}/{label}", [Path(path)], tasks))
    for name, by_set in (culture_randoms or {}).items():
        for drawn in by_set.values():
            randoms += [ConditionPlan(f"{name}/{CULTURE_RANDOM_FOLDER}/{label}", [Path(path)], random_tasks)
                        for label, path in drawn.items() if random_tasks]
    return out + randoms


CULTURE_RANDOM_FOLDER = "random"  # sets/<selection>/random/: the culture sets' random sets


def _draw(draw: str, neuron_set, seed: int):
    """A random set like ``neuron_set``: layer-matched (``NeuronSet.random_like``) or uniform."""
    from ..selection.rules import random_uniform

    return neuron_set.random_like(seed) if draw == "layer-matched" else random_uniform(neuron_set, seed)


def culture_random_sets(config: ExperimentConfig, sets: dict[str, dict[str, Path]], out: Path, force: bool,
                        skipped: dict[str, str]) -> dict[str, dict[str, dict[str, Path]]]:
    """{selection: {culture-set label: {random label: file}}}: for every culture set that is
    evaluated (``culture_sets_for``) with its random sets (``random_for``), one random set per
    seed and draw, ``<out>/<selection>/random/<label>-random<seed>.pt`` (``random-uniform`` for
    the uniform draw).  Deterministic by seed; each selection's folder is written as one unit
    and reused while its stamp (culture-set hashes, seeds, draws) matches.  A set with no neuron
    gets none (each would mask nothing too); ``skipped`` says so."""
    from ..neuron_set import NeuronSet

    plan, seeds = config.evaluate, list(dict.fromkeys(config.random_seeds))
    if not plan.tasks_for_random_sets:
        return {}
    written = {}
    for name in _culture_selections(plan, sets):
        if name not in _random_selections(plan, sets) or name not in sets:
            continue
        culture_sets = {label: Path(path) for label, path in sets[name].items()
                        if label != "general" and _random_draw(label) is None}
        loaded = {label: NeuronSet.load(path) for label, path in culture_sets.items()}
        for label in [label for label, s in loaded.items() if s.is_empty]:
            skipped[f"random sets of {name}/{label}"] = "the set holds no neuron: a random set like it masks nothing"
        folder = out / name / CULTURE_RANDOM_FOLDER
        files = {label: {f"{label}-{RANDOM_DRAWS[draw]}{seed}": (draw, seed) for draw in plan.random_draws
                         for seed in seeds} for label, s in loaded.items() if not s.is_empty}
        # the draws depend on the sets' neurons only (random_like keeps the per-layer counts)
        expected = {"sets": {label: loaded[label].neurons_sha256() for label in sorted(culture_sets)},
                    "seeds": seeds, "draws": sorted(plan.random_draws)}
        stamp = folder / "done.json"
        complete = all((folder / f"{random_label}.pt").is_file() for drawn in files.values()
                       for random_label in drawn)
        if force or not complete or not _stamp_matches(stamp, expected):
            with atomic_folder(folder) as staging:
                for label, drawn in files.items():
                    for random_label, (draw, seed) in drawn.items():
                        _draw(draw, loaded[label], seed).save(staging / f"{random_label}.pt")
                _write_stamp(staging / stamp.name, expected)  # in the unit: the folder and its stamp agree
        written[name] = {label: {random_label: folder / f"{random_label}.pt" for random_label in drawn}
                         for label, drawn in files.items()}
    return written


def loadable_tasks(tasks: list[str], manager, skipped: dict[str, str]) -> list[str]:
    """Drop tasks whose data cannot be loaded, recording why in ``skipped``."""
    ok = []
    for task in tasks:
        if task in skipped:
            continue
        if task not in manager.all_tasks:
            skipped[task] = "unknown task name"
            continue
        try:
            manager.load([task])
            ok.append(task)
        except Exception as err:  # data missing offline, hub unreachable ...
            skipped[task] = f"{type(err).__name__}: {str(err).splitlines()[0][:240] if str(err) else ''}"
            log.warning("skipping %s: %s", task, skipped[task])
    return ok


def evaluate_conditions(lm, config: ExperimentConfig, sets, out: Path, force: bool, skipped: dict[str, str],
                        culture_randoms: dict[str, dict[str, dict[str, Path]]] | None = None):
    """One ``simple_evaluate`` per (condition, task), saved as lm-eval saves it."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    from ..neuron_set import NeuronSet, load_sets

    manager = TaskManager()
    plan = config.evaluate
    planned = conditions(plan, sets, culture_randoms)
    # each task's data is checked once, not once per condition (there are hundreds of random sets)
    loadable = set(loadable_tasks(list(dict.fromkeys(t for c in planned for t in c.tasks)), manager, skipped))
    for condition in planned:
        # keyed on the neurons, not the files: new metadata on the same neurons reuses the run
        key = "+".join("n" + NeuronSet.load(p).neurons_sha256()[:12] for p in condition.set_paths) or "unmasked"
        for task in [t for t in condition.tasks if t in loadable]:
            folder = out / condition.label / task
            stamp = folder / "done.json"
            expected = {"model_args": config.model_args, "sets": key, "task": task, "limit": plan.limit}
            # evaluation renders prompts as scoring did (scoring.apply_chat_template)
            chat = bool(config.scoring.apply_chat_template)
            expected.update({"apply_chat_template": True} if chat else {})  # older stamps stay valid
            if not force and _stamp_matches(stamp, expected):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            neuron_sets = load_sets(condition.neurons_arg) if condition.set_paths else []
            # model_args as the lm_eval command would have them: the report labels runs by neurons=
            model_args = config.model_args + (f",neurons={condition.neurons_arg}" if neuron_sets else "")
            tracker = EvaluationTracker(output_path=str(folder))
            with lm.masked(neuron_sets):
                results = simple_evaluate(
                    model=lm, model_args=model_args, tasks=[task], task_manager=manager, limit=plan.limit,
                    log_samples=True, evaluation_tracker=tracker, bootstrap_iters=0,
                    apply_chat_template=chat,
                    random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                )
            samples = results.pop("samples")
            tracker.save_results_aggregated(results=results, samples=samples)
            for name in results["configs"]:
                tracker.save_results_samples(task_name=name, samples=samples[name])
            _write_stamp(stamp, expected)
    write_text(out / "skipped.json", json.dumps(skipped, indent=1))


def run_experiment(config: ExperimentConfig, out: str | Path, force: bool = False) -> Path:
    """Score, select, evaluate and report; returns the report's path."""
    from ..model.lm import load_lm
    from ..report import build_report
    from ..scoring.instances import write_instance_scores
    from ..scoring.run import load_role_tasks, score_roles

    with data_environment(config):
        check_required_data(config)
    out = check_writable_folder(out, "--out")
    skipped: dict[str, str] = {}
    with data_environment(config):
        tasks = load_role_tasks(config.role_tasks, config.scoring)  # data errors before the model loads
        lm = load_lm(config.model_args, batch_size=config.evaluate.batch_size)
        score_files = score_roles(lm, config.role_tasks, config.scoring, out / "scores", tasks=tasks)
        half_files = score_stability_half(lm, config, out / "scores", tasks)
        sets = select_all(config, score_files, out / "sets", force, skipped, half_files=half_files)
        culture_randoms = culture_random_sets(config, sets, out / "sets", force, skipped)
        evaluate_conditions(lm, config, sets, out / "eval", force, skipped, culture_randoms=culture_randoms)
        instances = None
        if config.evaluate.instance_task and config.evaluate.instance_task not in skipped:
            # the sets' own instance view: random sets (20 or more per set) would only repeat it as noise
            selected = {name: {label: path for label, path in labelled.items() if _random_draw(label) is None}
                        for name, labelled in sets.items()}
            instances = write_instance_scores(lm, config.evaluate.instance_task, selected, config.scoring,
                                              out / "instance_scores.jsonl", limit=config.evaluate.limit,
                                              batch_size=config.evaluate.batch_size)
        return build_report([out / "eval"], out / "report", instance_scores=instances)
