"""culnig-report end to end on fake lm-eval output folders.

The folders are written by lm-eval's own ``EvaluationTracker`` (``save_results_aggregated`` and
``save_results_samples``, exactly as ``lm_eval --output_path DIR --log_samples`` calls them), so
the file names and JSON layout are the real ones.  The per-item outcomes below are chosen by
hand; the expected numbers in the asserts are worked out from them in the comments.
"""

import json
import math
import time
from pathlib import Path

import pytest

from culnig_lm_eval.neuron_set import NeuronSet, new_meta

MODEL = {"name": "tiny-model", "model_type": "llama", "num_layers": 6, "widths": {"mlp_gate": 16, "mlp_up": 16}}

# ---- per-item outcomes (acc) ----------------------------------------------------------------
# culture_mcq: docs 0-3 are korea, docs 4-7 are uk (doc["culture"])
UNMASKED = {
    "blend_korea": "1111111100",  # 8/10
    "blend_uk": "1111110000",  # 6/10
    "blend_mexico": "1111100000",  # 5/10
    "culture_mcq": "11101110",  # korea 3/4, uk 3/4
    "qnli": "1111100000",  # 5/10
}
GENERAL = {
    "blend_korea": "1111110000",  # 6/10: Δ -0.2, b=0, c=2 -> p = 2*C(2,0)/4 = 0.5
    "blend_uk": "1111100000",  # 5/10
    "blend_mexico": "1111000000",  # 4/10
    "culture_mcq": "11001100",  # korea 2/4, uk 2/4
    "qnli": "1111100000",  # unchanged
}
RANDOM0 = dict(UNMASKED, blend_korea="1111111000")  # one item lost on blend_korea
RANDOM1 = dict(UNMASKED)  # no change at all
KOREA = {
    "blend_korea": "1110001101",  # 6/10: Δ -0.2; b=1 (item 9), c=3 (items 3,4,5) -> p = 2*(1+4)/16 = 0.625
    "blend_uk": "1111110000",  # unchanged
    "blend_mexico": "1111110000",  # 6/10: Δ +0.1
    "culture_mcq": "10001110",  # korea 1/4 (Δ -0.5), uk unchanged
    "qnli": "1111000000",  # 4/10: Δ -0.1
}
UK = {
    "blend_korea": "1111111100",  # unchanged
    "blend_uk": "1100000000",  # 2/10: Δ -0.4; b=0, c=4 -> p = 2/16 = 0.125
    "blend_mexico": "1111100000",  # unchanged
    "culture_mcq": "11100000",  # korea unchanged, uk 0/4 (Δ -0.75)
    "qnli": "1111100000",
}
# general_ppl: 4 documents of 5, 5, 10, 10 words; loglikelihood per document
WORDS = [5, 5, 10, 10]
PPL = {
    "unmasked": [-10.0, -20.0, -30.0, -40.0],  # sum -100
    "general": [-10.5, -20.5, -30.5, -40.5],  # sum -102 -> ratio exp(2/30) = 1.0689
    "random0": [-10.0, -20.0, -30.0, -40.3],  # sum -100.3 -> ratio exp(0.3/30) = 1.0101
    "random1": [-10.0, -20.0, -30.0, -40.0],  # ratio 1
    "korea": [-12.5, -22.5, -32.5, -42.5],  # sum -110 -> ratio exp(10/30) = 1.3956
    # uk: general_ppl did not run
}


def _sample(doc_id, doc, acc):
    from lm_eval.utils import hash_string

    target = 0
    return {
        "doc_id": doc_id, "doc": doc, "target": target,
        "arguments": [("Question: ...\nAnswer:", " A"), ("Question: ...\nAnswer:", " B")],
        "resps": [[(-1.0, acc == 1)], [(-2.0, False)]], "filtered_resps": [(-1.0, acc == 1), (-2.0, False)],
        "filter": "none", "metrics": ["acc", "acc_norm"],
        "doc_hash": hash_string(json.dumps(doc, indent=2)), "prompt_hash": hash_string("Question: ...\nAnswer:"),
        "target_hash": hash_string(str(target)), "acc": float(acc), "acc_norm": float(acc),
    }


def _ppl_sample(doc_id, ll, words):
    from lm_eval.utils import hash_string

    doc = {"page": f"text {doc_id} " * words}
    return {
        "doc_id": doc_id, "doc": doc, "target": doc["page"], "arguments": [(doc["page"],)], "resps": [[ll]],
        "filtered_resps": [ll], "filter": "none", "metrics": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
        "doc_hash": hash_string(json.dumps(doc, indent=2)), "prompt_hash": hash_string(doc["page"]),
        "target_hash": hash_string(doc["page"]), "word_perplexity": (ll, words),
        "byte_perplexity": (ll, 10 * words), "bits_per_byte": (ll, 10 * words),
    }


def write_run(out: Path, model_args, outcomes: dict, ppl=None, model="masked-hf"):
    """One ``lm_eval --output_path out --log_samples`` run, written by lm-eval's tracker."""
    from lm_eval.loggers import EvaluationTracker

    samples, results, configs, n_samples = {}, {}, {}, {}
    for task, bits in outcomes.items():
        rows = []
        for i, ch in enumerate(bits):
            doc = {"question": f"{task} q{i}", "choices": ["A", "B"], "gold": 0}
            if task == "culture_mcq":
                doc["culture"] = "korea" if i < 4 else "uk"
            rows.append(_sample(i, doc, int(ch)))
        samples[task] = rows
        acc = sum(map(int, bits)) / len(bits)
        results[task] = {"alias": task, "acc,none": acc, "acc_stderr,none": 0.1, "acc_norm,none": acc,
                         "acc_norm_stderr,none": 0.1}
        configs[task] = {"task": task, "dataset_path": "local/blend-sample", "output_type": "multiple_choice",
                         "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}
        n_samples[task] = {"original": 20 if task == "blend_mexico" else len(bits), "effective": len(bits)}
    if ppl is not None:
        task = "general_ppl"
        samples[task] = [_ppl_sample(i, ll, w) for i, (ll, w) in enumerate(zip(ppl, WORDS))]
        wp = math.exp(-sum(ppl) / sum(WORDS))
        results[task] = {"alias": task, "word_perplexity,none": wp, "word_perplexity_stderr,none": "N/A"}
        configs[task] = {"task": task, "dataset_path": "local/wiki", "output_type": "loglikelihood_rolling"}
        n_samples[task] = {"original": len(ppl), "effective": len(ppl)}
    data = {
        "results": results, "group_subtasks": {t: [] for t in results}, "configs": configs,
        "versions": {t: 1.0 for t in results}, "n-shot": {t: 0 for t in results},
        "higher_is_better": {t: {"acc": True} for t in results}, "n-samples": n_samples,
        "config": {"model": model, "model_args": model_args, "batch_size": 1, "batch_sizes": [], "device": "cpu",
                   "use_cache": None, "limit": None, "bootstrap_iters": 0, "gen_kwargs": {}},
        "git_hash": None, "date": time.time(),
    }
    tracker = EvaluationTracker(output_path=str(out))
    tracker.general_config_tracker.log_experiment_args(
        model_source=model, model_args=model_args, system_instruction=None, chat_template=None,
        fewshot_as_multiturn=False)
    tracker.save_results_aggregated(results=data, samples=samples)
    for task in data["configs"]:
        tracker.save_results_samples(task_name=task, samples=samples[task])
    time.sleep(0.002)  # distinct date_id for the next run
    return tracker


def _make_sets(d: Path):
    d.mkdir(parents=True, exist_ok=True)
    # general: per-layer totals 2, 2, 0, 0, 3, 1 -> shallow (layers 0-1) 4, middle (2-3) 0, deep (4-5) 4
    general = NeuronSet(
        {"mlp_gate": [[0, 1], [2], [], [], [3, 4, 5], []], "mlp_up": [[], [1], [], [], [], [7]]},
        new_meta(MODEL, "culnig", selection="culnig-paper", culture=None))
    general.save(d / "general.pt")
    general = NeuronSet.load(d / "general.pt")  # so that its source is the file
    for seed in (0, 1):
        general.random_like(seed).save(d / f"random_general_s{seed}.pt")
    NeuronSet({"mlp_gate": [[1], [], [], [], [], [2, 3]]},
              new_meta(MODEL, "culnig", selection="culnig-paper", culture="korea")).save(d / "korea.pt")
    NeuronSet({"mlp_gate": [[], [], [4], [], [], []]},
              new_meta(MODEL, "culnig", selection="culnig-paper", culture="uk")).save(d / "uk.pt")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    sets = root / "sets"
    _make_sets(sets)
    runs = root / "runs"
    # an older unmasked run with other outcomes: the newer one below must win
    write_run(runs / "unmasked", {"pretrained": "tiny-model"}, {"blend_korea": "0000000000"})
    write_run(runs / "unmasked", {"pretrained": "tiny-model"}, UNMASKED, PPL["unmasked"], model="hf")
    # masked runs: model_args as a string (Python API style), relative set paths resolved with --sets-dir
    write_run(runs / "masked", "pretrained=tiny-model,neurons=sets/general.pt", GENERAL, PPL["general"])
    write_run(runs / "masked", "pretrained=tiny-model,neurons=sets/random_general_s0.pt", RANDOM0, PPL["random0"])
    write_run(runs / "masked", {"pretrained": "tiny-model", "neurons": "sets/random_general_s1.pt"}, RANDOM1,
              PPL["random1"])
    write_run(runs / "masked", f"pretrained=tiny-model,neurons={sets / 'korea.pt'}", KOREA, PPL["korea"])
    write_run(runs / "masked", "pretrained=tiny-model,neurons=uk.pt", UK)
    write_run(runs / "masked", "pretrained=tiny-model,neurons=does_not_exist.pt", {"blend_korea": "1111111100"})
    (runs / "skipped.json").write_text(json.dumps({"blend_cloze_mexico": "dataset not available offline"}))
    inst = root / "instances.jsonl"
    rows = [  # item (korea, food, 0): 0.5 - 0.2 > 0; (korea, food, 1): -0.3 < 0; (korea, sport, 2): 0.1 > 0
        {"set": "korea", "culture": "korea", "topic": "food", "doc_id": 0, "score": 0.5},
        {"set": "korea", "culture": "korea", "topic": "food", "doc_id": 0, "score": -0.2},
        {"set": "korea", "culture": "korea", "topic": "food", "doc_id": 1, "score": -0.3},
        {"set": "korea", "culture": "korea", "topic": "sport", "doc_id": 2, "score": 0.1},
        {"set": "korea", "culture": "uk", "topic": "food", "doc_id": 3, "score": -1.0},
    ]
    inst.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    from culnig_lm_eval.report import build_report

    out = root / "report"
    path = build_report([runs], out, sets_dir=sets, instance_scores=inst)
    return path, path.read_text(), runs, root


def _section(text: str, title: str) -> str:
    start = text.index(title)
    nxt = text.find("\n## ", start + 1)
    return text[start: nxt if nxt > 0 else len(text)]


def _row(text: str, first_cell: str) -> list[str]:
    for line in text.splitlines():
        if line.startswith(f"| {first_cell} |"):
            return [c.strip() for c in line.strip().strip("|").split(" | ")]
    raise AssertionError(f"no table row starting with {first_cell!r}")


def test_tracker_layout_is_the_stock_one(full):
    _, _, runs, _ = full
    model_dirs = sorted(p.name for p in runs.glob("*/*") if p.is_dir())
    assert model_dirs == ["tiny-model", "tiny-model"]
    files = sorted(p.name for p in (runs / "unmasked" / "tiny-model").iterdir())
    assert sum(f.startswith("results_") for f in files) == 2
    assert any(f.startswith("samples_blend_korea_") and f.endswith(".jsonl") for f in files)


def test_conditions_and_labels(full):
    _, text, _, _ = full
    runs = _section(text, "## Runs")
    for label in ("unmasked", "general [culnig-paper]", "random layer-matched seed 0 (matched to general [culnig-paper])",
                  "random layer-matched seed 1 (matched to general [culnig-paper])", "korea", "uk", "does_not_exist"):
        assert f"| {label} |" in runs, label
    # the sample caveat: blend_mexico ran on 10 of 20 documents
    assert "**Data caveat:** blend_mexico" in runs


def test_accuracy_table_numbers(full):
    _, text, _, _ = full
    sec = _section(text, "## Accuracy per task")
    korea_task = sec[sec.index("### blend_korea"):sec.index("### blend_mexico")]
    # newest unmasked run counts: 8/10 (the older run had 0/10)
    assert _row(korea_task, "unmasked")[1:3] == ["10", "0.8000"]
    # korea set: 6/10, Δ = 0.6 - 0.8 = -0.2, b/c = 1/3, p = 2*(C(4,0)+C(4,1))/16 = 0.625
    row = _row(korea_task, "korea")
    assert row[1:4] == ["10", "0.6000", "-0.2000"] and row[5:] == ["1 / 3", "0.625"]
    # the CI brackets the estimate
    lo, hi = (float(x) for x in row[4].strip("[]").split(","))
    assert lo <= -0.2 <= hi
    # general: 6/10, b/c = 0/2, p = 2*C(2,0)/4 = 0.5
    assert _row(korea_task, "general [culnig-paper]")[5:] == ["0 / 2", "0.5"]
    # random seeds: 0.7 (Δ -0.1) and 0.8 (Δ 0): mean 0.75, std sqrt(0.005) = 0.0707, Δ mean -0.05 [-0.1, 0]
    mean_row = _row(korea_task, "random mean over 2 seed(s) (matched to general [culnig-paper])")
    assert mean_row[2] == "0.7500 ± 0.0707 [0.7000, 0.8000]"
    assert mean_row[3] == "-0.0500 [-0.1000, +0.0000]"
    uk_task = sec[sec.index("### blend_uk"):sec.index("### culture_mcq")]
    # uk set on blend_uk: 2/10 vs 6/10 -> Δ -0.4, b/c 0/4, p = 2/16 = 0.125
    assert _row(uk_task, "uk")[3] == "-0.4000" and _row(uk_task, "uk")[5:] == ["0 / 4", "0.125"]
    assert "Metric: per-sample `acc`" in korea_task


def test_culture_matrix(full):
    _, text, _, _ = full
    sec = _section(text, "## Culture x culture")
    blend = sec[sec.index("### blend\n"):sec.index("### culture_mcq")]
    # mexico has no neuron set but is recognised as a culture of the blend_<culture> family
    assert "| masked set \\ culture | korea (n=10) | mexico (n=10) | uk (n=10) |" in blend
    assert _row(blend, "korea")[1:] == ["**-0.2000**", "+0.1000", "+0.0000"]
    # uk on its own culture: -0.4, p = 0.125 (no star)
    assert _row(blend, "uk")[1:] == ["+0.0000", "+0.0000", "**-0.4000**"]
    mcq = sec[sec.index("### culture_mcq"):]
    # doc["culture"] split: korea set on korea docs 1/4 vs 3/4 = -0.5; uk set on uk docs 0/4 vs 3/4 = -0.75
    assert "| masked set \\ culture | korea (n=4) | uk (n=4) |" in mcq
    assert _row(mcq, "korea")[1:] == ["**-0.5000**", "+0.0000"]
    assert _row(mcq, "uk")[1:] == ["+0.0000", "**-0.7500**"]


def test_neuron_location(full):
    _, text, _, _ = full
    sec = _section(text, "## Where the neurons are")
    assert "shallow = layers 0-1; middle = layers 2-3; deep = layers 4-5" in sec
    row = _row(sec, "general [culnig-paper]")
    # 6 mlp_gate + 2 mlp_up = 8 neurons; 8 / (16*6 + 16*6) = 4.167%; 6/96 = 6.250%, 2/96 = 2.083%
    assert row[4] == "8" and row[5] == "mlp_gate 6, mlp_up 2"
    assert row[6] == "mlp_gate 6.250%, mlp_up 2.083%" and row[7] == "4.167%"
    assert row[8:] == ["4 (50%)", "0 (0%)", "4 (50%)"]
    assert "random layer-matched seed 0 (matched to general [culnig-paper]): per-layer counts match general [culnig-paper]" in sec
    assert "`does_not_exist.pt`" in sec


def test_specificity(full):
    _, text, _, _ = full
    sec = _section(text, "## Specificity")
    assert "<= **1.1**" in sec  # threshold stated
    # general: all 38 per-culture items, unmasked 8+6+5+6 = 25, general 6+5+4+4 = 19 -> Δ = -6/38 = -0.1579;
    # b/c = 0/6 -> McNemar p = 2 / 2**6 = 0.03125 (shown, not used by the verdict)
    # random drops: seed 0 loses 1 item (1/38 = 0.0263), seed 1 none: empirical p = (1 + 0) / (1 + 2) = 0.333,
    # the smallest two random sets allow, so the set is not specific although its perplexity ratio
    # exp(2/30) = 1.0689 <= 1.1
    row = _row(sec, "**general [culnig-paper]**")
    assert row[2:4] == ["38", "-0.1579"]
    assert row[5] == "0.03125"
    assert row[6] == "0.333 (n=2)"
    assert row[7].startswith(f"{math.exp(2 / 30):.4f}")
    assert row[8] == "+0.0000"  # qnli unchanged
    assert row[-1] == ("not specific: drop 0.1579 is within its random sets' drops (empirical p 0.333 >= 0.05, "
                       "n=2; 2 random sets allow no p below 0.333)")
    # the distribution table: drops 0.0263 and 0 -> mean 0.0132, 5th pct 0.05 * 0.0263 = 0.0013, 95th 0.0250
    dist = _row(sec, "general [culnig-paper]")
    assert dist[2:9] == ["38", "+0.1579", "+0.0132", "+0.0013", "+0.0250", "2", "0.333 (n=2)"]
    # korea: items of korea = blend_korea (8 -> 6) + culture_mcq korea docs (3 -> 1): Δ = -4/14 = -0.2857;
    # perplexity ratio exp(10/30) = 1.3956 > 1.1 and no random baseline -> not specific
    row = _row(sec, "**korea**")
    assert row[2:4] == ["14", "-0.2857"] and row[6] == "no random baseline" and row[8] == "-0.1000"
    assert row[-1].startswith("not specific:")
    assert "no random baseline" in row[-1] and "general perplexity ratio 1.3956 > 1.1" in row[-1]
    # korea's gap: own drop 4/14 = 0.2857 minus the mean of mexico's (-0.1) and uk's (0) drops = 0.3357
    assert _row(sec, "korea")[9] == "+0.3357"
    # uk did not run general_ppl
    assert "no paired `general_ppl` records" in _row(sec, "**uk**")[-1]
    assert _row(sec, "random layer-matched seed 0 (matched to general [culnig-paper])")[-1] == "baseline"
    assert "](figures/tiny-model_random_drops.png)" in sec


def test_instances_and_skipped(full):
    _, text, _, _ = full
    inst = _section(text, "## Instance-level view")
    # korea/food: items 0 (0.5-0.2 = 0.3 > 0) and 1 (-0.3): 1 of 2 -> 0.500; korea/sport: 1 of 1
    assert _row(inst, "korea")[1:] == ["0.500 (n=2)", "1.000 (n=1)", "0.667 (n=3)"]
    assert _row(inst, "uk")[1:] == ["0.000 (n=1)", "-", "0.000 (n=1)"]
    skipped = _section(text, "## Skipped")
    assert "| blend_cloze_mexico | dataset not available offline |" in skipped


def test_figures_exist_and_are_png(full):
    path, text, _, _ = full
    figs = sorted((path.parent / "figures").glob("*.png"))
    names = {f.name for f in figs}
    for expected in ("tiny-model_accuracy.png", "tiny-model_accuracy_change.png",
                     "tiny-model_culture_matrix_blend.png", "tiny-model_culture_matrix_culture_mcq.png",
                     "tiny-model_neuron_layers.png", "tiny-model_specificity.png", "tiny-model_random_drops.png",
                     "instances_korea.png"):
        assert expected in names, expected
        assert f"](figures/{expected})" in text
    for f in figs:
        data = f.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, f


def test_report_json_has_traceable_rows(full):
    path, _, _, _ = full
    rows = json.loads((path.parent / "report.json").read_text())["rows"]
    hit = [r for r in rows if r.get("task") == "blend_korea" and r.get("condition") == "korea"]
    assert hit and hit[0]["diff"] == pytest.approx(-0.2) and hit[0]["mcnemar_p"] == 0.625
    # the per-sample means agree with the aggregates lm-eval wrote into the results files
    assert "Check: every per-sample mean used here equals lm-eval's aggregate" in path.read_text()


def test_missing_parts_degrade(tmp_path):
    """Only unmasked + one general set on one task: no culture sets, no ppl, no randoms."""
    sets = tmp_path / "sets"
    sets.mkdir()
    NeuronSet({"mlp_gate": [[0], [], [], [], [], []]},
              new_meta(MODEL, "culnig", selection="culnig-paper")).save(sets / "g.json")
    runs = tmp_path / "runs"
    write_run(runs, {"pretrained": "tiny-model"}, {"arc_easy": "1100"})
    write_run(runs, {"pretrained": "tiny-model", "neurons": str(sets / "g.json")}, {"arc_easy": "1000"})
    from culnig_lm_eval.report import build_report

    text = build_report([runs], tmp_path / "out").read_text()
    assert "No per-culture task ran" in text
    assert "no general-perplexity task ran" in text
    assert "no random baseline ran" in text
    assert "No `--instance-scores` file was given" in text
    assert "No `skipped.json`" in text
    # Δ = 1/4 - 2/4 = -0.25; b/c = 0/1 -> p = 2 * 1/2 = 1.0
    task = text[text.index("### arc_easy"):]
    assert _row(task, "general [culnig-paper]")[1:] == ["4", "0.2500", "-0.2500", _row(task, "general [culnig-paper]")[4],
                                                     "0 / 1", "1"]
    assert "not specific: no random baseline to compare with; no general-perplexity task ran" in text
    assert (tmp_path / "out" / "figures" / "tiny-model_accuracy.png").stat().st_size > 0


def test_cli_help(capsys):
    from culnig_lm_eval.cli.report import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--sets-dir" in out and "--instance-scores" in out and "--ppl-threshold" in out


def test_two_models_one_without_unmasked(tmp_path):
    """Runs of two base models are reported apart; a model without an unmasked run still builds."""
    sets = tmp_path / "sets"
    sets.mkdir()
    NeuronSet({"mlp_gate": [[0], [], [], [], [], []]},
              new_meta(MODEL, "culnig", selection="culnig-paper", culture="korea")).save(sets / "k.pt")
    runs = tmp_path / "runs"
    write_run(runs / "a", {"pretrained": "model-a"}, {"blend_korea": "1100", "blend_uk": "1010"})
    write_run(runs / "a", {"pretrained": "model-a", "neurons": str(sets / "k.pt")}, {"blend_korea": "0100",
                                                                                    "blend_uk": "1010"})
    write_run(runs / "b", {"pretrained": "model-b", "neurons": str(sets / "k.pt")}, {"blend_korea": "1111"})
    from culnig_lm_eval.report import build_report

    text = build_report([runs], tmp_path / "out").read_text()
    assert "## Model `model-a`" in text and "## Model `model-b`" in text
    a = text[text.index("## Model `model-a`"):text.index("## Model `model-b`")]
    b = text[text.index("## Model `model-b`"):]
    # model-a, korea set: blend_korea 1/4 vs 2/4 -> -0.25 on its own culture, 0 on uk
    assert _row(a[a.index("### Culture x culture"):], "korea")[1:] == ["**-0.2500**", "+0.0000"]
    assert "**No unmasked run of this model was found**" in b
    assert (tmp_path / "out" / "figures" / "model-a_culture_matrix_blend.png").is_file()
