"""Harness tasks -> scoring samples: (context tokens, gold continuation tokens, culture).

The requests come from lm-eval itself (``Task.build_all_requests``), so a neuron is scored on
exactly the prompt evaluation uses: the same ``doc_to_text``, choices, target delimiter,
few-shot context, chat template and ``gen_prefix``.  Tokenisation is the harness model's own
(``HFLM._encode_pair``, ``prefix_token_id`` for an empty context).

* multiple_choice / loglikelihood tasks: the request of the gold choice;
* loglikelihood_rolling tasks (general prose): next-token prediction: every ``stride``-th
  token of the text is a gold continuation of ``predict`` tokens after up to ``window``
  tokens of the preceding text;
* generate_until tasks: the prompt, and ``doc_to_target`` as the gold continuation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


class TaskDataError(ValueError):
    pass


@dataclass(frozen=True)
class Sample:
    task: str
    doc_id: int
    culture: str
    topic: str
    context: tuple[int, ...]
    continuation: tuple[int, ...]

    @property
    def input_ids(self) -> tuple[int, ...]:
        # the model reads context + continuation[:-1] and predicts every continuation token
        return (self.context + self.continuation)[:-1]


def load_tasks(names: list[str], task_manager=None, num_fewshot: int | None = None, fewshot_seed: int = 1234,
               index=None) -> dict:
    """Task name (or group/tag) -> leaf Task objects, configured as ``simple_evaluate`` would;
    through ``task_manager``, else ``index`` (a :class:`~culnig_lm_eval.taskdata.index.TaskIndex`:
    lm-eval's full index only for names that are not this plugin's)."""
    from ..taskdata.index import TaskIndex

    manager = task_manager or (index if index is not None else TaskIndex()).manager_for(names)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise TaskDataError(
            f"unknown task(s): {', '.join(unknown)}. `lm_eval ls tasks` lists the known ones; "
            "plugin tasks include blend, blend_cloze, blend_neur, blend_ctrl, crc, general_ppl."
        )
    tasks = manager.load(names)["tasks"]
    for task in tasks.values():
        if num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=fewshot_seed)
    return tasks


def _gold_index(task, doc) -> int:
    gold = task.doc_to_target(doc)
    if isinstance(gold, list):
        gold = gold[0]
    if isinstance(gold, str) and not gold.isdigit():
        gold = task.doc_to_choice(doc).index(gold)
    return int(gold)


def _encode(lm, context: str, continuation: str) -> tuple[list[int], list[int]]:
    if context:
        return lm._encode_pair(context, continuation)
    return [lm.prefix_token_id], lm.tok_encode(continuation)


def samples_from_task(
    name: str,
    task,
    lm,
    *,
    limit: int | None = None,
    apply_chat_template: bool = False,
    fewshot_as_multiturn: bool = False,
    culture_field: str = "culture",
    window: int = 96,
    predict: int = 1,
    stride: int = 16,
) -> list[Sample]:
    task.build_all_requests(
        limit=limit,
        rank=0,  # every rank builds all requests; the scorer shards them
        world_size=1,
        apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=fewshot_as_multiturn,
        chat_template=lm.apply_chat_template if apply_chat_template else None,
        tokenizer_name=getattr(lm, "tokenizer_name", "") if apply_chat_template else "",
    )
    if not task.instances:
        raise TaskDataError(f"task {name} produced no requests (empty dataset or --limit 0?)")
    output_type = task.OUTPUT_TYPE
    samples = []

    def culture_of(doc) -> str:
        if culture_field not in doc:
            raise TaskDataError(
                f"task {name}: documents have no {culture_field!r} field (fields: {', '.join(map(str, doc))}). "
                "Pass --culture-field with the field that names the culture."
            )
        return str(doc[culture_field])

    for inst in task.instances:
        doc, doc_id = inst.doc, inst.doc_id
        topic = str(doc.get("topic", ""))
        if output_type in ("multiple_choice", "loglikelihood"):
            if output_type == "multiple_choice" and inst.idx != _gold_index(task, doc):
                continue
            ctx, cont = _encode(lm, *inst.arguments[:2])
            samples.append(Sample(name, doc_id, culture_of(doc), topic, tuple(ctx), tuple(cont)))
        elif output_type == "loglikelihood_rolling":
            tokens = lm.tok_encode(inst.arguments[0])
            prefix = [lm.prefix_token_id]
            for start in range(0, max(len(tokens) - predict + 1, 1), stride):
                ctx = (prefix + tokens[:start])[-window:]
                cont = tokens[start : start + predict]
                if cont:
                    samples.append(Sample(name, doc_id, culture_of(doc), topic, tuple(ctx), tuple(cont)))
        elif output_type == "generate_until":
            target = task.doc_to_target(doc)
            target = target[0] if isinstance(target, list) else target
            if isinstance(target, int):
                target = task.doc_to_choice(doc)[target]
            ctx, cont = _encode(lm, inst.arguments[0], str(target))
            samples.append(Sample(name, doc_id, culture_of(doc), topic, tuple(ctx), tuple(cont)))
        else:
            raise TaskDataError(f"task {name}: output_type {output_type!r} cannot be scored")
    max_len = lm.max_length
    too_long = [s for s in samples if len(s.input_ids) > max_len]
    if too_long:
        log.warning("%s: %d samples longer than %d tokens are truncated from the left", name, len(too_long), max_len)
        samples = [
            Sample(s.task, s.doc_id, s.culture, s.topic, s.context[-(max_len + 1 - len(s.continuation)) :], s.continuation)
            if len(s.input_ids) > max_len
            else s
            for s in samples
        ]
    return samples
