"""The dataset builders the task YAMLs name as ``custom_dataset``: BLEnD, CountryRC, NormAd, CulturalBench.

lm-eval calls a builder as ``builder(**metadata, **dataset_kwargs)`` and it returns
``DatasetDict({"test": ...})``.  Every document carries ``culture`` (a canonical lowercase id,
see :func:`culnig_lm_eval.cultures.culture_id`) and ``topic``; multiple-choice documents whose
gold is not a fixed label carry ``gold`` (an int index into the task's choices), so lm-eval's
ordinary request building yields the gold request.  Rows come from
:func:`culnig_lm_eval.taskdata.sources.load_rows`; a row that makes no sense (a BLEnD row whose
choices or answer cannot be read) is a ``DataError`` naming the file and row.  The builders run
while lm-eval loads the tasks, so ``culnig-score``/``culnig-experiment`` stop with that one line
before any model is loaded.
"""

from __future__ import annotations

import ast
import json
import logging
import random
import re
from typing import Any, Iterable

from ..cultures import culture_id, display_name
from .documents import as_splits, as_text, gold_index, item_rng, option_labels, option_lines
from .options import share_option, whole_number_option
from .sources import DataError, Part, load_rows, locate, located_rows, read_utf8

log = logging.getLogger(__name__)


def _wanted(value: str | Iterable[str] | None) -> set[str] | None:
    if value is None:
        return None
    return {value} if isinstance(value, str) else set(value)


def _topic_key(topic: str) -> str:
    return " ".join(str(topic).lower().split())


# ----------------------------------------------------------------------------------- BLEnD


def blend(culture: str | list[str] | None = None, topics: list[str] | None = None, per_question: int | None = 5,
          sample_seed: int | None = None, **options) -> Any:
    """BLEnD multiple-choice questions, optionally one culture and some topics.

    Adds to the official columns: ``culture``; ``topic`` (joined on ``ID`` with the
    short-answer question metadata; "unknown" when the join finds nothing); ``question`` (the bare
    question: the prompt up to " Without any explanation"); ``ctrl_prompt`` (the prompt without
    the question: instructions, options and "Answer:"); ``options`` (the four answer texts in
    letter order) and ``gold`` (index of the answer letter).

    ``per_question``: at most this many items per (country, question ID), as the CULNIG
    reference does (``dataset.py``: 5, for neuron finding and evaluation alike): the official
    file holds up to hundreds of option variants of one question, and per-culture counts feed
    the z-scores.  0 or None keeps every item.  ``sample_seed``: None (default, the reference's
    choice) keeps the first ``per_question`` variants in file order; a whole number draws them
    at random instead, seeded per (seed, country, ID) from the variants sorted by ``MCQID``, so
    the draw does not depend on row order or on the other questions.  Kept items stay in file
    order.  Every BLEnD task (neuron finding, control, evaluation, per country) applies the
    same cap, so the control sees exactly the task's items.  Set either with
    ``--metadata '{"per_question": 0}'`` or in a task's ``dataset_kwargs``.

    Rows of the requested cultures are checked: ``choices`` must be a mapping of letters to
    answers and ``answer_idx`` one of its letters (or a 0-based index below their number);
    otherwise :class:`DataError` names the file and row.  Items without exactly four choices
    are skipped with a warning.
    """
    cultures = _wanted(culture)
    topic_keys = {_topic_key(t) for t in _wanted(topics) or ()}
    cap = whole_number_option("per_question", per_question)
    seed = whole_number_option("sample_seed", sample_seed)
    items, skipped = [], 0
    for part, index, row in located_rows(load_rows("blend_mcq", options)):
        cid = culture_id(row["country"])
        if cultures and cid not in cultures:
            continue
        choices = _choices(row["choices"], part, index)
        letters = sorted(choices)
        gold = gold_index(row["answer_idx"], letters, part, index, "answer_idx")
        if len(letters) != 4:
            skipped += 1
            continue
        items.append((cid, row, choices, letters, gold))
    total = len(items)
    items = _cap_per_question(items, cap, seed)
    if len(items) < total:
        log.info("BLEnD: kept %d of %d items (at most %d per country and question ID, %s)", len(items), total, cap,
                 "the first in file order" if seed is None else f"drawn with seed {seed}")
    topic_of = _blend_topics(options)
    docs, unjoined, unsplit = [], 0, 0
    for cid, row, choices, letters, gold in items:
        topic = topic_of.get((cid, str(row["ID"]))) or topic_of.get(str(row["ID"]))
        unjoined += topic is None
        if topic_keys and _topic_key(topic or "unknown") not in topic_keys:
            continue
        question, ctrl_prompt, found = _split_prompt(row["prompt"])
        unsplit += not found
        docs.append({
            **{col: as_text(row.get(col)) for col in ("MCQID", "ID", "country", "prompt", "choices", "choice_countries", "answer_idx")},
            "culture": cid,
            "topic": topic or "unknown",
            "question": question,
            "ctrl_prompt": ctrl_prompt,
            "options": [str(choices[k]) for k in letters],
            "gold": gold,
        })
    if unjoined:
        log.warning("BLEnD topic join: %d of %d items have an ID missing from the question metadata (topic 'unknown'); "
                    "set CULNIG_BLEND_QUESTIONS to the folder of the official <CODE>_questions.csv files", unjoined, len(items))
    if unsplit:
        log.warning("BLEnD: %d prompts lack ' Without any explanation'; their first line was taken as the question", unsplit)
    if skipped:
        log.warning("BLEnD: skipped %d items without exactly four choices", skipped)
    return as_splits(docs, f"BLEnD culture={culture} topics={topics}")


def _cap_per_question(items: list[tuple], cap: int | None, seed: int | None) -> list[tuple]:
    """At most ``cap`` of ``items`` (culture, row, ...) per (culture, ID); see :func:`blend`."""
    if not cap:
        return items
    groups: dict[tuple[str, str], list[int]] = {}
    for n, (cid, row, *_) in enumerate(items):
        groups.setdefault((cid, str(row["ID"])), []).append(n)
    keep: set[int] = set()
    for (cid, qid), members in groups.items():
        if len(members) <= cap:
            keep.update(members)
        elif seed is None:
            keep.update(members[:cap])
        else:
            ordered = sorted(members, key=lambda n: (str(items[n][1]["MCQID"]), n))
            keep.update(random.Random(f"{seed}:{cid}:{qid}").sample(ordered, cap))
    return [item for n, item in enumerate(items) if n in keep]


def _choices(value: Any, part: Part, index: int) -> dict:
    """The ``choices`` mapping, stored as itself, as JSON, or as a Python literal; letters as keys."""
    parsed = value
    if not isinstance(value, dict):
        try:
            parsed = json.loads(value)
        except (TypeError, ValueError):
            try:
                parsed = ast.literal_eval(str(value))
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                parsed = None
    if not isinstance(parsed, dict) or not parsed or not all(isinstance(k, str) and k.strip() for k in parsed):
        shown = str(value) if len(str(value)) <= 60 else str(value)[:57] + "..."
        raise DataError(f"{part.where(index)}: choices {shown!r} is not a mapping of letters to answers "
                        """(expected JSON such as {"A": "...", "B": "...", "C": "...", "D": "..."}); fix or remove the row""")
    return {k.strip().upper(): v for k, v in parsed.items()}


def _blend_topics(options: dict[str, Any]) -> dict[Any, str]:
    """{(culture, ID): Topic} and {ID: Topic} from the per-country short-answer question tables."""
    table: dict[Any, str] = {}
    for part, rows in load_rows("blend_questions", options).items():  # columns ID and Topic are checked
        cid = culture_id(re.sub(r"_questions$", "", part))
        for row in rows:
            if row.get("ID") and row.get("Topic"):
                table[(cid, str(row["ID"]))] = row["Topic"]
                table.setdefault(str(row["ID"]), row["Topic"])
    return table


def _split_prompt(prompt: str, marker: str = " Without any explanation") -> tuple[str, str, bool]:
    """(question, prompt without the question, whether the official marker was found)."""
    head, found, tail = prompt.partition(marker)
    if found:
        return head.strip(), (found + tail).strip(), True
    head, _, tail = prompt.partition("\n")
    return head.strip(), tail.strip(), False


# ------------------------------------------------------------------------------------- CountryRC


CRC_SLOTS = {"passage text": {"country", "dummy"}, "instruction text": {"passage", "question", "options"}}


def _slots(text: str) -> set[str]:
    import string

    return {field.split(".")[0].split("[")[0] for _, field, _, _ in string.Formatter().parse(text)
            if field is not None}


def check_crc_spec(spec: dict, path) -> None:
    """Every field of a CountryRC spec has the type the builder reads, and every ``{slot}`` of a
    text is one the builder fills; one :class:`DataError` line naming the file and the entry."""
    def fail(what: str):
        raise DataError(f"{path}: {what} (see tasks/crc/passages.json)")

    if isinstance(spec["seed"], bool) or not isinstance(spec["seed"], (int, str)):
        fail(f"seed must be a number or text, not {spec['seed']!r}")
    for key in ("countries", "targets", "passages", "instructions"):
        if not isinstance(spec[key], list) or not spec[key]:
            fail(f"{key} must be a non-empty list")
    for i, country in enumerate(spec["countries"]):
        if not isinstance(country, dict) or not isinstance(country.get("id"), str) \
                or not isinstance(country.get("name"), str) or not isinstance(country.get("in_text", ""), str):
            fail(f"countries[{i}] is {country!r}; each country is an object with text fields id and name "
                 '(and optionally in_text), e.g. {"id": "uk", "name": "UK"}')
    if not all(isinstance(t, str) for t in spec["targets"]):
        fail("targets must list country ids as text, e.g. [\"uk\", \"usa\"]")
    for key, fields, slots in (("passages", ("text", "topic", "question"), CRC_SLOTS["passage text"]),
                               ("instructions", ("text", "labels"), CRC_SLOTS["instruction text"])):
        for i, entry in enumerate(spec[key]):
            if not isinstance(entry, dict) or not all(isinstance(entry.get(f), str) for f in fields):
                fail(f"{key}[{i}] must be an object with text fields {', '.join(fields)}")
            try:
                unknown = sorted(_slots(entry["text"]) - slots)
            except ValueError as err:  # an unmatched brace
                fail(f"{key}[{i}] text: {err} (write {{{{ and }}}} for a literal brace)")
            if unknown:
                fail(f"{key}[{i}] text uses the slot {{{unknown[0]}}}; a {key[:-1]} text may use "
                     + ", ".join(f"{{{s}}}" for s in sorted(slots)) + " (write {{ and }} for a literal brace)")


def crc(passages: int | None = 25, dummy_share: float | str | None = 0.4, **options) -> Any:
    """CountryRC as the CULNIG paper builds it, from ``tasks/crc/passages.json``.

    Documents: ``passages`` passages x every instruction wording of the file (the reference has
    four: two answered by letter, two by digit) x every target country (``targets``), so the
    default is 25 x 4 x 8 = 800 (the reference's neuron half of its 50 passages).  Each
    document's options are the target country plus three of the other countries of the file
    (BLEnD's 16, spelled as BLEnD writes them), in a random order; the scored continuation is
    the gold's label (``A``-``D`` or ``1``-``4``).  A passage with a ``{dummy}`` slot names a
    second country there, one of the three distractors (as the reference does), so the answer
    cannot be found by spotting the only country in the text.

    ``dummy_share`` (default 0.4, the reference's share in each half) of the passages are such
    dummy passages: the first ``round(dummy_share * passages)`` of them in file order, spread
    evenly among the first plain passages, so that any leading slice (``crc:96``: three
    passages x 4 wordings x 8 countries) is balanced too.  Every draw uses
    :func:`culnig_lm_eval.taskdata.documents.item_rng` of the file's ``seed``, the passage's index
    in the file, the wording and the country, so a document never depends on the others.
    Set both with ``--metadata '{"passages": 54, "dummy_share": 0.5}'`` or ``dataset_kwargs``.
    """
    _, path = locate("crc", options)
    try:
        spec = json.loads(read_utf8(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path} line {err.lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
    missing = [k for k in ("seed", "targets", "passages", "countries", "instructions")
               if not isinstance(spec, dict) or k not in spec]
    if missing:
        raise DataError(f"{path}: not a CountryRC spec: no {', '.join(missing)} (see tasks/crc/passages.json)")
    check_crc_spec(spec, path)
    countries = {c["id"]: c for c in spec["countries"]}
    unknown = [t for t in spec["targets"] if t not in countries]
    if unknown or len(countries) < 4:
        raise DataError(f"{path}: targets {unknown} are not among its countries, or it has fewer than 4 countries")
    count = whole_number_option("passages", passages)
    share = share_option("dummy_share", dummy_share)
    indexed = list(enumerate(spec["passages"]))
    with_dummy = [(i, p) for i, p in indexed if "{dummy}" in p["text"]]
    plain = [(i, p) for i, p in indexed if "{dummy}" not in p["text"]]
    count = len(indexed) if count is None else count
    n_dummy = round(share * count)
    if not 0 < count <= len(indexed) or n_dummy > len(with_dummy) or count - n_dummy > len(plain):
        raise ValueError(f"crc: {count} passages with dummy_share {share} need {n_dummy} dummy and {count - n_dummy} "
                         f"plain passages; {path} has {len(with_dummy)} and {len(plain)}")
    chosen, dummies, plains = [], iter(with_dummy[:n_dummy]), iter(plain[:count - n_dummy])
    for k in range(count):  # dummy where the running share steps up: even spread over any prefix
        chosen.append(next(dummies) if (k + 1) * n_dummy // count > k * n_dummy // count else next(plains))

    def in_text(country: dict) -> str:
        return country.get("in_text", country["name"])

    docs = []
    for i, passage in chosen:
        for variant, instruction in enumerate(spec["instructions"], start=1):
            labels = option_labels(instruction["labels"], 4)
            for target in spec["targets"]:
                country = countries[target]
                rng = item_rng(spec["seed"], i, variant, target)
                distractors = rng.sample([c for cid, c in countries.items() if cid != target], 3)
                dummy = rng.choice(distractors) if "{dummy}" in passage["text"] else None
                choices = distractors + [country]
                rng.shuffle(choices)
                text = passage["text"].format(country=in_text(country), **({"dummy": in_text(dummy)} if dummy else {}))
                docs.append({
                    "id": f"crc-{i:03d}-{variant}-{target}",
                    "culture": target,
                    "topic": passage["topic"],
                    "variant": variant,
                    "passage": text,
                    "question": passage["question"],
                    "dummy": dummy["name"] if dummy else "",
                    "options": [c["name"] for c in choices],
                    "labels": labels,
                    "gold": choices.index(country),
                    "prompt": instruction["text"].format(passage=text, question=passage["question"],
                                                         options=option_lines([c["name"] for c in choices], labels)),
                })
    return as_splits(docs, f"CountryRC from {path}")


# -------------------------------------------------------------------------------------- NormAd


def normad(**options) -> Any:
    """NormAd stories, with ``culture``, ``topic`` (the Axis), ``country_name`` and ``label`` in yes/no/neutral."""
    docs, skipped = [], 0
    for _, _, row in located_rows(load_rows("normad", options)):
        label = str(row["Gold Label"]).strip().lower().replace("neither", "neutral")
        if label not in {"yes", "no", "neutral"}:
            skipped += 1
            continue
        docs.append({
            **{col: as_text(v) for col, v in row.items()},
            "culture": culture_id(row["Country"]),
            "topic": as_text(row.get("Axis")) or "unknown",
            "country_name": display_name(row["Country"]),
            "label": label,
        })
    if skipped:
        log.warning("NormAd: skipped %d rows whose Gold Label is not yes/no/neutral", skipped)
    return as_splits(docs, "NormAd")


# ------------------------------------------------------------------------------- CulturalBench


def culturalbench(**options) -> Any:
    """CulturalBench-Easy questions, with ``culture``, ``topic`` ("unknown") and ``gold`` (index of ``answer``)."""
    docs = [
        {
            **{col: as_text(v) for col, v in row.items()},
            "culture": culture_id(row["country"]),
            "topic": "unknown",
            "gold": gold_index(row["answer"], ["A", "B", "C", "D"], part, index, "answer"),
        }
        for part, index, row in located_rows(load_rows("culturalbench", options))
    ]
    return as_splits(docs, "CulturalBench")
