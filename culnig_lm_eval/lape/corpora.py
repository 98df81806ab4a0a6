"""Text corpora for LAPE: read them, split record / evaluation, cut them into token rows.

A *corpus* is a named list of documents.  Two ways in:

* :func:`read_corpus_folder` reads the layout of the LAPE reference code, ``<root>/<name>/*.txt``:
  one corpus per sub-folder, every non-empty line a document (files in name order).
* :func:`blend_annotation_corpora` builds corpora from BLEnD's official annotation files
  (``<Country>_data.json``: per question the question in the country's language and in
  English, and the annotators' answers in both).  Per country it gives an English *culture*
  corpus (the English question and its English answers) and a *native* corpus (the question
  and answers in the country's language).  UK and US share English and Spain and Mexico share
  Spanish, so culture can be separated from language inside one language.

:func:`culnig_lm_eval.lape.harness.write_corpora` writes corpora back in this folder layout.  The
record / evaluation split is by question (or line) and keyed on a hash of its id, so it is the
same on every machine and never lets a question's text reach both sides.

:func:`token_rows` turns a corpus into fixed-length rows the way the reference feeds text (one
flat token stream, documents joined by a newline, cut into rows), with two fixes: every row of
every corpus starts with the tokenizer's BOS token when it has one (the reference put a BOS per
article on language corpora and none on culture corpora), and documents are joined with a
separator (the reference glued lines together).  The BOS position is never counted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._io import file_sha256, safe_name
from ..checks import number_in
from ..cultures import culture_id

MANIFEST = "manifest.json"

# The language of each BLEnD country's native annotations (ISO 639-1); the culture -> languages
# mapping of the demo.  UK and US annotate in English, so their native corpus is English.
BLEND_LANGUAGES: dict[str, str] = {
    "china": "zh",
    "indonesia": "id",
    "iran": "fa",
    "korea": "ko",
    "mexico": "es",
    "spain": "es",
    "uk": "en",
    "usa": "en",
}


class CorpusError(ValueError):
    """A corpus folder or annotation file is missing, empty or malformed (the message names it)."""


@dataclass
class Corpus:
    name: str
    documents: list[str]
    sources: list[dict] = field(default_factory=list)  # {"path": str, "sha256": str}

    def __post_init__(self):
        safe_name(self.name, "corpus name")


def in_evaluation_split(key: str, eval_fraction: float) -> bool:
    """Deterministic split on a hash of ``key`` (a question id): the same everywhere."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction


# -- reading ------------------------------------------------------------------------------------
def read_corpus_folder(root: str | Path) -> list[Corpus]:
    """``root/<name>/*.txt`` -> one corpus per sub-folder (sorted by name); lines are documents."""
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"corpus folder {root} does not exist; give a folder with one sub-folder of .txt files per corpus")
    corpora = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = safe_name(folder.name, f"corpus folder {folder}:")
        files = sorted(folder.glob("*.txt"))
        docs, sources = [], []
        for path in files:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as err:
                raise CorpusError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
            docs += [line.strip() for line in text.splitlines() if line.strip()]
            sources.append({"path": str(path), "sha256": file_sha256(path)})
        if not docs:
            raise CorpusError(f"corpus {folder} holds no text (no non-empty line in any .txt file)")
        corpora.append(Corpus(name, docs, sources))
    if len(corpora) < 2:
        raise CorpusError(f"corpus folder {root} holds {len(corpora)} corpus sub-folder(s); LAPE compares at least 2")
    return corpora


def _annotation_files(folder: Path) -> dict[str, Path]:
    files = {}
    for path in sorted(folder.glob("*_data.json")):
        files[culture_id(path.name[: -len("_data.json")])] = path
    if not files:
        raise CorpusError(f"{folder}: no BLEnD annotation files (<Country>_data.json); "
                          "give the folder 'data/annotations' of the BLEnD release")
    return files


def _answers(entry: dict, key: str, path: Path, qid: str) -> list[str]:
    annotations = entry.get("annotations")
    if not isinstance(annotations, list):
        raise CorpusError(f"{path} question {qid}: 'annotations' is not a list (not a BLEnD annotation file?)")
    seen, out = set(), []
    for a in annotations:
        values = a.get(key) if isinstance(a, dict) else None
        if not isinstance(values, list):
            raise CorpusError(f"{path} question {qid}: an annotation has no list {key!r}")
        for v in values:
            text = " ".join(str(v).split())
            if text and text.lower() not in seen:
                seen.add(text.lower())
                out.append(text)
    return out


def _document(question: str, answers: list[str]) -> str:
    question = " ".join(str(question).split())
    return f"{question} {', '.join(answers)}." if answers else question


def blend_annotation_corpora(folder: str | Path, cultures: list[str] | None = None, eval_fraction: float = 0.2,
                             ) -> dict[str, dict[str, list[Corpus]]]:
    """BLEnD annotations -> ``{"culture": {"record": [...], "eval": [...]}, "native": {...}}``.

    ``culture`` corpora are English (``en_question`` + ``en_answers``), one per country;
    ``native`` corpora are in the country's language (``question`` + ``answers``).  Questions
    are split between recording and evaluation by a hash of their id (``eval_fraction``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CorpusError(f"BLEnD annotation folder {folder} does not exist; give the folder holding <Country>_data.json")
    fraction = number_in(eval_fraction, f"--eval-fraction {eval_fraction}", low=0, high=1, low_open=True, high_open=True)
    files = _annotation_files(folder)
    wanted = [culture_id(c) for c in cultures] if cultures else sorted(files)
    missing = [c for c in wanted if c not in files]
    if missing:
        raise CorpusError(f"{folder}: no annotation file for {', '.join(missing)} (found: {', '.join(sorted(files))})")
    out = {kind: {"record": [], "eval": []} for kind in ("culture", "native")}
    for culture in wanted:
        path = files[culture]
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorpusError(f"{path}: not a JSON file ({err}); expected a BLEnD <Country>_data.json") from None
        if not isinstance(data, dict) or not data:
            raise CorpusError(f"{path}: expected a JSON object of question id -> annotation entry")
        docs = {kind: {"record": [], "eval": []} for kind in out}
        for qid, entry in data.items():
            if not isinstance(entry, dict) or "en_question" not in entry or "question" not in entry:
                raise CorpusError(f"{path} question {qid}: needs 'question' and 'en_question' (BLEnD annotation schema)")
            side = "eval" if in_evaluation_split(str(qid), fraction) else "record"
            docs["culture"][side].append(_document(entry["en_question"], _answers(entry, "en_answers", path, qid)))
            docs["native"][side].append(_document(entry["question"], _answers(entry, "answers", path, qid)))
        source = [{"path": str(path), "sha256": file_sha256(path)}]
        for kind in out:
            for side in ("record", "eval"):
                if not docs[kind][side]:
                    raise CorpusError(f"{path}: too few questions for a {side} split of {fraction}")
                out[kind][side].append(Corpus(culture, docs[kind][side], source))
    return out


def language_corpora(native: list[Corpus], languages: dict[str, str]) -> list[Corpus]:
    """Native corpora grouped by language: ``uk`` + ``usa`` -> ``en``, ``spain`` + ``mexico`` -> ``es``."""
    grouped: dict[str, Corpus] = {}
    for corpus in native:
        lang = languages.get(corpus.name)
        if lang is None:
            raise ValueError(f"no language given for culture {corpus.name!r}; add {corpus.name}=<language> to --culture-languages")
        target = grouped.setdefault(lang, Corpus(safe_name(lang, "language"), [], []))
        target.documents += corpus.documents
        target.sources += corpus.sources
    return [grouped[k] for k in sorted(grouped)]


def parse_languages(text: str | None) -> dict[str, str]:
    """``uk=en,usa=en,spain=es`` -> mapping (culture ids canonicalised); None -> the BLEnD default."""
    if not text:
        return dict(BLEND_LANGUAGES)
    mapping = {}
    for item in text.split(","):
        culture, sep, lang = item.partition("=")
        if not sep or not culture.strip() or not lang.strip():
            raise ValueError(f"--culture-languages {text!r}: write culture=language pairs joined by commas, e.g. uk=en,spain=es")
        mapping[culture_id(culture.strip())] = safe_name(lang.strip(), "language")
    return mapping


# -- token rows ---------------------------------------------------------------------------------
@dataclass
class TokenRows:
    """A corpus as fixed-length rows: ids, attention (real tokens) and which positions count."""

    input_ids: torch.Tensor  # [R, T]
    attention_mask: torch.Tensor  # [R, T] 1 = real token (BOS included), 0 = padding
    count_mask: torch.Tensor  # [R, T] bool: real text tokens (BOS and padding excluded)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batches(self, batch_size: int):
        for start in range(0, len(self), batch_size):
            sl = slice(start, start + batch_size)
            yield {"input_ids": self.input_ids[sl], "attention_mask": self.attention_mask[sl],
                   "count_mask": self.count_mask[sl]}

    def shard(self, rank: int, world: int) -> "TokenRows":
        """Every ``world``-th row from ``rank``: one process's share of a data-parallel run."""
        sl = slice(rank, None, world)
        return TokenRows(self.input_ids[sl], self.attention_mask[sl], self.count_mask[sl])

    @property
    def tokens(self) -> int:
        return int(self.count_mask.sum())


def token_rows(tokenizer, documents: list[str], row_length: int = 128, *, max_tokens: int | None = None,
               drop_partial: bool = False) -> TokenRows:
    """One flat stream (documents joined by a newline) cut into rows, each led by BOS when the tokenizer has one."""
    if row_length < 2:
        raise ValueError(f"--row-length {row_length}: give at least 2 tokens per row")
    stream = tokenizer("\n".join(documents), add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        stream = stream[:max_tokens]
    bos = tokenizer.bos_token_id
    body = row_length - (bos is not None)
    chunks = [stream[i: i + body] for i in range(0, len(stream), body)]
    if drop_partial and len(chunks) > 1 and len(chunks[-1]) < body:
        chunks.pop()
    if not chunks:
        raise ValueError("a corpus gave no tokens")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids = torch.full((len(chunks), row_length), pad, dtype=torch.long)
    attention = torch.zeros((len(chunks), row_length), dtype=torch.long)
    lead = [bos] if bos is not None else []
    for r, chunk in enumerate(chunks):
        row = lead + chunk
        ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[r, : len(row)] = 1
    count = attention.bool().clone()
    if bos is not None:
        count[:, 0] = False
    return TokenRows(ids, attention, count)
