"""The selection study: which culture-specific selection gives sets that are specific?

``culnig-score study`` runs :func:`run_study` on one score folder:

1. every variant (a name and its :class:`~culnig_lm_eval.selection.rules.Thresholds` overrides) is
   selected from the stored tables, timed, and -- with fold tables -- checked for stability
   (:mod:`.stability`);
2. the model is loaded once and the evaluation requests (lm-eval's own: ``build_all_requests``
   of the evaluation task, the first ``per_culture`` documents of every culture, and the
   general-prose task) are built once; every culture-specific set, and ``random_draws``
   random sets, are then applied as folded masks and the same requests re-run;
3. per (variant, culture): the own-culture drop, the mean drop on the other cultures, their
   ratio, the empirical p of the own drop among the random sets' drops on that culture, and the
   general perplexity ratio.  A culture *passes* when own >= ``ratio_min`` x other (own > 0),
   p < ``alpha`` and perplexity ratio <= ``ppl_max``; the recommended variant passes most
   cultures (ties: larger mean own-minus-other gap).

Random sets: uniform draws over the pooled module kinds of the specific sets (the reference's
``decide_random_neuron.py``), of the LARGEST culture-specific set size among the variants.
One pool serves every variant: the contrast rules give every culture exactly that size, and
the paper's sets are never larger (its z filter only removes neurons), so for them the test is
conservative (random sets with more neurons hurt more on average).

With ``leave_out`` (``--leave-out``) every variant's culture-general set is also selected once
per culture without that culture and evaluated on it (:mod:`.study_transfer`): the transfer rows.

Results are computed first (``study.json``, :mod:`.study_report`), then formatted as
``study.md`` and ``pareto.png``; the study folder (with the sets of every variant) is written as
a unit.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._io import atomic_folder, safe_name, write_text
from ..checks import number_in, whole_number
from ..neuron_set import NeuronSet
from ..scoring.attribution import ScoreTable
from .random_sets import random_uniform
from .rules import ThresholdError, Thresholds, selection_name
from .stability import HalfSelections, describe, select_with_halves
from .study_report import analyse, pareto_figure, render_markdown, selection_only_summary
from .study_transfer import analyse_transfer, select_transfer, transfer_markdown, transfer_pool

DEFAULT_VARIANTS = {
    "paper": {},
    "paper-normalised-z": {"normalise_z": True},
    "contrast": {"specific_rule": "contrast"},
    "rank-contrast": {"specific_rule": "rank-contrast"},
    "contrast-excl": {"specific_rule": "contrast", "exclude_general_set": True, "general_exclude": 5.0},
    "rank-contrast-excl": {"specific_rule": "rank-contrast", "exclude_general_set": True, "general_exclude": 5.0},
}
# variants that need the fold tables (--half-scores-dir): stability selection on the two halves
HALVES_VARIANTS = {
    "contrast-excl-agree": {**DEFAULT_VARIANTS["contrast-excl"], "halves_agree": True},
    "rank-contrast-agree": {**DEFAULT_VARIANTS["rank-contrast"], "halves_agree": True},
    # stability selection at 80% of the halves (a --fold-tables K run gives many pairs)
    "contrast-excl-stable": {**DEFAULT_VARIANTS["contrast-excl"], "stable_fraction": 0.8},
    "rank-contrast-stable": {**DEFAULT_VARIANTS["rank-contrast"], "stable_fraction": 0.8},
}
VARIANTS = {**DEFAULT_VARIANTS, **HALVES_VARIANTS}
# what a study folder held before output markers (``_io``): replaced only when it holds nothing else
STUDY_LEGACY = ("study.json", "study.md", "pareto.png", "sets/*/*.pt")


def default_variants(with_halves: bool) -> list[str]:
    """Every variant that can run: the halves-agree ones only with fold tables."""
    return list(VARIANTS if with_halves else DEFAULT_VARIANTS)


class StudyError(ValueError):
    """Study settings or inputs that cannot work (one line for the CLI)."""


@dataclass
class StudySettings:
    model_args: str = "pretrained=smollm2-135m,dtype=float32"
    variants: dict[str, dict] = field(default_factory=lambda: dict(DEFAULT_VARIANTS))
    thresholds: dict = field(default_factory=dict)  # shared by every variant (the variant's keys win)
    eval_task: str = "blend_cloze_test"
    per_culture: int = 40  # evaluation documents per culture (the first ones in file order)
    general_task: str | None = "general_ppl"
    general_limit: int | None = 4  # general-prose documents (each about a thousand tokens); None = all
    random_draws: int = 20
    batch_size: int = 16
    ratio_min: float = 2.0
    alpha: float = 0.05
    ppl_max: float = 1.1
    culture_field: str = "culture"
    select_only: bool = False  # selection, sizes and stability only; no model
    # also the culture-general sets selected without each culture (study_transfer): "all" (or True)
    # for every culture with task samples, or culture names; None/False: off
    leave_out: str | list[str] | bool | None = None

    def __post_init__(self):
        if not self.variants:
            raise StudyError("no selection variant to study")
        for name, overrides in self.variants.items():
            safe_name(name, "variant name")
            try:
                Thresholds(**{**self.thresholds, **overrides})
            except (TypeError, ThresholdError) as err:
                raise StudyError(f"variant {name}: {err}") from None
        for key in ("per_culture", "random_draws", "batch_size", "general_limit"):
            value = getattr(self, key)
            if key != "general_limit" or value is not None:
                whole_number(value, f"{key}={value!r}", least=1, error=StudyError)
        for key in ("ratio_min", "alpha", "ppl_max"):
            value = getattr(self, key)
            number_in(value, f"{key}={value!r}", low=0, low_open=True, error=StudyError)


# -- selection --------------------------------------------------------------------------------
def select_variants(settings: StudySettings, tables: dict[str, ScoreTable],
                    half_tables: dict | None, model_name: str = ""):
    """{variant: {label: set}} and {variant: {"seconds": .., "stability": {label: entry}}}."""
    # the half selections are shared: a filtered variant reuses its rule's (timed on first use)
    split = HalfSelections(tables, half_tables, model_name) if half_tables else None
    sets, info = {}, {}
    for name, overrides in settings.variants.items():
        thresholds = Thresholds(**{**settings.thresholds, **overrides})
        if thresholds.general_exclude is not None and tables.get("general") is None:
            raise StudyError(f"variant {name} excludes general-prose neurons but there is no general.scores.pt")
        if (thresholds.halves_agree or thresholds.stable_fraction is not None) and split is None:
            raise StudyError(f"variant {name} keeps the neurons selected on the halves: give --half-scores-dir")
        started = time.perf_counter()
        try:  # one pass: the full selection and, with fold tables, its two halves (timed together)
            chosen, stability = select_with_halves(tables, half_tables, thresholds, model_name, split)
        except ThresholdError as err:
            raise StudyError(f"variant {name}: {err}") from None
        seconds = time.perf_counter() - started
        sets[name] = chosen
        info[name] = {"selection": selection_name(thresholds, tables), "thresholds": asdict(thresholds),
                      "seconds": seconds, "stability": stability,
                      "sizes": {label: len(s) for label, s in chosen.items()}}
    return sets, info


# -- evaluation on the loaded model --------------------------------------------------------------
@dataclass
class EvalRequests:
    """Requests built once and re-run for every masked state."""

    task: object
    instances: list
    docs: dict[int, dict]  # doc_id -> document
    culture_of: dict[int, str]
    cultures: list[str]
    general_instances: list = field(default_factory=list)
    general_tokens: int = 0


def check_tasks(settings: StudySettings, tasks: dict) -> None:
    """The evaluation task must be multiple choice with a culture per document, the general task
    rolling log-likelihood (checked before the model loads)."""
    task = tasks.get(settings.eval_task)
    if task is None or task.OUTPUT_TYPE != "multiple_choice":
        raise StudyError(f"--eval-task {settings.eval_task}: must be one multiple-choice task (e.g. blend_cloze_test)")
    first = next(iter(task.eval_docs), None)
    if first is None or settings.culture_field not in first:
        raise StudyError(f"--eval-task {settings.eval_task}: its documents have no {settings.culture_field!r} field")
    general = tasks.get(settings.general_task) if settings.general_task else None
    if settings.general_task and (general is None or general.OUTPUT_TYPE != "loglikelihood_rolling"):
        raise StudyError(f"--general-task {settings.general_task}: must be one perplexity task (e.g. general_ppl)")


def build_requests(lm, settings: StudySettings, tasks: dict) -> EvalRequests:
    task = tasks[settings.eval_task]
    task.build_all_requests(limit=None, rank=0, world_size=1)
    per_culture: dict[str, list[int]] = {}
    docs, culture_of = {}, {}
    for inst in task.instances:
        if inst.doc_id in docs:
            continue
        culture = str(inst.doc.get(settings.culture_field, ""))
        taken = per_culture.setdefault(culture, [])
        if len(taken) < settings.per_culture:
            taken.append(inst.doc_id)
            docs[inst.doc_id], culture_of[inst.doc_id] = inst.doc, culture
    instances = [inst for inst in task.instances if inst.doc_id in docs]
    requests = EvalRequests(task, instances, docs, culture_of, sorted(per_culture))
    if settings.general_task:
        general = tasks[settings.general_task]
        general.build_all_requests(limit=None, rank=0, world_size=1)
        requests.general_instances = list(general.instances)[: settings.general_limit]
        requests.general_tokens = sum(len(lm.tok_encode(inst.arguments[0])) for inst in requests.general_instances)
    return requests


def evaluate_state(lm, requests: EvalRequests) -> dict:
    """Accuracy per culture (lm-eval's own ``process_results``) and general-prose NLL per token."""
    responses = lm.loglikelihood(requests.instances, disable_tqdm=True)
    by_doc: dict[int, list] = {}
    for inst, resp in sorted(zip(requests.instances, responses), key=lambda pair: (pair[0].doc_id, pair[0].idx)):
        by_doc.setdefault(inst.doc_id, []).append(resp)
    correct = {c: [] for c in requests.cultures}
    for doc_id, results in by_doc.items():
        metrics = requests.task.process_results(requests.docs[doc_id], results)
        correct[requests.culture_of[doc_id]].append(float(metrics["acc"]))
    out = {"acc": {c: sum(v) / len(v) for c, v in correct.items() if v},
           "n": {c: len(v) for c, v in correct.items()}}
    if requests.general_instances:
        lls = lm.loglikelihood_rolling(requests.general_instances, disable_tqdm=True)
        out["nll_per_token"] = -sum(lls) / max(requests.general_tokens, 1)
    return out


def random_pool(sets: dict[str, dict[str, NeuronSet]], draws: int) -> list[NeuronSet]:
    """``draws`` uniform random sets of the largest culture-specific set's size (module docstring)."""
    specific = [s for labelled in sets.values() for label, s in labelled.items() if label != "general"]
    if not specific:
        return []
    largest = max(specific, key=len)
    if largest.is_empty:
        return []
    return [random_uniform(largest, seed) for seed in range(draws)]


def _set_key(neuron_set: NeuronSet) -> tuple:
    return tuple((kind, tuple(tuple(row.tolist()) for row in rows)) for kind, rows in sorted(neuron_set.indices.items()))


def evaluate_all(lm, requests: EvalRequests, sets, randoms, progress=print, transfer=None, transfer_randoms=()) -> dict:
    """{"unmasked": result, "sets": {variant: {label: result}}, "random": [result, ...]}; a set
    shared by two variants is evaluated once.  With ``transfer`` (:func:`.study_transfer.select_transfer`)
    also "transfer": {variant: {"full": result, "held_out": {culture: result}}} (cultures with
    evaluation items only) and "transfer_random": [result, ...] of ``transfer_randoms``."""
    cache: dict = {}

    def run(neuron_set: NeuronSet | None) -> dict:
        key = _set_key(neuron_set) if neuron_set is not None else ("unmasked",)
        if neuron_set is not None and key not in cache and neuron_set.is_empty:
            return {"empty": True}
        if key not in cache:
            with lm.masked([neuron_set] if neuron_set is not None else []):
                cache[key] = evaluate_state(lm, requests)
        return cache[key]

    from tqdm import tqdm

    transfer = {name: {"full": v["full"], "held_out": {c: s for c, s in v["held_out"].items() if c in requests.cultures}}
                for name, v in (transfer or {}).items()}
    total = (1 + sum(label != "general" for labelled in sets.values() for label in labelled) + len(randoms)
             + sum(1 + len(v["held_out"]) for v in transfer.values()) + len(transfer_randoms))
    with tqdm(total=total, desc="study: masked states", unit="state") as bar:
        out = {"unmasked": run(None), "sets": {}, "random": []}
        bar.update()
        for name, labelled in sets.items():
            out["sets"][name] = {}
            for label, neuron_set in labelled.items():
                if label != "general":
                    bar.set_postfix_str(f"{name}/{label}")
                    out["sets"][name][label] = run(neuron_set)
                    bar.update()
        for i, neuron_set in enumerate(randoms):
            bar.set_postfix_str(f"random {i + 1}/{len(randoms)}")
            out["random"].append(run(neuron_set))
            bar.update()
        if transfer:
            out["transfer"], out["transfer_random"] = {}, []
        for name, v in transfer.items():
            bar.set_postfix_str(f"{name}: held out one at a time")
            out["transfer"][name] = {"full": run(v["full"]), "held_out": {}}
            bar.update()
            for culture, neuron_set in v["held_out"].items():
                out["transfer"][name]["held_out"][culture] = run(neuron_set)
                bar.update()
        for i, neuron_set in enumerate(transfer_randoms):
            bar.set_postfix_str(f"transfer random {i + 1}/{len(transfer_randoms)}")
            out["transfer_random"].append(run(neuron_set))
            bar.update()
    progress(f"{len(cache)} distinct masked states evaluated")
    return out


# -- the whole study -------------------------------------------------------------------------------
def run_study(settings: StudySettings, tables: dict[str, ScoreTable], out: Path, *,
              half_tables: dict | None = None, command: str = "", progress=print) -> Path:
    """Select every variant, evaluate (unless ``select_only``) and write the study folder."""
    model_name = (tables["task"].meta.get("model") or {}).get("name", "")
    tasks = None
    if not settings.select_only:
        from ..scoring.samples import load_tasks

        names = [settings.eval_task] + ([settings.general_task] if settings.general_task else [])
        tasks = load_tasks(names)  # data problems before the model loads
        check_tasks(settings, tasks)
    sets, info = select_variants(settings, tables, half_tables, model_name)
    for name, v in info.items():
        progress(f"{name}: selected in {v['seconds']:.2f} s: " + ", ".join(f"{k} {n}" for k, n in v["sizes"].items()))
    transfer = select_transfer(settings, tables, model_name) if settings.leave_out else None
    if settings.select_only:
        results = selection_only_summary(info)
        if transfer:
            results["transfer_sizes"] = {name: {"full": len(v["full"]), **{c: len(s) for c, s in v["held_out"].items()}}
                                         for name, v in transfer.items()}
    else:
        from ..model.lm import load_lm

        lm = load_lm(settings.model_args, batch_size=settings.batch_size)
        requests = build_requests(lm, settings, tasks)
        randoms = random_pool(sets, settings.random_draws)
        transfer_randoms = transfer_pool(transfer, settings.random_draws) if transfer else []
        evaluations = evaluate_all(lm, requests, sets, randoms, progress, transfer, transfer_randoms)
        results = analyse(settings, evaluations, info)
        if transfer:
            results["transfer"] = analyse_transfer(settings, evaluations, transfer)
        results["evaluations"] = evaluations
    results["settings"] = asdict(settings)
    results["score_files"] = {role: t.meta.get("path") for role, t in tables.items()}
    results["half_score_files"] = describe(half_tables or {})
    out = Path(out)
    with atomic_folder(out, legacy=STUDY_LEGACY) as staging:
        for name, labelled in sets.items():
            for label, neuron_set in labelled.items():
                neuron_set.save(staging / "sets" / name / f"{safe_name(label, 'set label')}.pt")
        for name, v in (transfer or {}).items():  # the culture names passed safe_name in the selection
            for culture, neuron_set in v["held_out"].items():
                neuron_set.save(staging / "sets" / name / "loco" / f"{culture}.pt")
        write_text(staging / "study.json", json.dumps(results, indent=1, sort_keys=True, allow_nan=False) + "\n")
        text = render_markdown(results, command)
        if "transfer" in results:
            text += "\n".join(transfer_markdown(results)) + "\n"
        write_text(staging / "study.md", text)
        if "cultures" in results:
            pareto_figure(results, staging / "pareto.png")
    return out / "study.md"
