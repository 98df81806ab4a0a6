"""The experiment config: :class:`ExperimentConfig` read from YAML and checked before anything loads.

A config names the model (``model_args``), the scoring roles and their settings (``scoring``),
the selections (``thresholds`` shared by all, ``selections`` name -> overrides), the random
baselines (``random_seeds``), what is evaluated on which condition (``evaluate``, an
:class:`EvaluationPlan`) and, optionally, the leave-one-culture-out transfer test
(``leave_one_out``, a :class:`LeaveOneOut`); ``culnig_lm_eval/experiments/`` holds the shipped ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .._io import safe_name

DEFAULT_CONFIG = Path(__file__).parent.parent / "experiments" / "smollm2-135m.yaml"
SCORING_KEYS = {"tasks", "control", "crc", "general", "limit", "window", "stride", "batch_size", "attention",
                "up_proj", "apply_chat_template", "num_fewshot", "culture_field", "stability_fold", "stability_folds",
                "clamp_crc"}
EVALUATE_KEYS = {"batch_size", "limit", "cultural", "generation", "generation_for", "per_culture", "culture_sets_for",
                 "general", "nlu",
                 "instance_task", "random_draws", "random_for", "random_tasks", "culture_random",
                 "culture_random_items", "dtype"}
LEAVE_ONE_OUT_KEYS = {"selections", "cultures", "tasks", "random_draws", "limit"}
# 20 random sets per evaluated set: with the observed set counted as one draw the smallest empirical
# p is 1/21 < 0.05, so a set that beats every random set can be called specific at 0.05
DEFAULT_RANDOM_SEEDS = list(range(20))
# the items of fold 0 of 2 are scored a second time; the sets selected on them and on the rest are
# compared (issue 11: are the selected neurons a property of the model or of the items?)
DEFAULT_STABILITY_FOLD = "0/2"


EVALUATION_DTYPES = ("float32", "bfloat16", "float16", "auto")


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
    # cultural tasks answered by generation: the unmasked model and the culture-general sets of the
    # selections in generation_for (None: all) run them (a generation state costs as much as several
    # log-likelihood tasks)
    generation: list[str] = field(default_factory=list)
    generation_for: list[str] | None = None
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
    # random sets for the culture-specific sets too (False: for the culture-general sets only, e.g.
    # when a culture has too few items for its own random distribution to mean anything)
    culture_random: bool | list[str] = True  # or the draws to use for them (default: random_draws)
    # the items a culture set's random sets run on: "all", or "own" (the set's culture's items of each
    # random task: all its p needs, at 1/8 of the cost with 8 cultures)
    culture_random_items: str = "all"
    # evaluate in this dtype (the model is cast after scoring and selection): e.g. bfloat16, three times
    # faster than float32 on CPUs with AVX512-BF16; "auto": bfloat16 where the device computes it
    # natively, else model_args' dtype; None: the dtype of model_args
    dtype: str | None = None

    @property
    def unmasked_tasks(self) -> list[str]:
        """Every task the unmasked model runs (each masked condition runs a subset)."""
        return list(dict.fromkeys(self.cultural + self.generation + self.general + self.nlu + self.per_culture))

    @property
    def culture_random_draws(self) -> list[str]:
        """The draws of the culture sets' random sets (none when ``culture_random`` is false)."""
        if isinstance(self.culture_random, list):
            return list(self.culture_random)
        return list(self.random_draws) if self.culture_random else []

    @property
    def tasks_for_random_sets(self) -> list[str]:
        if self.random_tasks is not None:
            return list(dict.fromkeys(self.random_tasks))
        return list(dict.fromkeys(self.per_culture + self.general))


@dataclass
class LeaveOneOut:
    """The leave-one-culture-out transfer test (docs/method.md).  For each held-out culture c and
    each selection in ``selections``, the culture-general set is selected again on the score
    tables without c's columns (``sets/<selection>/loco/<c>/general.pt``, with ``random_seeds``
    random sets of its size) and evaluated on c's items only: the task ``<task>_<c>`` for every
    task in ``tasks`` (e.g. ``blend_cloze_test`` -> ``blend_cloze_test_korea``, c's test-topic
    items).  The unmasked model and the selection's full culture-general set run on the same
    items, so the report sets the held-out drop beside the in-sample one.  The evaluations go to
    ``<out>/transfer/``, the report's transfer section reads them."""

    selections: list[str]  # selections tested (default: every configured selection)
    tasks: list[str]  # each evaluated per held-out culture as <task>_<culture> (default: evaluate.per_culture)
    random_draws: list[str]  # random sets evaluated per held-out set (default: evaluate.random_draws)
    cultures: list[str] | None = None  # cultures held out (None: every culture with task samples)
    limit: int | None = None  # documents per <task>_<culture> (None: all of the culture's items)

    @property
    def leave_out(self):
        """What ``select_and_save(leave_out=...)`` takes: "all" or the culture names."""
        return "all" if self.cultures is None else list(self.cultures)

    def tasks_for(self, culture: str) -> list[str]:
        return [f"{task}_{culture}" for task in self.tasks]

    @classmethod
    def from_mapping(cls, raw, selections: list[str], plan: EvaluationPlan) -> "LeaveOneOut":
        from ..selection.random_sets import RANDOM_DRAWS

        raw = {} if raw is True else raw
        if not isinstance(raw, dict):
            raise ValueError("leave_one_out must be a mapping (selections, cultures, tasks, random_draws, limit) "
                             "or true")
        unknown = sorted(set(raw) - LEAVE_ONE_OUT_KEYS)
        if unknown:
            raise ValueError(f"unknown leave_one_out key(s) {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(LEAVE_ONE_OUT_KEYS))})")
        chosen = _str_list(raw.get("selections", selections), "leave_one_out.selections")
        missing = [name for name in chosen if name not in selections]
        if missing or not chosen:
            raise ValueError(f"leave_one_out.selections names no configured selection: {', '.join(missing) or '(none)'}")
        tasks = _str_list(raw.get("tasks", plan.per_culture), "leave_one_out.tasks")
        if not tasks:
            raise ValueError("leave_one_out.tasks names no task (each runs as <task>_<culture>, e.g. blend_cloze_test)")
        draws = _str_list(raw.get("random_draws", plan.random_draws), "leave_one_out.random_draws")
        if not set(draws) <= set(RANDOM_DRAWS):
            raise ValueError(f"leave_one_out.random_draws must list {' and/or '.join(RANDOM_DRAWS)}, not {draws}")
        cultures = raw.get("cultures")
        if cultures is not None:
            cultures = [safe_name(c, "leave_one_out culture") for c in _str_list(cultures, "leave_one_out.cultures")]
            if not cultures:
                raise ValueError("leave_one_out.cultures is empty (null: every culture)")
        limit = raw.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"leave_one_out.limit must be a positive number of documents or null, not {limit!r}")
        return cls(selections=chosen, tasks=tasks, random_draws=draws, cultures=cultures, limit=limit)


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
    leave_one_out: LeaveOneOut | None = None  # the transfer test; None: off

    @property
    def evaluation_model_args(self) -> str:
        """``model_args`` as the evaluations run it: ``dtype`` replaced by ``evaluate.dtype`` if given."""
        if self.evaluate.dtype is None:
            return self.model_args
        kept = [kv for kv in self.model_args.split(",") if kv.split("=", 1)[0].strip() != "dtype"]
        return ",".join(kept + [f"dtype={self.evaluate.dtype}"])

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
        from ..selection.random_sets import RANDOM_DRAWS
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
                clamp_crc=scoring.get("clamp_crc", False), fold_tables=scoring.get("stability_folds"),
            )
            plan = EvaluationPlan(**{k: evaluate[k] for k in EVALUATE_KEYS if k in evaluate})
            for key in ("cultural", "generation", "per_culture", "general", "nlu"):
                _str_list(getattr(plan, key), f"evaluate.{key}")
            if plan.random_tasks is not None:
                # a random set's drop is measured against the unmasked run on the same task
                unknown = sorted(set(_str_list(plan.random_tasks, "evaluate.random_tasks"))
                                 - set(plan.unmasked_tasks))
                if unknown:
                    raise ValueError(f"evaluate.random_tasks names task(s) the unmasked model does not run: "
                                     f"{', '.join(unknown)} (list them in cultural, generation, per_culture, general or nlu)")
            for key in ("culture_sets_for", "random_for", "generation_for"):
                unknown = sorted(set(_str_list(getattr(plan, key), f"evaluate.{key}"))
                                 - set(raw.get("selections") or {"paper": {}}))
                if unknown:
                    raise ValueError(f"evaluate.{key} names no configured selection: {', '.join(unknown)}")
            if plan.dtype is not None and plan.dtype not in EVALUATION_DTYPES:
                raise ValueError(f"evaluate.dtype must be one of {', '.join(EVALUATION_DTYPES)}, not {plan.dtype!r}")
            if isinstance(plan.culture_random, list) and not set(plan.culture_random) <= set(RANDOM_DRAWS):
                raise ValueError(f"evaluate.culture_random must be true, false or a list of {' and/or '.join(RANDOM_DRAWS)}")
            if plan.culture_random_items not in ("all", "own"):
                raise ValueError(f"evaluate.culture_random_items must be all or own, not {plan.culture_random_items!r}")
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
            loo = raw.get("leave_one_out")
            loo = LeaveOneOut.from_mapping(loo, list(selections), plan) if loo not in (None, False) else None
        except (TypeError, ValueError) as err:
            raise ConfigError(f"experiment config {path}: {err}") from None
        fold = scoring.get("stability_fold", None if "stability_folds" in scoring else DEFAULT_STABILITY_FOLD)
        if fold is not None and scoring.get("stability_folds") is not None:
            raise ConfigError(f"experiment config {path}: scoring.stability_folds (fold tables from the full scoring "
                              "pass) replaces scoring.stability_fold (a second scoring of one fold): give one")
        try:
            if fold is not None:
                parse_fold(fold if isinstance(fold, str) else repr(fold))
        except ValueError:
            raise ConfigError(f"experiment config {path}: scoring.stability_fold {fold!r} must be I/K with K >= 2 "
                              "folds and 0 <= I < K (e.g. 0/2), or null to skip the stability check") from None
        from ..taskdata.sources import SOURCES

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
                   offline=bool(raw.get("offline", True)), require_data=require, source=str(path),
                   leave_one_out=loo)


def load_config(path: str | Path | None) -> ExperimentConfig:
    return ExperimentConfig.from_yaml(path)
