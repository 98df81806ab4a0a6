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

from culnig_lm_eval._startup import task_dir

log = logging.getLogger(__name__)


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


SOURCES = {
    s.key: s
    for s in (
        Source("blend_mcq", {"path": "nayeon212/BLEnD", "name": "multiple-choice-questions", "split": "test"},
               "blend/sample/mc_questions.csv"),
        # every split (one per country) at once; split names go through culture_id()
        Source("blend_questions", {"path": "nayeon212/BLEnD", "name": "short-answer-questions"},
               "blend/sample/questions"),
        Source("normad", {"path": "akhilayerukola/NormAd", "split": "train"}, "cultural_norm/sample/normad.csv"),
        Source("culturalbench", {"path": "kellycyy/CulturalBench", "name": "CulturalBench-Easy", "split": "test"},
               "culturalbench/sample/culturalbench.csv"),
        Source("crc", None, "crc/passages.json"),
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


def load_rows(key: str, options: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The rows of dataset ``key`` as {part: rows}; parts are hub splits or local file stems."""
    kind, path = locate(key, options)
    return _read(key, kind, str(path) if path else "")


@lru_cache(maxsize=32)
def _read(key: str, kind: str, path: str) -> dict[str, list[dict[str, Any]]]:
    if kind == "hub":
        import datasets

        loaded = datasets.load_dataset(**SOURCES[key].hub)
        if isinstance(loaded, datasets.Dataset):
            return {str(loaded.split or SOURCES[key].hub.get("split", "data")): loaded.to_list()}
        return {str(name): split.to_list() for name, split in loaded.items()}
    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.suffix in _READERS) if p.is_dir() else [p]
    if not files or files[0].suffix not in _READERS:
        raise ValueError(f"{key}: {p} is not, or holds no, {'/'.join(_READERS)} file")
    log.info("%s: reading %s", key, p)
    return {f.stem: _READERS[f.suffix](f) for f in files}


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh, delimiter="\t" if path.suffix == ".tsv" else ","))


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _read_json(path: Path) -> list[dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, list) else data["data"]


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


_READERS = {".csv": _read_csv, ".tsv": _read_csv, ".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}


def _all(parts: dict[str, list[dict]]) -> Iterable[dict]:
    for rows in parts.values():
        yield from rows


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _as_splits(docs: list[dict], what: str):
    import datasets

    if not docs:
        raise ValueError(f"no documents for {what}")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def _wanted(value: str | Iterable[str] | None) -> set[str] | None:
    if value is None:
        return None
    return {value} if isinstance(value, str) else set(value)


def _topic_key(topic: str) -> str:
    return " ".join(str(topic).lower().split())


def _gold(answer: Any, letters: list[str]) -> int:
    """Index of the gold answer: a letter ('B') or an int / digit string (0-based)."""
    if isinstance(answer, int) or str(answer).strip().isdigit():
        return int(answer)
    return letters.index(str(answer).strip().upper())


# ----------------------------------------------------------------------------------- BLEnD


def blend(culture: str | list[str] | None = None, topics: list[str] | None = None, **options) -> Any:
    """BLEnD multiple-choice questions, optionally one culture and some topics.

    Adds to the official columns: ``culture``; ``topic`` (joined on ``ID`` with the
    short-answer question metadata; "unknown" when the join finds nothing); ``question`` (the bare
    question: the prompt up to " Without any explanation"); ``ctrl_prompt`` (the prompt without
    the question: instructions, options and "Answer:"); ``options`` (the four answer texts in
    letter order) and ``gold`` (index of the answer letter).
    """
    cultures = _wanted(culture)
    topic_keys = {_topic_key(t) for t in _wanted(topics) or ()}
    mcq = list(_all(load_rows("blend_mcq", options)))
    topic_of = _blend_topics(options)
    docs, seen, unjoined, unsplit, skipped = [], 0, 0, 0, 0
    for row in mcq:
        cid = culture_id(row["country"])
        if cultures and cid not in cultures:
            continue
        seen += 1
        choices = _mapping(row["choices"])
        letters = sorted(choices)
        if len(letters) != 4:
            skipped += 1
            continue
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
            "gold": _gold(row["answer_idx"], letters),
        })
    if unjoined:
        log.warning("BLEnD topic join: %d of %d items have an ID missing from the question metadata (topic 'unknown'); "
                    "set CULNIG_BLEND_QUESTIONS to the folder of the official <CODE>_questions.csv files", unjoined, seen)
    if unsplit:
        log.warning("BLEnD: %d prompts lack ' Without any explanation'; their first line was taken as the question", unsplit)
    if skipped:
        log.warning("BLEnD: skipped %d items without exactly four choices", skipped)
    return _as_splits(docs, f"BLEnD culture={culture} topics={topics}")


def _mapping(value: Any) -> dict:
    """A dict stored as itself, as JSON, or as a Python literal."""
    if isinstance(value, dict):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return ast.literal_eval(value)


def _blend_topics(options: dict[str, Any]) -> dict[Any, str]:
    """{(culture, ID): Topic} and {ID: Topic} from the per-country short-answer question tables."""
    table: dict[Any, str] = {}
    for part, rows in load_rows("blend_questions", options).items():
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


def crc(**options) -> Any:
    """CountryRC: every passage of ``tasks/crc/passages.json`` x every country in it.

    Options are the passage's country plus three others drawn without replacement, shuffled;
    the instruction wording is drawn too; each draw uses its own ``random.Random`` seeded from
    the file's ``seed``, the passage index and the country, so a document never depends on
    the order of the others.
    """
    _, path = locate("crc", options)
    spec = json.loads(path.read_text(encoding="utf-8"))
    docs = []
    for i, passage in enumerate(spec["passages"]):
        for country in spec["countries"]:
            rng = random.Random(f"{spec['seed']}:{i}:{country['id']}")
            others = [c["name"] for c in spec["countries"] if c is not country]
            options_ = rng.sample(others, 3) + [country["name"]]
            rng.shuffle(options_)
            docs.append({
                "id": f"crc-{i:03d}-{country['id']}",
                "culture": country["id"],
                "topic": passage["topic"],
                "instruction": rng.choice(spec["instructions"]),
                "passage": passage["text"].format(country=country.get("in_text", country["name"])),
                "question": passage["question"],
                "options": options_,
                "gold": options_.index(country["name"]),
            })
    return _as_splits(docs, f"CountryRC from {path}")


# -------------------------------------------------------------------------------------- NormAd


def normad(**options) -> Any:
    """NormAd stories, with ``culture``, ``topic`` (the Axis), ``country_name`` and ``label`` in yes/no/neutral."""
    docs, skipped = [], 0
    for row in _all(load_rows("normad", options)):
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
            "gold": _gold(row["answer"], ["A", "B", "C", "D"]),
        }
        for row in _all(load_rows("culturalbench", options))
    ]
    return _as_splits(docs, "CulturalBench")
