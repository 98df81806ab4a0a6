"""Score files on disk: ``<out>/<role>.scores.pt`` per role, the fold tables of a
``--fold-tables K`` run in ``<out>/folds<K>/<i>/``, and reading them back checked.

:func:`load_table` records the file's ``path`` and ``sha256`` in the table's meta, so a selection
made from it can name exactly what it read.  :func:`restrict_cultures` is a table as if only some
cultures' documents had been scored (the leave-one-culture-out selection, ``selection/loco.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .._io import atomic_write, file_sha256
from ..architectures import MODULE_KINDS
from .attribution import ScoreTable

ROLES = ("task", "control", "crc", "general")
FOLD_ROLES = ("task", "control")  # the roles whose items are split into folds (a question and its control alike)


def score_file(out: Path, role: str) -> Path:
    return Path(out) / f"{role}.scores.pt"


def fold_folder(out: Path, folds: int) -> Path:
    """``<out>/folds<K>``: the fold tables of a ``fold_tables=K`` run, one folder per fold."""
    return Path(out) / f"folds{folds}"


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
    try:
        table = ScoreTable.from_payload(payload)
        _check_table(table)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise ScoreFileError(f"score file {path}: malformed ({err})") from None
    table.meta["path"] = str(path)
    table.meta["sha256"] = file_sha256(path)  # what a selection made from it names as its input
    return table


def restrict_cultures(table: ScoreTable, keep) -> ScoreTable:
    """``table`` with the columns of the cultures in ``keep`` only (in the table's order; a name
    the table lacks is ignored): every module kind's sums and the counts lose the other cultures'
    columns.  Sums are per culture and a sample's score does not depend on its batch, so this is
    the table a scoring run on the kept cultures' documents alone writes (exactly so with
    batches of one; otherwise up to float rounding), and a selection dividing by the table's total
    count divides by the kept cultures' total.  The meta is copied (``path`` and ``sha256`` still
    name the file read) with ``cultures_dropped``: the cultures left out."""
    wanted = set(keep)
    kept = [i for i, c in enumerate(table.cultures) if c in wanted]
    dropped = [c for c in table.cultures if c not in wanted]
    if not dropped:
        return table
    index = torch.tensor(kept, dtype=torch.long)
    meta = {**table.meta, "cultures_dropped": sorted({*table.meta.get("cultures_dropped", ()), *dropped})}
    return ScoreTable([table.cultures[i] for i in kept],
                      {kind: scores.index_select(-1, index.to(scores.device)) for kind, scores in table.scores.items()},
                      torch.as_tensor(table.counts).index_select(0, index.to(torch.as_tensor(table.counts).device)),
                      meta)


def _check_table(table: ScoreTable):
    """Shapes and values that selection relies on; a mismatch would silently shift cultures."""
    cultures = table.cultures
    if not isinstance(cultures, list) or not all(isinstance(c, str) for c in cultures):
        raise ValueError("'cultures' must be a list of names")
    if not isinstance(table.counts, torch.Tensor) or table.counts.shape != (len(cultures),):
        raise ValueError(f"'counts' must hold one number per culture ({len(cultures)} cultures)")
    if (table.counts < 0).any():
        raise ValueError("'counts' holds a negative sample count")
    if not isinstance(table.scores, dict) or not table.scores:
        raise ValueError("'scores' must map module kinds to tensors")
    for kind, scores in table.scores.items():
        if kind not in MODULE_KINDS:
            raise ValueError(f"unknown module kind {kind!r}")
        if not isinstance(scores, torch.Tensor) or scores.dim() != 3 or scores.shape[-1] != len(cultures):
            raise ValueError(f"{kind} scores must be [layers, width, {len(cultures)} cultures], "
                             f"found {tuple(getattr(scores, 'shape', ()))}")
        if not torch.isfinite(scores).all():
            raise ValueError(f"{kind} scores hold NaN or infinite values")


def table_paths(folder: Path, flag: str) -> dict[str, Path]:
    """{role: score file} of the roles scored into ``folder``; ``flag`` names the folder in errors."""
    if not folder.is_dir():
        raise ValueError(f"{flag} {folder}: no such folder (culnig-score run --out writes it)")
    return {role: score_file(folder, role) for role in ROLES if score_file(folder, role).exists()}


def load_fold_tables(folder: Path, flag: str) -> dict:
    """The task and control fold tables in ``folder``: {role: table} for one fold's folder
    (``culnig-score run --fold I/K --out``), {role: [K tables]} for the ``foldsK`` folder of
    ``culnig-score run --fold-tables K``."""
    if not folder.is_dir():
        raise ValueError(f"{flag} {folder}: no such folder (culnig-score run --fold or --fold-tables writes it)")
    single = {r: p for r, p in table_paths(folder, flag).items() if r in FOLD_ROLES}
    if single:
        if "task" not in single:
            raise ValueError(f"{flag} {folder}: holds no task.scores.pt")
        return {role: load_table(path) for role, path in single.items()}
    subfolders = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if [int(p.name) for p in subfolders] != list(range(len(subfolders))) or len(subfolders) < 2:
        raise ValueError(f"{flag} {folder}: holds neither task.scores.pt nor fold folders 0, 1, .. "
                         "(give the folder of culnig-score run --fold, or the foldsK folder of --fold-tables K)")
    parts = {}
    for sub in subfolders:
        for role, path in table_paths(sub, flag).items():
            if role in FOLD_ROLES:
                parts.setdefault(role, []).append(load_table(path))
    if "task" not in parts or any(len(found) != len(subfolders) for found in parts.values()):
        raise ValueError(f"{flag} {folder}: some fold folder lacks its task or control table; "
                         "re-run culnig-score run --fold-tables")
    return parts
