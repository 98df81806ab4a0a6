"""The _gen tasks (answers by generation): the label parser, the per-item metrics, the task files
through lm-eval (ls, validate, a masked tiny-model run) and the report's side-by-side columns."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from cli_inprocess import run_console

from culnig_lm_eval.taskdata import generation
from culnig_lm_eval.taskdata.generation import LETTERS, NORMAD_DIGITS, parse_label, score

GEN_TASKS = ["blend_gen_test", "culturalbench_gen", "cultural_norm_gen"]
ALL_GEN = ["blend_gen", "blend_gen_neur", "blend_gen_test", "blend_gen_korea", *GEN_TASKS[1:]]
OFFLINE = {"CULNIG_DATA": "sample", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------ the parser


@pytest.mark.parametrize("text, labels, prefix, expected", [
    # JSON: the BLEnD prefix plus what the model wrote after it, or the whole JSON written by the model
    ('A"}', LETTERS, generation.JSON_PREFIX, "A"),
    ("C", LETTERS, generation.JSON_PREFIX, "C"),  # stopped at the quote
    (' D. roasted barley tea"}', LETTERS, generation.JSON_PREFIX, "D"),
    ('"}', LETTERS, generation.JSON_PREFIX, None),  # closed the JSON without an answer
    ('Sure! {"answer_choice": "B"}', LETTERS, "", "B"),
    ('{"answer_choice":"B"} but A is also fine', LETTERS, "", "B"),  # only the JSON value is read
    ('{"answer_choice": ""} A', LETTERS, "", None),
    # digits
    (" 2", NORMAD_DIGITS, "", "2"),
    ("3.\n\nThe story", NORMAD_DIGITS, "", "3"),
    ("I would say 1", NORMAD_DIGITS, "", "1"),
    ("1 or 2", NORMAD_DIGITS, "", "1"),  # the first word decides
    ("between 1 and 3", NORMAD_DIGITS, "", None),  # two labels, neither first
    ("5", NORMAD_DIGITS, "", None),  # not an option
    ("12", NORMAD_DIGITS, "", None),  # a number, not the label 1
    ("yes", NORMAD_DIGITS, "", None),  # a word where a number was asked for
    # letters: case, punctuation, extra text
    (" B", LETTERS, "", "B"),
    ("(C) Grey", LETTERS, "", "C"),
    ("**D**", LETTERS, "", "D"),
    ("The answer is C", LETTERS, "", "C"),
    ("A common dish", LETTERS, "", "A"),  # first word: as the reference's first token would
    ("b", LETTERS, "", "B"),  # a lone lower-case letter
    ("b)", LETTERS, "", "B"),
    ("a bowl of noodles", LETTERS, "", None),  # lower-case article, not an answer
    ("Answer: b", LETTERS, "", None),
    ("B or C", LETTERS, "", "B"),
    ("either B or C", LETTERS, "", None),
    ("E", LETTERS, "", None),
    ("", LETTERS, "", None),
    ("\n\n", LETTERS, "", None),
    ("Bread", LETTERS, "", None),  # a word starting with a label letter is not the label
    ("é B", LETTERS, "", "B"),
])
def test_parse_label_on_hand_written_outputs(text, labels, prefix, expected):
    assert parse_label(text, labels, prefix) == expected


def test_labels_must_be_digits_or_single_letters():
    with pytest.raises(ValueError, match="digit strings or single letters"):
        parse_label("yes", ["yes", "no"])


def slow_parse(text: str, labels, prefix: str = ""):
    """The documented rule written out character by character, without regular expressions."""
    full = prefix + text
    region = text
    key = '"answer_choice"'
    at = full.find(key)
    while at >= 0:  # the first occurrence of the key that a colon follows
        i = at + len(key)
        while i < len(full) and full[i].isspace():
            i += 1
        if i < len(full) and full[i] == ":":
            i += 1
            while i < len(full) and full[i].isspace():
                i += 1
            if i < len(full) and full[i] == '"':
                i += 1
            value = ""
            while i < len(full) and full[i] not in '"}\n':
                value += full[i]
                i += 1
            region = value
            break
        at = full.find(key, at + 1)
    words, word = [], ""
    for ch in region + " ":
        if ch.isascii() and ch.isalnum():
            word += ch
        elif word:
            words.append(word)
            word = ""
    for kind in (str.isdigit, str.isalpha):
        allowed = [label for label in labels if kind(label)]
        if not allowed or not words:
            continue
        if words[0] in allowed:
            return words[0]
        found = sorted({w for w in words if w in allowed})
        if len(found) == 1:
            return found[0]
        if kind is str.isalpha and len(words) == 1 and words[0].upper() in allowed:
            return words[0].upper()
    return None


def test_parser_matches_the_slow_reference_on_many_outputs():
    pieces = ["", " ", "A", "b", "C.", "2", "1 ", "x", '"', "}", "\n", ":", "answer", '"answer_choice"', " is ",
              "(", "D)", "3"]
    checked = 0
    for n in (1, 2, 3):
        for combo in itertools.product(pieces, repeat=n):
            text = "".join(combo)
            for labels in (LETTERS, NORMAD_DIGITS):
                for prefix in ("", generation.JSON_PREFIX):
                    assert parse_label(text, labels, prefix) == slow_parse(text, labels, prefix), (text, labels, prefix)
                    checked += 1
    assert checked > 20000


def test_score_counts_unreadable_answers_as_wrong():
    assert score(" B", "B", LETTERS) == {"acc": 1.0, "parse_failure": 0.0}
    assert score(" C", "B", LETTERS) == {"acc": 0.0, "parse_failure": 0.0}
    assert score("", "B", LETTERS) == {"acc": 0.0, "parse_failure": 1.0}


def test_process_results_take_the_gold_from_the_document():
    assert generation.process_blend({"gold": 2}, ['C"']) == {"acc": 1.0, "parse_failure": 0.0}
    assert generation.process_blend({"gold": 2}, ["no letter here"]) == {"acc": 0.0, "parse_failure": 1.0}
    assert generation.process_culturalbench({"gold": 0}, [" A. Long noodles"])["acc"] == 1.0
    for digit, label in zip(NORMAD_DIGITS, generation.NORMAD_LABELS):
        assert generation.process_normad({"label": label}, [f" {digit}"])["acc"] == 1.0
        assert generation.normad_target({"label": label}) == digit
    assert generation.process_normad({"label": "no"}, [" 1"]) == {"acc": 0.0, "parse_failure": 0.0}


# ------------------------------------------------------------------------------- the task files


@pytest.fixture(scope="module")
def gen_tasks():
    from lm_eval.tasks import TaskManager

    from culnig_lm_eval.taskdata import sources
    from culnig_lm_eval._startup import task_dir

    with pytest.MonkeyPatch.context() as mp:
        for key, value in OFFLINE.items():
            mp.setenv(key, value)
        sources._read.cache_clear()
        manager = TaskManager(include_defaults=False, include_path=str(task_dir()))
        tasks = manager.load(GEN_TASKS + ["blend_test", "culturalbench"])["tasks"]
        sources._read.cache_clear()
        return tasks


def test_gen_tasks_are_greedy_and_repeat_the_log_likelihood_items(gen_tasks):
    for name in GEN_TASKS:
        config = gen_tasks[name].config
        assert config.output_type == "generate_until"
        kwargs = config.generation_kwargs
        assert kwargs["do_sample"] is False and kwargs["temperature"] == 0.0 and kwargs["max_gen_toks"] <= 16
        names = [m["metric"] for m in config.metric_list]
        assert names == ["acc", "parse_failure"]
    assert gen_tasks["blend_gen_test"].config.gen_prefix == generation.JSON_PREFIX
    # same documents and the same context as the log-likelihood task: only the scoring differs
    for gen, loglik in (("blend_gen_test", "blend_test"), ("culturalbench_gen", "culturalbench")):
        a, b = gen_tasks[gen], gen_tasks[loglik]
        docs_a, docs_b = list(a.test_docs()), list(b.test_docs())
        assert docs_a == docs_b
        for doc in docs_a[:5]:
            ctx_a = a.fewshot_context(doc, 0, gen_prefix=a.doc_to_prefix(doc))
            ctx_b = b.fewshot_context(doc, 0, gen_prefix=b.doc_to_prefix(doc))
            assert ctx_a == ctx_b
            assert a.doc_to_target(doc) == b.doc_to_choice(doc)[b.doc_to_target(doc)]


def test_normad_gen_lists_numbered_options_and_targets_the_gold_number(gen_tasks):
    task = gen_tasks["cultural_norm_gen"]
    seen = set()
    for doc in task.test_docs():
        text = task.doc_to_text(doc)
        assert "1 = yes" in text and "2 = no" in text and "3 = neutral" in text and doc["Story"] in text
        target = task.doc_to_target(doc)
        assert target == str(["yes", "no", "neutral"].index(doc["label"]) + 1)
        seen.add(target)
    assert seen == set(NORMAD_DIGITS)


def test_lm_eval_lists_and_validates_the_gen_tasks():
    env = {**os.environ, **OFFLINE}
    listed = run_console(["lm_eval", "ls", "tasks"], env=env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    shown = set(listed.stdout.replace("|", " ").split())
    assert set(ALL_GEN) <= shown, sorted(set(ALL_GEN) - shown)
    valid = run_console(["lm_eval", "validate", "--tasks", ",".join(ALL_GEN)], env=env)
    assert valid.returncode == 0 and "All tasks found and valid" in valid.stdout + valid.stderr, valid.stderr[-2000:]


# ----------------------------------------------------- a tiny model through lm_eval, and the report


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """The stock lm_eval CLI on a tiny model: unmasked, and with every MLP gate neuron suppressed."""
    from tiny_models import save_tiny_llama

    from culnig_lm_eval.architectures import model_shape
    from culnig_lm_eval.neuron_set import NeuronSet, new_meta

    root = tmp_path_factory.mktemp("gen")
    checkpoint = save_tiny_llama(root / "tiny", num_hidden_layers=2, intermediate_size=64)
    from transformers import AutoConfig

    shape = model_shape(AutoConfig.from_pretrained(checkpoint))
    width = shape["widths"]["mlp_gate"]
    all_gates = NeuronSet({"mlp_gate": [list(range(width))] * shape["num_layers"]}, new_meta(shape, "test"))
    set_path = all_gates.save(root / "all_gates.pt")
    out = root / "runs"
    env = {**os.environ, **OFFLINE}
    tasks = ",".join(GEN_TASKS + ["blend_test", "culturalbench"])
    for extra in ("", f",neurons={set_path}"):
        proc = run_console(
            ["lm_eval", "--model", "masked-hf", "--model_args", f"pretrained={checkpoint},device=cpu{extra}",
             "--tasks", tasks, "--limit", "6", "--batch_size", "6", "--log_samples", "--output_path", str(out)], env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def read_runs(out: Path):
    """{masked?: {task: (aggregates, [sample rows])}}, read straight from lm-eval's files."""
    from culnig_lm_eval.report.collect import recorded_model_args

    runs = {}
    for results in sorted(out.rglob("results_*.json")):
        data = json.loads(results.read_text())
        masked = bool(recorded_model_args(data["config"]["model_args"]).get("neurons"))
        date = results.name[len("results_"):-len(".json")]
        for task in data["configs"]:
            rows = [json.loads(line) for line in (results.parent / f"samples_{task}_{date}.jsonl").read_text().splitlines()]
            runs.setdefault(masked, {})[task] = (data["results"][task], rows)
    return runs


def test_masked_tiny_model_run_gives_acc_and_parse_failure(tiny_runs):
    runs = read_runs(tiny_runs)
    assert set(runs) == {False, True}
    for masked, tasks in runs.items():
        for task in GEN_TASKS:
            aggregates, rows = tasks[task]
            assert len(rows) == 6
            for row in rows:
                assert row["acc"] in (0.0, 1.0) and row["parse_failure"] in (0.0, 1.0)
                assert not (row["acc"] and row["parse_failure"])  # an unreadable answer is never right
                labels = NORMAD_DIGITS if task == "cultural_norm_gen" else LETTERS
                prefix = generation.JSON_PREFIX if task.startswith("blend") else ""
                parsed = slow_parse(row["filtered_resps"][0], labels, prefix)
                assert row["parse_failure"] == float(parsed is None)
                assert row["acc"] == float(parsed is not None and parsed == str(row["target"]))
            for metric in ("acc", "parse_failure"):
                assert aggregates[f"{metric},none"] == pytest.approx(sum(r[metric] for r in rows) / len(rows))
    # suppressing every gate neuron changes what the model writes
    texts = {m: [r["filtered_resps"][0] for t in GEN_TASKS for r in runs[m][t][1]] for m in runs}
    assert texts[False] != texts[True]


def test_report_shows_loglik_and_generated_accuracy_side_by_side(tiny_runs, tmp_path):
    from culnig_lm_eval.report import build_report

    report = build_report([tiny_runs], tmp_path / "report", n_resamples=200).read_text()
    runs = read_runs(tiny_runs)
    assert "## Log-likelihood vs generation" in report
    for gen, loglik in (("blend_gen_test", "blend_test"), ("culturalbench_gen", "culturalbench"),
                        ("cultural_norm_gen", None)):
        heading = f"### Generation: {gen}" + (f" vs {loglik}" if loglik else "")
        assert heading + "\n" in report
        block = report.split(heading + "\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
        header = next(line for line in block.splitlines() if line.startswith("| condition"))
        assert [c.strip() for c in header.strip("|").split("|")][:5] == [
            "condition", "n", "acc (loglik)", "acc (generated)", "parse failure"]
        table = [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| condition")]
        assert len(table) == 2
        for line in table:
            cells = [c.strip() for c in line.strip("|").split("|")]
            masked = cells[0] != "unmasked"
            _, rows = runs[masked][gen]
            assert cells[3] == f"{sum(r['acc'] for r in rows) / len(rows):.4f}"
            assert cells[4] == f"{sum(r['parse_failure'] for r in rows) / len(rows):.4f}"
            if loglik:
                _, ll_rows = runs[masked][loglik]
                assert cells[2] == f"{sum(r['acc'] for r in ll_rows) / len(ll_rows):.4f}"
            else:
                assert cells[2] == "n/a"
            if masked:  # parse failure, masked - unmasked on the same items
                _, base = runs[False][gen]
                diff = (sum(r["parse_failure"] for r in rows) - sum(r["parse_failure"] for r in base)) / len(rows)
                assert cells[5] == f"{diff:+.4f}"
            else:
                assert cells[5] == "-"
    rows = json.loads((tmp_path / "report" / "report.json").read_text())["rows"]
    assert {r["task"] for r in rows if r["section"] == "generation"} == set(GEN_TASKS)


def test_generation_tasks_stay_out_of_the_pooled_cultural_items(tiny_runs):
    from culnig_lm_eval.report.analysis import Options, analyse
    from culnig_lm_eval.report.collect import collect

    ma = analyse(collect([tiny_runs]).conditions, Options(n_resamples=50))
    assert sorted(ma.generation_tasks) == sorted(GEN_TASKS)
    assert not set(ma.cultural_tasks) & set(GEN_TASKS)
    assert set(GEN_TASKS) <= set(ma.acc_tasks)  # still in the accuracy tables


def test_default_experiment_evaluates_its_gen_task_with_its_counterpart():
    from culnig_lm_eval.experiment.config import load_config
    from culnig_lm_eval.report.sections import loglik_counterpart

    plan = load_config(None).evaluate
    gen = plan.generation
    # the default job keeps one generation task (BLEnD; the other two are unreadable on a 135M model),
    # listed apart from the log-likelihood tasks that every set runs
    assert gen and set(gen) <= set(GEN_TASKS) and all(loglik_counterpart(t) != t for t in gen)
    assert not [t for t in plan.cultural if loglik_counterpart(t) != t]
    assert all(loglik_counterpart(t) in plan.cultural for t in gen)
    assert loglik_counterpart("blend_gen_korea") == "blend_korea"
    assert loglik_counterpart("blend_test") == "blend_test"
