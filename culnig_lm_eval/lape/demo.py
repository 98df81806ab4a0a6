"""The LAPE study on BLEnD's annotations, from one call: corpora -> record -> identify -> combine -> intervene.

Culture corpora are English (each country's questions and answers in English), language
corpora are the native-language annotations grouped by language, so UK/US (English) and
Spain/Mexico (Spanish) let culture be told apart from language.  Output folder::

    RUN/corpora/   the texts read (culture|language / record|eval / <name>/text.txt + manifest.json)
    RUN/counts/    culture/<c>.counts.pt, language/<l>.counts.pt  (reused on re-runs)
    RUN/sets/      culture/<c>.pt, language/<l>.pt, pure/<c>.pt, compound/<c>.pt, generic.pt
    RUN/report/    intervention.md / .json, delta_nll.png, layers.png
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..checks import whole_number
from ..neuron_set import NeuronSet
from ..report.markdown import table
from .corpora import blend_annotation_corpora, language_corpora, parse_languages, token_rows
from .harness import CORPORA_LEGACY, write_corpora
from .identify import LapeHyperparameters
from .pipeline import (
    PUBLISHED_EVAL_TOKENS,
    REPORT_LEGACY,
    SETS_LEGACY,
    RecordSettings,
    analyse_intervention,
    combine,
    identify_sets,
    layer_thirds,
    record_corpora,
    render_intervention,
    row_length_for,
    set_layers,
    write_sets,
)

LANGUAGE_PREFIX = "lang-"  # evaluation columns of language texts: lang-en, lang-es, ...


@dataclass
class DemoConfig:
    annotations: Path
    model_args: str
    device: str | None = None
    eval_fraction: float = 0.2
    record: RecordSettings = field(default_factory=RecordSettings)
    hp: LapeHyperparameters = field(default_factory=LapeHyperparameters)
    eval_max_tokens: int | None = PUBLISHED_EVAL_TOKENS  # per evaluation corpus; None = all
    culture_languages: str | None = None

    def __post_init__(self):
        if self.eval_max_tokens is not None:
            whole_number(self.eval_max_tokens, f"--eval-max-tokens {self.eval_max_tokens}", least=1)


def _siblings(mapping: dict[str, str], cultures: list[str]) -> dict[str, list[str]]:
    """Cultures sharing a language: uk -> [usa], spain -> [mexico] ..."""
    return {c: [o for o in cultures if o != c and mapping[o] == mapping[c]] for c in cultures}


def _summary_lines(sets: dict[str, NeuronSet], result, mapping: dict[str, str], cultures: list[str]) -> list[str]:
    lines = ["", "## Where the neurons are", ""]
    lines += table(["set", "neurons", "shallow / middle / deep third of the layers"],
                   [[name, len(s), " / ".join(map(str, layer_thirds(s)))] for name, s in sets.items()], align="lr")
    siblings = _siblings(mapping, cultures)
    rows = []
    for kind in ("culture", "pure", "compound"):
        for c in cultures:
            for other in siblings[c]:
                name = f"{kind}/{c}"
                if name not in result.set_names or sets[name].is_empty:
                    continue
                row = result.delta[result.set_names.index(name)]
                own, oth = row[result.corpus_names.index(c)], row[result.corpus_names.index(other)]
                rows.append([name, f"{c}: {own:+.3f}", f"{other}: {oth:+.3f}", "yes" if own > oth else "no"])
    if rows:
        lines += ["", "## Same language, other culture", "",
                  "Masking a culture's set: does its own English text suffer more than the English text of the "
                  "culture that shares its language?", ""]
        lines += table(["set", "Δ NLL own culture", "Δ NLL sibling culture", "own > sibling"], rows)
    return lines


def run_demo(config: DemoConfig, out: Path, force: bool = False) -> Path:
    """The run folder ``out`` is written into: ``corpora/``, ``sets/`` and ``report/`` are replaced
    (each only when it holds nothing but an earlier output: checked first), ``counts/`` is reused,
    other files are kept."""
    from .._io import check_output_folder
    from ..model.lm import load_lm, model_label

    # every input is read and checked before the model loads
    for name, legacy in (("corpora", CORPORA_LEGACY), ("sets", SETS_LEGACY), ("report", REPORT_LEGACY)):
        check_output_folder(out / name, legacy=legacy, create_parent=False)
    mapping = parse_languages(config.culture_languages)
    built = blend_annotation_corpora(config.annotations, None, config.eval_fraction)
    cultures = [c.name for c in built["culture"]["record"]]
    missing = [c for c in cultures if c not in mapping]
    if missing:
        raise ValueError(f"no language for culture(s) {', '.join(missing)}: add them to --culture-languages")
    languages = {side: language_corpora(built["native"][side], mapping) for side in ("record", "eval")}
    write_corpora(out / "corpora", {"culture/record": built["culture"]["record"], "culture/eval": built["culture"]["eval"],
                                    "language/record": languages["record"], "language/eval": languages["eval"]},
                  {"culture_languages": mapping, "eval_fraction": config.eval_fraction,
                   "from": "BLEnD annotations (CC BY-SA 4.0)"})

    lm = load_lm(config.model_args, batch_size=1, device=config.device)
    model, tokenizer = lm.model.eval(), lm.tokenizer
    culture_counts = record_corpora(model, tokenizer, built["culture"]["record"], out / "counts" / "culture",
                                    config.record, force=force)
    language_counts = record_corpora(model, tokenizer, languages["record"], out / "counts" / "language",
                                     config.record, force=force)

    culture_sets = {s.meta["culture"]: s for s in identify_sets(culture_counts, config.hp)}
    language_sets = {s.meta["culture"]: s for s in identify_sets(language_counts, config.hp)}
    for lang, s in language_sets.items():  # a language set belongs to no culture
        s.meta.update(selection="lape-language", culture=None, language=lang)
    sets: dict[str, NeuronSet] = {f"culture/{c}": s for c, s in culture_sets.items()}
    sets.update({f"language/{lang}": s for lang, s in language_sets.items()})
    sets.update(combine(culture_sets, language_sets, mapping))
    write_sets(list(sets.values()), out / "sets", list(sets))

    from .intervene import delta_matrix

    length = row_length_for(config.record, model)
    rows = {c.name: token_rows(tokenizer, c.documents, length, max_tokens=config.eval_max_tokens,
                               drop_partial=True) for c in built["culture"]["eval"]}
    rows.update({f"{LANGUAGE_PREFIX}{c.name}": token_rows(tokenizer, c.documents, length,
                                                          max_tokens=config.eval_max_tokens, drop_partial=True)
                 for c in languages["eval"]})
    result = delta_matrix(model, sets, rows, config.record.batch_size)
    pairs = [(f"{kind}/{c}", c) for kind in ("culture", "pure", "compound") for c in cultures]
    pairs += [(f"language/{lang}", f"{LANGUAGE_PREFIX}{lang}") for lang in language_sets]
    payload = analyse_intervention(result, pairs, set_layers(sets),
                                   f"LAPE on BLEnD annotations: {model_label(config.model_args)}",
                                   extra=_summary_lines(sets, result, mapping, cultures))
    return render_intervention(payload, out / "report")
