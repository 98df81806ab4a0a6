"""Per test item, the summed attribution of each set's neurons (the report's instance view).

One backward pass per batch gives every sample's per-neuron scores; one contraction with the
stacked set masks ([sets, layers, width] per kind) gives every set's summed score at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .._io import write_text
from ..model.lm import model_device
from ..neuron_set import NeuronSet
from .attribution import AttributionScorer, collate
from .run import ScoringSettings, batches
from .samples import load_tasks, samples_from_task


def instance_rows(lm, task_name: str, labelled_sets: dict[str, Path], kinds, *, limit=None, batch_size=8,
                  apply_chat_template: bool = False, index=None) -> list[dict]:
    """[{"set", "culture", "topic", "doc_id", "score"}] for every (set, item) of ``task_name``
    (``index``: the run's :class:`~culnig_lm_eval.taskdata.index.TaskIndex`)."""
    tasks = load_tasks([task_name], index=index)
    samples = samples_from_task(task_name, tasks[task_name], lm, limit=limit, apply_chat_template=apply_chat_template)
    scorer = AttributionScorer(lm.model, kinds)
    labels = list(labelled_sets)
    per_set = [NeuronSet.load(path).masks(scorer.widths) for path in labelled_sets.values()]
    empty = {k: torch.zeros(scorer.num_layers, w, dtype=torch.bool) for k, w in scorer.widths.items()}
    device = model_device(lm)
    stacked = {k: torch.stack([m.get(k, empty[k]) for m in per_set]).float().to(device) for k in scorer.kinds}
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    rows = []
    for chunk in batches(samples, batch_size):
        with torch.inference_mode(False):
            per_sample = scorer.sample_scores(collate(chunk, pad, device=device))  # {kind: [L, B, W]}
        totals = sum(torch.einsum("lbw,slw->sb", per_sample[k], m.to(per_sample[k].device)) for k, m in stacked.items())
        for label, values in zip(labels, totals.tolist()):
            rows += [{"set": label, "culture": s.culture, "topic": s.topic, "doc_id": s.doc_id, "score": v}
                     for s, v in zip(chunk, values)]
    return rows


def write_instance_scores(lm, task_name: str, sets: dict[str, dict[str, Path]], settings: ScoringSettings,
                          path: Path, *, limit=None, batch_size=8, index=None) -> Path:
    labelled = {f"{selection}/{label}": p for selection, labelled in sets.items() for label, p in labelled.items()}
    # the items are rendered as the sets were scored (with the chat template when scoring used it)
    rows = instance_rows(lm, task_name, labelled, settings.kinds, limit=limit, batch_size=batch_size,
                         apply_chat_template=settings.apply_chat_template, index=index)
    return write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
