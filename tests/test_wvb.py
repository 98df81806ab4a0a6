"""WorldValuesBench (``wvb`` tasks, culnig_lm_eval/taskdata/wvb.py): question selection by divergence, the
alignment metric, the harness wiring (validate, ls, a run, culnig-score) and bad data files."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from cli_inprocess import run_console, run_module

from culnig_lm_eval.taskdata import wvb
from culnig_lm_eval._startup import task_dir
from culnig_lm_eval.taskdata.sources import DataError

SAMPLE = task_dir() / "wvb" / "sample"
BIN = Path(sys.executable).parent
CULTURE_OF_COUNTRY = {"China": "china", "Indonesia": "indonesia", "Iran": "iran", "Mexico": "mexico",
                      "South Korea": "korea", "Great Britain": "uk", "United States": "usa"}


@pytest.fixture(autouse=True)
def fresh(fresh_data_state):  # tests/conftest.py, plus this module's own cache
    wvb.survey.cache_clear()
    wvb._warn_sample.cache_clear()
    yield
    wvb.survey.cache_clear()


def offline_env(**extra) -> dict:
    return {**os.environ, "CULNIG_DATA": "sample", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", **extra}


# ------------------------------------------------------------------- selection, independently


def slow_selection(folder: Path, min_responses=10, cut=40) -> dict[str, tuple[list[str], list[str], dict]]:
    """culture -> (neur question ids, test question ids, {qid: majority}), recomputed from the files
    with plain loops: KL(country || all) over answers both have, descending, ties by question number.
    Every non-empty cell is an answer (as the CULNIG reference reads the prepared files), except a
    negative value off the question's scale (a WVS missing code, emptied by WorldValuesBench's
    preparation)."""
    meta = json.loads((folder / "question_metadata.json").read_text())
    with (folder / "full_demographic_qa.tsv").open(newline="") as fh:
        country_of = {r["D_INTERVIEW"]: r["B_COUNTRY"] for r in csv.DictReader(fh, delimiter="\t")}
    with (folder / "full_value_qa.tsv").open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    questions = [q for q in meta if q.startswith("Q") and q[1:].isdigit() and 1 <= int(q[1:]) <= 259]
    every = defaultdict(lambda: defaultdict(int))
    per = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    first_seen = defaultdict(dict)  # (country, q) -> answer -> row index it first appeared at
    for index, row in enumerate(rows):
        country = country_of.get(row["D_INTERVIEW"])
        for q in questions:
            if row.get(q, "") == "":
                continue
            answer = int(float(row[q]))
            if answer < 0 and not meta[q]["answer_scale_min"] <= answer <= meta[q]["answer_scale_max"]:
                continue
            every[q][answer] += 1
            if country is not None:
                per[country][q][answer] += 1
                first_seen[(country, q)].setdefault(answer, index)
    result = {}
    for country, culture in CULTURE_OF_COUNTRY.items():
        scored = []
        for q in questions:
            own, alls = per[country][q], every[q]
            n_own, n_all = sum(own.values()), sum(alls.values())
            if n_own < min_responses or n_all < min_responses:
                continue
            kl = sum((own[a] / n_own) * math.log((own[a] / n_own) / (alls[a] / n_all))
                     for a in own if own[a] and alls[a])
            top = max(own.values())
            majority = min((a for a in own if own[a] == top), key=lambda a: first_seen[(country, q)][a])
            scored.append((-kl, int(q[1:]), q, majority))
        scored.sort()
        ids = [q for _, _, q, _ in scored]
        result[culture] = (ids[:cut], ids[cut:], {q: m for _, _, q, m in scored})
    return result


def ids_of(dataset, culture, variant=0) -> list[str]:
    return [d["question_id"] for d in dataset if d["culture"] == culture and d["variant"] == variant]


def test_selection_by_divergence_matches_an_independent_computation():
    expected = slow_selection(SAMPLE)
    neur = wvb.wvb(questions="neur")["test"]
    test = wvb.wvb(questions="test")["test"]
    assert sorted(set(neur["culture"])) == sorted(CULTURE_OF_COUNTRY.values())
    for culture, (neur_ids, test_ids, majority) in expected.items():
        assert len(neur_ids) == 40 and test_ids, culture
        for variant in range(4):  # 2 personas x 2 instructions, the same questions in each
            assert ids_of(neur, culture, variant) == neur_ids
            assert ids_of(test, culture, variant) == test_ids
        for doc in (d for d in neur if d["culture"] == culture):
            assert doc["majority"] == majority[doc["question_id"]]
            assert doc["options"][doc["gold"]] == str(doc["majority"])
    # Iran left Q3 unanswered 4 times in the fixture: 8 answers, under the 10 a question needs
    assert "Q3" not in expected["iran"][0] + expected["iran"][1]
    assert len(test.filter(lambda d: d["culture"] == "iran")) == 4 * len(expected["iran"][1])


def test_germany_counts_towards_all_countries_only(tmp_path):
    """The all-country distribution includes every respondent (Germany too), as in the reference."""
    with_germany = wvb.wvb(culture="uk")["test"]
    folder = Path(shutil.copytree(SAMPLE, tmp_path / "no-germany"))
    values = (folder / "full_value_qa.tsv").read_text().splitlines()
    kept = [line for line in values if not line.startswith("276")]  # Germany's interview ids
    assert len(kept) == len(values) - 12
    (folder / "full_value_qa.tsv").write_text("\n".join(kept) + "\n")
    without = wvb.wvb(culture="uk", wvb=str(folder))["test"]
    assert with_germany["divergence"] != without["divergence"]
    expected = slow_selection(folder)["uk"]
    assert ids_of(without, "uk") == expected[0] + expected[1]


def test_options_of_the_split():
    all_uk = wvb.wvb(culture="uk")["test"]
    assert ids_of(wvb.wvb(culture="uk", neuron_questions=5, questions="neur")["test"], "uk") == ids_of(all_uk, "uk")[:5]
    assert ids_of(wvb.wvb(culture="uk", neuron_questions="5", questions="test")["test"], "uk") == ids_of(all_uk, "uk")[5:]
    fewer = wvb.wvb(culture="iran", min_responses=8)["test"]
    assert "Q3" in ids_of(fewer, "iran")
    with pytest.raises(ValueError, match="questions must be all, neur or test"):
        wvb.wvb(questions="train")
    with pytest.raises(ValueError, match="neuron_questions"):
        wvb.wvb(neuron_questions=-1)


def test_documents_carry_persona_prompt_and_scale():
    doc = wvb.wvb(culture="usa", questions="test")["test"][0]
    assert "United States" in doc["persona"]  # WVB's B_COUNTRY spelling names the country
    assert f"from {doc['scale_min']} to {doc['scale_max']}" in doc["prompt"]
    assert doc["options"] == [str(o) for o in range(doc["scale_min"], doc["scale_max"] + 1)]
    assert sum(json.loads(doc["distribution"]).values()) == doc["responses"] >= 10
    variants = {d["variant"]: (d["persona"], d["prompt"]) for d in wvb.wvb(culture="usa")["test"]
                if d["question_id"] == doc["question_id"]}
    assert sorted(variants) == [0, 1, 2, 3] and len(set(variants.values())) == 4


# ------------------------------------------------------------------------------------- metric


@pytest.mark.parametrize("answer, gold, low, high, expected", [
    (2, 2, 1, 4, 100.0),
    (1, 2, 1, 4, 50.0),          # 1 - 1/max(1, 2)
    (4, 2, 1, 4, 0.0),           # the farthest end
    (3, 2, 1, 4, 50.0),
    (6, 3, 1, 10, 100 * (1 - 3 / 7)),
    (1, 1, 1, 2, 100.0),
    (2, 1, 1, 2, 0.0),
    (5, 2, 1, 4, 0.0),           # off the scale
    (0, 2, 1, 4, 0.0),
])
def test_alignment_by_hand(answer, gold, low, high, expected):
    assert wvb.alignment(answer, gold, low, high) == pytest.approx(expected)


def test_process_results_takes_the_most_likely_option():
    doc = {"id": "d", "options": ["1", "2", "3", "4"], "majority": 2, "gold": 1, "scale_min": 1, "scale_max": 4}
    assert wvb.process_results(doc, [(-3.0, False), (-2.0, False), (-1.0, True), (-5.0, False)]) == \
        {"alignment": 50.0, "acc": 0.0}
    assert wvb.process_results(doc, [(-3.0, False), (-0.5, True), (-1.0, False), (-5.0, False)]) == \
        {"alignment": 100.0, "acc": 1.0}
    with pytest.raises(ValueError, match="finite"):
        wvb.process_results(doc, [(-3.0, False), (math.nan, False), (-1.0, False), (-5.0, False)])
    items = [wvb.process_results(doc, r) for r in ([(-1, 0), (-2, 0), (-3, 0), (-4, 0)],
                                                   [(-4, 0), (-3, 0), (-2, 0), (-1, 0)])]
    assert sum(i["alignment"] for i in items) / 2 == pytest.approx(25.0)  # (50 + 0) / 2, the task's mean


# ------------------------------------------------------------------------------ the harness


def test_prompt_and_gold_request():
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_defaults=False, include_path=str(task_dir()))
    task = manager.load(["wvb_uk"])["tasks"]["wvb_uk"]
    doc = task.test_docs()[0]
    context = task.fewshot_context(doc, 0)
    assert context.index(doc["persona"]) < context.index(doc["prompt"]) and context.endswith("\nAnswer:")
    requests = task.construct_requests(doc, context)
    assert [r.arguments[1] for r in requests] == [f" {o}" for o in doc["options"]]
    assert requests[doc["gold"]].arguments[1] == f" {doc['majority']}"
    from culnig_lm_eval.taskdata.sources import task_sources

    assert task_sources(task)["wvb"]["kind"] == "sample"


def test_lm_eval_ls_and_validate():
    listed = run_console(["lm_eval", "ls", "tasks"], env=offline_env())
    assert listed.returncode == 0, listed.stderr
    for name in ("wvb", "wvb_neur", "wvb_test", "wvb_uk", "wvb_korea"):
        assert f" {name} " in listed.stdout or f"|{name}|" in listed.stdout.replace(" ", ""), name
    valid = run_console(["lm_eval", "validate", "--tasks", "wvb,wvb_neur,wvb_test"], env=offline_env())
    assert valid.returncode == 0, valid.stdout + valid.stderr


@pytest.mark.slow
def test_lm_eval_run_reports_alignment(tmp_path, tiny_llama_dir):
    """The suite's one run of the installed ``lm_eval`` console script in its own process: the .pth
    start-up hook, the registry entry and our task folder as a user's shell gets them."""
    out = tmp_path / "out"
    proc = subprocess.run([str(BIN / "lm_eval"), "run", "--model", "masked-hf", "--model_args",
                           f"pretrained={tiny_llama_dir},device=cpu,dtype=float32", "--tasks", "wvb,wvb_test",
                           "--limit", "2", "--output_path", str(out)],
                          capture_output=True, text=True, env=offline_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    for name in ("wvb", "wvb_test", "wvb_uk"):
        assert 0.0 <= results[name]["alignment,none"] <= 100.0, name
        assert 0.0 <= results[name]["acc,none"] <= 1.0, name
    assert results["wvb_test"]["alignment,none"] != results["wvb_test"]["acc,none"]


@pytest.mark.slow
def test_culnig_score_accepts_wvb_neur(tmp_path, tiny_llama_dir):
    from culnig_lm_eval.scoring.tables import load_table

    proc = run_module("culnig_lm_eval.cli.score", "run", "--model_args", f"pretrained={tiny_llama_dir},dtype=float32",
                      "--device", "cpu", "--tasks", "wvb_neur", "--limit", "3", "--no-select",
                      "--out", tmp_path / "scores", env=offline_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = load_table(tmp_path / "scores" / "task.scores.pt")
    assert int(table.counts.sum()) == 3  # one sample (the majority answer's request) per document
    assert all(bool(s.isfinite().all()) and float(s.abs().sum()) > 0 for s in table.scores.values())


# ------------------------------------------------------------------------------- bad data


def broken_copy(tmp_path, edit) -> Path:
    folder = Path(shutil.copytree(SAMPLE, tmp_path / "WorldValuesBench"))
    edit(folder)
    return folder


def replace_first_answer(folder: Path, new: str):
    path = folder / "full_value_qa.tsv"
    lines = path.read_text().splitlines()
    cells = lines[1].split("\t")
    cells[1] = new
    lines[1] = "\t".join(cells)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("edit, needle", [
    (lambda f: replace_first_answer(f, "often"), "line 2: Q1 is 'often', not a whole-number answer"),
    (lambda f: (f / "full_demographic_qa.tsv").write_text("D_INTERVIEW\tCOUNTRY\n1\tChina\n"),
     "missing column(s) B_COUNTRY"),
    (lambda f: (f / "full_value_qa.tsv").write_bytes(b"D_INTERVIEW\tQ1\n1\t\xff\n"), "not UTF-8"),
    (lambda f: (f / "question_metadata.json").write_text('{"Q1": {"question": "x", "answer_scale_min": 4, '
                                                         '"answer_scale_max": 1}}'), "answer_scale_min <"),
    (lambda f: (f / "full_value_qa.tsv").unlink(), "has no full_value_qa.tsv"),
])
def test_bad_files_raise_one_data_error(tmp_path, edit, needle):
    folder = broken_copy(tmp_path, edit)
    with pytest.raises(DataError) as info:
        wvb.wvb(wvb=str(folder))
    assert needle in str(info.value) and str(folder) in str(info.value)
    assert "\n" not in str(info.value)


def test_official_layout_with_full_subfolder(tmp_path):
    folder = tmp_path / "WorldValuesBench"
    (folder / "full").mkdir(parents=True)
    shutil.copy(SAMPLE / "question_metadata.json", folder)
    for name in ("full_demographic_qa.tsv", "full_value_qa.tsv"):
        shutil.copy(SAMPLE / name, folder / "full")
    assert wvb.wvb(wvb=str(folder))["test"]["id"] == wvb.wvb()["test"]["id"]


def test_hub_mode_says_there_is_no_hub_copy(monkeypatch):
    monkeypatch.setenv("CULNIG_DATA", "hub")
    with pytest.raises(DataError, match="no copy on the Hugging Face hub.*CULNIG_WVB"):
        wvb.wvb()


def test_auto_mode_without_a_folder_warns_once_and_reads_the_sample(monkeypatch, caplog):
    monkeypatch.setenv("CULNIG_DATA", "auto")
    with caplog.at_level("WARNING", logger="culnig_lm_eval.taskdata.wvb"):
        first = wvb.wvb(culture="uk")["test"]
        wvb.wvb(culture="china")
    warnings = [r for r in caplog.records if "SMALL INVENTED SAMPLE" in r.getMessage()]
    assert len(warnings) == 1 and "CULNIG_WVB" in warnings[0].getMessage()
    assert first["id"] == wvb.wvb(culture="uk", culnig_data="sample")["test"]["id"]


def test_bad_folder_stops_culnig_score_with_one_line_and_exit_2(tmp_path):
    folder = broken_copy(tmp_path, lambda f: replace_first_answer(f, "often"))
    proc = run_module("culnig_lm_eval.cli.score", "run", "--model_args", "pretrained=/no/such/model",
                      "--tasks", "wvb_neur", "--out", tmp_path / "s", env=offline_env(CULNIG_WVB=str(folder)))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "/no/such/model" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Q1 is 'often'" in errors[0] and str(folder) in errors[0]
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------ answers off the scale, negatives


def set_answers(folder: Path, question: str, country_prefix: str, answers: list[str]):
    """Overwrite ``question``'s cell for the first rows whose interview id starts with ``country_prefix``."""
    path = folder / "full_value_qa.tsv"
    lines = path.read_text().splitlines()
    column = lines[0].split("\t").index(question)
    todo = list(answers)
    for i, line in enumerate(lines[1:], start=1):
        cells = line.split("\t")
        if todo and cells[0].startswith(country_prefix):
            cells[column] = todo.pop(0)
            lines[i] = "\t".join(cells)
    assert not todo
    path.write_text("\n".join(lines) + "\n")


def test_answers_off_the_scale_are_kept_counted_and_can_be_the_majority(tmp_path, caplog):
    """WorldValuesBench's preparation keeps an ordinal answer off its scale (it prints it) and the
    CULNIG reference counts it: the load does not stop, the answer is in the distribution, and an
    off-scale majority is the gold, a last option scored as the reference scores that answer."""
    folder = Path(shutil.copytree(SAMPLE, tmp_path / "WorldValuesBench"))
    set_answers(folder, "Q1", "826", ["9"] * 9 + ["0"])  # the UK (826...): 9 of its Q1 answers are 9, one is 0
    with caplog.at_level("WARNING", logger="culnig_lm_eval.taskdata.wvb"):
        docs = wvb.wvb(culture="uk", wvb=str(folder))["test"]
    warned = [r.getMessage() for r in caplog.records if "outside their question's scale" in r.getMessage()]
    assert len(warned) == 1 and "Q1: 10" in warned[0]
    expected = slow_selection(folder)["uk"]
    assert ids_of(docs, "uk") == expected[0] + expected[1]
    q1 = next(d for d in docs if d["question_id"] == "Q1" and d["variant"] == 0)
    counts = json.loads(q1["distribution"])
    assert counts["9"] == 9 and counts["0"] == 1 and q1["responses"] == sum(counts.values())
    assert q1["majority"] == expected[2]["Q1"] == 9
    assert q1["options"] == ["1", "2", "3", "4", "9"] and q1["gold"] == 4
    # choosing the off-scale majority: right (acc), but off the scale (alignment 0), as the reference
    pick = lambda i: [(-1.0 if j == i else -9.0, j == i) for j in range(5)]  # noqa: E731
    assert wvb.process_results(q1, pick(4)) == {"alignment": 0.0, "acc": 1.0}
    assert wvb.process_results(q1, pick(3)) == {"alignment": pytest.approx((1 - 5 / 8) * 100), "acc": 0.0}
    # a question whose majority stays on the scale keeps exactly its scale's options
    other = next(d for d in docs if d["question_id"] == "Q2")
    assert other["options"] == [str(o) for o in range(other["scale_min"], other["scale_max"] + 1)]


def write_negative_scale_folder(root: Path) -> Path:
    """A WorldValuesBench folder in the official schema with one question on a -2..2 scale (none of
    the published questions has one; the reader must not take its negative answers for missing codes)."""
    root.mkdir()
    meta = {"D_INTERVIEW": {"question": "Interview identifier.", "category": "Technical Variables",
                            "use_case": "demographic", "answer_scale_min": "", "answer_scale_max": "",
                            "answer_data_type": "non_ordinal"},
            "B_COUNTRY": {"question": "Which country?", "category": "Technical Variables", "use_case": "demographic",
                          "answer_scale_min": "", "answer_scale_max": "", "answer_data_type": "non_ordinal"},
            "Q1": {"question": "How do you rate it, from -2 (very bad) to 2 (very good)?", "category": "Invented",
                   "use_case": "value", "answer_scale_min": -2, "answer_scale_max": 2, "answer_data_type": "ordinal"},
            "Q2": {"question": "How much does it matter?", "category": "Invented", "use_case": "value",
                   "answer_scale_min": 1, "answer_scale_max": 4, "answer_data_type": "ordinal"}}
    (root / "question_metadata.json").write_text(json.dumps(meta, indent=2))
    # UK: Q1 answers -2 x6, -1 x3, 1 x2, and -5 / -4 (WVS missing codes off the scale) x5
    uk_q1 = ["-2"] * 6 + ["-1"] * 3 + ["1"] * 2 + ["-5", "-4", "-5", "-4", "-5"]
    # China: Q1 answers 2 x8, 0 x5, -1 x3
    china_q1 = ["2"] * 8 + ["0"] * 5 + ["-1"] * 3
    demographic, values = ["D_INTERVIEW\tB_COUNTRY"], ["D_INTERVIEW\tQ1\tQ2"]
    for prefix, country, answers in (("826", "Great Britain", uk_q1), ("156", "China", china_q1)):
        for i, answer in enumerate(answers):
            interview = f"{prefix}{i:05d}"
            demographic.append(f"{interview}\t{country}")
            values.append(f"{interview}\t{answer}\t{1 + i % 4}")
    (root / "full_demographic_qa.tsv").write_text("\n".join(demographic) + "\n")
    (root / "full_value_qa.tsv").write_text("\n".join(values) + "\n")
    return root


def test_negative_answers_on_the_scale_are_answers_and_missing_codes_are_not(tmp_path):
    folder = write_negative_scale_folder(tmp_path / "wvb")
    data = wvb.survey(str(folder))
    assert data.by_country["Great Britain"]["Q1"] == {-2: 6, -1: 3, 1: 2}  # the missing codes left out
    assert data.everyone["Q1"] == {-2: 6, -1: 6, 1: 2, 2: 8, 0: 5}
    uk = wvb.wvb(culture="uk", wvb=str(folder), min_responses=10)["test"]
    q1 = next(d for d in uk if d["question_id"] == "Q1")
    assert q1["majority"] == -2 and q1["responses"] == 11  # with -2 dropped as "missing" it would be -1
    assert q1["options"] == ["-2", "-1", "0", "1", "2"] and q1["options"][q1["gold"]] == "-2"
    assert wvb.alignment(-2, -2, -2, 2) == 100.0 and wvb.alignment(2, -2, -2, 2) == 0.0
    china = wvb.wvb(culture="china", wvb=str(folder), min_responses=10)["test"]
    assert next(d for d in china if d["question_id"] == "Q1")["majority"] == 2
    # the slow reading agrees on what counts
    assert slow_selection(folder, min_responses=10)["uk"][2]["Q1"] == -2
