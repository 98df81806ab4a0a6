"""The LAPE steps as plain functions: record -> identify -> combine -> intervene -> report.

``culnig-lape`` (``culnig_lm_eval.cli.lape``) only parses arguments and calls these.  Every
step reads its inputs and checks them before a model is loaded, and writes its outputs as one
unit (``atomic_folder`` for folders of sets, ``atomic_write`` for count files and reports).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .._io import atomic_folder, file_sha256, now_iso, package_version, safe_name
from ..architectures import model_shape, text_config
from ..checks import whole_number
from ..neuron_set import NeuronSet, save_many
from .corpora import Corpus, token_rows

COUNTS_SUFFIX = ".counts.pt"
# what a sets folder and a report folder held before output markers (``_io``)
SETS_LEGACY = ("*.pt", "*/*.pt")
REPORT_LEGACY = ("intervention.json", "intervention.md", "delta_nll.png", "layers.png")


# The published recording (namazifard/Culture_Neurons activation_*.py, on RUCAIBox's
# activation.py): rows of vLLM's max_model_len, which its culture and language recorders set to
# 4096 (its transformers recorders take the model's maximum length), full rows only; its
# prepare_*_corpora.py keeps the first 100k tokens of a corpus for evaluation and the next 10M
# for recording.
PUBLISHED_ROW_LENGTH = 4096
PUBLISHED_RECORD_TOKENS = 10_000_000
PUBLISHED_EVAL_TOKENS = 100_000


@dataclass(frozen=True)
class RecordSettings:
    # tokens per row, BOS included; None: the published 4096, or the model's maximum length if shorter
    row_length: int | None = None
    batch_size: int = 8
    max_tokens: int | None = PUBLISHED_RECORD_TOKENS  # per corpus; None = all

    def __post_init__(self):
        if self.row_length is not None:
            whole_number(self.row_length, f"--row-length {self.row_length}", least=2)
        whole_number(self.batch_size, f"--batch_size {self.batch_size}", least=1)
        if self.max_tokens is not None:
            whole_number(self.max_tokens, f"--max-tokens {self.max_tokens}", least=1)


def row_length_for(settings: RecordSettings, model) -> int:
    """The row length ``settings`` asks for on ``model``: its own, or the published 4096 capped at
    the model's maximum length (``max_position_embeddings``)."""
    if settings.row_length is not None:
        return settings.row_length
    longest = getattr(text_config(model.config), "max_position_embeddings", None)
    return min(PUBLISHED_ROW_LENGTH, int(longest)) if longest else PUBLISHED_ROW_LENGTH


def _corpus_stamp(corpus: Corpus, settings: RecordSettings, shape: dict) -> dict:
    """What a count file was made from; an existing file with the same stamp is reused."""
    return {
        "model": shape,
        "corpus": corpus.name,
        "sources": corpus.sources,
        "documents": len(corpus.documents),
        "documents_sha256": _documents_hash(corpus.documents),
        "row_length": settings.row_length,
        "max_tokens": settings.max_tokens,
    }


def _documents_hash(documents: list[str]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for doc in documents:
        digest.update(doc.encode("utf-8") + b"\n")
    return digest.hexdigest()


def _matching_counts(path: Path, stamp: dict):
    from .counts import ActivationCounts

    if not path.is_file():
        return None
    try:
        counts = ActivationCounts.load(path)
    except ValueError:
        return None  # unreadable: record again and replace it
    return counts if counts.meta.get("stamp") == stamp else None


def _process_group() -> tuple[int, int]:
    """(rank, world size) of an ``accelerate launch`` / torchrun run; (0, 1) otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def record_corpora(model, tokenizer, corpora: list[Corpus], out: str | Path, settings: RecordSettings,
                   force: bool = False) -> list[Path]:
    """One count file per corpus in ``out`` (``<name>.counts.pt``); finished ones are reused.

    Under ``accelerate launch`` (an initialised process group) each process records every
    ``world``-th row, the counts are summed over processes (``data_parallel_reduce``) and rank 0
    writes the file: the same counts as one process recording every row.
    """
    import torch.distributed as dist
    from tqdm import tqdm

    from .counts import ActivationCounts, check_activation, data_parallel_reduce, record_counts

    check_activation(model.config)
    shape = model_shape(model.config)
    settings = replace(settings, row_length=row_length_for(settings, model))  # stamped as recorded
    rank, world = _process_group()
    out = Path(out)
    paths = []
    for corpus in tqdm(corpora, desc=f"LAPE recording ({out.name})", disable=rank != 0):
        path = out / f"{safe_name(corpus.name, 'corpus name')}{COUNTS_SUFFIX}"
        stamp = _corpus_stamp(corpus, settings, shape)
        reuse = not force and _matching_counts(path, stamp) is not None
        if world > 1:  # every process must take the same branch
            flag = torch.tensor([int(reuse)])
            dist.broadcast(flag, src=0)
            reuse = bool(flag.item())
        if reuse:
            paths.append(path)
            continue
        rows = token_rows(tokenizer, corpus.documents, settings.row_length, max_tokens=settings.max_tokens)
        over_zero, n = record_counts(model, rows.shard(rank, world).batches(settings.batch_size))
        over_zero, n = data_parallel_reduce(over_zero, n)
        meta = {
            "model": shape,
            "corpus": corpus.name,
            "source": {"sources": corpus.sources, "documents": len(corpus.documents)},
            "row_length": settings.row_length,
            "rows": len(rows),
            "processes": world,
            "stamp": stamp,
            "created": now_iso(),
            "package_version": package_version(),
        }
        if rank == 0:
            ActivationCounts(over_zero, n, meta).save(path)
        if world > 1:
            dist.barrier()
        paths.append(path)
    return paths


def load_counts(paths: list[str | Path]):
    """Count files of one model, in order; names must be unique."""
    from .counts import ActivationCounts, CountsError

    if len(paths) < 2:
        raise ValueError(f"LAPE compares at least 2 corpora; got {len(paths)} count file(s)")
    records = [ActivationCounts.load(p) for p in paths]
    for path, r in zip(paths, records):
        meta = r.meta if isinstance(r.meta, dict) else {}
        for key, what in (("model", "the model shape it was recorded on"), ("corpus", "the corpus name")):
            if not meta.get(key) or not isinstance(meta[key], dict if key == "model" else str):
                raise CountsError(f"lape counts {path}: its meta has no {key!r} ({what}); count files are "
                                  "written by culnig-lape record")
    first = records[0]
    for path, r in zip(paths[1:], records[1:]):
        r.check_model(first.meta["model"])
        if r.over_zero.shape != first.over_zero.shape:
            raise CountsError(f"lape counts {path}: {tuple(r.over_zero.shape)} counts (layers x neurons), but "
                              f"{paths[0]} has {tuple(first.over_zero.shape)}; give count files of one model")
    seen: dict[str, str | Path] = {}
    for path, r in zip(paths, records):
        name = r.meta["corpus"]
        if name in seen:
            raise CountsError(f"lape counts {seen[name]} and {path} are both for corpus {name!r}; give each "
                              "corpus once")
        seen[name] = path
    return records


def counts_in(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"count folder {folder} does not exist; make it with culnig-lape record")
    paths = sorted(folder.glob(f"*{COUNTS_SUFFIX}"))
    if not paths:
        raise ValueError(f"count folder {folder} holds no *{COUNTS_SUFFIX} file; make them with culnig-lape record")
    return paths


def identify_sets(count_paths: list[str | Path], hp=None) -> list[NeuronSet]:
    """LAPE identification over the given count files -> one ``mlp_gate`` set per corpus."""
    from .identify import LapeHyperparameters, identify, sets_from_result

    hp = hp or LapeHyperparameters()
    records = load_counts(count_paths)
    over_zero = torch.stack([r.over_zero for r in records], dim=-1)
    n = torch.tensor([r.n for r in records], dtype=torch.long)
    names = [safe_name(r.meta["corpus"], "corpus name") for r in records]
    result = identify(over_zero, n, hp)
    provenance = {
        "counts": [{"path": str(p), "sha256": file_sha256(p), "corpus": r.meta["corpus"], "tokens": r.n}
                   for p, r in zip(count_paths, records)],
    }
    return sets_from_result(result, names, records[0].meta["model"], provenance=provenance, hp=hp)


def _set_path(root: Path, name: str) -> Path:
    parts = [safe_name(part, "set name") for part in name.split("/")]
    return root.joinpath(*parts[:-1], parts[-1] + ".pt")


def write_sets(sets: list[NeuronSet], out: str | Path, names: list[str] | None = None,
               what: str = "output folder") -> list[Path]:
    """Write sets as ``out/<name>.pt`` (``name`` defaults to the set's culture; ``pure/uk`` makes a
    sub-folder), replacing ``out`` as a unit (only an earlier output of ours: ``_io``)."""
    names = names or [s.meta["culture"] for s in sets]
    with atomic_folder(out, what, SETS_LEGACY) as staging:
        save_many([(s, _set_path(staging, n)) for s, n in zip(sets, names)])
    return [_set_path(Path(out), n) for n in names]


def sets_in(folder: str | Path) -> dict[str, NeuronSet]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"set folder {folder} does not exist")
    paths = sorted(folder.glob("*.pt"))
    if not paths:
        raise ValueError(f"set folder {folder} holds no .pt neuron set")
    return {p.stem: NeuronSet.load(p) for p in paths}


def combine(cultures: dict[str, NeuronSet], languages: dict[str, NeuronSet], mapping: dict[str, str],
            ) -> dict[str, NeuronSet]:
    """Culture x language set algebra: ``compound/<c>`` = c AND its languages; ``pure/<c>`` = c minus
    its languages; ``generic`` = the neurons in every pure set."""
    missing = [c for c in cultures if c not in mapping]
    if missing:
        raise ValueError(f"no language given for culture(s) {', '.join(missing)}; "
                         "add them to --culture-languages as culture=language")
    unknown = sorted({mapping[c] for c in cultures} - set(languages))
    if unknown:
        raise ValueError(f"no language set for {', '.join(unknown)} (have: {', '.join(sorted(languages))}); "
                         "identify the language corpora first")
    out: dict[str, NeuronSet] = {}
    pure = []
    for culture, cset in cultures.items():
        language = languages[mapping[culture]]
        compound = cset.intersect(language)
        compound.meta.update(culture=culture, selection="lape-compound")
        purified = cset.subtract(language)
        purified.meta.update(culture=culture, selection="lape-pure")
        out[f"compound/{culture}"] = compound
        out[f"pure/{culture}"] = purified
        pure.append(purified)
    generic = pure[0].intersect(*pure[1:])  # a new set even for one culture: its meta is changed below
    generic.meta.update(culture=None, selection="lape-generic")
    out["generic"] = generic
    return out


# -- intervention report ------------------------------------------------------------------------
INTERVENTION_FORMAT = "culnig-lape-intervention/1"


def _fmt(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:+.3f}"


def analyse_intervention(result, pairs: list[tuple[str, str]], layers: dict[str, list[int]], title: str,
                         extra: list[str] = ()) -> dict:
    """Everything the report shows, computed once: the matrix, each set's own-corpus cell and,
    per group of sets (``culture/``, ``pure/`` ...), whether the group's matrix is diagonal-dominant
    (each set's own corpus is the most affected of the group's corpora) and how often a set hurts
    its own corpus more than the group's other sets hurt that corpus (the column's mean, which
    takes out how fragile a text is under any mask).  ``layers``: set name -> neurons per layer.
    A NaN or infinite NLL is refused (the model's numbers are broken; nothing is written); an
    empty set masks nothing, so it takes no part in the dominance counts."""
    check_finite_result(result)
    diag = result.diagonal(pairs)
    groups: dict[str, list[dict]] = {}
    for d in diag:
        if d.get("empty"):
            continue
        groups.setdefault(d["set"].split("/")[0] if "/" in d["set"] else d["set"], []).append(d)
    dominance = []
    for group, rows in groups.items():
        columns = [result.corpus_names.index(d["corpus"]) for d in rows]
        members = [result.set_names.index(d["set"]) for d in rows]
        hits = above = 0
        for d in rows:
            i, j = result.set_names.index(d["set"]), result.corpus_names.index(d["corpus"])
            row = result.delta[i]
            hits += all(row[j] > row[k] for k in columns if k != j)
            others = [result.delta[m][j] for m in members if m != i]
            d["column_others"] = sum(others) / len(others) if others else float("nan")
            d["own_vs_column"] = row[j] - d["column_others"]
            above += d["own_vs_column"] > 0
        dominance.append({"group": group, "sets": len(rows), "own_largest": hits, "diagonal_dominant": hits == len(rows),
                          "own_above_column": above})
    return {
        "format": INTERVENTION_FORMAT, "title": title, **asdict(result), "diagonal": diag, "dominance": dominance,
        "layers": layers, "extra": list(extra),
    }


def check_finite_result(result) -> None:
    """Refuse NaN / infinite block NLLs, naming the corpus (and the masked set)."""
    advice = ("the model's numbers are not finite (try dtype=float32 in --model_args, or check the weights); "
              "nothing was written")
    for corpus, value in zip(result.corpus_names, result.base):
        if not math.isfinite(value):
            raise ValueError(f"the unmasked model's NLL on corpus {corpus!r} is {value}: {advice}")
    for name, row in zip(result.set_names, result.delta):
        for corpus, value in zip(result.corpus_names, row):
            if not math.isfinite(value):
                raise ValueError(f"with set {name!r} masked, the NLL on corpus {corpus!r} is {value}: {advice}")


def set_layers(sets: dict[str, NeuronSet]) -> dict[str, list[int]]:
    return {n: s.per_layer().get("mlp_gate", []) for n, s in sets.items()}


def load_intervention(path: str | Path) -> dict:
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read a LAPE intervention file ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != INTERVENTION_FORMAT:
        raise ValueError(f"{path}: not a {INTERVENTION_FORMAT} file (written by culnig-lape evaluate / demo)")
    problem = _intervention_problem(payload)
    if problem:
        raise ValueError(f"{path}: {problem}; re-run culnig-lape evaluate to write it again")
    return payload


def _intervention_problem(payload: dict) -> str | None:
    """What makes an intervention payload unfit to render (None when it is fine): every number
    finite, one delta row and one size per set name, one base NLL and one cell per corpus."""
    def finite_list(value) -> bool:
        return isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               and math.isfinite(v) for v in value)

    sets, corpora = payload.get("set_names"), payload.get("corpus_names")
    if not (isinstance(sets, list) and isinstance(corpora, list) and all(isinstance(n, str) for n in sets + corpora)):
        return "set_names and corpus_names must be lists of names"
    if not finite_list(payload.get("base")) or len(payload["base"]) != len(corpora):
        return f"base (the unmasked NLL) must hold {len(corpora)} finite numbers, one per corpus"
    delta, sizes = payload.get("delta"), payload.get("set_sizes")
    if not isinstance(delta, list) or len(delta) != len(sets):
        return f"delta has {len(delta) if isinstance(delta, list) else 'no'} rows for {len(sets)} set names"
    for name, row in zip(sets, delta):
        if not finite_list(row) or len(row) != len(corpora):
            return f"the delta row of {name!r} must hold {len(corpora)} finite numbers, one per corpus"
    if not isinstance(sizes, list) or len(sizes) != len(sets) or not all(isinstance(n, int) and n >= 0 for n in sizes):
        return f"set_sizes must hold {len(sets)} neuron counts, one per set name"
    diagonal, dominance = payload.get("diagonal"), payload.get("dominance")
    if not isinstance(diagonal, list) or not isinstance(dominance, list):
        return "diagonal and dominance must be lists"
    for d in diagonal:
        if not isinstance(d, dict) or d.get("set") not in sets or d.get("corpus") not in corpora \
                or not all(k in d for k in ("own", "mean_other", "row_max")):
            return "a diagonal entry names a set or corpus that is not in the matrix, or lacks own / mean_other / row_max"
    if not all(isinstance(g, dict) and all(k in g for k in ("group", "sets", "own_largest", "diagonal_dominant"))
               for g in dominance):
        return "a dominance entry lacks group / sets / own_largest / diagonal_dominant"
    if not isinstance(payload.get("title"), str) or not isinstance(payload.get("layers"), dict) \
            or not all(isinstance(line, str) for line in payload.get("extra", [])):
        return "title must be text, layers a mapping and extra a list of lines"
    return None


def render_intervention(payload: dict, out: str | Path, what: str = "output folder") -> Path:
    """``intervention.json`` + ``intervention.md`` + heatmap and layer figures, replacing ``out`` as a unit.
    Formatting only: every number comes from :func:`analyse_intervention`."""
    import numpy as np

    from ..report import figures
    from ..report.markdown import table

    sets, corpora, delta = payload["set_names"], payload["corpus_names"], payload["delta"]
    sizes = payload["set_sizes"]
    rows = [["*unmasked NLL*", ""] + [f"{b:.3f}" for b in payload["base"]]]
    rows += [[name, size] + [_fmt(v) for v in row] for name, size, row in zip(sets, sizes, delta)]
    lines = [f"# {payload['title']}", "",
             "Δ NLL = mean block NLL with the set masked minus unmasked (nats/token; > 0 = the text got harder).", ""]
    lines += table(["set", "neurons"] + corpora, rows, align="lr" + "r" * len(corpora))
    if payload["dominance"]:
        lines += ["", "## Diagonal dominance", "",
                  "A group's matrix is diagonal-dominant when masking each of its sets hurts that set's own corpus "
                  "more than any other corpus of the group. *Own above column*: the set hurts its own corpus more "
                  "than the group's other sets hurt that corpus on average (takes out how fragile a text is).", ""]
        lines += table(["sets", "own corpus most affected", "diagonal-dominant", "own above column"],
                       [[g["group"], f"{g['own_largest']} of {g['sets']}", "yes" if g["diagonal_dominant"] else "no",
                         f"{g.get('own_above_column', 'n/a')} of {g['sets']}"] for g in payload["dominance"]],
                       align="lrlr")
        lines += [""]
        empty = {name for name, size in zip(sets, sizes) if size == 0}
        lines += table(["set", "own corpus", "Δ own", "mean Δ other corpora", "own is row max",
                        "other sets on own corpus"],
                       [[d["set"], d["corpus"], _fmt(d["own"]), _fmt(d["mean_other"]),
                         "n/a (empty set)" if d["set"] in empty else "yes" if d["row_max"] else "no",
                         _fmt(d.get("column_others", math.nan))] for d in payload["diagonal"]],
                       align="llrrlr")
        if empty & {d["set"] for d in payload["diagonal"]}:
            lines += ["", f"Empty sets (0 neurons: masking them changes nothing, so they take no part in the "
                          f"dominance counts): {', '.join(sorted(empty))}."]
    marks = [(sets.index(d["set"]), corpora.index(d["corpus"])) for d in payload["diagonal"]]
    with atomic_folder(out, what, REPORT_LEGACY) as staging:
        (staging / "intervention.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        figures.culture_heatmap(staging / "delta_nll.png", sets, corpora, np.array(delta), payload["title"],
                                diagonal=marks, xlabel="evaluation text", ylabel="masked neuron set",
                                cbar_label="Δ NLL (masked - unmasked)")
        layered = [(f"{n} ({sum(c)} neurons)", {"mlp_gate": c}, len(c)) for n, c in payload["layers"].items() if sum(c)]
        if layered:
            figures.neuron_layers(staging / "layers.png", layered, "LAPE sets: neurons per layer")
        lines += [*payload.get("extra", []), "", "![delta NLL](delta_nll.png)", ""]
        lines += ["![layers](layers.png)"] if layered else []
        (staging / "intervention.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(out) / "intervention.md"


def layer_thirds(neuron_set: NeuronSet) -> tuple[int, int, int]:
    """Neurons in the shallow / middle / deep third of the layers (the paper: culture neurons sit high)."""
    import numpy as np

    counts = np.array(neuron_set.per_layer().get("mlp_gate", []))
    parts = np.array_split(np.arange(len(counts)), 3)
    return tuple(int(counts[p].sum()) for p in parts)

