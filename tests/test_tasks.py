"""The harness tasks in tasks/: built through lm-eval's TaskManager on the shipped samples, the
topic join, the splits, CountryRC, and every way of pointing the tasks at data."""

from __future__ import annotations

import csv
import http.server
import json
import logging
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import datasets
import pytest
from conftest import sample_data_only

from culnig_lm_eval import cultures
from culnig_lm_eval.taskdata import builders, sources
from culnig_lm_eval._startup import task_dir

TARGETS = {"china", "indonesia", "iran", "mexico", "korea", "spain", "uk", "usa"}
NEUR = {"Food", "Work life", "Sport"}
TEST = {"Education", "Family", "Holidays/Celebration/Leisure"}
OURS = ["blend", "blend_neur", "blend_test", "blend_ctrl", "blend_cloze", "blend_cloze_neur",
        "blend_cloze_test", "blend_cloze_ctrl", "crc", "cultural_norm", "culturalbench"]
SAMPLE = task_dir() / "blend" / "sample"


pytestmark = pytest.mark.usefixtures("fresh_data_state")  # tests/conftest.py


@pytest.fixture(scope="module")
def loaded():
    """Every task of ours, loaded once through the stock TaskManager (which the .pth hook extends)."""
    from lm_eval.tasks import TaskManager

    with pytest.MonkeyPatch.context() as mp:
        sample_data_only(mp)
        tm = TaskManager()
        return tm, tm.load(OURS)


def quick_manager(**metadata):
    """A TaskManager over our task folder only: the same YAML, without indexing lm-eval's thousands."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False, include_path=str(task_dir()), metadata=metadata or None)


def requests(task) -> list[tuple[dict, list]]:
    """[(doc, [(context, continuation), ...]), ...] in doc order, built the way lm-eval builds them."""
    task.build_all_requests(limit=None, rank=0, world_size=1)
    by_doc: dict[int, list] = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst)
    return [(insts[0].doc, [i.arguments for i in sorted(insts, key=lambda i: i.idx)]) for _, insts in sorted(by_doc.items())]


def gold_of(task, doc) -> int:
    gold = task.doc_to_target(doc)
    assert isinstance(gold, int)
    return gold


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def sample_questions() -> dict[tuple[str, str], dict]:
    """(culture, ID) -> row of the shipped <CODE>_questions.csv files, read independently of culnig_lm_eval.taskdata."""
    table = {}
    for path in (SAMPLE / "questions").glob("*_questions.csv"):
        culture = cultures.culture_id(path.name[: -len("_questions.csv")])
        for row in read_csv(path):
            table[(culture, row["ID"])] = row
    return table


def mcq_row(mcqid, qid, country, question, options, answer, countries=None):
    letters = "ABCD"
    prompt = (f"{question} Without any explanation, choose only one from the given alphabet choices(e.g., A, B, C). "
              'Provide as JSON format: {"answer_choice":""}\n\n'
              + "\n".join(f"{l}. {o}" for l, o in zip(letters, options)) + "\n\nAnswer:")
    return {"MCQID": mcqid, "ID": qid, "country": country, "prompt": prompt,
            "choices": json.dumps(dict(zip(letters, options))),
            "choice_countries": json.dumps(dict(zip(letters, countries or [country] * 4))), "answer_idx": answer}


# ------------------------------------------------------------------------------- registration


def test_stock_task_manager_lists_every_task(loaded):
    tm, result = loaded
    for name in OURS:
        assert name in tm.all_tasks
    assert {"blend", "blend_cloze"} <= set(tm.all_groups)
    for prefix in ("blend", "blend_cloze"):
        children = result["group_map"][prefix]
        assert {f"{prefix}_{c}" for c in TARGETS} <= set(children)
        assert {f"{prefix}_greece", f"{prefix}_algeria"} <= set(children)


def test_the_task_index_reads_our_folder_alone_unless_a_task_is_lm_evals(loaded):
    """``TaskIndex`` loads our tasks without lm-eval's full index, with the stock manager's requests."""
    from culnig_lm_eval.taskdata.index import TaskIndex

    full, by_stock = loaded
    index = TaskIndex()
    ours = index.manager_for(OURS)
    assert ours is index.ours and "qnli" in full.all_tasks and "qnli" not in ours.all_tasks
    with pytest.MonkeyPatch.context() as mp:
        sample_data_only(mp)
        task = ours.load(["blend_cloze_test"])["tasks"]["blend_cloze_test"]
    assert requests(task) == requests(by_stock["tasks"]["blend_cloze_test"])
    assert index.manager_for(["blend_cloze_test", "qnli"]) is index.full and index.knows("qnli")
    assert not index.knows("no_such_task")
    given = quick_manager()
    assert TaskIndex(given).manager_for(["qnli"]) is given  # a caller's manager answers every name


def test_every_task_builds_standard_requests(loaded):
    _, result = loaded
    assert set(result["tasks"]) >= {"blend_neur", "crc", "cultural_norm", "culturalbench", "blend_cloze_korea"}
    for name, task in result["tasks"].items():
        pairs = requests(task)
        assert pairs, name
        n_choices = 3 if name == "cultural_norm" else 4
        for doc, reqs in pairs:
            assert len(reqs) == n_choices and len({c for _, c in reqs}) == n_choices, name
            assert len({ctx for ctx, _ in reqs}) == 1, name
            assert 0 <= gold_of(task, doc) < n_choices
            assert doc["culture"] and doc["culture"] == doc["culture"].lower() and doc["topic"], name


# ------------------------------------------------------------------------------------- BLEnD


def test_blend_letter_requests_follow_the_official_prompt(loaded):
    _, result = loaded
    task = result["tasks"]["blend_korea"]
    questions = sample_questions()
    pairs = requests(task)
    assert len(pairs) == 18
    for doc, reqs in pairs:
        assert doc["culture"] == "korea" and doc["country"] == "South Korea"
        ctx = reqs[0][0]
        assert ctx.startswith(questions[("korea", doc["ID"])]["Question"] + " Without any explanation")
        assert ctx.endswith('\n\nAnswer:{"answer_choice":"')
        assert [c for _, c in reqs] == ["A", "B", "C", "D"]
        assert gold_of(task, doc) == "ABCD".index(doc["answer_idx"])
        # the gold letter is the option that choice_countries attributes to the doc's own country
        assert cultures.culture_id(json.loads(doc["choice_countries"])[doc["answer_idx"]]) == "korea"


def test_blend_ctrl_is_neur_without_the_question(loaded):
    _, result = loaded
    neur = {doc["MCQID"]: (doc, reqs) for doc, reqs in requests(result["tasks"]["blend_neur"])}
    ctrl_task = result["tasks"]["blend_ctrl"]
    ctrl = requests(ctrl_task)
    assert {doc["MCQID"] for doc, _ in ctrl} == set(neur)
    for doc, reqs in ctrl:
        ctx = reqs[0][0]
        n_doc, n_reqs = neur[doc["MCQID"]]
        assert doc["question"] and doc["question"] not in ctx and doc["question"] in n_reqs[0][0]
        assert ctx.startswith("Without any explanation") and n_reqs[0][0].endswith(ctx)
        for letter, option in json.loads(doc["choices"]).items():
            assert f"\n{letter}. {option}\n" in ctx
        assert [c for _, c in reqs] == [c for _, c in n_reqs]
        assert gold_of(ctrl_task, doc) == n_doc["gold"] == "ABCD".index(doc["answer_idx"])


def test_blend_cloze_scores_answer_texts_after_the_bare_question(loaded):
    _, result = loaded
    questions = sample_questions()
    task = result["tasks"]["blend_cloze_neur"]
    cloze = requests(task)
    assert len(cloze) == 96
    for doc, reqs in cloze:
        question = questions[(doc["culture"], doc["ID"])]["Question"]
        assert reqs[0][0] == f"Question: {question}\nAnswer:"
        options = json.loads(doc["choices"])
        assert [c for _, c in reqs] == [" " + options[l] for l in "ABCD"]
        assert reqs[gold_of(task, doc)][1] == " " + options[doc["answer_idx"]]
    ctrl_task = result["tasks"]["blend_cloze_ctrl"]
    by_id = {doc["MCQID"]: reqs for doc, reqs in cloze}
    ctrl = requests(ctrl_task)
    assert {doc["MCQID"] for doc, _ in ctrl} == set(by_id)
    for doc, reqs in ctrl:
        assert reqs[0][0] == "Answer:" and doc["question"] not in reqs[0][0]
        assert [c for _, c in reqs] == [c for _, c in by_id[doc["MCQID"]]]
        assert gold_of(ctrl_task, doc) == "ABCD".index(doc["answer_idx"])


def test_topics_come_from_the_question_metadata_not_the_id(loaded):
    _, result = loaded
    questions = sample_questions()
    docs = [doc for name in result["group_map"]["blend"] for doc, _ in requests(result["tasks"][name])]
    assert len(docs) == 192
    for doc in docs:
        assert doc["topic"] == questions[(doc["culture"], doc["ID"])]["Topic"]
    # the sample's ID prefixes deliberately mislead: 'Sp-' is a Food and an Education question
    assert {doc["topic"] for doc in docs if doc["ID"].startswith("Sp-")} == {"Food", "Education"}


def test_neur_and_test_split_blend_by_topic(loaded):
    _, result = loaded
    everything = {doc["MCQID"]: doc for name in result["group_map"]["blend"] for doc, _ in requests(result["tasks"][name])}
    for kind in ("blend", "blend_cloze"):
        neur = {d["MCQID"]: d for d, _ in requests(result["tasks"][f"{kind}_neur"])}
        test = {d["MCQID"]: d for d, _ in requests(result["tasks"][f"{kind}_test"])}
        assert {d["topic"] for d in neur.values()} == NEUR
        assert {d["topic"] for d in test.values()} == TEST
        assert not set(neur) & set(test)
        assert set(neur) | set(test) == set(everything)
    counts = Counter((d["culture"], d["topic"]) for d in everything.values())
    for culture in TARGETS:
        for topic in NEUR | TEST:
            assert counts[(culture, topic)] >= 3


def test_join_is_per_culture_and_counts_misses(tmp_path, monkeypatch, caplog):
    qdir = tmp_path / "questions"
    qdir.mkdir()
    write_csv(qdir / "GB_questions.csv", [{"ID": "Zq-1", "Topic": "Sport", "Source": "t", "Question": "q", "Translation": ""}])
    write_csv(qdir / "South_Korea_questions.csv", [{"ID": "Zq-1", "Topic": "Family", "Source": "t", "Question": "q", "Translation": ""}])
    mcq = write_csv(tmp_path / "mcq.csv", [
        mcq_row("m1", "Zq-1", "UK", "Where do people in the UK play?", ["a", "b", "c", "d"], "B"),
        mcq_row("m2", "Zq-1", "South_Korea", "Where do people in South Korea play?", ["e", "f", "g", "h"], "C"),
        mcq_row("m3", "Nowhere-9", "US", "What do people in the US say?", ["i", "j", "k", "l"], "A"),
    ])
    monkeypatch.setenv("CULNIG_BLEND_MCQ", str(mcq))
    monkeypatch.setenv("CULNIG_BLEND_QUESTIONS", str(qdir))
    with caplog.at_level(logging.WARNING, logger="culnig_lm_eval.taskdata.builders"):
        docs = builders.blend()["test"].to_list()
    assert [(d["culture"], d["topic"]) for d in docs] == [("uk", "Sport"), ("korea", "Family"), ("usa", "unknown")]
    assert "1 of 3 items" in caplog.text
    assert [d["gold"] for d in docs] == [1, 2, 0]
    assert builders.blend(topics=["sport"])["test"]["MCQID"] == ["m1"]


def test_question_and_ctrl_prompt_split(tmp_path, monkeypatch):
    row = mcq_row("m1", "Q-1", "Spain", "What is eaten first in Spain?", ["w", "x", "y", "z"], 3)
    monkeypatch.setenv("CULNIG_BLEND_MCQ", str(write_csv(tmp_path / "m.csv", [row])))
    doc = builders.blend()["test"][0]
    assert doc["question"] == "What is eaten first in Spain?"
    assert doc["ctrl_prompt"] == row["prompt"][len(doc["question"]) + 1:]
    assert doc["options"] == ["w", "x", "y", "z"] and doc["gold"] == 3  # an int answer_idx is an index
    assert doc["topic"] == "unknown"


# -------------------------------------------------------------------------------- CountryRC


def test_crc_is_deterministic_and_gold_is_the_country_in_the_passage(loaded):
    _, result = loaded
    task = result["tasks"]["crc"]
    pairs = requests(task)
    spec = json.loads((task_dir() / "crc" / "passages.json").read_text())
    names = {c["name"]: c["id"] for c in spec["countries"]}
    in_text = {c["name"]: c.get("in_text", c["name"]) for c in spec["countries"]}
    assert len(spec["passages"]) >= 50 and len(names) == 16 and set(spec["targets"]) == TARGETS
    assert len(pairs) == 25 * len(spec["instructions"]) * 8  # the default: 25 passages
    for doc, reqs in pairs:
        labels = [c.strip() for _, c in reqs]
        gold = doc["options"][gold_of(task, doc)]
        assert names[gold] == doc["culture"] and doc["passage"] in reqs[0][0]
        assert f"\n{labels[doc['gold']]}. {gold}\n" in reqs[0][0]
        # the passage names the gold country, and at most the one dummy distractor besides
        named = [o for o in doc["options"] if in_text[o] in doc["passage"]]
        assert named == [gold] if not doc["dummy"] else sorted(named) == sorted([gold, doc["dummy"]])
    assert {doc["variant"] for doc, _ in pairs} == set(range(1, len(spec["instructions"]) + 1))
    assert Counter(doc["gold"] for doc, _ in pairs).keys() == {0, 1, 2, 3}
    again = builders.crc()["test"].to_list()
    assert again == [doc for doc, _ in pairs]


# ------------------------------------------------------------------------ NormAd, CulturalBench


def test_cultural_norm_gold_and_cultures(loaded):
    _, result = loaded
    task = result["tasks"]["cultural_norm"]
    raw = read_csv(task_dir() / "cultural_norm" / "sample" / "normad.csv")
    pairs = requests(task)
    assert len(pairs) == len(raw)
    for (doc, reqs), row in zip(pairs, raw):
        assert [c for _, c in reqs] == [" yes", " no", " neutral"]
        assert reqs[gold_of(task, doc)][1] == " " + row["Gold Label"]
        assert row["Story"] in reqs[0][0] and doc["country_name"] in reqs[0][0]
    per_culture = Counter(doc["culture"] for doc, _ in pairs)
    assert all(per_culture[c] >= 3 for c in TARGETS)
    assert {"uk", "usa", "korea"} <= set(per_culture) and "united_kingdom" not in per_culture


def test_culturalbench_gold_and_cultures(loaded):
    _, result = loaded
    task = result["tasks"]["culturalbench"]
    raw = read_csv(task_dir() / "culturalbench" / "sample" / "culturalbench.csv")
    pairs = requests(task)
    assert len(pairs) == len(raw)
    for (doc, reqs), row in zip(pairs, raw):
        assert reqs[0][0].startswith(row["prompt_question"] + "\nA. " + row["prompt_option_a"])
        assert reqs[gold_of(task, doc)][1] == " " + row["answer"]
        assert doc["culture"] == cultures.culture_id(row["country"])
    per_culture = Counter(doc["culture"] for doc, _ in pairs)
    assert all(per_culture[c] >= 3 for c in TARGETS)


@pytest.mark.parametrize("name, culture", [
    ("UK", "uk"), ("GB", "uk"), ("United Kingdom", "uk"), ("united_kingdom", "uk"), ("U.K.", "uk"),
    ("US", "usa"), ("United States", "usa"), ("united_states_of_america", "usa"),
    ("South Korea", "korea"), ("South_Korea", "korea"), ("KR", "korea"), ("North Korea", "north_korea"),
    ("China", "china"), ("West_Java", "west_java"), ("Saudi Arabia", "saudi_arabia"),
])
def test_culture_ids(name, culture):
    assert cultures.culture_id(name) == culture


# ------------------------------------------------------------------------- pointing at data


def two_item_mcq(tmp_path, tag):
    rows = [mcq_row(f"{tag}-1", "Sp-en-04", "Mexico", f"{tag} question one in Mexico?", ["p", "q", "r", "s"], "D"),
            mcq_row(f"{tag}-2", "Sp-en-04", "UK", f"{tag} question two in the UK?", ["t", "u", "v", "w"], "A")]
    return write_csv(tmp_path / f"{tag}.csv", rows)


def test_local_file_via_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CULNIG_BLEND_MCQ", str(two_item_mcq(tmp_path, "env")))
    task = quick_manager().load(["blend_cloze_neur"])["tasks"]["blend_cloze_neur"]
    pairs = requests(task)
    assert [doc["MCQID"] for doc, _ in pairs] == ["env-1", "env-2"]
    assert pairs[0][1][0][0] == "Question: env question one in Mexico?\nAnswer:"
    assert [doc["culture"] for doc, _ in pairs] == ["mexico", "uk"]
    assert [doc["topic"] for doc, _ in pairs] == ["Food", "Food"]  # joined with the shipped metadata
    assert [gold_of(task, doc) for doc, _ in pairs] == [3, 0]


def test_local_file_via_metadata_wins_over_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CULNIG_BLEND_MCQ", str(two_item_mcq(tmp_path, "env")))
    meta = str(two_item_mcq(tmp_path, "meta"))
    task = quick_manager(blend_mcq=meta).load(["blend_uk"])["tasks"]["blend_uk"]
    assert [doc["MCQID"] for doc, _ in requests(task)] == ["meta-2"]


def test_local_jsonl_for_normad_and_culturalbench(tmp_path, monkeypatch):
    normad = tmp_path / "normad.jsonl"
    normad.write_text(json.dumps({"ID": "n1", "Country": "south_korea", "Background": "b", "Axis": "Etiquette", "Subaxis": "s",
                                  "Value": "v", "Rule-of-Thumb": "r", "Story": "Jae waved. Is what Jae did acceptable?",
                                  "Explanation": "e", "Gold Label": "Neither"}) + "\n")
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"data_idx": 0, "question_idx": 7, "prompt_question": "Which?", "prompt_option_a": "a",
                                 "prompt_option_b": "b", "prompt_option_c": "c", "prompt_option_d": "d",
                                 "answer": "C", "country": "United States"}) + "\n")
    monkeypatch.setenv("CULNIG_NORMAD", str(normad))
    monkeypatch.setenv("CULNIG_CULTURALBENCH", str(bench))
    result = quick_manager().load(["cultural_norm", "culturalbench"])["tasks"]
    (ndoc, nreqs), = requests(result["cultural_norm"])
    assert ndoc["culture"] == "korea" and "South Korea" in nreqs[0][0]
    assert nreqs[gold_of(result["cultural_norm"], ndoc)][1] == " neutral"
    (bdoc, _), = requests(result["culturalbench"])
    assert bdoc["culture"] == "usa" and bdoc["gold"] == 2


def test_missing_override_file_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CULNIG_NORMAD", str(tmp_path / "nope.csv"))
    with pytest.raises(FileNotFoundError, match="CULNIG_NORMAD"):
        builders.normad()
    monkeypatch.delenv("CULNIG_NORMAD")
    monkeypatch.setenv("CULNIG_DATA", "maybe")
    with pytest.raises(ValueError, match="CULNIG_DATA"):
        builders.normad()


# --------------------------------------------------------------------------------- the hub


@pytest.fixture
def fake_hub(monkeypatch):
    """datasets.load_dataset replaced by a recorder serving fixture-shaped data."""
    calls = []
    mcq = read_csv(SAMPLE / "mc_questions.csv")
    per_code = {"US": "US", "GB": "UK", "KR": "South_Korea", "CN": "China", "ID": "Indonesia", "IR": "Iran",
                "MX": "Mexico", "ES": "Spain", "GR": "Greece"}
    tables = {
        ("nayeon212/BLEnD", "multiple-choice-questions", "test"): datasets.Dataset.from_list(mcq, split="test"),
        ("nayeon212/BLEnD", "short-answer-questions", None): datasets.DatasetDict({
            code: datasets.Dataset.from_list(read_csv(SAMPLE / "questions" / f"{stem}_questions.csv"))
            for code, stem in per_code.items()}),
        ("akhilayerukola/NormAd", None, "train"): datasets.Dataset.from_list(
            read_csv(task_dir() / "cultural_norm" / "sample" / "normad.csv"), split="train"),
        ("kellycyy/CulturalBench", "CulturalBench-Easy", "test"): datasets.Dataset.from_list(
            read_csv(task_dir() / "culturalbench" / "sample" / "culturalbench.csv"), split="test"),
    }

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return tables[(path, name, split)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_mode_loads_the_official_datasets(fake_hub, monkeypatch):
    monkeypatch.setenv("CULNIG_DATA", "hub")
    result = quick_manager().load(["blend_neur", "blend_greece", "blend_west_java", "cultural_norm", "culturalbench"])["tasks"]
    assert sorted(set(fake_hub)) == sorted([
        ("nayeon212/BLEnD", "multiple-choice-questions", "test"),
        ("nayeon212/BLEnD", "short-answer-questions", None),
        ("akhilayerukola/NormAd", None, "train"),
        ("kellycyy/CulturalBench", "CulturalBench-Easy", "test"),
    ])
    neur = [doc for doc, _ in requests(result["blend_neur"])]
    # hub splits are country codes: GB and KR must join onto the UK and South Korea items
    assert {d["topic"] for d in neur if d["culture"] in {"uk", "korea", "usa"}} == NEUR
    assert len({d["culture"] for d in neur}) == 16
    assert {d["topic"] for d, _ in requests(result["blend_greece"])} == NEUR | TEST
    # no JB split in this fake hub: West Java's items join on their ID alone (BLEnD shares IDs across countries)
    assert {d["topic"] for d, _ in requests(result["blend_west_java"])} == NEUR | TEST
    assert len(requests(result["cultural_norm"])) == 26 and len(requests(result["culturalbench"])) == 26


def test_auto_mode_offline_uses_the_sample_and_warns_once(fake_hub, monkeypatch, caplog):
    monkeypatch.setenv("CULNIG_DATA", "auto")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.WARNING, logger="culnig_lm_eval.taskdata.sources"):
        first = builders.culturalbench()["test"]
        sources._read.cache_clear()
        second = builders.culturalbench()["test"]
    assert fake_hub == [] and len(first) == len(second) == 26
    assert caplog.text.count("SMALL SAMPLE") == 1 and "CULNIG_CULTURALBENCH=" in caplog.text


def test_auto_mode_online_uses_the_hub(fake_hub, monkeypatch):
    monkeypatch.setenv("CULNIG_DATA", "auto")
    monkeypatch.setattr(sources, "hub_reachable", lambda: True)
    builders.normad()
    assert fake_hub == [("akhilayerukola/NormAd", None, "train")]


class _Answering(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_hub_check_is_fast_and_needs_an_answer(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("CULNIG_HUB_TIMEOUT", "0.5")
    silent = socket.socket()  # accepts connections (the kernel does) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    server = http.server.HTTPServer(("127.0.0.1", 0), _Answering)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.perf_counter()
        assert sources.hub_reachable() is False
        assert time.perf_counter() - start < 1.5
        sources.hub_reachable.cache_clear()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        assert sources.hub_reachable() is True  # any HTTP answer, even a 404, means the hub is there
        sources.hub_reachable.cache_clear()
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
        assert sources.hub_reachable() is False
    finally:
        server.shutdown()
        silent.close()
