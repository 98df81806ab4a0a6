"""Score whole tasks: batches of samples -> one ScoreTable per task, saved atomically."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..neuron_set import atomic_write, now_iso, package_version
from .attribution import AttributionScorer, ScoreTable, collate
from .samples import Sample

ROLES = ("task", "control", "crc", "general")


def batches(samples: list[Sample], batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[Sample]]:
    """Length-sorted batches (less padding), dealt round-robin to the ranks."""
    ordered = sorted(samples, key=lambda s: (-len(s.input_ids), s.task, s.doc_id))
    chunks = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    return chunks[rank::world_size]


def samples_digest(samples: list[Sample]) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(repr((s.task, s.doc_id, s.culture, s.context, s.continuation)).encode())
    return h.hexdigest()[:16]


def score_samples(
    scorer: AttributionScorer,
    samples: list[Sample],
    *,
    role: str,
    batch_size: int = 8,
    pad_id: int = 0,
    device="cpu",
    rank: int = 0,
    world_size: int = 1,
    desc: str = "scoring",
) -> ScoreTable:
    """Sum the scores of ``samples`` per culture.  Control-like roles are clamped at 0 per sample."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {ROLES}")
    cultures = sorted({s.culture for s in samples})
    culture_index = {c: i for i, c in enumerate(cultures)}
    table = ScoreTable.empty(scorer, cultures, device)
    my_batches = batches(samples, batch_size, rank, world_size)
    started = time.perf_counter()
    with tqdm(total=sum(len(b) for b in my_batches), desc=desc, unit="sample", disable=rank != 0) as bar:
        for chunk in my_batches:
            batch = collate(chunk, pad_id, device=device)
            ids = torch.tensor([culture_index[s.culture] for s in chunk], device=device)
            table.add(scorer.sample_scores(batch), ids, clamp_at_zero=role != "task")
            bar.update(len(chunk))
            bar.set_postfix(samples_per_s=f"{bar.n / (time.perf_counter() - started):.2f}")
    if world_size > 1:  # the harness model's ranks, not merely an initialised process group
        table.all_reduce()
    table.meta.update(
        {
            "role": role,
            "num_samples": len(samples),
            "samples_digest": samples_digest(samples),
            "kinds": list(scorer.kinds),
            "model": scorer.shape,
            "created": now_iso(),
            "package_version": package_version(),
        }
    )
    return table


def save_table(table: ScoreTable, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: torch.save(table.to_payload(), tmp))


class ScoreFileError(ValueError):
    pass


def load_table(path: str | Path) -> ScoreTable:
    path = Path(path)
    if not path.is_file():
        raise ScoreFileError(f"score file {path}: no such file (culnig-score run writes them)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ScoreFileError(f"score file {path}: cannot be read ({type(err).__name__}: {str(err)[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != "culnig-scores/1":
        raise ScoreFileError(f"score file {path}: not a culnig-scores/1 file written by culnig-score run")
    table = ScoreTable.from_payload(payload)
    table.meta["path"] = str(path)
    return table
