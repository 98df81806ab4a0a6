"""LAPE's intervention: deactivate a set, measure block NLL on every corpus's evaluation text.

``block_nll`` is the reference's metric: the mean next-token NLL inside each fixed-length row
(the first token of a row has no prediction), averaged over rows.  ``delta_matrix`` masks each
set in turn (folded into the weights with :class:`culnig_lm_eval.model.ablation.Ablation`, restored
exactly afterwards) and gives ``M[i, j] = NLL(mask i, eval j) - NLL(unmasked, eval j)``, the
change of log-perplexity.  Masking an ``mlp_gate`` neuron zeroes its gate output, so
``act(0) * up = 0``: the neuron is off, as in LAPE's ``activation.index_fill_(…, 0)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.ablation import Ablation
from ..model.lm import parameter_device
from ..neuron_set import NeuronSet
from .corpora import TokenRows


@torch.no_grad()
def row_nll(model, rows: TokenRows, batch_size: int = 8) -> torch.Tensor:
    """Mean NLL of each row's predicted real tokens (float64 [R]); BOS is context, never a target."""
    device = parameter_device(model)
    out = []
    for batch in rows.batches(batch_size):
        ids = batch["input_ids"].to(device)
        attention = batch["attention_mask"].to(device)
        logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1].float()
        targets = ids[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        real = batch["count_mask"][:, 1:].to(device)  # a target is a real text token
        nll = (nll * real).sum(1).double() / real.sum(1).clamp(min=1)
        out.append(nll.cpu())
    return torch.cat(out)


def block_nll(model, rows: TokenRows, batch_size: int = 8) -> float:
    return float(row_nll(model, rows, batch_size).mean())


@dataclass
class InterventionResult:
    set_names: list[str]
    corpus_names: list[str]
    base: list[float]  # unmasked NLL per evaluation corpus
    delta: list[list[float]]  # [set][corpus]: masked - unmasked NLL
    set_sizes: list[int]

    def diagonal(self, pairs: list[tuple[str, str]]) -> list[dict]:
        """For (set, corpus) pairs that belong together: is that cell the largest of its row?
        An empty set masks nothing (its row is all 0): ``row_max`` is False and ``empty`` True."""
        rows = []
        for set_name, corpus in pairs:
            if set_name not in self.set_names or corpus not in self.corpus_names:
                continue
            i, j = self.set_names.index(set_name), self.corpus_names.index(corpus)
            row = self.delta[i]
            others = [v for k, v in enumerate(row) if k != j]
            empty = self.set_sizes[i] == 0
            rows.append({
                "set": set_name,
                "corpus": corpus,
                "own": row[j],
                "mean_other": sum(others) / len(others) if others else float("nan"),
                "row_max": not empty and max(range(len(row)), key=row.__getitem__) == j,
                "empty": empty,
            })
        return rows


def delta_matrix(model, sets: dict[str, NeuronSet], eval_rows: dict[str, TokenRows],
                 batch_size: int = 8) -> InterventionResult:
    """Unmasked NLL per corpus, then each set masked in turn (exact restore between sets)."""
    from tqdm import tqdm

    corpora = list(eval_rows)
    base = [block_nll(model, eval_rows[c], batch_size) for c in corpora]
    delta = []
    for name, neuron_set in tqdm(sets.items(), desc="LAPE intervention (sets masked)", total=len(sets)):
        if neuron_set.is_empty:
            delta.append([0.0] * len(corpora))  # masking nothing changes nothing; skip the forwards
            continue
        with Ablation(model, [neuron_set], mode="fold"):
            delta.append([block_nll(model, eval_rows[c], batch_size) - b for c, b in zip(corpora, base)])
    return InterventionResult(list(sets), corpora, base, delta, [len(s) for s in sets.values()])
