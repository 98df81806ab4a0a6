"""The whole study from one config: score -> select -> evaluate masked vs unmasked -> report.

The config (:class:`~.config.ExperimentConfig`) is checked before anything loads;
:func:`run_experiment` loads the model ONCE (``model.lm.load_lm``) and passes it to the library
steps: ``scoring.run.score_roles``, ``selection.save.select_and_save``, then one lm-eval
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

With ``leave_one_out`` (:class:`~.config.LeaveOneOut`) each listed selection also writes the
culture-general sets selected without one culture (``sets/<selection>/loco/<culture>/``), and
:func:`transfer_conditions` evaluates each on its culture's items only, beside the unmasked model
and the full set on the same items, into ``transfer/`` (the report's transfer section).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .._io import atomic_folder, check_output_folder, check_writable_folder, write_text
from ..selection.random_sets import RANDOM_DRAWS, random_draw, random_set
from .config import ConfigError, EvaluationPlan, ExperimentConfig

log = logging.getLogger("culnig-experiment")

STABILITY_ROLES = ("task", "control")  # the roles scored again on the stability fold


@dataclass
class ConditionPlan:
    """One evaluated model state: ``label`` names its folder; no set files = unmasked."""

    label: str
    set_paths: list[Path]
    tasks: list[str]
    culture: str | None = None  # only this culture's items of each task that has a culture field

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
    from ..taskdata.sources import locate

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


def select_all(config: ExperimentConfig, score_files: dict[str, Path], out: Path, force: bool,
               skipped: dict[str, str], half_files: dict[str, Path] | None = None) -> dict[str, dict[str, Path]]:
    """{selection name: {set label: path}}: ``select_and_save`` for each configured selection.

    ``half_files``: {role: score file} of the task and control roles scored on the stability fold
    (:func:`score_stability_half`); each set then records how stable its selection is."""
    from ..scoring.tables import fold_folder, load_fold_tables, load_table
    from ..selection.rules import Thresholds
    from ..selection.save import select_and_save

    tables = {role: load_table(path) for role, path in score_files.items()}
    half_tables = {role: load_table(path) for role, path in (half_files or {}).items()}
    if config.scoring.fold_tables:  # scoring.stability_folds: the K fold tables of the full pass
        half_tables = load_fold_tables(fold_folder(score_files["task"].parent, config.scoring.fold_tables),
                                       "scoring.stability_folds")
    written = {}
    loo = config.leave_one_out
    for name, overrides in config.selections.items():
        leave_out = loo.leave_out if loo is not None and name in loo.selections else None
        thresholds = Thresholds(**{**config.thresholds, **overrides})
        if thresholds.general_exclude is not None and "general" not in tables:
            skipped[f"selection {name}"] = "needs a general-prose score table (scoring.general)"
            continue
        folder, stamp = out / name, out / f".{name}.done.json"
        expected = {"scores": {r: t.meta["sha256"] for r, t in sorted(tables.items())},
                    "thresholds": asdict(thresholds), "seeds": config.random_seeds}
        if half_tables:  # stamps written without the stability check stay valid when it is off
            expected["half_scores"] = {r: [p.meta["sha256"] for p in t] if isinstance(t, list) else t.meta["sha256"]
                                       for r, t in sorted(half_tables.items())}
        if leave_out is not None:  # likewise without leave_one_out
            expected["leave_out"] = leave_out
        if not force and folder.is_dir() and _stamp_matches(stamp, expected):
            files = json.loads((folder / "selection.json").read_text())["files"]
            written[name] = {label: folder / Path(path).name for label, path in files.items()}
            continue
        written[name] = select_and_save(tables, thresholds, folder, model_name=config.name,
                                        random_seeds=config.random_seeds, half_tables=half_tables or None,
                                        leave_out=leave_out)
        _write_stamp(stamp, expected)
    return written


def _culture_selections(plan: EvaluationPlan, sets) -> list[str]:
    return plan.culture_sets_for if plan.culture_sets_for is not None else list(sets)


def _random_selections(plan: EvaluationPlan, sets) -> list[str]:
    return plan.random_for if plan.random_for is not None else list(sets)


def conditions(plan: EvaluationPlan, sets: dict[str, dict[str, Path]],
               culture_randoms: dict[str, dict[str, dict[str, Path]]] | None = None) -> list[ConditionPlan]:
    """Unmasked on everything; culture-general sets on the shared tasks (and the generation tasks,
    for the selections in ``generation_for``); culture sets (of the
    selections in ``culture_sets_for``) on the per-culture tasks and general perplexity; random
    sets (the general set's in ``sets``, the culture sets' in ``culture_randoms``, see
    :func:`culture_random_sets`) on ``random_tasks`` only, after every set."""
    shared = list(dict.fromkeys(plan.cultural + plan.general + plan.nlu))
    with_generation = list(dict.fromkeys(plan.cultural + plan.generation + plan.general + plan.nlu))
    generation_selections = plan.generation_for if plan.generation_for is not None else list(sets)
    per_culture = list(dict.fromkeys(plan.per_culture + plan.general))
    random_tasks = plan.tasks_for_random_sets
    culture_selections, random_selections = _culture_selections(plan, sets), _random_selections(plan, sets)
    out, randoms = [ConditionPlan("unmasked", [], plan.unmasked_tasks)], []
    for name, labelled in sets.items():
        for label, path in labelled.items():
            draw = random_draw(label)
            if draw is not None:
                if draw in plan.random_draws and name in random_selections and random_tasks:
                    randoms.append(ConditionPlan(f"{name}/{label}", [Path(path)], random_tasks))
                continue
            if label == "general":
                tasks = with_generation if name in generation_selections else shared
            else:
                tasks = per_culture if name in culture_selections else []
            if tasks:
                out.append(ConditionPlan(f"{name}/{label}", [Path(path)], tasks))
    for name, by_set in (culture_randoms or {}).items():
        for culture, drawn in by_set.items():
            own = culture if plan.culture_random_items == "own" else None
            randoms += [ConditionPlan(f"{name}/{CULTURE_RANDOM_FOLDER}/{label}", [Path(path)], random_tasks, own)
                        for label, path in drawn.items() if random_tasks]
    return out + randoms


CULTURE_RANDOM_FOLDER = "random"  # sets/<selection>/random/: the culture sets' random sets
TRANSFER_FOLDER = "transfer"  # <out>/transfer/: the leave-one-culture-out evaluations


def transfer_conditions(config: ExperimentConfig, sets: dict[str, dict[str, Path]],
                        loco: dict[str, dict[str, dict[str, Path]]]) -> list[ConditionPlan]:
    """The leave-one-culture-out evaluations (``loco``: {selection: {held-out culture: {label:
    file}}}, ``selection.save.loco_paths``): every held-out set on its culture's tasks
    (``<task>_<culture>``) only, its random sets (``leave_one_out.random_draws``) likewise, and the
    unmasked model and each selection's full culture-general set on every held-out culture's
    tasks -- the same items, for the in-sample drop.  A culture's tasks are about 1/8 of the
    test items, so each held-out state costs about 1/8 of a full evaluation."""
    loo = config.leave_one_out
    if loo is None:
        return []
    every = list(dict.fromkeys(t for by_culture in loco.values() for c in by_culture for t in loo.tasks_for(c)))
    out, randoms = [ConditionPlan("unmasked", [], every)], []
    for name, by_culture in loco.items():
        if "general" in sets.get(name, {}):
            in_sample = [t for c in by_culture for t in loo.tasks_for(c)]
            out.append(ConditionPlan(f"{name}/general", [Path(sets[name]["general"])], in_sample))
        for culture, labelled in by_culture.items():
            for label, path in labelled.items():
                plan = ConditionPlan(f"{name}/loco/{culture}/{label}", [Path(path)], loo.tasks_for(culture))
                draw = random_draw(label)
                if draw is None:
                    out.append(plan)
                elif draw in loo.random_draws:
                    randoms.append(plan)
    return out + randoms


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
    if not plan.tasks_for_random_sets or not plan.culture_random_draws:
        return {}
    written = {}
    for name in _culture_selections(plan, sets):
        if name not in _random_selections(plan, sets) or name not in sets:
            continue
        culture_sets = {label: Path(path) for label, path in sets[name].items()
                        if label != "general" and random_draw(label) is None}
        loaded = {label: NeuronSet.load(path) for label, path in culture_sets.items()}
        for label in [label for label, s in loaded.items() if s.is_empty]:
            skipped[f"random sets of {name}/{label}"] = "the set holds no neuron: a random set like it masks nothing"
        folder = out / name / CULTURE_RANDOM_FOLDER
        files = {label: {f"{label}-{RANDOM_DRAWS[draw]}{seed}": (draw, seed) for draw in plan.culture_random_draws
                         for seed in seeds} for label, s in loaded.items() if not s.is_empty}
        # the draws depend on the sets' neurons only (random_like keeps the per-layer counts)
        expected = {"sets": {label: loaded[label].neurons_sha256() for label in sorted(culture_sets)},
                    "seeds": seeds, "draws": sorted(plan.culture_random_draws)}
        stamp = folder / "done.json"
        complete = all((folder / f"{random_label}.pt").is_file() for drawn in files.values()
                       for random_label in drawn)
        if force or not complete or not _stamp_matches(stamp, expected):
            with atomic_folder(folder, "culture random sets folder", legacy=("*.pt", "done.json")) as staging:
                for label, drawn in files.items():
                    for random_label, (draw, seed) in drawn.items():
                        random_set(draw, loaded[label], seed).save(staging / f"{random_label}.pt")
                _write_stamp(staging / stamp.name, expected)  # in the unit: the folder and its stamp agree
        written[name] = {label: {random_label: folder / f"{random_label}.pt" for random_label in drawn}
                         for label, drawn in files.items()}
    return written


def loadable_tasks(names: list[str], tasks, skipped: dict[str, str]) -> list[str]:
    """Load each task once (``tasks``: :class:`~culnig_lm_eval.model.states.ReusedTasks`); drop the
    ones whose data cannot be loaded, recording why in ``skipped``."""
    ok = []
    for name in names:
        if name in skipped:
            continue
        if not tasks.knows(name):
            skipped[name] = "unknown task name"
            continue
        try:
            tasks.get(name)
            ok.append(name)
        except Exception as err:  # data missing offline, hub unreachable ...
            skipped[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:240] if str(err) else ''}"
            log.warning("skipping %s: %s", name, skipped[name])
    return ok


# what lm-eval's EvaluationTracker and the stamp put in a (condition, task) folder (before markers existed)
EVALUATION_FILES = ("done.json", "*/results_*.json", "*/samples_*.jsonl")


def culture_items(task, culture: str | None, field: str) -> list[int] | None:
    """Indices of ``culture``'s documents of a loaded task (None: every document -- no culture asked
    for, or a task without the culture field, such as general prose)."""
    docs = getattr(task, "eval_docs", None)
    if culture is None or docs is None or not len(docs) or field not in docs[0]:
        return None
    return [i for i, doc in enumerate(docs) if str(doc[field]) == culture]


def check_evaluation_folders(out: Path) -> None:
    """Before the model loads: every evaluation folder of an earlier run holds only its own files."""
    for stamp in sorted(Path(out).rglob("done.json")) if Path(out).is_dir() else []:
        if any(stamp.parent.glob("*/results_*.json")):
            check_output_folder(stamp.parent, "evaluation folder", legacy=EVALUATION_FILES)


def evaluate_conditions(lm, config: ExperimentConfig, sets, out: Path, force: bool, skipped: dict[str, str],
                        culture_randoms: dict[str, dict[str, dict[str, Path]]] | None = None,
                        planned: list[ConditionPlan] | None = None, dedupe: bool = True, tasks=None):
    """Every condition's tasks, saved as lm-eval saves them.  Each task is loaded and its requests
    built once for all conditions; a condition's sets are folded in once for all its tasks.
    ``planned``: these conditions instead of :func:`conditions` (the transfer evaluations); ``dedupe``:
    a condition whose neurons, culture and tasks an earlier one ran is skipped (skipped.json says where);
    ``tasks``: a :class:`ReusedTasks` to load the tasks with (one per run)."""
    from tqdm import tqdm

    from ..model.states import ReusedTasks, evaluate_state
    from ..neuron_set import NeuronSet, load_sets

    tasks = ReusedTasks() if tasks is None else tasks
    plan = config.evaluate
    planned = conditions(plan, sets, culture_randoms) if planned is None else planned
    loadable = set(loadable_tasks(list(dict.fromkeys(t for c in planned for t in c.tasks)), tasks, skipped))
    chat = bool(config.scoring.apply_chat_template)  # evaluation renders prompts as scoring did
    # (neurons, culture, tasks) -> the condition that evaluates them.  Transfer conditions are each a row of
    # the transfer report (a held-out set may coincide with the full set on a small model): all run
    first_with: dict[tuple, str] | None = {} if dedupe else None
    for condition in tqdm(planned, desc="masked states", unit="state"):
        # keyed on the neurons, not the files: new metadata on the same neurons reuses the run
        loaded = [NeuronSet.load(p) for p in condition.set_paths]
        key = "+".join("n" + neuron_set.neurons_sha256()[:12] for neuron_set in loaded) or "unmasked"
        if first_with is not None and loaded and all(neuron_set.is_empty for neuron_set in loaded):
            # e.g. a culture without specific neurons: masking nothing is the unmasked model, already evaluated
            skipped[condition.label] = "the set holds no neuron: masking it leaves the unmasked model"
            continue
        same = condition.label if first_with is None else first_with.setdefault(
            (key, condition.culture, tuple(condition.tasks)), condition.label)
        if same != condition.label:  # e.g. two selections whose culture-general sets coincide
            skipped[condition.label] = f"the same neurons as {same}, evaluated there"
            continue
        todo = {}
        for task in [t for t in condition.tasks if t in loadable]:
            expected = {"model_args": config.evaluation_model_args, "sets": key, "task": task, "limit": plan.limit}
            expected.update({"apply_chat_template": True} if chat else {})  # older stamps stay valid
            items = culture_items(tasks.get(task), condition.culture, config.scoring.culture_field)
            if items == []:
                skipped[f"{condition.label}/{task}"] = f"{task} has no item of culture {condition.culture}"
                continue
            expected.update({"culture": condition.culture} if items is not None else {})
            if force or not _stamp_matches(out / condition.label / task / "done.json", expected):
                todo[task] = expected
        if not todo:
            continue
        neuron_sets = load_sets(condition.neurons_arg) if condition.set_paths else []
        # model_args as the lm_eval command would have them: the report labels runs by neurons=
        model_args = config.evaluation_model_args + (f",neurons={condition.neurons_arg}" if neuron_sets else "")
        with lm.masked(neuron_sets):
            for task, expected in todo.items():
                items = culture_items(tasks.get(task), condition.culture, config.scoring.culture_field)
                with atomic_folder(out / condition.label / task, "evaluation folder", legacy=EVALUATION_FILES) as staging:
                    evaluate_state(lm, tasks, task, staging, model_args=model_args, limit=plan.limit,
                                   apply_chat_template=chat, samples=items)
                    _write_stamp(staging / "done.json", expected)
    write_text(out / "skipped.json", json.dumps(skipped, indent=1))


def resolve_evaluation_dtype(config: ExperimentConfig, lm) -> ExperimentConfig:
    """``evaluate.dtype: auto`` made concrete for the loaded model's device: bfloat16 where the
    device computes it natively, else model_args' own dtype (the stamps and reports record it)."""
    import dataclasses

    from ..model.lm import model_device, native_bfloat16

    if config.evaluate.dtype != "auto":
        return config
    dtype = "bfloat16" if native_bfloat16(model_device(lm)) else None
    log.warning("evaluate.dtype auto: %s", "bfloat16 (native on this device)" if dtype else
                "model_args' dtype (bfloat16 is not native on this device)")
    return dataclasses.replace(config, evaluate=dataclasses.replace(config.evaluate, dtype=dtype))


def run_experiment(config: ExperimentConfig, out: str | Path, force: bool = False) -> Path:
    """Score, select, evaluate and report; returns the report's path."""
    from ..model.lm import load_lm
    from ..model.states import ReusedTasks
    from ..neuron_set import NeuronSet
    from ..report import build_report
    from ..scoring.instances import write_instance_scores
    from ..scoring.run import load_role_tasks, score_roles
    from ..taskdata.index import TaskIndex

    with data_environment(config):
        check_required_data(config)
    out = check_writable_folder(out, "--out")
    check_evaluation_folders(out / "eval")
    check_evaluation_folders(out / TRANSFER_FOLDER)
    skipped: dict[str, str] = {}
    with data_environment(config):
        index = TaskIndex()  # one task index for the run: lm-eval's full one only if a task is not ours
        tasks = load_role_tasks(config.role_tasks, config.scoring, index=index)  # data errors before the model loads
        lm = load_lm(config.model_args, batch_size=config.evaluate.batch_size)
        config = resolve_evaluation_dtype(config, lm)
        score_files = score_roles(lm, config.role_tasks, config.scoring, out / "scores", tasks=tasks)
        half_files = score_stability_half(lm, config, out / "scores", tasks)
        sets = select_all(config, score_files, out / "sets", force, skipped, half_files=half_files)
        culture_randoms = culture_random_sets(config, sets, out / "sets", force, skipped)
        instances, reused = None, ReusedTasks(index=index)
        task = config.evaluate.instance_task
        # gradients in the scoring dtype, so before the model is cast for evaluation
        if task and loadable_tasks([task], reused, skipped):
            # the sets' own instance view: random sets (20 or more per set) would only repeat it as noise, and a
            # set of no neurons scores 0 on every item
            selected = {name: {label: path for label, path in labelled.items()
                               if random_draw(label) is None and not NeuronSet.load(path).is_empty}
                        for name, labelled in sets.items()}
            instances = write_instance_scores(lm, task, selected, config.scoring, out / "instance_scores.jsonl",
                                              limit=config.evaluate.limit, batch_size=config.evaluate.batch_size,
                                              index=index)
        if config.evaluate.dtype is not None:  # scoring ran in model_args' dtype; evaluation in this one
            import torch

            lm.model.to(getattr(torch, config.evaluate.dtype))
        evaluate_conditions(lm, config, sets, out / "eval", force, skipped, culture_randoms=culture_randoms,
                            tasks=reused)
        transfer = evaluate_transfer(lm, config, sets, out, force, tasks=reused)
        return build_report([out / "eval"], out / "report", instance_scores=instances,
                            transfer_dirs=[transfer] if transfer else ())


def evaluate_transfer(lm, config: ExperimentConfig, sets, out: Path, force: bool, tasks=None) -> Path | None:
    """The leave-one-culture-out evaluations (:func:`transfer_conditions`) into ``<out>/transfer``,
    with ``leave_one_out.limit`` documents per task; None when the config has none."""
    from ..selection.save import loco_paths

    loo = config.leave_one_out
    if loo is None:
        return None
    loco = {name: found for name in loo.selections if name in sets and (found := loco_paths(out / "sets" / name))}
    planned = transfer_conditions(config, sets, loco)
    limited = dataclasses.replace(config, evaluate=dataclasses.replace(config.evaluate, limit=loo.limit))
    evaluate_conditions(lm, limited, sets, out / TRANSFER_FOLDER, force, {}, planned=planned, dedupe=False,
                        tasks=tasks)
    return out / TRANSFER_FOLDER
