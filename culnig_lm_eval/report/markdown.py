"""Markdown of every report this package writes (the masking report, the selection study, the
LAPE intervention, the fine-tuning comparison): tables, escaped cells and code spans."""

from __future__ import annotations


def esc(text) -> str:
    """``text`` safe inside a table cell: ``|`` escaped, line breaks as spaces."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def code(text) -> str:
    """``text`` as a code span (backticks inside it dropped)."""
    return f"`{str(text).replace('`', '')}`"


def table(header: list, rows: list[list], align: str = "") -> list[str]:
    """The lines of a Markdown table: the header, the separator and one line per row, every cell
    escaped (:func:`esc`).  ``align`` has one letter per column, ``l`` or ``r`` (right-aligned
    ``---:``); columns it does not cover are left-aligned."""
    rules = ["---:" if kind == "r" else "---" for kind in align.ljust(len(header), "l")]
    out = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "".join(f"{rule}|" for rule in rules)]
    return out + ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
