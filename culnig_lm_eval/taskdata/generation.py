"""Answers by generation for the multiple-choice cultural tasks (the ``*_gen`` tasks).

The log-likelihood tasks (``blend``, ``culturalbench``, ``cultural_norm``) compare the model's
scores of the allowed answers only, so a model that no longer writes an answer label at all still
gets one.  The ``_gen`` tasks decode greedily instead and read the label out of the generated
text with :func:`parse_label`; text from which no allowed label can be read is wrong, and is
counted by the ``parse_failure`` metric (share of items whose answer could not be read).

:func:`parse_label` reads, in this order:

1. **JSON** -- if ``prefix + text`` contains ``"answer_choice"`` followed by ``:`` and an
   (optionally quoted) value, only that value is read on (up to the first ``"``, ``}`` or line
   break).  The BLEnD ``_gen`` tasks put ``{"answer_choice":"`` in front of the generation
   (``gen_prefix``, as the reference does), so ``A"}`` reads as the value ``A``.  Without the key
   the whole generated text (without the prefix) is read.
2. **digits** -- if some labels are numbers: the words of the text are its maximal runs of ASCII
   letters and digits.  The first word, if it is a digit label; otherwise the one digit label
   that occurs as a word, if exactly one distinct one does.
3. **letters** -- if some labels are letters: the same with the letter labels, matched
   case-sensitively (``a`` is an English article more often than an answer); a lower-case
   letter counts only when it is the text's only word (``b`` or ``(b)``).

Anything else -- no word, a number outside the labels, two different labels and none first --
is unparseable: ``parse_failure`` 1 and ``acc`` 0.

Leading spaces, quotes, brackets and trailing text are skipped, unlike the reference's
single-token exact match; how the two compare: ``docs/method.md``.
"""

from __future__ import annotations

import re

LETTERS = ("A", "B", "C", "D")  # BLEnD and CulturalBench answer labels
NORMAD_LABELS = ("yes", "no", "neutral")  # data.normad's gold labels, in the order of the numbered options
NORMAD_DIGITS = ("1", "2", "3")  # cultural_norm_gen's option numbers for NORMAD_LABELS
JSON_PREFIX = '{"answer_choice":"'  # BLEnD's answer format; the blend _gen tasks' gen_prefix

_JSON_VALUE = re.compile(r'"answer_choice"\s*:\s*"?([^"}\n]*)')
_WORD = re.compile(r"[A-Za-z0-9]+")


def _read_words(words: list[str], labels: list[str], case_sensitive: bool) -> str | None:
    """The first word if it is a label, else the only label occurring as a word (else None)."""
    if not labels or not words:
        return None
    key = (lambda w: w) if case_sensitive else str.lower
    by_key = {key(label): label for label in labels}
    first = by_key.get(key(words[0]))
    if first is not None:
        return first
    found = {by_key[key(w)] for w in words if key(w) in by_key}
    return found.pop() if len(found) == 1 else None


def parse_label(text: str, labels, prefix: str = "") -> str | None:
    """The label ``text`` answers with (one of ``labels``), or None when none can be read.

    ``labels`` are digit strings (``"1"``) and/or single letters (``"A"``); ``prefix`` is what
    the prompt put in front of the generation (``gen_prefix``), read together with it for the
    JSON step.  The order of the steps is in the module docstring.
    """
    labels = [str(label) for label in labels]
    bad = [label for label in labels if not (label.isdigit() or (len(label) == 1 and label.isalpha()))]
    if bad:
        raise ValueError(f"labels must be digit strings or single letters, not {bad}")
    text = "" if text is None else str(text)
    match = _JSON_VALUE.search(prefix + text)
    region = match.group(1) if match else text
    words = _WORD.findall(region)
    digit = _read_words(words, [label for label in labels if label.isdigit()], case_sensitive=True)
    if digit is not None:
        return digit
    letters = [label for label in labels if label.isalpha()]
    letter = _read_words(words, letters, case_sensitive=True)
    if letter is None and len(words) == 1:
        letter = _read_words(words, letters, case_sensitive=False)
    return letter


def score(response: str, gold: str, labels, prefix: str = "") -> dict[str, float]:
    """Per-item metrics: ``acc`` (the parsed label is ``gold``) and ``parse_failure`` (none was read)."""
    parsed = parse_label(response, labels, prefix)
    return {"acc": float(parsed is not None and parsed == str(gold)), "parse_failure": float(parsed is None)}


def _response(results) -> str:
    """lm-eval hands ``process_results`` the filtered responses of one doc: one string here."""
    if isinstance(results, (list, tuple)):
        results = results[0] if results else ""
    return "" if results is None else str(results)


# -- lm-eval ``process_results`` of the _gen tasks: (doc, [generated text]) -> per-item metrics --
def process_blend(doc: dict, results) -> dict[str, float]:
    """BLEnD: gold letter ``LETTERS[doc["gold"]]``; the generation follows ``{"answer_choice":"``."""
    return score(_response(results), LETTERS[int(doc["gold"])], LETTERS, prefix=JSON_PREFIX)


def process_culturalbench(doc: dict, results) -> dict[str, float]:
    """CulturalBench: gold letter ``LETTERS[doc["gold"]]``, generated after ``Answer:``."""
    return score(_response(results), LETTERS[int(doc["gold"])], LETTERS)


def process_normad(doc: dict, results) -> dict[str, float]:
    """NormAd: the number of the gold option (1 yes, 2 no, 3 neutral), generated after ``Answer:``."""
    return score(_response(results), NORMAD_DIGITS[NORMAD_LABELS.index(doc["label"])], NORMAD_DIGITS)


def normad_target(doc: dict) -> str:
    """``doc_to_target`` of cultural_norm_gen: the gold option's number, as the model should write it."""
    return NORMAD_DIGITS[NORMAD_LABELS.index(doc["label"])]


def letter_target(doc: dict) -> str:
    """``doc_to_target`` of the letter _gen tasks: the gold letter."""
    return LETTERS[int(doc["gold"])]
