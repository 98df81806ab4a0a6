"""Prompt variants: one benchmark under several instruction wordings, as the CULNIG paper runs them.

Every variant is a leaf task whose YAML gives its wording as ``dataset_kwargs: {variant: N,
template: "..."}``; a group over the leaves averages accuracy (``weight_by_size``; the leaves
have the same documents, so that is the plain mean over wordings).  The builders here fill
the template with one item's fields and return documents with ``prompt`` (the filled
template), ``labels`` (the scored answer labels, e.g. ``["1", "2", "3"]`` or ``A``-``D``),
``gold`` (index into ``labels``), ``culture``, ``topic`` and ``variant``.

Where the reference shuffles options (NormAd's yes/no/neutral numbering, CulturalBench's
four options) the order comes from :func:`culnig_lm_eval.taskdata.documents.item_rng`, so it
differs between wordings (position bias averages out over the group, as in the reference).

The rows come from :func:`culnig_lm_eval.taskdata.sources.load_rows` (``CULNIG_DATA=sample|hub|auto``,
``CULNIG_<KEY>`` files), so the general-NLU sets (``qnli``, ``mrpc``, ``commonsense_qa``) are
the hub datasets lm-eval itself uses, with small hand-written fixtures for offline runs.
"""

from __future__ import annotations

import json
import logging
import string
from typing import Any, Callable, Iterable, Sequence

from ..cultures import culture_id, display_name
from .builders import blend
from .documents import as_splits, as_text, gold_index, option_labels, option_lines, seeded_shuffle
from .options import whole_number_option
from .sources import DataError, Part, load_rows, located_rows

log = logging.getLogger(__name__)


def _fill(template: str, task: str, fields: dict[str, Any]) -> str:
    """``template`` with ``{field}`` slots filled; a slot the task does not have is a config error."""
    wanted = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    unknown = sorted(wanted - set(fields))
    if unknown:
        raise ValueError(f"{task} prompt template: unknown slot(s) {', '.join('{' + u + '}' for u in unknown)}; "
                         f"this task fills {', '.join('{' + f + '}' for f in fields)}")
    return template.format(**fields)


def _template(task: str, template: Any, variant: Any) -> tuple[str, int]:
    if not isinstance(template, str) or not template.strip():
        raise ValueError(f"{task}: give the wording as dataset_kwargs template: \"...\" (a non-empty string)")
    number = whole_number_option("variant", variant)
    if number is None:
        raise ValueError(f"{task}: give the wording's number as dataset_kwargs variant: N")
    return template, number


def _docs(task: str, rows: Iterable[tuple[Part, int, dict]], make: Callable[..., dict | None]) -> Any:
    docs = [doc for part, index, row in rows if (doc := make(part, index, row)) is not None]
    return as_splits(docs, task)


# ---------------------------------------------------------------------------------- NormAd


def normad_prompt(template: str | None = None, variant: int | None = None, **options) -> Any:
    """NormAd under one wording: ``{country}``, ``{story}`` and ``{options}`` (``"1: yes, 2: no,
    3: neutral"`` in a per-item seeded order); the answer is the gold label's number."""
    template, number = _template("normad_prompt", template, variant)
    skipped = 0

    def make(part, index, row):
        nonlocal skipped
        label = str(row["Gold Label"]).strip().lower().replace("neither", "neutral")
        if label not in {"yes", "no", "neutral"}:
            skipped += 1
            return None
        shuffled, _ = seeded_shuffle(["yes", "no", "neutral"], "normad", row.get("ID") or part.where(index), number)
        labels = option_labels("digit", 3)
        prompt = _fill(template, "normad_prompt", {
            "country": display_name(row["Country"]), "story": row["Story"],
            "options": ", ".join(f"{n}: {answer}" for n, answer in zip(labels, shuffled))})
        return {"ID": as_text(row.get("ID")), "Country": as_text(row["Country"]), "label": label,
                "culture": culture_id(row["Country"]), "topic": as_text(row.get("Axis")) or "unknown",
                "variant": number, "prompt": prompt, "labels": labels, "options": shuffled,
                "gold": shuffled.index(label)}

    result = _docs("NormAd prompts", located_rows(load_rows("normad", options)), make)
    if skipped:
        log.warning("NormAd: skipped %d rows whose Gold Label is not yes/no/neutral", skipped)
    return result


# ---------------------------------------------------------------------------- CulturalBench


def culturalbench_prompt(template: str | None = None, variant: int | None = None, **options) -> Any:
    """CulturalBench-Easy under one wording: ``{question}`` and ``{options}`` (the four answers
    in a per-item seeded order, one ``A. ...`` line each); the answer is the gold's letter."""
    template, number = _template("culturalbench_prompt", template, variant)

    def make(part, index, row):
        answers = [row[f"prompt_option_{c}"] for c in "abcd"]
        gold = gold_index(row["answer"], ["A", "B", "C", "D"], part, index, "answer")
        key = row.get("data_idx")
        shuffled, order = seeded_shuffle(answers, "culturalbench", part.where(index) if key is None else key, number)
        labels = option_labels("letter", 4)
        prompt = _fill(template, "culturalbench_prompt",
                       {"question": row["prompt_question"], "options": option_lines(shuffled, labels)})
        return {"data_idx": as_text(key), "country": as_text(row["country"]),
                "culture": culture_id(row["country"]), "topic": "unknown", "variant": number,
                "prompt": prompt, "labels": labels, "options": shuffled, "gold": order.index(gold)}

    return _docs("CulturalBench prompts", located_rows(load_rows("culturalbench", options)), make)


# ------------------------------------------------------------------------------------ BLEnD


def blend_prompt(template: str | None = None, variant: int | None = None, labels: str = "letter",
                 **options) -> Any:
    """BLEnD multiple choice under one of our wordings: ``{question}`` (the bare question) and
    ``{options}`` (the four answers in BLEnD's own order, which BLEnD already balances, as the
    reference keeps it), labelled by ``labels`` (``letter`` or ``digit``).  The same items as
    the ``blend`` task (``per_question``/``sample_seed``/``culture``/``topics`` pass through);
    the official prompt itself is the ``blend`` builder."""
    template, number = _template("blend_prompt", template, variant)
    items = blend(**options)["test"]
    marks = option_labels(labels, 4)

    def make(part, index, doc):
        prompt = _fill(template, "blend_prompt", {"question": doc["question"],
                                                   "options": option_lines(doc["options"], marks)})
        return {**doc, "variant": number, "prompt": prompt, "labels": marks}

    part = Part(items.to_list(), "BLEnD")
    return _docs("BLEnD prompts", ((part, i, doc) for i, doc in enumerate(part)), make)


# -------------------------------------------------------------------------- general NLU sets


def _binary_label(row: dict, part: Part, index: int) -> int | None:
    """GLUE's 0/1 label; None for an unlabelled row (GLUE test splits mark those -1)."""
    text = str(row["label"]).strip()
    if text in {"0", "1"}:
        return int(text)
    if text == "-1":
        return None
    raise DataError(f"{part.where(index)}: label {row['label']!r} is not 0 or 1 (or -1 for unlabelled); fix or remove the row")


def _glue_prompt(key: str, fields: Sequence[str], template: Any, variant: Any, options: dict) -> Any:
    template, number = _template(f"{key}_prompt", template, variant)
    unlabelled = 0

    def make(part, index, row):
        nonlocal unlabelled
        gold = _binary_label(row, part, index)
        if gold is None:
            unlabelled += 1
            return None
        prompt = _fill(template, f"{key}_prompt", {f: row[f] for f in fields})
        return {"idx": as_text(row.get("idx")), **{f: row[f] for f in fields}, "label": gold,
                "culture": "none", "topic": key, "variant": number, "prompt": prompt,
                "labels": ["0", "1"], "gold": gold}

    result = _docs(f"{key} prompts", located_rows(load_rows(key, options)), make)
    if unlabelled:
        log.warning("%s: skipped %d unlabelled rows (label -1)", key, unlabelled)
    return result


def qnli_prompt(template: str | None = None, variant: int | None = None, **options) -> Any:
    """GLUE QNLI (validation) under one wording: ``{question}``, ``{sentence}``; the answer is
    GLUE's label digit (0 entailment, 1 not entailment)."""
    return _glue_prompt("qnli", ("question", "sentence"), template, variant, options)


def mrpc_prompt(template: str | None = None, variant: int | None = None, **options) -> Any:
    """GLUE MRPC (test, as the reference) under one wording: ``{sentence1}``, ``{sentence2}``;
    the answer is GLUE's label digit (1 paraphrase, 0 not)."""
    return _glue_prompt("mrpc", ("sentence1", "sentence2"), template, variant, options)


def commonsense_qa_prompt(template: str | None = None, variant: int | None = None, **options) -> Any:
    """CommonsenseQA (validation) under one wording: ``{question}`` and ``{options}`` (the five
    answers in the dataset's order, as the reference keeps them); the answer is ``answerKey``."""
    template, number = _template("commonsense_qa_prompt", template, variant)

    def make(part, index, row):
        choices = row["choices"]
        if isinstance(choices, str):  # a CSV or TSV file holds the mapping as JSON text
            try:
                choices = json.loads(choices)
            except ValueError:
                choices = None
        if not isinstance(choices, dict) or not isinstance(choices.get("label"), list) \
                or not isinstance(choices.get("text"), list) or len(choices["label"]) != len(choices["text"]):
            raise DataError(f"{part.where(index)}: choices must be {{\"label\": [...], \"text\": [...]}} "
                            "of equal length, as tau/commonsense_qa has them")
        labels = [str(l).strip().upper() for l in choices["label"]]
        gold = gold_index(row["answerKey"], labels, part, index, "answerKey")
        prompt = _fill(template, "commonsense_qa_prompt",
                       {"question": row["question"], "options": option_lines(choices["text"], labels)})
        return {"id": as_text(row.get("id")), "question": row["question"], "answerKey": labels[gold],
                "culture": "none", "topic": as_text(row.get("question_concept")) or "unknown",
                "variant": number, "prompt": prompt, "labels": labels, "options": list(choices["text"]),
                "gold": gold}

    return _docs("CommonsenseQA prompts", located_rows(load_rows("commonsense_qa", options)), make)
