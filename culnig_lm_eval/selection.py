"""Score tables -> culture-general and culture-specific neuron sets (the CULNIG selection).

Per module kind, with every table normalised by its sample count (per culture where noted):

* ``S = task / n_task - control / n_control``: the task-format neurons fall out.
* **Excluded** before any cut: the top ``r``% of neurons by CRC score (they only help find a
  country name in a passage) and, with the opt-in general-text extension, the top ``r_g``% by
  the general-prose score.
* **Culture-general**: the top ``t``% of all neurons of that kind by ``S`` (summed over
  cultures) among those not excluded.
* **Culture-specific** for culture ``c``: the top ``t_s``% by ``S_c`` (that culture's samples
  only) among those not excluded by ``c``'s own CRC score, kept only where the z-score of
  ``S_c`` across cultures, ``(S_c - mean) / std`` (population std), is at least ``z``.
  Cultures with fewer than ``min_samples`` task samples get no specific set (they still
  count in the z-score).  Opt-in ``normalise_z``: each culture's ``S_c`` is divided by its
  mean ``|S_c|`` before the z-score (the ``P^2`` weight lets a culture whose answers the model
  finds likely dominate every neuron's z-score; the paper's method does not normalise).

Percentages are of all neurons of the kind (layers x width), rounded down; ties are broken by
``topk``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .neuron_set import NeuronSet, new_meta
from .scoring.attribution import ScoreTable

PAPER = "culnig-paper"
GENERAL_EXCLUSION = "culnig-paper+general-exclusion"
NORMALISED_Z = "+normalised-z"


@dataclass
class Thresholds:
    top_mlp: float = 1.0  # t, % of MLP neurons (culture-general)
    top_attention: float = 0.2  # t, % of attention neurons (culture-general)
    top_specific: float = 0.3  # t_s, % per culture
    crc_exclude: float = 1.0  # r, % by CRC score
    general_exclude: float | None = None  # r_g, % by general-prose score; None = paper method
    z_min: float = 0.5
    min_samples: int = 5  # a culture with fewer task samples gets no culture-specific set
    # opt-in: divide each culture's S_c by its mean |S_c| before the z-score, so one culture whose
    # answers the model finds likely (P^2 weighting) does not dominate every neuron's z-score
    normalise_z: bool = False

    def top_for(self, kind: str) -> float:
        return self.top_mlp if kind.startswith("mlp") else self.top_attention


def _mean(table: ScoreTable, kind: str) -> torch.Tensor:
    """[layers, width]: score summed over all samples / number of samples."""
    return table.scores[kind].sum(-1) / table.counts.sum().clamp(min=1)


def _per_culture(table: ScoreTable, kind: str, cultures: list[str]) -> torch.Tensor:
    """[layers, width, len(cultures)] per-culture means; a culture the table lacks gets the overall mean."""
    overall = _mean(table, kind)
    cols = []
    for c in cultures:
        if c in table.cultures and table.counts[table.cultures.index(c)] > 0:
            i = table.cultures.index(c)
            cols.append(table.scores[kind][..., i] / table.counts[i])
        else:
            cols.append(overall)
    return torch.stack(cols, dim=-1)


def top_mask(values: torch.Tensor, percent: float, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask of the top ``percent``% of all entries of ``values`` (among ``allowed``)."""
    k = int(values.numel() * percent / 100 + 1e-9)  # never more than percent%
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    if k == 0:
        return mask.view_as(values)
    flat = values.flatten().float().clone()
    if allowed is not None:
        flat[~allowed.flatten()] = float("-inf")
    k = min(k, int(torch.isfinite(flat).sum()))
    mask[torch.topk(flat, k).indices] = True
    return mask.view_as(values)


def _check_shapes(tables: dict[str, ScoreTable | None]):
    present = {role: t for role, t in tables.items() if t is not None}
    shapes = {role: t.meta.get("model") for role, t in present.items()}
    first = next(iter(shapes.values()))
    for role, shape in shapes.items():
        if shape != first:
            raise ValueError(f"score tables come from different models: {role} has {shape}, expected {first}")


def select(
    task: ScoreTable,
    control: ScoreTable | None = None,
    crc: ScoreTable | None = None,
    general: ScoreTable | None = None,
    thresholds: Thresholds = Thresholds(),
    model_name: str = "",
) -> dict[str, NeuronSet]:
    """{"general": set, "<culture>": set, ...} from the score tables."""
    _check_shapes({"task": task, "control": control, "crc": crc, "general": general})
    if thresholds.general_exclude is not None and general is None:
        raise ValueError("general_exclude was set but no general-prose score table was given")
    if thresholds.general_exclude is None:
        general = None  # unused by the paper's method: keep it out of the provenance too
    cultures = [c for c in task.cultures if task.counts[task.cultures.index(c)] > 0]
    specific = [c for c in cultures if task.counts[task.cultures.index(c)] >= thresholds.min_samples]
    shape = dict(task.meta.get("model") or {})
    shape["name"] = model_name or shape.get("name", "")
    selection = GENERAL_EXCLUSION if thresholds.general_exclude is not None else PAPER
    selection += NORMALISED_Z if thresholds.normalise_z else ""

    general_masks, specific_masks = {}, {c: {} for c in specific}
    for kind in task.scores:
        diff = _mean(task, kind) - (_mean(control, kind) if control is not None else 0)
        per_c = _per_culture(task, kind, cultures)
        if control is not None:
            per_c = per_c - _per_culture(control, kind, cultures)

        excluded = torch.zeros_like(diff, dtype=torch.bool)
        if general is not None and thresholds.general_exclude is not None:
            excluded |= top_mask(_mean(general, kind), thresholds.general_exclude)
        crc_general = top_mask(_mean(crc, kind), thresholds.crc_exclude) if crc is not None else excluded
        general_masks[kind] = top_mask(diff, thresholds.top_for(kind), ~(excluded | crc_general))

        for_z = per_c / per_c.abs().mean(dim=(0, 1), keepdim=True).clamp(min=1e-30) if thresholds.normalise_z else per_c
        std, mean = torch.std_mean(for_z, dim=-1, correction=0)
        z = (for_z - mean[..., None]) / std[..., None].clamp(min=1e-30)
        crc_c = _per_culture(crc, kind, cultures) if crc is not None else None
        for i, c in enumerate(cultures):
            if c not in specific:
                continue
            allowed = ~excluded
            if crc_c is not None:
                allowed &= ~top_mask(crc_c[..., i], thresholds.crc_exclude)
            specific_masks[c][kind] = top_mask(per_c[..., i], thresholds.top_specific, allowed) & (
                z[..., i] >= thresholds.z_min
            )

    provenance = {
        role: {
            "path": t.meta.get("path"),
            "sha256": t.meta.get("sha256"),
            "task": t.meta.get("task"),
            "samples": dict(zip(t.cultures, t.counts.tolist())),
        }
        for role, t in {"task": task, "control": control, "crc": crc, "general": general}.items()
        if t is not None
    }
    tasks = [t.meta.get("task") for t in (task, control, crc, general) if t is not None]
    common = dict(method="culnig", selection=selection, tasks=tasks, hyperparameters=asdict(thresholds))
    sets = {"general": NeuronSet.from_masks(general_masks, {**new_meta(shape, **common), "provenance": provenance})}
    for c in specific:
        meta = {**new_meta(shape, culture=c, **common), "provenance": provenance}
        sets[c] = NeuronSet.from_masks(specific_masks[c], meta)
    return sets
