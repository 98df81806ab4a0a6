"""Score whole tasks: batches of samples -> one ScoreTable per role, saved atomically.

:func:`score_roles` is the library entry point (``culnig-score run`` and ``culnig-experiment``
both call it with a loaded harness model and a :class:`ScoringSettings`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .._io import now_iso, package_version
from ..architectures import MODULE_KINDS
from ..checks import whole_number
from ..model.lm import model_device, model_label
from .attribution import AttributionScorer, ScoreTable, collate
from .samples import Sample, load_tasks, samples_from_task
from .tables import FOLD_ROLES, ROLES, fold_folder, load_table, save_table, score_file

log = logging.getLogger("culnig-score")


@dataclass
class ScoringSettings:
    """How samples are built and scored; stored in every score file and compared on re-runs."""

    model_args: str = "pretrained=smollm2-135m"
    kinds: tuple[str, ...] = ("mlp_gate",)  # module kinds scored (see architectures.MODULE_KINDS)
    batch_size: int = 8
    limit: int | None = None  # documents per task; TASK:N in a task list overrides it for one task
    num_fewshot: int | None = None
    fewshot_seed: int = 1234
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    culture_field: str = "culture"
    window: int = 96  # general prose: tokens of preceding text per sample
    stride: int = 16  # general prose: every stride-th token is a sample
    force: bool = False  # recompute score files that exist
    # "i/K": score only the documents of fold i of K (see fold_assignment: every culture is split
    # evenly, by a hash of the document index, so a task and its control split the same questions
    # the same way).  Used for the stability halves (selection on fold 0 of 2 vs the rest =
    # full - fold 0) and to shard a long run.
    fold: str | None = None
    # K: score every document once and also write the task and control tables of each of K folds
    # (``<out>/folds<K>/<i>/``, the same files ``fold="i/K"`` runs would write) from the same pass,
    # for stability checks and stability selection without another scoring run.  It does not
    # change the full tables, so it is not part of their stamp.
    fold_tables: int | None = None
    # CountryRC samples clamped at 0 per sample, like the control's.  The published scorer
    # (ynklab/CULNIG calc_neuron_score.py) clamps only data sets named "control", so CountryRC
    # enters unclamped by default; a selection made from a clamped CRC table is named
    # "+crc-clamped" (selection/rules.py, docs/differences.md).
    clamp_crc: bool = False

    def __post_init__(self):
        unknown = set(self.kinds) - set(MODULE_KINDS)
        self.kinds = tuple(k for k in MODULE_KINDS if k in self.kinds)  # canonical order
        if not self.kinds or unknown:
            raise ValueError(f"module kinds must be some of {', '.join(MODULE_KINDS)}")
        for name in ("batch_size", "window", "stride") + (("limit",) if self.limit is not None else ()):
            whole_number(getattr(self, name), f"--{name} {getattr(self, name)!r}", least=1)
        if self.fold is not None:
            parse_fold(self.fold)
        if self.fold_tables is not None:
            whole_number(self.fold_tables, f"--fold-tables {self.fold_tables!r}", least=2)
            if self.fold is not None:
                raise ValueError("--fold-tables scores every document: it cannot be combined with --fold")
        if not isinstance(self.clamp_crc, bool):
            raise ValueError(f"clamp_crc {self.clamp_crc!r}: must be true or false")

    def stamp(self, role: str | None = None) -> dict:
        """What makes two score files of ``role`` comparable (batch size and force do not change
        scores).  The CRC table's stamp also says whether its samples were clamped, so a CRC file
        of another clamping (or of a version that clamped without saying so) is not reused."""
        keep = asdict(self)
        for volatile in ("batch_size", "force", "fold_tables", "clamp_crc"):
            keep.pop(volatile)
        if role == "crc":
            keep["crc_clamped"] = self.clamp_crc
        keep["kinds"] = list(self.kinds)
        if keep["fold"] is None:
            keep.pop("fold")  # score files written before folds existed stay reusable
        else:  # fold files of the earlier unstratified split are not reused as if they were these
            keep["fold_scheme"] = FOLD_SCHEME
        return keep


def parse_fold(spec: str) -> tuple[int, int]:
    """``"0/2"`` -> (0, 2); anything else is an error naming the flag."""
    index, sep, total = str(spec).partition("/")
    if not (sep and index.isdigit() and total.isdigit() and int(total) >= 2 and int(index) < int(total)):
        raise ValueError(f"--fold {spec!r}: write I/K with K >= 2 folds and 0 <= I < K (e.g. 0/2)")
    return int(index), int(total)


FOLD_SCHEME = "culture-stratified"  # stored with fold score files (ScoringSettings.stamp)
# roles whose samples are clamped at 0 before they are summed: the control, as the published
# scorer does, and the general prose of the opt-in general exclusion (ours; no published rule)
CLAMPED_ROLES = ("control", "general")


def clamps_at_zero(role: str, clamp_crc: bool = False) -> bool:
    """Whether the samples of ``role`` are clamped at 0 per sample (CRC only with ``clamp_crc``)."""
    return role in CLAMPED_ROLES or (role == "crc" and clamp_crc)


def doc_hash(doc_id: int) -> int:
    return int.from_bytes(hashlib.sha256(f"doc:{doc_id}".encode()).digest()[:8], "big")


def fold_assignment(samples: list[Sample], folds: int) -> dict[tuple[str, int], int]:
    """{(culture, doc_id): fold}: within each culture the documents are ordered by a hash of their
    index and dealt round-robin, so every culture's folds differ by at most one document (a plain
    hash gave 1 and 8 of a 9-item culture, and a half too small to select from) while the folds
    still mix topics.  A task and its control, holding the same documents, split them alike."""
    by_culture: dict[str, set[int]] = {}
    for sample in samples:
        by_culture.setdefault(sample.culture, set()).add(sample.doc_id)
    return {(culture, doc_id): rank % folds
            for culture, doc_ids in by_culture.items()
            for rank, doc_id in enumerate(sorted(doc_ids, key=lambda d: (doc_hash(d), d)))}


def in_fold(samples: list[Sample], fold: str) -> list[Sample]:
    """The samples of fold ``fold`` ("I/K") under :func:`fold_assignment`."""
    index, folds = parse_fold(fold)
    assignment = fold_assignment(samples, folds)
    return [s for s in samples if assignment[(s.culture, s.doc_id)] == index]


def parse_task_specs(specs: list[str], default_limit: int | None) -> list[tuple[str, int | None]]:
    """``["blend_cloze_neur", "crc:96"]`` -> [(name, limit)]; ``TASK:N`` limits one task to N documents."""
    out = []
    for spec in specs:
        name, sep, n = spec.partition(":")
        if sep and not (n.isdigit() and int(n) > 0):
            raise ValueError(f"task {spec!r}: write TASK:N with N a positive number of documents")
        out.append((name, int(n) if sep else default_limit))
    return out


def reusable_score_files(role_tasks: dict[str, list[str]], settings: ScoringSettings, out: Path) -> dict[str, Path]:
    """Score files in ``out`` made with the same settings and tasks (kept unless ``force``).

    A file made with other settings is an error rather than silently mixed with new ones.
    """
    done = {}
    for role, specs in role_tasks.items():
        path = score_file(out, role)
        if not path.exists() or settings.force:
            continue
        meta = load_table(path).meta
        if settings.fold_tables and role in FOLD_ROLES and not _fold_files_match(out, role, settings, specs):
            log.warning("%s: %s exists but not its %d fold tables; scoring it again", role, path, settings.fold_tables)
            continue
        if meta.get("settings") == settings.stamp(role) and meta.get("tasks") == list(specs):
            log.warning("%s: %s exists with the same settings; reusing it (--force recomputes)", role, path)
            done[role] = path
        else:
            raise ValueError(f"{path} was made with other settings or tasks; use --force or another --out")
    return done


def fold_settings(settings: ScoringSettings, index: int) -> ScoringSettings:
    """The settings a ``fold="index/K"`` run would have: its stamp is the fold table's."""
    from dataclasses import replace

    return replace(settings, fold=f"{index}/{settings.fold_tables}", fold_tables=None)


def _fold_files_match(out: Path, role: str, settings: ScoringSettings, specs) -> bool:
    for index in range(settings.fold_tables):
        path = score_file(fold_folder(out, settings.fold_tables) / str(index), role)
        if not path.exists():
            return False
        meta = load_table(path).meta
        if meta.get("settings") != fold_settings(settings, index).stamp(role) or meta.get("tasks") != list(specs):
            return False
    return True


def load_role_tasks(role_tasks: dict[str, list[str]], settings: ScoringSettings, index=None) -> dict:
    """The harness Task objects of every role (reading their data: call it before loading a model);
    ``index``: the :class:`~culnig_lm_eval.taskdata.index.TaskIndex` to load them through."""
    unknown = set(role_tasks) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown scoring role(s) {sorted(unknown)}; roles are {', '.join(ROLES)}")
    if not role_tasks.get("task"):
        raise ValueError("no task to find neurons on: give --tasks (e.g. blend_cloze_neur)")
    names = sorted({name for specs in role_tasks.values() for name, _ in parse_task_specs(specs, settings.limit)})
    return load_tasks(names, num_fewshot=settings.num_fewshot, fewshot_seed=settings.fewshot_seed, index=index)


def score_roles(lm, role_tasks: dict[str, list[str]], settings: ScoringSettings, out: Path,
                tasks: dict | None = None) -> dict[str, Path]:
    """Score every role's tasks with the loaded harness model ``lm``; {role: score file}.

    ``role_tasks``: {"task": [...], "control": [...], "crc": [...], "general": [...]} (harness
    task names, ``TASK:N`` for a per-task limit); ``tasks``: from :func:`load_role_tasks` when
    the caller checked the data before loading the model.  Files already in ``out`` with the
    same settings are reused.  Under ``accelerate launch`` the harness model's ranks share the
    batches and rank 0 writes the files.
    """
    out = Path(out)
    tasks = tasks if tasks is not None else load_role_tasks(role_tasks, settings)
    done = reusable_score_files(role_tasks, settings, out)
    todo = {role: specs for role, specs in role_tasks.items() if role not in done}
    if not todo:
        return done
    parsed = {role: parse_task_specs(specs, settings.limit) for role, specs in todo.items()}
    # every role's samples are built (and so every document checked) before the first backward pass
    samples = {
        role: [
            sample
            for name, limit in specs
            for sample in samples_from_task(
                name, tasks[name], lm, limit=limit, apply_chat_template=settings.apply_chat_template,
                fewshot_as_multiturn=settings.fewshot_as_multiturn, culture_field=settings.culture_field,
                window=settings.window, stride=settings.stride,
            )
        ]
        for role, specs in parsed.items()
    }
    if settings.fold is not None:
        samples = {role: in_fold(found, settings.fold) for role, found in samples.items()}
    model = lm.model.eval()
    scorer = AttributionScorer(model, settings.kinds)
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    device = model_device(lm)
    from ..taskdata.sources import task_sources

    for role, role_samples in samples.items():
        folds = settings.fold_tables if role in FOLD_ROLES else None
        with torch.inference_mode(False):
            table, fold_parts = score_samples(
                scorer, role_samples, role=role, batch_size=settings.batch_size, pad_id=pad_id, device=device,
                rank=lm.rank, world_size=lm.world_size, desc=f"{role}: {','.join(todo[role])}", folds=folds,
                clamp_at_zero=clamps_at_zero(role, settings.clamp_crc))
        meta = {"task": ",".join(todo[role]), "tasks": list(todo[role]),
                "data": {key: source for name, _ in parsed[role] for key, source in task_sources(tasks[name]).items()},
                # e.g. CountryRC's version: version 2 is CountryRC as published
                "task_versions": {name: (tasks[name].config.metadata or {}).get("version") for name, _ in parsed[role]}}
        writes = []
        for index, part in enumerate(fold_parts):
            part.meta.update(meta, settings=fold_settings(settings, index).stamp(role))
            part.meta["model"]["name"] = model_label(settings.model_args)
            writes.append((part, score_file(fold_folder(out, folds) / str(index), role)))
        table.meta.update(meta, settings=settings.stamp(role))
        table.meta["model"]["name"] = model_label(settings.model_args)
        writes.append((table, score_file(out, role)))  # last: a full file on disk means its folds are there
        if lm.rank == 0:
            for written, path in writes:
                save_table(written, path)
            log.warning("%s: %d samples -> %s%s", role, len(role_samples), score_file(out, role),
                        f" (+ {folds} fold tables in {fold_folder(out, folds)})" if folds else "")
        done[role] = score_file(out, role)
    return done


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
    folds: int | None = None,
    clamp_at_zero: bool | None = None,
):
    """(table, fold tables): the scores of ``samples`` summed per culture, and with ``folds=K``
    the tables of the K folds of :func:`fold_assignment` too (each the table a ``fold="i/K"``
    run would make; empty list without ``folds``).  One pass: every sample is added to its
    (culture, fold) column, and the full table is the sum of the folds.  Samples are clamped at 0
    per sample where ``clamp_at_zero`` says so (default: :func:`clamps_at_zero` of the role: the
    control and general prose, not the task or CountryRC); the tables record it in
    ``meta["clamped_at_zero"]``."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {ROLES}")
    clamp = clamps_at_zero(role) if clamp_at_zero is None else bool(clamp_at_zero)
    cultures = sorted({s.culture for s in samples})
    culture_index = {c: i for i, c in enumerate(cultures)}
    num_folds = folds or 1
    assignment = fold_assignment(samples, num_folds) if folds else {}
    # columns culture-major: column c * K + fold
    table = ScoreTable.empty(scorer, [f"{c}/{f}" for c in cultures for f in range(num_folds)], device)
    my_batches = batches(samples, batch_size, rank, world_size)
    started = time.perf_counter()
    with tqdm(total=sum(len(b) for b in my_batches), desc=desc, unit="sample", disable=rank != 0) as bar:
        for chunk in my_batches:
            batch = collate(chunk, pad_id, device=device)
            ids = torch.tensor([culture_index[s.culture] * num_folds + assignment.get((s.culture, s.doc_id), 0)
                                for s in chunk], device=device)
            table.add(scorer.sample_scores(batch), ids, clamp_at_zero=clamp)
            bar.update(len(chunk))
            bar.set_postfix(samples_per_s=f"{bar.n / (time.perf_counter() - started):.2f}")
    if world_size > 1:  # the harness model's ranks, not merely an initialised process group
        table.all_reduce()

    def meta(members: list[Sample]) -> dict:
        return {"role": role, "clamped_at_zero": clamp, "num_samples": len(members),
                "samples_digest": samples_digest(members),
                "kinds": list(scorer.kinds), "model": dict(scorer.shape), "created": now_iso(),
                "package_version": package_version()}

    def by_fold(values: torch.Tensor) -> torch.Tensor:  # [..., C*K] -> [..., C, K]
        return values.reshape(*values.shape[:-1], len(cultures), num_folds)

    full = ScoreTable(cultures, {k: by_fold(v).sum(-1) for k, v in table.scores.items()},
                      by_fold(table.counts).sum(-1), meta(samples))
    parts = []
    for index in range(num_folds if folds else 0):
        counts = by_fold(table.counts)[:, index]
        present = [i for i in range(len(cultures)) if counts[i] > 0]  # as a fold run sees it
        members = [s for s in samples if assignment[(s.culture, s.doc_id)] == index]
        parts.append(ScoreTable([cultures[i] for i in present],
                                {k: by_fold(v)[..., present, index].contiguous() for k, v in table.scores.items()},
                                counts[present].clone(), meta(members)))
    return full, parts
