"""Training examples: (prompt, target) pairs from an lm-eval task's training split or a JSONL file.

An lm-eval task gives its training documents as the harness would show them: the prompt is
``doc_to_text`` (plus the task's ``description``), the target is the task's
``target_delimiter`` + the gold answer (the gold choice of a multiple-choice task, the target
string otherwise).  This is the zero-shot form the harness scores, so the training task's own
evaluation measures the same thing the model was trained on.  A local file has one JSON object
per line with ``prompt`` and ``target`` strings.

Tokenisation follows the harness too (``HFLM._encode_pair``: trailing spaces of the prompt move
to the target); the loss is on the target tokens only, as in the reference (labels -100 on the
prompt), and batches are left-padded so every target ends at the last position.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .._io import read_json_lines


@dataclass(frozen=True)
class Example:
    prompt: str
    target: str


def check_max_examples(max_examples) -> int | None:
    """``--max-train-examples``: a positive number, or 0 / None for every example."""
    if max_examples is None or max_examples == 0:
        return None
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 0:
        raise ValueError(f"--max-train-examples {max_examples}: give a positive number of examples, or 0 for all")
    return max_examples


def from_task(name: str, max_examples: int | None = None, seed: int = 42) -> list[Example]:
    """Training examples of lm-eval task ``name`` (its training split; a seeded subset)."""
    import random

    from ..scoring.samples import load_tasks

    max_examples = check_max_examples(max_examples)
    tasks = load_tasks([name])
    if len(tasks) != 1:
        raise ValueError(f"--train-task {name}: names {len(tasks)} tasks; give one task with a training split")
    task = next(iter(tasks.values()))
    if not task.has_training_docs():
        raise ValueError(f"--train-task {name}: the task has no training split (training_split in its YAML)")
    docs = list(task.training_docs())
    order = list(range(len(docs)))
    if max_examples is not None and max_examples < len(docs):
        random.Random(seed).shuffle(order)  # the reference: shuffle(seed=42).select(range(10_000))
        order = sorted(order[:max_examples])
    description = task.config.description or ""
    delimiter = task.config.target_delimiter
    examples = []
    for i in order:
        doc = docs[i]
        prompt = description + task.doc_to_text(doc)
        target = task.doc_to_target(doc)
        if task.OUTPUT_TYPE == "multiple_choice":
            choices = task.doc_to_choice(doc)
            target = choices[target] if isinstance(target, int) else target
        elif isinstance(target, list):
            target = target[0]
        examples.append(Example(str(prompt), delimiter + str(target)))
    if not examples:
        raise ValueError(f"--train-task {name}: the training split is empty")
    return examples


def from_jsonl(path: str | Path, max_examples: int | None = None) -> list[Example]:
    """The first ``max_examples`` rows of a JSONL file (0 or None: all of them)."""
    max_examples = check_max_examples(max_examples)
    path = Path(path)
    examples = []

    def refuse(number: int, _err):
        raise ValueError(f"--train-file {path} line {number}: not JSON") from None

    try:
        for number, row in read_json_lines(path, on_bad_line=refuse):
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) \
                    or not isinstance(row.get("target"), str) or not row["target"]:
                raise ValueError(f"--train-file {path} line {number}: needs string fields 'prompt' and a "
                                 "non-empty 'target'")
            examples.append(Example(row["prompt"], row["target"]))
    except FileNotFoundError:
        raise FileNotFoundError(f"--train-file {path}: no such file") from None
    except UnicodeDecodeError:
        raise ValueError(f"--train-file {path}: not UTF-8 text") from None
    if not examples:
        raise ValueError(f"--train-file {path}: no examples")
    return examples[:max_examples] if max_examples else examples


@dataclass(frozen=True)
class Tokenised:
    ids: tuple[int, ...]
    target_length: int


def tokenise(lm, examples: list[Example], max_length: int) -> list[Tokenised]:
    """Prompt + target token ids as the harness encodes the pair; prompts cut on the left."""
    out = []
    for example in examples:
        context, continuation = lm._encode_pair(example.prompt, example.target) if example.prompt \
            else ([lm.prefix_token_id], lm.tok_encode(example.target))
        if not continuation:
            raise ValueError(f"a training target encodes to no tokens: {example.target!r}")
        continuation = continuation[-max_length + 1:]
        context = context[-(max_length - len(continuation)):]
        out.append(Tokenised(tuple(context + continuation), len(continuation)))
    return out


def collate(rows: list[Tokenised], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded batch; labels are the target tokens (-100 elsewhere), unshifted as HF expects."""
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.ids)
        ids[i, width - n:] = torch.tensor(row.ids)
        mask[i, width - n:] = 1
        labels[i, width - row.target_length:] = torch.tensor(row.ids[-row.target_length:])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: a permutation seeded by (seed, epoch), so resuming replays it."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=generator).tolist()
    return [perm[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)] or [perm]
