"""Documents for the ``general_ppl`` tasks: original, culture-neutral English prose.

The text files live next to this module (``tasks/general_ppl/`` in a checkout,
``culnig_lm_eval/tasks/general_ppl/`` inside the wheel), so they are found relative to
``__file__`` and never downloaded.

File format: each document starts with a marker line ``=== <register>`` where register is one
of ``REGISTERS``; everything up to the next marker line (blank lines trimmed) is the document
text.  The marker never appears in ``doc["text"]``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from culnig_lm_eval.taskdata.perplexity import doc_to_target, process_results  # noqa: F401 (the tasks' hooks)

HERE = Path(__file__).resolve().parent

REGISTERS = ("instructions", "narrative", "explanation", "correspondence")
TEXT_FILES = {"evaluation": "evaluation.txt", "selection": "selection.txt"}

_MARKER = re.compile(r"^===[ \t]*(?P<register>\S*)[ \t]*$")


def text_path(name: str) -> Path:
    """Path of a text file given as ``evaluation``/``selection`` or a file name next to this module."""
    path = HERE / TEXT_FILES.get(name, name)
    if not path.is_file():
        raise FileNotFoundError(f"general_ppl text file not found: {path}")
    return path


def parse_documents(text: str, source: str = "<string>") -> list[dict[str, Any]]:
    """Split a marked-up text into documents ``{"text", "register"}``."""
    docs: list[dict[str, Any]] = []
    register: str | None = None
    lines: list[str] = []

    def flush() -> None:
        if register is None:
            if "".join(lines).strip():
                raise ValueError(f"{source}: text before the first '=== <register>' marker")
            return
        body = "\n".join(lines).strip()
        if not body:
            raise ValueError(f"{source}: empty document with register {register!r}")
        docs.append({"text": body, "register": register})

    for number, line in enumerate(text.splitlines(), start=1):
        match = _MARKER.match(line)
        if match:
            flush()
            register = match.group("register")
            if register not in REGISTERS:
                raise ValueError(
                    f"{source}:{number}: unknown register {register!r}; expected one of {REGISTERS}"
                )
            lines = []
        else:
            lines.append(line)
    flush()
    if not docs:
        raise ValueError(f"{source}: no documents found")
    return docs


def load_documents(name: str = "evaluation") -> list[dict[str, Any]]:
    """All documents of one text file, with the fields the tasks and the scoring code read."""
    path = text_path(name)
    stem = path.stem
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                         "save it as UTF-8") from None
    return [
        {
            "doc_id": f"{stem}-{index:02d}",
            "source": stem,
            "register": doc["register"],
            "culture": "none",
            "text": doc["text"],
        }
        for index, doc in enumerate(parse_documents(text, str(path)))
    ]


def load_dataset(text_file: str = "evaluation", **_ignored: Any) -> dict[str, Any]:
    """``custom_dataset`` hook: lm-eval calls it with ``**metadata, **dataset_kwargs``.

    Only ``text_file`` (from ``dataset_kwargs``) matters; metadata such as ``version`` or
    ``pretrained`` is accepted and ignored.
    """
    import datasets

    return {"test": datasets.Dataset.from_list(load_documents(text_file))}
