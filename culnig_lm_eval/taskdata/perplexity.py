"""lm-eval hooks of the rolling-perplexity tasks (``general_ppl`` and the LAPE corpora's
``lape_ppl_*``): the document's text is the target, and every document gives lm-eval's
wikitext aggregation inputs, (log-likelihood, count) pairs per words and per bytes."""

from __future__ import annotations

import re
from typing import Any


def doc_to_target(doc: dict[str, Any]) -> str:
    return doc["text"]


def word_count(text: str) -> int:
    """Words as lm-eval's wikitext task counts them: runs between whitespace of the stripped text."""
    return len(re.split(r"\s+", text.strip()))


def process_results(doc: dict[str, Any], results: list[float]) -> dict[str, tuple[float, int]]:
    """``word_perplexity``, ``byte_perplexity`` and ``bits_per_byte`` inputs of one document."""
    (loglikelihood,) = results
    n_bytes = len(doc["text"].encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, word_count(doc["text"])),
        "byte_perplexity": (loglikelihood, n_bytes),
        "bits_per_byte": (loglikelihood, n_bytes),
    }
