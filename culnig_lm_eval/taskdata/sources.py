"""Where a dataset's rows come from, read with their provenance: one way for every dataset.

:func:`load_rows` returns a dataset's rows; first match wins:

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
missing) raises :class:`DataError` (a ``ValueError``) naming the file, the row where one is at
fault, and what to do.  :func:`task_sources` says which files a task's documents came from
(path and sha256), for the provenance of score tables.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from .._io import json_lines
from .._startup import task_dir

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data file (or hub split) that cannot serve as its dataset; the message names the file and row."""


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


def read_utf8(path: Path) -> str:
    """The text of ``path`` (a UTF-8 BOM dropped); anything but UTF-8 is a :class:`DataError` naming the line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}); "
                        f"save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`") from None


def _read_csv(path: Path) -> Part:
    import io

    reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""), delimiter="\t" if path.suffix == ".tsv" else ",")
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
    def refuse(number: int, err: json.JSONDecodeError):
        raise DataError(f"{path} line {number}: not valid JSON ({err.msg} at column {err.colno}); "
                        "a .jsonl file holds one JSON object per line") from None

    rows, lines = [], []
    for number, row in json_lines(read_utf8(path).splitlines(), on_bad_line=refuse):
        if not isinstance(row, dict):
            raise DataError(f"{path} line {number}: a {type(row).__name__}, not a JSON object; "
                            "a .jsonl file holds one JSON object per line")
        rows.append(row)
        lines.append(number)
    return Part(rows, str(path), lines=lines, line_rows=True)


def _read_json(path: Path) -> Part:
    try:
        data = json.loads(read_utf8(path))
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


def located_rows(parts: dict[str, Part]) -> Iterable[tuple[Part, int, dict]]:
    """(part, index, row) for every row: ``part.where(index)`` names the row in an error message."""
    for part in parts.values():
        for index, row in enumerate(part):
            yield part, index, row


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
    """{dataset key: :func:`describe_source`} for a harness task built by one of this package's
    builders (empty for any other task); the task's ``--metadata`` options are honoured."""
    builder = getattr(getattr(task, "config", None), "custom_dataset", None)
    keys = BUILDER_SOURCES.get(getattr(builder, "__name__", ""), ())
    options = dict(getattr(task.config, "metadata", None) or {})
    return {key: describe_source(key, options) for key in keys}
