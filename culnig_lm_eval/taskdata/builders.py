"""Documents for the harness tasks in ``tasks/``: one way to find data, one builder per dataset.

Every task YAML names one of the builders below as ``custom_dataset``; lm-eval calls it as
``builder(**metadata, **dataset_kwargs)`` and it returns ``DatasetDict({"test": ...})``.  Every
document carries ``culture`` (a canonical lowercase id, see :func:`culture_id`) and ``topic``;
multiple-choice documents whose gold is not a fixed label carry ``gold`` (an int index into
the task's choices), so lm-eval's ordinary request building yields the gold request.

Where the rows come from (:func:`load_rows`, shared by every dataset), first match wins:

1. a local file (or folder) named by ``--metadata '{"<key>": "/path"}'``;
2. the same, named by the environment variable ``CULNIG_<KEY>`` (e.g. ``CULNIG_BLEND_MCQ``);
3. ``CULNIG_DATA`` (or ``--metadata '{"culnig_data": ...}'``): ``hub`` loads the official
   dataset with ``datasets.load_dataset``; ``sample`` the small fixture shipped in ``tasks/``;
   ``auto`` (default) the hub unless ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` is set or the hub
   does not answer an HTTPS request within ``CULNIG_HUB_TIMEOUT`` seconds (default 2; checked
   once per process, see :func:`hub_reachable`), in which case the sample, with one loud
   warning per dataset.

Local files: ``.csv``/``.tsv`` (read as text), ``.jsonl``, ``.json`` (a list of rows) or
``.parquet``; a folder means every such file in it, one part per file stem.

A file that cannot serve as its dataset (not UTF-8, not parseable, no rows, a required column
missing, a BLEnD row whose choices or answer make no sense) raises :class:`DataError` (a
``ValueError``) naming the file, the row where one is at fault, and what to do.  The builders
run while lm-eval loads the tasks, so ``culnig-score``/``culnig-experiment`` stop with that one
line before any model is loaded.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import os
import random
import re
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from .._startup import task_dir

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data file (or hub split) that cannot serve as its dataset; the message names the file and row."""


# ------------------------------------------------------------------------------------ cultures

# Canonical id -> spellings used by BLEnD (names, file prefixes and hub split codes), NormAd and
# CulturalBench.  Anything else maps to its own lower_snake_case name ("Saudi Arabia" -> "saudi_arabia").
CULTURE_ALIASES: dict[str, tuple[str, ...]] = {
    "china": ("CN", "China", "PRC", "People's Republic of China", "Mainland China"),
    "indonesia": ("ID", "Indonesia"),
    "iran": ("IR", "Iran", "Islamic Republic of Iran", "Persia"),
    "mexico": ("MX", "Mexico", "México"),
    "korea": ("KR", "South Korea", "Korea", "Republic of Korea", "Korea, Republic of", "ROK"),
    "spain": ("ES", "Spain", "España"),
    "uk": ("GB", "UK", "U.K.", "United Kingdom", "Great Britain", "Britain"),
    "usa": ("US", "USA", "U.S.", "U.S.A.", "United States", "United States of America", "America"),
    "north_korea": ("KP", "North Korea", "DPRK", "Democratic People's Republic of Korea"),
    "greece": ("GR", "Greece"),
    "algeria": ("DZ", "Algeria"),
    "azerbaijan": ("AZ", "Azerbaijan"),
    "ethiopia": ("ET", "Ethiopia"),
    "assam": ("AS", "Assam"),
    "west_java": ("JB", "West Java"),
    "northern_nigeria": ("NG", "Northern Nigeria"),
}


def _spelling(name: Any) -> str:
    text = re.sub(r"[.'\u2019]", "", str(name)).lower()
    return " ".join(re.findall(r"[^\W_]+", text))


@lru_cache(maxsize=1)
def _alias_table() -> dict[str, str]:
    return {_spelling(a): cid for cid, aliases in CULTURE_ALIASES.items() for a in (cid, *aliases)}


def culture_id(name: Any) -> str:
    """Canonical lowercase culture id of a country string: 'South_Korea', 'KR' -> 'korea'; 'US' -> 'usa'."""
    key = _spelling(name or "")
    return _alias_table().get(key) or key.replace(" ", "_") or "unknown"


# ------------------------------------------------------------------------------- where data is


@dataclass(frozen=True)
class Source:
    """A dataset: the ``datasets.load_dataset`` arguments of its official copy, and its sample."""

    key: str  # metadata key; the environment variable is CULNIG_<KEY>
    hub: dict[str, str] | None  # None: no hub copy, the shipped file is the data
    sample: str  # relative to the task folder
    columns: tuple[str, ...] = ()  # every row must have these (checked when the data is read)


SOURCES = {
    s.key: s
    for s in (
        Source("blend_mcq", {"path": "nayeon212/BLEnD", "name": "multiple-choice-questions", "split": "test"},
               "blend/sample/mc_questions.csv", ("MCQID", "ID", "country", "prompt", "choices", "answer_idx")),
        # every split (one per country) at once; split names go through culture_id()
        Source("blend_questions", {"path": "nayeon212/BLEnD", "name": "short-answer-questions"},
               "blend/sample/questions", ("ID", "Topic")),
        Source("normad", {"path": "akhilayerukola/NormAd", "split": "train"}, "cultural_norm/sample/normad.csv",
               ("Country", "Story", "Gold Label")),
        Source("culturalbench", {"path": "kellycyy/CulturalBench", "name": "CulturalBench-Easy", "split": "test"},
               "culturalbench/sample/culturalbench.csv",
               ("country", "prompt_question", "prompt_option_a", "prompt_option_b", "prompt_option_c",
                "prompt_option_d", "answer")),
        Source("crc", None, "crc/passages.json"),
        # WorldValuesBench: a folder (question_metadata.json, full/*.tsv); no hub copy exists, see culnig_lm_eval/taskdata/wvb.py
        Source("wvb", None, "wvb/sample"),
        # general NLU sets of the prompt-variant tasks (builders in culnig_lm_eval/taskdata/prompt_variants.py)
        Source("qnli", {"path": "nyu-mll/glue", "name": "qnli", "split": "validation"},
               "qnli_culnig/sample/qnli.jsonl", ("question", "sentence", "label")),
        Source("mrpc", {"path": "nyu-mll/glue", "name": "mrpc", "split": "test"},
               "mrpc_culnig/sample/mrpc.jsonl", ("sentence1", "sentence2", "label")),
        Source("commonsense_qa", {"path": "tau/commonsense_qa", "split": "validation"},
               "commonsense_qa_culnig/sample/commonsense_qa.jsonl", ("question", "choices", "answerKey")),
    )
}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """False when offline mode is set or the hub does not answer an HTTPS HEAD within CULNIG_HUB_TIMEOUT s.

    Any HTTP answer counts (proxies from the environment apply, certificates are checked); no
    DNS, a refused or swallowed connection, or a TLS failure does not.  Checked once per process.
    """
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("HF_DATASETS_OFFLINE")):
        return False
    url = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    timeout = float(os.environ.get("CULNIG_HUB_TIMEOUT", "2"))
    verdict: list[bool] = []

    def probe():  # in a thread, so that a hanging DNS lookup cannot outlast the timeout either
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            verdict.append(True)
        except urllib.error.HTTPError:  # the hub answered, if only to refuse
            verdict.append(True)
        except (OSError, ValueError):
            verdict.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(verdict and verdict[0])


_warned_sample: set[str] = set()


def locate(key: str, options: dict[str, Any]) -> tuple[str, Path | None]:
    """("file", path) for an explicit file, ("sample", path) for the shipped fixture, or ("hub", None)."""
    source = SOURCES[key]
    override = options.get(key) or os.environ.get(f"CULNIG_{key.upper()}")
    if override:
        path = Path(str(override)).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{key}: {path} does not exist (from --metadata {key} or CULNIG_{key.upper()})")
        return "file", path
    mode = str(options.get("culnig_data") or os.environ.get("CULNIG_DATA") or "auto").lower()
    if mode not in {"auto", "hub", "sample"}:
        raise ValueError(f"CULNIG_DATA must be auto, hub or sample, not {mode!r}")
    sample = task_dir() / source.sample
    if source.hub is None or mode == "sample":
        return "sample", sample
    if mode == "hub" or hub_reachable():
        return "hub", None
    if key not in _warned_sample:
        _warned_sample.add(key)
        log.warning(
            "\n%s\nCULNIG WARNING: the Hugging Face hub is offline or unreachable, so '%s' is read from the\n"
            "SMALL SAMPLE shipped in %s -- these results are NOT benchmark numbers.\n"
            "Point at the real data with CULNIG_%s=/path (a file, or a folder of files; or --metadata '{\"%s\": \"/path\"}'),\n"
            "or get the hub (`datasets.load_dataset(%s)`) with CULNIG_DATA=hub. CULNIG_DATA=sample silences this.\n%s",
            "=" * 100, key, sample, key.upper(), key,
            ", ".join(f"{k}={v!r}" for k, v in source.hub.items()), "=" * 100,
        )
    return "sample", sample


def load_rows(key: str, options: dict[str, Any]) -> dict[str, "Part"]:
    """The rows of dataset ``key`` as {part: rows}; parts are hub splits or local file stems.

    Every part is a :class:`Part` (a list of row dicts that knows its file); each has rows and
    every column of ``SOURCES[key].columns``, or :class:`DataError` says which file does not.
    """
    kind, path = locate(key, options)
    return _read(key, kind, str(path) if path else "")


class Part(list):
    """The rows of one file or hub split, with where they came from (for error messages)."""

    def __init__(self, rows: Iterable[dict], source: str, columns: Iterable[str] | None = None,
                 lines: list[int] | None = None, line_rows: bool = False):
        super().__init__(rows)
        self.source = source  # the file's path, or "hub <path> (<name>) split <split>"
        self.columns = list(columns) if columns is not None else None  # header / schema; None: per row
        self.lines = lines  # line in the file where each row starts (CSV, JSONL)
        self.line_rows = line_rows  # one row per line (JSONL): name the line only

    def where(self, index: int) -> str:
        """'<file> row 3 (line 7)': where row ``index`` (0-based) is, for an error message."""
        if self.lines is None:
            return f"{self.source} row {index + 1}"
        if self.line_rows:
            return f"{self.source} line {self.lines[index]}"
        return f"{self.source} row {index + 1} (line {self.lines[index]})"


@lru_cache(maxsize=32)
def _read(key: str, kind: str, path: str) -> dict[str, Part]:
    if kind == "hub":
        import datasets

        hub = SOURCES[key].hub
        label = "hub " + hub["path"] + (f" ({hub['name']})" if hub.get("name") else "")
        loaded = datasets.load_dataset(**hub)
        if isinstance(loaded, datasets.Dataset):
            loaded = {str(loaded.split or hub.get("split", "data")): loaded}
        parts = {str(name): Part(split.to_list(), f"{label} split {name}", split.column_names)
                 for name, split in loaded.items()}
    else:
        p = Path(path)
        files = sorted(f for f in p.iterdir() if f.suffix in _READERS) if p.is_dir() else [p]
        if not files or files[0].suffix not in _READERS:
            raise DataError(f"{key}: {p} is not, or holds no, {'/'.join(_READERS)} file")
        log.info("%s: reading %s", key, p)
        parts = {f.stem: _READERS[f.suffix](f) for f in files}
        for part in parts.values():
            if not part:
                raise DataError(f"{part.source}: no rows ({key} needs at least one); point at the full data file"
                                + (", or remove this file from the folder" if p.is_dir() else ""))
    for part in parts.values():
        _check_columns(key, part)
    return parts


def _check_columns(key: str, part: Part) -> None:
    need = SOURCES[key].columns
    if part.columns is not None:
        missing = [c for c in need if c not in part.columns]
        if missing:
            raise DataError(f"{part.source}: missing column(s) {', '.join(missing)} (it has: "
                            f"{', '.join(map(str, part.columns)) or 'none'}); {key} needs {', '.join(need)}")
    csv_part = part.lines is not None and not part.line_rows
    for i, row in enumerate(part):
        missing = [c for c in need if row.get(c) is None]
        if missing:
            what = (f"fewer fields than the header, so no {', '.join(missing)} (check the quoting)" if csv_part
                    else f"no value for {', '.join(missing)}")
            raise DataError(f"{part.where(i)}: {what}; {key} needs {', '.join(need)} in every row")


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}); "
                        f"save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`") from None


def _read_csv(path: Path) -> Part:
    import io

    reader = csv.DictReader(io.StringIO(_decode(path), newline=""), delimiter="\t" if path.suffix == ".tsv" else ",")
    rows, lines = [], []
    try:
        header = reader.fieldnames  # reads the header line
        if header is None:
            raise DataError(f"{path}: empty file (no header, no rows); point at the full data file")
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            if None in row:  # more fields than the header
                raise DataError(f"{path} row {len(rows) + 1} (line {start}): more fields than the header "
                                f"({len(header)}); check the quoting of fields that contain commas")
            rows.append(row)
            lines.append(start)
    except csv.Error as err:
        raise DataError(f"{path} line {reader.line_num}: not readable as CSV ({err}); "
                        "check the quoting, or that the file is a UTF-8 text CSV") from None
    return Part(rows, str(path), header, lines)


def _read_jsonl(path: Path) -> Part:
    rows, lines = [], []
    for number, line in enumerate(_decode(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {number}: not valid JSON ({err.msg} at column {err.colno}); "
                            "a .jsonl file holds one JSON object per line") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {number}: a {type(row).__name__}, not a JSON object; "
                            "a .jsonl file holds one JSON object per line")
        rows.append(row)
        lines.append(number)
    return Part(rows, str(path), lines=lines, line_rows=True)


def _read_json(path: Path) -> Part:
    try:
        data = json.loads(_decode(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path} line {err.lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f'{path}: expected a JSON list of row objects (or {{"data": [...]}}), found a {type(data).__name__}')
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path} row {i + 1}: a {type(row).__name__}, not a JSON object; rows must be objects")
    return Part(data, str(path))


def _read_parquet(path: Path) -> Part:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises its own error classes for a damaged or foreign file
        raise DataError(f"{path}: not readable as Parquet ({' '.join(str(err).split())})") from None
    return Part(table.to_pylist(), str(path), table.column_names)


_READERS = {".csv": _read_csv, ".tsv": _read_csv, ".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}


def _located(parts: dict[str, Part]) -> Iterable[tuple[Part, int, dict]]:
    """(part, index, row) for every row: ``part.where(index)`` names the row in an error message."""
    for part in parts.values():
        for index, row in enumerate(part):
            yield part, index, row


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _as_splits(docs: list[dict], what: str):
    import datasets

    if not docs:
        raise DataError(f"no documents for {what}: check the culture and topics, and the data file it read "
                        "(CULNIG_DATA / CULNIG_<KEY> / --metadata)")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def _wanted(value: str | Iterable[str] | None) -> set[str] | None:
    if value is None:
        return None
    return {value} if isinstance(value, str) else set(value)


def _topic_key(topic: str) -> str:
    return " ".join(str(topic).lower().split())


def _gold(answer: Any, letters: list[str], part: Part, index: int, column: str) -> int:
    """Index of the gold answer: a letter ('B') or an int / digit string (0-based index into ``letters``)."""
    text = str(answer).strip()
    if isinstance(answer, int) and not isinstance(answer, bool) or text.isdigit():
        if 0 <= int(text) < len(letters):
            return int(text)
    elif text.upper() in letters:
        return letters.index(text.upper())
    raise DataError(f"{part.where(index)}: {column} {answer!r} is neither one of the choice letters "
                    f"{', '.join(letters)} nor a 0-based index below {len(letters)}; fix or remove the row")


def _whole_number(name: str, value: Any) -> int | None:
    """A builder option that is a whole number >= 0, or None (from YAML, --metadata JSON, or a string)."""
    if value is None:
        return None
    if isinstance(value, bool) or not re.fullmatch(r"\s*\d+\s*", str(value)):
        raise ValueError(f"{name} must be a whole number >= 0 or null, not {value!r} "
                         f"(set it with --metadata '{{\"{name}\": 5}}' or the task's dataset_kwargs)")
    return int(value)


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
    cap = _whole_number("per_question", per_question)
    seed = _whole_number("sample_seed", sample_seed)
    items, skipped = [], 0
    for part, index, row in _located(load_rows("blend_mcq", options)):
        cid = culture_id(row["country"])
        if cultures and cid not in cultures:
            continue
        choices = _choices(row["choices"], part, index)
        letters = sorted(choices)
        gold = _gold(row["answer_idx"], letters, part, index, "answer_idx")
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
            **{col: _text(row.get(col)) for col in ("MCQID", "ID", "country", "prompt", "choices", "choice_countries", "answer_idx")},
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
    return _as_splits(docs, f"BLEnD culture={culture} topics={topics}")


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
    :func:`culnig_lm_eval.taskdata.prompt_variants.item_rng` of the file's ``seed``, the passage's index
    in the file, the wording and the country, so a document never depends on the others.
    Set both with ``--metadata '{"passages": 54, "dummy_share": 0.5}'`` or ``dataset_kwargs``.
    """
    from .prompt_variants import item_rng, option_labels, option_lines

    _, path = locate("crc", options)
    try:
        spec = json.loads(_decode(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path} line {err.lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
    missing = [k for k in ("seed", "targets", "passages", "countries", "instructions")
               if not isinstance(spec, dict) or k not in spec]
    if missing:
        raise DataError(f"{path}: not a CountryRC spec: no {', '.join(missing)} (see tasks/crc/passages.json)")
    countries = {c["id"]: c for c in spec["countries"]}
    unknown = [t for t in spec["targets"] if t not in countries]
    if unknown or len(countries) < 4:
        raise DataError(f"{path}: targets {unknown} are not among its countries, or it has fewer than 4 countries")
    count = _whole_number("passages", passages)
    share = _share("dummy_share", dummy_share)
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
    return _as_splits(docs, f"CountryRC from {path}")


def _share(name: str, value: Any) -> float:
    """A builder option that is a fraction in [0, 1] (from YAML, --metadata JSON, or a string)."""
    try:
        share = float(value)
    except (TypeError, ValueError):
        share = float("nan")
    if isinstance(value, bool) or not 0.0 <= share <= 1.0:  # NaN fails the comparison too
        raise ValueError(f"{name} must be a number from 0 to 1, not {value!r} "
                         f"(set it with --metadata '{{\"{name}\": 0.4}}' or the task's dataset_kwargs)")
    return share


# -------------------------------------------------------------------------------------- NormAd


def normad(**options) -> Any:
    """NormAd stories, with ``culture``, ``topic`` (the Axis), ``country_name`` and ``label`` in yes/no/neutral."""
    docs, skipped = [], 0
    for _, _, row in _located(load_rows("normad", options)):
        label = str(row["Gold Label"]).strip().lower().replace("neither", "neutral")
        if label not in {"yes", "no", "neutral"}:
            skipped += 1
            continue
        docs.append({
            **{col: _text(v) for col, v in row.items()},
            "culture": culture_id(row["Country"]),
            "topic": _text(row.get("Axis")) or "unknown",
            "country_name": _display(row["Country"]),
            "label": label,
        })
    if skipped:
        log.warning("NormAd: skipped %d rows whose Gold Label is not yes/no/neutral", skipped)
    return _as_splits(docs, "NormAd")


def _display(country: str) -> str:
    """'united_kingdom' -> 'United Kingdom'; names with capitals are kept."""
    if country != country.lower():
        return country.replace("_", " ")
    return " ".join(w if w in {"of", "and", "the"} else w.capitalize() for w in re.split(r"[_\s]+", country.strip()))


# ------------------------------------------------------------------------------- CulturalBench


def culturalbench(**options) -> Any:
    """CulturalBench-Easy questions, with ``culture``, ``topic`` ("unknown") and ``gold`` (index of ``answer``)."""
    docs = [
        {
            **{col: _text(v) for col, v in row.items()},
            "culture": culture_id(row["country"]),
            "topic": "unknown",
            "gold": _gold(row["answer"], ["A", "B", "C", "D"], part, index, "answer"),
        }
        for part, index, row in _located(load_rows("culturalbench", options))
    ]
    return _as_splits(docs, "CulturalBench")


# ------------------------------------------------------------------------------- provenance

# builder -> the datasets it reads (so a task's documents can be traced to files)
BUILDER_SOURCES = {"blend": ("blend_mcq", "blend_questions"), "crc": ("crc",), "normad": ("normad",),
                   "culturalbench": ("culturalbench",), "wvb": ("wvb",),  # culnig_lm_eval.taskdata.wvb
                   # culnig_lm_eval.taskdata.prompt_variants
                   "normad_prompt": ("normad",), "culturalbench_prompt": ("culturalbench",),
                   "blend_prompt": ("blend_mcq", "blend_questions"), "qnli_prompt": ("qnli",),
                   "mrpc_prompt": ("mrpc",), "commonsense_qa_prompt": ("commonsense_qa",)}


def describe_source(key: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where dataset ``key`` is read from now: {"kind": "file"|"sample"|"hub", "path", "sha256"}
    (a folder's sha256 covers its data files' names and contents; the hub gives its dataset id)."""
    from .._io import file_sha256

    kind, path = locate(key, dict(options or {}))
    if kind == "hub":
        return {"kind": "hub", "dataset": dict(SOURCES[key].hub or {})}
    if path.is_dir():
        import hashlib

        digest = hashlib.sha256()
        for f in sorted(p for p in path.iterdir() if p.suffix in _READERS):
            digest.update(f"{f.name}\0{file_sha256(f)}\n".encode())
        sha = digest.hexdigest()
    else:
        sha = file_sha256(path)
    return {"kind": kind, "path": str(path), "sha256": sha}


def task_sources(task) -> dict[str, dict[str, Any]]:
    """{dataset key: :func:`describe_source`} for a harness task built by one of this module's
    builders (empty for any other task); the task's ``--metadata`` options are honoured."""
    builder = getattr(getattr(task, "config", None), "custom_dataset", None)
    keys = BUILDER_SOURCES.get(getattr(builder, "__name__", ""), ())
    options = dict(getattr(task.config, "metadata", None) or {})
    return {key: describe_source(key, options) for key in keys}
