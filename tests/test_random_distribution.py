"""Random baselines as a distribution (issue 11): the random sets the experiment draws and evaluates
for every set, and the report's drop-vs-random table, histogram and stability table.

The report half uses fake lm-eval output folders written by lm-eval's own tracker
(``test_report_build.write_run``); the per-item outcomes are chosen by hand and the expected
numbers are worked out in the comments.  The experiment half needs no model: it draws the random
sets from set files and plans the evaluations.
"""

import json
from pathlib import Path

import pytest

from culnig_lm_eval.experiment.config import ConfigError, EvaluationPlan, ExperimentConfig
from culnig_lm_eval.experiment.run import conditions, culture_random_sets
from culnig_lm_eval.neuron_set import NeuronSet, new_meta
from test_report_build import MODEL, PPL, UNMASKED, _row, _section, write_run

# ---- the report ---------------------------------------------------------------------------------
# blend_korea / blend_uk: 10 items each (unmasked 8/10 and 6/10); culture_mcq: docs 0-3 korea, 4-7 uk
KOREA = dict(UNMASKED, blend_korea="1111000000")  # own drop 0.4, uk unchanged -> gap 0.4 - 0 = 0.4
# korea's four random sets, (blend_korea, blend_uk): drops on korea's items and gaps (own - uk):
KOREA_RANDOM = [
    ("1111111000", "1111110000"),  # 0.1, gap 0.1 - 0.0 = 0.1
    ("1111111100", "1111100000"),  # 0.0, gap 0.0 - 0.1 = -0.1
    ("1111110000", "1111110000"),  # 0.2, gap 0.2
    ("1111000000", "1111100000"),  # 0.4 (a tie with the set), gap 0.4 - 0.1 = 0.3
]
# general: blend_korea 6/10, blend_uk 5/10 -> drop 3/20 = 0.15 on the 20 items of the random tasks
# (its culture_mcq change, which its random sets did not run, stays out of the comparison)
GENERAL = dict(UNMASKED, blend_korea="1111110000", blend_uk="1111100000", culture_mcq="00000000")
N_GENERAL_RANDOM = 20  # all unchanged but seed 3 (blend_korea 7/10: drop 1/20 = 0.05)


def _set(path: Path, indices: dict, culture, stability=None) -> NeuronSet:
    extra = {"stability": stability} if stability is not None else {}
    NeuronSet(indices, new_meta(MODEL, "culnig", selection="culnig-paper", culture=culture, **extra)).save(path)
    return NeuronSet.load(path)  # its source is the file: random sets record its hash


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("distribution")
    sets, runs = root / "sets", root / "runs"
    sets.mkdir()
    general = _set(sets / "general.pt", {"mlp_gate": [[0, 1], [2], [], [], [3], []]}, None,
                   {"halves_jaccard": 0.8, "seeds_jaccard": None, "threshold": 0.3, "unstable": False,
                    "note": "deterministic selection"})
    korea = _set(sets / "korea.pt", {"mlp_gate": [[1], [], [], [], [], [2, 3]]}, "korea",
                 {"halves_jaccard": 0.1, "seeds_jaccard": None, "threshold": 0.3, "unstable": True, "note": ""})
    tasks = {t: UNMASKED[t] for t in ("blend_korea", "blend_uk", "culture_mcq")}
    write_run(runs / "unmasked", {"pretrained": "tiny-model"}, tasks, PPL["unmasked"])
    write_run(runs / "masked", {"pretrained": "tiny-model", "neurons": str(sets / "general.pt")},
              {t: GENERAL[t] for t in tasks}, PPL["general"])
    write_run(runs / "masked", {"pretrained": "tiny-model", "neurons": str(sets / "korea.pt")},
              {t: KOREA[t] for t in tasks}, PPL["korea"])
    for seed, (bk, bu) in enumerate(KOREA_RANDOM):
        path = korea.random_like(seed).save(sets / f"korea-random{seed}.pt")
        write_run(runs / "random", {"pretrained": "tiny-model", "neurons": str(path)},
                  {"blend_korea": bk, "blend_uk": bu})
    for seed in range(N_GENERAL_RANDOM):
        path = general.random_like(seed).save(sets / f"random{seed}.pt")
        outcome = dict(tasks, blend_korea="1111111000") if seed == 3 else tasks
        write_run(runs / "random", {"pretrained": "tiny-model", "neurons": str(path)},
                  {t: outcome[t] for t in ("blend_korea", "blend_uk")}, PPL["random0" if seed == 3 else "random1"])
    from culnig_lm_eval.report import build_report

    path = build_report([runs], root / "report")
    return path, path.read_text()


def test_distribution_table_by_hand(report):
    _, text = report
    sec = _section(text, "## Specificity")
    # korea: drop 0.4; random drops 0.1, 0, 0.2, 0.4 -> mean 0.175, 5th pct 0.015, 95th 0.37;
    # empirical p = (1 + 1 tie) / (1 + 4) = 0.4; gap 0.4 vs random gaps 0.1, -0.1, 0.2, 0.3 -> mean 0.125,
    # 5th pct -0.1 + 0.15 * 0.2 = -0.07, 95th 0.2 + 0.85 * 0.1 = 0.285, gap p = (1 + 0) / 5 = 0.2
    row = _row(sec, "korea")
    assert row[1] == "items of korea (blend_korea)"  # culture_mcq: the random sets did not run it
    assert row[2:] == ["10", "+0.4000", "+0.1750", "+0.0150", "+0.3700", "4", "0.400 (n=4)",
                       "+0.4000", "+0.1250", "-0.0700", "+0.2850", "0.200 (n=4)"]
    # general: drop 0.15 on the 20 items of blend_korea + blend_uk; random drops 19 x 0 and one 0.05:
    # mean 0.0025, 5th pct 0, 95th pct 0.05 * 0.05 = 0.0025 (rank 18.05 of 0..19); p = (1 + 0) / 21 = 0.048
    row = _row(sec, "general [culnig-paper]")
    assert row[1] == "all per-culture items (blend_korea, blend_uk)"
    assert row[2:9] == ["20", "+0.1500", "+0.0025", "+0.0000", "+0.0025", "20", "0.048 (n=20)"]
    assert row[9:] == ["-"] * 5  # no gap for a culture-general set


def test_verdict_uses_the_empirical_p(report):
    _, text = report
    sec = _section(text, "## Specificity")
    general = _row(sec, "**general [culnig-paper]**")
    # the pooled Δ (all 28 per-culture items, culture_mcq's 8 included) and its McNemar p are shown ...
    assert general[2] == "28"
    # ... but the verdict is the empirical p: 1/21 < 0.05 and perplexity ratio exp(2/30) <= 1.1
    assert general[6] == "0.048 (n=20)"
    assert general[-1].startswith("specific: drop 0.1500, empirical p 0.048 < 0.05 among 20 random sets")
    korea = _row(sec, "**korea**")
    assert "drop 0.4000 is within its random sets' drops (empirical p 0.400 >= 0.05, n=4; " \
           "4 random sets allow no p below 0.200)" in korea[-1]


def test_histogram_figure(report):
    path, text = report
    figure = path.parent / "figures" / "tiny-model_random_drops.png"
    assert "](figures/tiny-model_random_drops.png)" in text
    data = figure.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_stability_table_flags_the_unstable_set(report):
    _, text = report
    sec = _section(text, "## Stability of the selected sets")
    assert _row(sec, "korea")[2:] == ["3", "0.100", "n/a", "**unstable (< 0.3)**", "-"]
    assert _row(sec, "general [culnig-paper]")[2:] == ["4", "0.800", "n/a", "stable (>= 0.3)",
                                                        "deterministic selection"]


def test_twenty_random_sets_are_summarised_but_kept_in_report_json(report):
    path, text = report
    runs = _section(text, "## Runs")
    assert "| 20 random sets (matched to general [culnig-paper]) | random |" in runs
    assert "random layer-matched seed 0 (matched to general [culnig-paper])" not in runs
    # korea's four are more than three: summarised too
    assert "| 4 random sets (matched to korea) | random |" in runs
    rows = json.loads((path.parent / "report.json").read_text())["rows"]
    dist = {r["set"]: r for r in rows if r["section"] == "random_distribution"}
    assert dist["korea"]["random_drops"] == pytest.approx([0.1, 0.0, 0.2, 0.4])
    assert dist["korea"]["empirical_p"] == pytest.approx(0.4) and dist["korea"]["gap_p"] == pytest.approx(0.2)
    assert dist["general [culnig-paper]"]["n_random"] == 20
    per_seed = [r for r in rows if r["section"] == "accuracy" and r["task"] == "blend_korea"
                and r["condition"].startswith("random")]
    assert len(per_seed) == 24  # every random set's row, though the tables summarise them
    # their perplexity ratios: one row, the range (seed 3: exp(0.3/30) = 1.0101, the others 1)
    assert "| 20 random sets (matched to general [culnig-paper]) | general_ppl |  |  |  |  | " \
           "1.0000 - 1.0101 (min - max) |  |" in text
    stability = {r["set"]: r for r in rows if r["section"] == "stability"}
    assert stability["korea"]["unstable"] is True and stability["korea"]["halves_jaccard"] == 0.1


# ---- the experiment: random sets drawn for every evaluated culture set --------------------------
SHAPE = {"name": "tiny", "model_type": "llama", "num_layers": 3, "widths": {"mlp_gate": 32, "mlp_up": 32}}


def _selection_folder(folder: Path) -> dict[str, Path]:
    """A selection as select_and_save leaves it: general, its random sets, culture sets (one empty)."""
    folder.mkdir(parents=True)
    sets = {"general": NeuronSet({"mlp_gate": [[0, 1, 2], [3], []]}, new_meta(SHAPE, "culnig", selection="paper")),
            "korea": NeuronSet({"mlp_gate": [[4], [], [5, 6]], "mlp_up": [[], [7], []]},
                               new_meta(SHAPE, "culnig", selection="paper", culture="korea")),
            "uk": NeuronSet({"mlp_gate": [[], [8, 9], []]}, new_meta(SHAPE, "culnig", selection="paper", culture="uk")),
            "iran": NeuronSet({"mlp_gate": [[], [], []]}, new_meta(SHAPE, "culnig", selection="paper", culture="iran"))}
    paths = {label: s.save(folder / f"{label}.pt") for label, s in sets.items()}
    general = NeuronSet.load(paths["general"])
    paths.update({f"random{seed}": general.random_like(seed).save(folder / f"random{seed}.pt") for seed in range(3)})
    return paths


def _config(**evaluate) -> ExperimentConfig:
    return ExperimentConfig.from_mapping({
        "model_args": "pretrained=x", "scoring": {"tasks": ["blend_cloze_neur"]}, "random_seeds": [0, 1, 2],
        "evaluate": {"cultural": ["blend_cloze_test"], "per_culture": ["blend_cloze_test"], "general": ["general_ppl"],
                     **evaluate}})


def test_every_evaluated_set_gets_one_random_set_per_seed(tmp_path):
    config = _config()
    sets = {"paper": _selection_folder(tmp_path / "sets" / "paper")}
    skipped = {}
    drawn = culture_random_sets(config, sets, tmp_path / "sets", False, skipped)
    # korea and uk get three each; iran holds no neuron, so its random sets would mask nothing
    assert set(drawn["paper"]) == {"korea", "uk"}
    assert "random sets of paper/iran" in skipped
    for label in ("korea", "uk"):
        files = drawn["paper"][label]
        assert sorted(files) == [f"{label}-random{seed}" for seed in (0, 1, 2)]
        own = NeuronSet.load(sets["paper"][label])
        for seed, path in enumerate(files.values()):
            random = NeuronSet.load(path)
            assert path.parent == tmp_path / "sets" / "paper" / "random"
            assert random.per_layer() == own.per_layer()  # same count per layer and module kind
            assert random.meta["provenance"]["size_matched_to"]["culture"] == label
            again = own.random_like(seed)  # deterministic by seed
            assert {k: [t.tolist() for t in v] for k, v in random.indices.items()} == \
                {k: [t.tolist() for t in v] for k, v in again.indices.items()}

    planned = conditions(config.evaluate, sets, drawn)
    # every evaluated set has exactly len(random_seeds) random sets, on the random tasks only
    per_set = {"general": [c for c in planned if c.label.startswith("paper/random") and "/random/" not in c.label]}
    for label in ("korea", "uk"):
        per_set[label] = [c for c in planned if c.label.startswith(f"paper/random/{label}-random")]
    assert {label: len(c) for label, c in per_set.items()} == {"general": 3, "korea": 3, "uk": 3}
    assert all(c.tasks == ["blend_cloze_test", "general_ppl"] for group in per_set.values() for c in group)
    # the sets come first, their random sets after them
    first_random = next(i for i, c in enumerate(planned) if "random" in c.label)
    assert all("random" in c.label for c in planned[first_random:])

    # a second run reuses the folder (its stamp matches); --force draws again
    stamp = tmp_path / "sets" / "paper" / "random" / "done.json"
    before = stamp.stat().st_mtime_ns
    assert culture_random_sets(config, sets, tmp_path / "sets", False, {}) == drawn
    assert stamp.stat().st_mtime_ns == before
    culture_random_sets(config, sets, tmp_path / "sets", True, {})
    assert stamp.stat().st_mtime_ns != before


def test_random_sets_follow_random_for_culture_sets_for_and_random_tasks(tmp_path):
    sets = {"paper": _selection_folder(tmp_path / "sets" / "paper")}
    config = _config(random_tasks=["blend_cloze_test"], random_draws=["layer-matched", "uniform"])
    drawn = culture_random_sets(config, sets, tmp_path / "sets", False, {})
    assert sorted(drawn["paper"]["korea"]) == sorted([f"korea-random{s}" for s in (0, 1, 2)]
                                                     + [f"korea-random-uniform{s}" for s in (0, 1, 2)])
    planned = conditions(config.evaluate, sets, drawn)
    assert all(c.tasks == ["blend_cloze_test"] for c in planned if "random" in c.label)
    # culture sets not evaluated, or their random sets not asked for: none drawn
    assert culture_random_sets(_config(culture_sets_for=[]), sets, tmp_path / "other", False, {}) == {}
    assert culture_random_sets(_config(random_for=[]), sets, tmp_path / "other", False, {}) == {}


def test_default_random_seeds_and_stability_fold():
    config = ExperimentConfig.from_mapping({
        "model_args": "pretrained=x", "scoring": {"tasks": ["blend_cloze_neur"]},
        "evaluate": {"per_culture": ["blend_cloze_test"], "general": ["general_ppl"]}})
    assert config.random_seeds == list(range(20))
    assert config.stability_fold == "0/2"
    assert config.evaluate.tasks_for_random_sets == ["blend_cloze_test", "general_ppl"]
    assert EvaluationPlan(per_culture=["a"], general=["b"], random_tasks=["a"]).tasks_for_random_sets == ["a"]
    off = ExperimentConfig.from_mapping({"model_args": "pretrained=x",
                                         "scoring": {"tasks": ["blend_cloze_neur"], "stability_fold": None},
                                         "evaluate": {}})
    assert off.stability_fold is None


@pytest.mark.parametrize("scoring, evaluate, needle", [
    ({"stability_fold": "2/2"}, {}, "scoring.stability_fold '2/2' must be I/K"),
    ({"stability_fold": "half"}, {}, "scoring.stability_fold 'half' must be I/K"),
    ({"stability_fold": 1}, {}, "scoring.stability_fold 1 must be I/K"),
    ({}, {"random_tasks": "blend_cloze_test"}, "evaluate.random_tasks must be a list of task names"),
    ({}, {"random_tasks": ["general_ppl"]}, "evaluate.random_tasks names task(s) the unmasked model does not run: "
                                            "general_ppl"),
])
def test_bad_random_tasks_and_stability_fold_are_one_line_errors(scoring, evaluate, needle):
    raw = {"model_args": "pretrained=x", "scoring": {"tasks": ["blend_cloze_neur"], **scoring},
           "evaluate": {"per_culture": ["blend_cloze_test"], **evaluate}}
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_mapping(raw, "c.yaml")
    message = str(err.value)
    assert needle in message and message.startswith("experiment config c.yaml: ") and "\n" not in message
