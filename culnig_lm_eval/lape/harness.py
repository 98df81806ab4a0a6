"""A LAPE corpora folder as lm-eval reads it: the texts and one perplexity task per evaluation corpus.

:func:`write_corpora` writes the corpora in the folder layout of :mod:`.corpora` (atomically, as
one unit) with a ``manifest.json`` naming each corpus's sources and their sha256, so a run states
exactly what text it read, and beside them a ``tasks/`` folder for lm-eval's
``--include_path``: ``lape_ppl_<group>_<name>.yaml`` per evaluation corpus (held apart from
the recording split), the groups ``lape_ppl_culture`` / ``lape_ppl_language`` and ``lape_ppl``,
and a two-line ``utils.py`` pointing at this module.  The tasks are ``loglikelihood_rolling``
with lm-eval's own perplexity metrics (word / byte perplexity, bits per byte), so

    lm_eval --model masked-hf --model_args pretrained=...,neurons=pure/uk.pt \
        --include_path CORPORA/tasks --tasks lape_ppl

measures a masked model on the same texts ``culnig-lape evaluate`` uses; that command gives the
reference's block NLL (fixed-length rows of one token stream) beside it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from .._io import atomic_folder
from ..taskdata.perplexity import doc_to_target, process_results  # noqa: F401 (the hooks utils.py names)
from .corpora import MANIFEST, Corpus, CorpusError

TEMPLATE = {
    "custom_dataset": "!function utils.load_dataset",
    "output_type": "loglikelihood_rolling",
    "test_split": "test",
    "doc_to_text": "",
    "doc_to_target": "!function utils.doc_to_target",
    "process_results": "!function utils.process_results",
    "metric_list": [
        {"metric": "word_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
        {"metric": "byte_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
        {"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False},
    ],
    "metadata": {"version": 1.0},
}
UTILS = '''"""lm-eval hooks of the LAPE perplexity tasks (written by culnig-lape corpora)."""
from pathlib import Path

from culnig_lm_eval.lape import harness

doc_to_target = harness.doc_to_target
process_results = harness.process_results


def load_dataset(corpus, **_ignored):
    # corpora are found relative to this file, so the folder can be moved or copied whole
    return harness.load_dataset(corpus, root=Path(__file__).resolve().parent.parent)
'''


def _dump(data: dict) -> str:
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)
    return re.sub(r"'(!function [\w.]+)'", r"\1", text)  # the tag must stay a YAML tag, not a string


def write_tasks(folder: Path, corpora: dict[str, list[str]]) -> list[str]:
    """``corpora``: group ("culture", "language") -> evaluation corpus names; files go into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "utils.py").write_text(UTILS, encoding="utf-8")
    (folder / "_lape_ppl_yaml").write_text(_dump(TEMPLATE), encoding="utf-8")
    tasks = []
    for group, names in corpora.items():
        leaves = []
        for name in names:
            task = f"lape_ppl_{group}_{name}"
            body = {"include": "_lape_ppl_yaml", "task": task, "task_alias": f"{group} {name}",
                    "dataset_kwargs": {"corpus": f"{group}/eval/{name}"}}
            (folder / f"{task}.yaml").write_text(_dump(body), encoding="utf-8")
            leaves.append(task)
        (folder / f"lape_ppl_{group}.yaml").write_text(
            _dump({"group": f"lape_ppl_{group}", "task": leaves, "metadata": {"version": 1.0}}), encoding="utf-8")
        tasks += leaves
    (folder / "lape_ppl.yaml").write_text(
        _dump({"group": "lape_ppl", "task": [f"lape_ppl_{g}" for g in corpora], "metadata": {"version": 1.0}}),
        encoding="utf-8")
    return tasks


CORPORA_LEGACY = ("manifest.json", "tasks/*", "*/*/*/text.txt")  # a corpora folder before output markers (_io)


def write_corpora(out: str | Path, groups: dict[str, list[Corpus]], info: dict, what: str = "output folder") -> Path:
    """``groups`` = {"<group>/<split>": corpora} -> ``out/<group>/<split>/<name>/text.txt`` + manifest, as one unit.

    ``out/tasks/`` gets one lm-eval perplexity task per evaluation corpus (:func:`write_tasks`)."""
    manifest = {"format": "culnig-lape-corpora/1", **info, "corpora": {}}
    with atomic_folder(out, what, CORPORA_LEGACY) as staging:
        evaluation = {g.split("/")[0]: [c.name for c in cs] for g, cs in groups.items() if g.endswith("/eval")}
        manifest["tasks"] = write_tasks(staging / "tasks", evaluation)
        for group, corpora in groups.items():
            for corpus in corpora:
                folder = staging / group / corpus.name
                folder.mkdir(parents=True)
                (folder / "text.txt").write_text("\n".join(corpus.documents) + "\n", encoding="utf-8")
                manifest["corpora"][f"{group}/{corpus.name}"] = {"documents": len(corpus.documents), "sources": corpus.sources}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(out)


def load_dataset(corpus: str, root: Path) -> dict[str, Any]:
    """The lines of ``root/<corpus>/*.txt`` as documents (``root`` = the corpora folder)."""
    import datasets

    root = Path(root).resolve()
    folder = (root / corpus).resolve()
    if root not in folder.parents:
        raise CorpusError(f"LAPE task corpus {corpus!r} is outside {root}")
    docs = [line.strip() for path in sorted(folder.glob("*.txt"))
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not docs:
        raise CorpusError(f"{folder}: no evaluation text; rebuild the corpora with culnig-lape corpora")
    name = corpus.replace("/", "_")
    return {"test": datasets.Dataset.from_list([{"doc_id": f"{name}-{i:04d}", "text": t} for i, t in enumerate(docs)])}
