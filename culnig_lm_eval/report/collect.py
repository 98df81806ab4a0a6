"""Read lm-eval output folders into conditions (one per model_args) with per-sample records.

The stock CLI (``lm_eval ... --output_path DIR --log_samples``) writes, through
``lm_eval.loggers.EvaluationTracker``::

    DIR/<sanitized model name>/results_<date_id>.json
    DIR/<sanitized model name>/samples_<task>_<date_id>.jsonl     # one per leaf task

where ``date_id`` is the same for the results file and its sample files.  The results JSON has
``results`` (aggregates), ``configs`` (task configs, with ``output_type``), ``n-samples``
(``original``/``effective`` per task) and ``config`` (with ``model_args``: a dict from the
CLI, or a ``key=val,...`` string from the Python API).  Each sample line has ``doc_id``,
``doc``, ``target``, ``resps``, ``filtered_resps``, ``filter``, ``metrics`` (names) and one
field per metric (``acc``: a number; ``word_perplexity``: ``[loglik, words]``...).

Conditions are keyed by model_args.  ``neurons=`` names the neuron-set files (joined by
``+``) whose metadata labels the condition; runs without it are "unmasked".  When several
results files hold the same model_args and task, the newest (by ``date_id``, then file
mtime) wins.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import read_json_lines

log = logging.getLogger(__name__)

RESULTS_RE = re.compile(r"^results_(?P<date>.+)\.json$")

# model_args that change what is masked (everything else defines the base model)
MASKING_ARGS = ("neurons", "operation", "factor", "mode")
# model_args that never change results and are dropped from keys
IGNORED_ARGS = ("trust_remote_code", "device", "device_map", "batch_size", "max_batch_size", "parallelize",
                "max_memory_per_gpu", "max_cpu_memory", "offload_folder")
PAIR_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")
SAMPLE_FIELDS = {
    "doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics",
    "doc_hash", "prompt_hash", "target_hash",
}


# ----------------------------------------------------------------------------------------
# model_args
# ----------------------------------------------------------------------------------------
def recorded_model_args(raw: Any) -> dict[str, str]:
    """The ``model_args`` a results file records, values as strings: ``{"a": 1}`` (the ``lm_eval``
    command records a dict) or ``"a=1,b=x+y"`` (the Python API records the string, read here with
    lm-eval's own parser, as the run itself read it) -> ``{"a": "1", "b": "x+y"}``."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        from lm_eval.utils import simple_parse_args_string

        raw = simple_parse_args_string(str(raw))
    return {str(k): _arg_str(v) for k, v in raw.items()}


def _arg_str(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def args_string(args: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(args.items()))


def base_args(args: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in args.items() if k not in MASKING_ARGS and k not in IGNORED_ARGS}


def masking_args(args: dict[str, str]) -> dict[str, str]:
    if not args.get("neurons"):
        return {}
    return {k: args[k] for k in MASKING_ARGS if args.get(k) not in (None, "", "None")}


# ----------------------------------------------------------------------------------------
# data classes
# ----------------------------------------------------------------------------------------
@dataclass
class TaskRecords:
    """Per-sample records of one task under one condition (one filter)."""

    task: str
    results_file: Path
    date: str
    samples_file: Path | None
    output_type: str | None = None
    filter: str | None = None
    filters: list[str] = field(default_factory=list)
    metrics: dict[str, dict[Any, float]] = field(default_factory=dict)  # metric -> doc_id -> value
    pairs: dict[str, dict[Any, tuple[float, float]]] = field(default_factory=dict)  # (loglik, units)
    cultures: dict[Any, str] = field(default_factory=dict)  # doc_id -> doc["culture"]
    doc_hashes: dict[Any, str | None] = field(default_factory=dict)  # doc_id -> lm-eval's doc_hash
    n_original: int | None = None
    n_effective: int | None = None
    limit: Any = None
    dataset: str | None = None
    aggregated: dict = field(default_factory=dict)

    @property
    def has_samples(self) -> bool:
        return bool(self.metrics or self.pairs)

    @property
    def n_items(self) -> int:
        ids = set()
        for d in list(self.metrics.values()) + list(self.pairs.values()):
            ids |= set(d)
        return len(ids)


@dataclass
class SetInfo:
    """One neuron-set file named in ``neurons=``."""

    spec: str
    path: Path | None = None
    neuron_set: Any = None  # culnig_lm_eval.neuron_set.NeuronSet or None
    error: str | None = None

    @property
    def meta(self) -> dict:
        return (self.neuron_set.meta if self.neuron_set is not None else None) or {}

    @property
    def stem(self) -> str:
        return Path(self.spec).stem

    @property
    def method(self):
        return self.meta.get("method")

    @property
    def selection(self):
        return self.meta.get("selection")

    @property
    def culture(self):
        c = self.meta.get("culture")
        return str(c) if c not in (None, "") else None

    @property
    def is_random(self) -> bool:
        return self.method == "random"

    @property
    def random_draw(self) -> str:
        """How a random set was drawn: "uniform" (the reference's draw over all neurons pooled)
        or "layer-matched" (the same count per layer and module kind)."""
        return "uniform" if str(self.selection or "").startswith("random-uniform") else "layer-matched"

    @property
    def seed(self):
        return (self.meta.get("hyperparameters") or {}).get("seed")

    @property
    def matched_to(self) -> dict | None:
        m = (self.meta.get("provenance") or {}).get("size_matched_to")
        return m if isinstance(m, dict) else None


@dataclass
class Condition:
    """One model_args (a masking condition of a base model) and its newest task records."""

    key: str
    base_key: str
    base_model: str
    model_args: dict[str, str]
    model_type: str | None = None
    sets: list[SetInfo] = field(default_factory=list)
    tasks: dict[str, TaskRecords] = field(default_factory=dict)
    label: str = ""
    kind: str = "unmasked"  # "unmasked" | "set" | "random"
    group: str | None = None  # random: key of the condition it is matched to (or a label)
    group_label: str | None = None
    seed: Any = None
    ablation: dict = field(default_factory=dict)  # config.model_info.culnig_ablation of a masked run

    @property
    def neuron_counts(self) -> list[int]:
        """Neurons masked according to the results files and the readable set files (may be empty)."""
        counts = [len(s.neuron_set) for s in self.sets if s.neuron_set is not None]
        recorded = self.ablation.get("neurons")
        if isinstance(recorded, int) and not isinstance(recorded, bool):
            counts.append(recorded)
        return counts

    @property
    def masks_nothing(self) -> bool:
        """A masked run whose neuron set(s) hold 0 neurons: it measured the unmasked model again."""
        return self.kind != "unmasked" and bool(self.neuron_counts) and min(self.neuron_counts) == 0

    @property
    def cultures(self) -> list[str]:
        return [s.culture for s in self.sets if s.culture]

    @property
    def is_general(self) -> bool:
        return self.kind == "set" and all(s.neuron_set is not None and not s.culture for s in self.sets)

    @property
    def results_files(self) -> list[Path]:
        return sorted({t.results_file for t in self.tasks.values()})


@dataclass
class Collection:
    conditions: list[Condition]
    skipped: dict[str, tuple[str, Path]]  # task -> (reason, file)
    notes: list[str]
    results_files: list[Path]


# ----------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------
def find_results_files(run_dirs) -> list[Path]:
    found = []
    for d in run_dirs:
        d = Path(d)
        if d.is_file() and RESULTS_RE.match(d.name):
            found.append(d)
        elif d.is_dir():
            found.extend(p for p in d.rglob("results_*.json") if p.is_file() and RESULTS_RE.match(p.name))
    return sorted(set(found))


def _read_json(path: Path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _num(v):
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return None


def load_samples(rec: TaskRecords) -> None:
    """Fill ``rec`` from its samples file (preferring filter ``none``)."""
    if rec.samples_file is None or not rec.samples_file.is_file():
        return
    def skip(line_no: int, err: json.JSONDecodeError):
        log.warning("%s:%d: unreadable sample line (%s)", rec.samples_file, line_no, err)

    rows = [row for _, row in read_json_lines(rec.samples_file, on_bad_line=skip)]
    filters = []
    for r in rows:
        f = r.get("filter", "none")
        if f not in filters:
            filters.append(f)
    rec.filters = filters
    if not filters:
        return
    chosen = "none" if "none" in filters else filters[0]
    rec.filter = chosen
    for r in rows:
        if r.get("filter", "none") != chosen or "doc_id" not in r:
            continue
        doc_id = r["doc_id"]
        rec.doc_hashes.setdefault(doc_id, r.get("doc_hash"))
        names = r.get("metrics")
        if not isinstance(names, list):
            names = [k for k in r if k not in SAMPLE_FIELDS]
        for name in names:
            v = r.get(name)
            x = _num(v)
            if x is not None:
                rec.metrics.setdefault(name, {}).setdefault(doc_id, x)
            elif isinstance(v, (list, tuple)) and len(v) == 2 and all(_num(u) is not None for u in v):
                rec.pairs.setdefault(name, {}).setdefault(doc_id, (float(v[0]), float(v[1])))
        doc = r.get("doc")
        if isinstance(doc, dict):
            c = doc.get("culture", doc.get("country"))
            if isinstance(c, str) and c:
                rec.cultures.setdefault(doc_id, c)


def resolve_set_path(spec: str, search: list[Path]) -> Path | None:
    p = Path(spec).expanduser()
    candidates = [p] if p.is_absolute() else []
    if not p.is_absolute():
        candidates.append(Path.cwd() / p)
        for base in search:
            candidates += [base / p, base / p.name]
    else:
        candidates += [base / p.name for base in search]
    for c in candidates:
        if c.is_file():
            return c
    return None


def load_set(spec: str, search: list[Path], cache: dict) -> SetInfo:
    path = resolve_set_path(spec, search)
    cache_key = str(path.resolve()) if path else f"missing:{spec}"
    if cache_key in cache:
        return cache[cache_key]
    info = SetInfo(spec=spec, path=path)
    if path is None:
        info.error = "file not found"
    else:
        try:
            from ..neuron_set import NeuronSet

            info.neuron_set = NeuronSet.load(path)
        except Exception as err:  # NeuronSetError or anything odd: fall back to the stem
            info.error = str(err)
    cache[cache_key] = info
    return info


def _search_dirs(results_file: Path, run_root: Path | None, sets_dir: Path | None) -> list[Path]:
    dirs = []
    if sets_dir is not None:
        dirs.append(Path(sets_dir))
    if run_root is not None:
        d = results_file.parent
        while True:
            dirs.append(d)
            if d == run_root or run_root not in d.parents:
                break
            d = d.parent
        dirs.append(run_root.parent)
    return dirs


def read_skipped(run_dirs) -> tuple[dict[str, tuple[str, Path]], list[str]]:
    skipped, notes = {}, []
    for d in run_dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for f in sorted(d.rglob("skipped.json")):
            try:
                data = _read_json(f)
            except Exception as err:
                notes.append(f"`{f}` could not be read ({err}); its skipped tasks are not listed.")
                continue
            if not isinstance(data, dict):
                notes.append(f"`{f}` is not a JSON object {{task: reason}}; ignored.")
                continue
            for task, reason in data.items():
                if not isinstance(reason, str):
                    reason = json.dumps(reason)
                skipped.setdefault(str(task), (reason, f))
    return skipped, notes


def _ablation_info(data: dict) -> dict | None:
    """What the masked run recorded about its neurons (``culnig_ablation``), wherever lm-eval put it."""
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    for holder in (config.get("model_info"), config, data.get("model_info")):
        if isinstance(holder, dict) and isinstance(holder.get("culnig_ablation"), dict):
            return holder["culnig_ablation"]
    return None


def collect(run_dirs, sets_dir=None) -> Collection:
    """Find every results file under ``run_dirs`` and build the conditions."""
    run_dirs = [Path(d) for d in run_dirs]
    notes: list[str] = []
    files = find_results_files(run_dirs)
    roots = [d.resolve() for d in run_dirs if d.is_dir()]
    # (condition key, task) -> (sort key, TaskRecords)
    newest: dict[tuple[str, str], tuple[tuple, TaskRecords]] = {}
    conds: dict[str, Condition] = {}
    set_cache: dict = {}
    for f in files:
        try:
            data = _read_json(f)
        except Exception as err:
            notes.append(f"`{f}` could not be read ({type(err).__name__}: {err}); ignored.")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
            notes.append(f"`{f}` is not an lm-eval results file (no 'results'); ignored.")
            continue
        date = RESULTS_RE.match(f.name).group("date")
        config = data.get("config") or {}
        args = recorded_model_args(config.get("model_args"))
        base = base_args(args)
        base_model = args.get("pretrained") or data.get("model_name") or config.get("model") or "unknown model"
        base_key = args_string(base) or f"model={base_model}"
        mask = masking_args(args)
        key = base_key + ("|" + args_string(mask) if mask else "|unmasked")
        if key not in conds:
            cond = Condition(key=key, base_key=base_key, base_model=str(base_model), model_args=args,
                             model_type=config.get("model"))
            if mask:
                root = next((r for r in roots if r == f.resolve().parent or r in f.resolve().parents), None)
                search = _search_dirs(f.resolve(), root, sets_dir)
                cond.sets = [load_set(s, search, set_cache) for s in mask["neurons"].split("+") if s]
            conds[key] = cond
        ablation = _ablation_info(data)
        if isinstance(ablation, dict):
            conds[key].ablation = ablation
        configs = data.get("configs") or {}
        tasks = list(configs) or [t for t in data["results"] if t in data.get("n-samples", {})] or list(data["results"])
        n_samples = data.get("n-samples") or {}
        mtime = f.stat().st_mtime
        for task in tasks:
            samples = f.parent / f"samples_{task}_{date}.jsonl"
            tcfg = configs.get(task) or {}
            ns = n_samples.get(task) or {}
            dataset = tcfg.get("dataset_path")
            if dataset and tcfg.get("dataset_name"):
                dataset = f"{dataset} ({tcfg['dataset_name']})"
            if not dataset and tcfg.get("custom_dataset"):  # e.g. "def blend(culture: ...) -> Any"
                m = re.search(r"(?:def|function)\s+([\w.]+)", str(tcfg["custom_dataset"]))
                dataset = f"custom_dataset {m.group(1) if m else str(tcfg['custom_dataset'])[:40]}"
            if dataset and tcfg.get("dataset_kwargs"):
                dataset = f"{dataset} {tcfg['dataset_kwargs']}"
            rec = TaskRecords(
                task=task, results_file=f, date=date, samples_file=samples if samples.is_file() else None,
                output_type=tcfg.get("output_type"), n_original=ns.get("original"), n_effective=ns.get("effective"),
                limit=config.get("limit"), dataset=str(dataset) if dataset else None,
                aggregated=data["results"].get(task) or {},
            )
            sort_key = (rec.samples_file is not None, date, mtime)
            old = newest.get((key, task))
            if old is None or sort_key > old[0]:
                newest[(key, task)] = (sort_key, rec)
    for (key, task), (_, rec) in sorted(newest.items()):
        load_samples(rec)
        conds[key].tasks[task] = rec
    skipped, skip_notes = read_skipped(run_dirs)
    notes += skip_notes
    conditions = list(conds.values())
    label_conditions(conditions)
    return Collection(conditions=conditions, skipped=skipped, notes=notes, results_files=files)


# ----------------------------------------------------------------------------------------
# labels
# ----------------------------------------------------------------------------------------
def describe_meta(meta: dict) -> str | None:
    """Label of a non-random set from its (summary) metadata, or None when it says too little."""
    culture = meta.get("culture")
    if culture:
        return str(culture)
    method, selection = meta.get("method"), meta.get("selection")
    if method == "set-algebra" and not selection:
        return None
    tag = selection or method
    held_out = f" without {meta['held_out']}" if meta.get("held_out") else ""  # leave-one-culture-out
    return f"general [{tag}]{held_out}" if tag else None


def _set_label(s: SetInfo) -> str:
    if s.neuron_set is None:
        return s.stem
    return describe_meta(s.meta) or s.stem


def _same_file(summary: dict, b: SetInfo) -> bool:
    """Does a ``size_matched_to`` summary (source path, maybe sha256) name the file of ``b``?"""
    if b.path is None:
        return False
    sha = summary.get("sha256")
    if sha:
        try:
            from .._io import file_sha256

            return file_sha256(b.path) == sha  # a recorded hash settles it: names repeat across folders
        except (OSError, ImportError):
            pass
    a = summary.get("source")
    if not a or a == "<memory>":
        return False
    pa = Path(a)
    try:
        if pa.is_file() and pa.resolve() == b.path.resolve():
            return True
    except OSError:
        pass
    if pa.exists():  # the recorded file is there, and it is another one
        return False
    return pa.name == b.path.name or pa.name == Path(b.spec).name


def _op_suffix(args: dict) -> str:
    op = args.get("operation")
    if op and op != "suppress":
        factor = args.get("factor")
        return f" [{op}" + (f" x{factor}" if factor not in (None, "", "None") else "") + "]"
    return ""


def label_conditions(conditions: list[Condition]) -> None:
    """Give every condition a label, a kind and (random sets) the group they are matched to."""
    by_base: dict[str, list[Condition]] = {}
    for c in conditions:
        by_base.setdefault(c.base_key, []).append(c)
    for group in by_base.values():
        for c in group:
            if not c.sets:
                c.kind, c.label = "unmasked", "unmasked"
            elif all(s.is_random for s in c.sets):
                c.kind = "random"
            else:
                c.kind = "set"
                c.label = " + ".join(_set_label(s) for s in c.sets) + _op_suffix(c.model_args)
        # culture sets sharing a label but not a selection/method: add the selection
        _disambiguate([c for c in group if c.kind == "set"],
                      lambda c: " + ".join(f"{_set_label(s)} [{s.selection or s.method or s.stem}]"
                                           if s.culture else _set_label(s) for s in c.sets) + _op_suffix(c.model_args))
        set_conds = [c for c in group if c.kind == "set"]
        for c in group:
            if c.kind != "random":
                continue
            matched_keys, matched_labels = [], []
            for s in c.sets:
                m = s.matched_to or {}
                hit = next((t for t in set_conds if len(t.sets) == 1 and _same_file(m, t.sets[0])), None)
                if hit is None:  # same metadata, different path
                    hit = next((t for t in set_conds if len(t.sets) == 1 and t.sets[0].neuron_set is not None
                                and all(t.sets[0].meta.get(k) == m.get(k)
                                        for k in ("method", "selection", "culture", "held_out"))
                                and m), None)
                if hit is not None:
                    matched_keys.append(hit.key)
                    matched_labels.append(hit.label)
                elif m:
                    lab = describe_meta(m) or (Path(m["source"]).stem if m.get("source") else "unknown set")
                    matched_keys.append("meta:" + lab)
                    matched_labels.append(lab)
            seeds = sorted({str(s.seed if s.seed is not None else s.stem) for s in c.sets})
            c.seed = c.sets[0].seed if len(seeds) == 1 else None
            seed_txt = f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + "/".join(seeds)
            # the label says how the set was drawn; draws matched to the same set share one baseline
            seed_txt = "/".join(sorted({s.random_draw for s in c.sets})) + f" {seed_txt}"
            if matched_labels:
                c.group = "+".join(matched_keys)
                c.group_label = " + ".join(matched_labels)
                c.label = f"random {seed_txt} (matched to {c.group_label})" + _op_suffix(c.model_args)
            else:
                c.group, c.group_label = "unmatched", "no recorded source"
                c.label = f"random {seed_txt}" + _op_suffix(c.model_args)
        _disambiguate(group, lambda c: c.label + f" ({_diff_args(c, group)})")


def _diff_args(c: Condition, group: list[Condition]) -> str:
    same = [o for o in group if o.label == c.label]
    keys = sorted({k for o in same for k in o.model_args})
    differing = [k for k in keys if len({o.model_args.get(k) for o in same}) > 1]
    return ",".join(f"{k}={c.model_args.get(k)}" for k in differing) or c.key


def _disambiguate(conds: list[Condition], relabel) -> None:
    seen: dict[str, list[Condition]] = {}
    for c in conds:
        seen.setdefault(c.label, []).append(c)
    for same in seen.values():
        if len(same) > 1:
            new = {id(c): relabel(c) for c in same}
            for c in same:
                c.label = new[id(c)]
