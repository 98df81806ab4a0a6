"""Prompt-variant task groups (culnig_lm_eval/taskdata/prompt_variants.py, tasks/*_prompts, tasks/*_culnig)
and CountryRC as the paper builds it: seeded option orders, what every group averages, the
gold following its option under every wording, the hub loaders on fixtures in the official
schemas, and CRC's wordings, labels, distractors, dummy countries and size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import datasets
import pytest
from cli_inprocess import run_console
from conftest import sample_data_only
import yaml

from culnig_lm_eval import cultures
from culnig_lm_eval.taskdata import builders, sources, prompt_variants as pv
from culnig_lm_eval._startup import task_dir

GROUPS = {
    "cultural_norm_prompts": "cultural_norm_prompt",
    "culturalbench_prompts": "culturalbench_prompt",
    "blend_prompts": "blend_prompt",
    "qnli_culnig": "qnli_culnig",
    "mrpc_culnig": "mrpc_culnig",
    "commonsense_qa_culnig": "commonsense_qa_culnig",
}
LEAVES = [f"{prefix}_{n}" for prefix in GROUPS.values() for n in range(1, 5)]
TARGETS = {"china", "indonesia", "iran", "mexico", "korea", "spain", "uk", "usa"}

pytestmark = pytest.mark.usefixtures("fresh_data_state")  # tests/conftest.py: CULNIG_DATA=sample


@pytest.fixture(scope="module")
def loaded():
    """Every new group (and crc), loaded once through a TaskManager over our task folder only."""
    from lm_eval.tasks import TaskManager

    with pytest.MonkeyPatch.context() as mp:
        sample_data_only(mp)
        manager = TaskManager(include_defaults=False, include_path=str(task_dir()))
        return manager.load([*GROUPS, "crc", "blend"])


def requests(task) -> list[tuple[dict, list[tuple[str, str]]]]:
    task.build_all_requests(limit=None, rank=0, world_size=1)
    by_doc: dict[int, list] = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst)
    return [(insts[0].doc, [i.arguments for i in sorted(insts, key=lambda i: i.idx)]) for _, insts in sorted(by_doc.items())]


# ------------------------------------------------------------------------------ seeded shuffle


def test_seeded_shuffle_is_a_deterministic_permutation_and_the_gold_follows_its_option():
    options = ["yes", "no", "neutral", "other", "fifth"]
    orders = set()
    for item in range(40):
        shuffled, order = pv.seeded_shuffle(options, "normad", f"item-{item}", 1)
        assert sorted(order) == list(range(len(options)))
        assert shuffled == [options[i] for i in order]
        for gold, answer in enumerate(options):
            assert shuffled[order.index(gold)] == answer
        assert pv.seeded_shuffle(options, "normad", f"item-{item}", 1) == (shuffled, order)
        orders.add(tuple(order))
    assert len(orders) > 10  # the order depends on the item
    assert any(pv.seeded_shuffle(options, "x", i, 1)[1] != pv.seeded_shuffle(options, "x", i, 2)[1] for i in range(10))


def test_seeded_shuffle_is_the_same_in_another_process_with_another_hash_seed():
    here = [pv.seeded_shuffle(list("ABCD"), "culturalbench", i, 3)[1] for i in range(20)]
    code = ("import json; from culnig_lm_eval.taskdata import prompt_variants as pv; "
            "print(json.dumps([pv.seeded_shuffle(list('ABCD'), 'culturalbench', i, 3)[1] for i in range(20)]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout) == here


# -------------------------------------------------------------------------------------- groups


def test_every_group_averages_its_four_wordings_by_size(loaded):
    for group, prefix in GROUPS.items():
        leaves = [f"{prefix}_{n}" for n in range(1, 5)]
        assert sorted(loaded["group_map"][group]) == leaves
        config = yaml.safe_load((task_dir() / group / f"{group}.yaml").read_text())
        assert config["task"] == leaves
        assert config["aggregate_metric_list"] == [{"metric": "acc", "weight_by_size": True}]
        docs = {leaf: requests(loaded["tasks"][leaf]) for leaf in leaves}
        # the same items under every wording (so the size-weighted mean is the mean over wordings) ...
        keys = {leaf: [tuple(sorted((k, str(v)) for k, v in d.items() if k not in
                                    {"prompt", "labels", "options", "gold", "variant"})) for d, _ in pairs]
                for leaf, pairs in docs.items()}
        assert len({tuple(k) for k in keys.values()}) == 1, group
        # ... and a different prompt under each
        first_prompts = {pairs[0][1][0][0] for pairs in docs.values()}
        assert len(first_prompts) == 4, group


def test_every_leaf_scores_the_label_of_the_gold(loaded):
    for leaf in LEAVES:
        task = loaded["tasks"][leaf]
        pairs = requests(task)
        assert pairs, leaf
        for doc, reqs in pairs:
            gold = task.doc_to_target(doc)
            labels = [c.strip() for _, c in reqs]
            assert labels == list(doc.get("labels") or "ABCD") and 0 <= gold < len(labels)
            assert len({ctx for ctx, _ in reqs}) == 1 and doc["culture"] and doc["topic"]


def test_normad_variants_number_yes_no_neutral_per_item(loaded):
    rows = {r["ID"]: r for r in sources.load_rows("normad", {})["normad"]}
    orders = Counter()
    for n in range(1, 5):
        for doc, reqs in requests(loaded["tasks"][f"cultural_norm_prompt_{n}"]):
            row = rows[doc["ID"]]
            context = reqs[0][0]
            assert row["Story"] in context and f"country: {cultures.display_name(row['Country'])}" in context
            listed = context.split("Options: ")[1].split("\n")[0]
            numbered = dict(part.split(": ") for part in listed.split(", "))
            assert sorted(numbered.values()) == ["neutral", "no", "yes"]
            assert numbered[reqs[doc["gold"]][1].strip()] == row["Gold Label"]
            orders[listed] += 1
    assert len(orders) >= 4  # the order is shuffled, not fixed


def test_culturalbench_variants_keep_the_gold_answer_text(loaded):
    rows = {r["data_idx"]: r for r in sources.load_rows("culturalbench", {})["culturalbench"]}
    moved = 0
    for n in range(1, 5):
        for doc, reqs in requests(loaded["tasks"][f"culturalbench_prompt_{n}"]):
            row = rows[doc["data_idx"]]
            context, gold_label = reqs[0][0], reqs[doc["gold"]][1].strip()
            gold_text = row[f"prompt_option_{row['answer'].lower()}"]
            assert f"\n{gold_label}. {gold_text}\n" in context and row["prompt_question"] in context
            moved += gold_label != row["answer"]
    assert moved > 0


def test_blend_variants_cover_the_blend_items_with_the_official_prompt_first(loaded):
    official = {d["MCQID"]: d for name in loaded["group_map"]["blend"] for d, _ in requests(loaded["tasks"][name])}
    for n in range(1, 5):
        pairs = requests(loaded["tasks"][f"blend_prompt_{n}"])
        assert {d["MCQID"] for d, _ in pairs} == set(official)
        for doc, reqs in pairs:
            if n == 1:
                assert reqs[0][0] == doc["prompt"] + '{"answer_choice":"'
            else:
                labels = doc["labels"]
                assert labels == (["1", "2", "3", "4"] if n == 3 else ["A", "B", "C", "D"])
                assert f"\n{labels[doc['gold']]}. {doc['options'][doc['gold']]}\n" in reqs[0][0]
                assert doc["question"] in reqs[0][0] and doc["gold"] == official[doc["MCQID"]]["gold"]


def test_nlu_variants_score_the_dataset_label(loaded):
    for prefix, key, fields in (("qnli_culnig", "qnli", ("question", "sentence")),
                                ("mrpc_culnig", "mrpc", ("sentence1", "sentence2"))):
        rows = {str(r["idx"]): r for r in sources.load_rows(key, {})[key]}
        for n in range(1, 5):
            for doc, reqs in requests(loaded["tasks"][f"{prefix}_{n}"]):
                row = rows[doc["idx"]]
                assert [c for _, c in reqs] == [" 0", " 1"] and reqs[doc["gold"]][1] == f" {row['label']}"
                assert all(row[f] in reqs[0][0] for f in fields)
    rows = {r["id"]: r for r in sources.load_rows("commonsense_qa", {})["commonsense_qa"]}
    for n in range(1, 5):
        for doc, reqs in requests(loaded["tasks"][f"commonsense_qa_culnig_{n}"]):
            row = rows[doc["id"]]
            gold = reqs[doc["gold"]][1].strip()
            assert gold == row["answerKey"] and [c.strip() for _, c in reqs] == list("ABCDE")
            assert f"\n{gold}. {row['choices']['text'][row['choices']['label'].index(gold)]}\n" in reqs[0][0]


# ------------------------------------------------------------------------- data sources, CLI


@pytest.mark.parametrize("key, hub, builder", [
    ("qnli", {"path": "nyu-mll/glue", "name": "qnli", "split": "validation"}, pv.qnli_prompt),
    ("mrpc", {"path": "nyu-mll/glue", "name": "mrpc", "split": "test"}, pv.mrpc_prompt),
    ("commonsense_qa", {"path": "tau/commonsense_qa", "split": "validation"}, pv.commonsense_qa_prompt),
])
def test_hub_loader_asks_for_the_official_dataset(monkeypatch, key, hub, builder):
    sample = [json.loads(line) for line in (task_dir() / sources.SOURCES[key].sample).read_text().splitlines()]
    if key == "mrpc":  # GLUE test splits mark unlabelled rows with -1: skipped
        sample.append({**sample[0], "idx": 99, "label": -1})
    asked = []

    def fake_load_dataset(**kwargs):
        asked.append(kwargs)
        return datasets.Dataset.from_list(sample, split=kwargs.get("split"))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setenv("CULNIG_DATA", "hub")
    docs = builder(template="{question}" if key != "mrpc" else "{sentence1}", variant=1)["test"].to_list()
    assert asked == [hub]
    assert len(docs) == len(sample) - (key == "mrpc")
    assert sources.task_sources(type("T", (), {"config": type("C", (), {"custom_dataset": builder, "metadata": {}})})) \
        == {key: {"kind": "hub", "dataset": hub}}


def test_a_template_slot_the_task_lacks_is_named():
    with pytest.raises(ValueError, match=r"unknown slot\(s\) \{passage\}.*\{question\}, \{sentence\}"):
        pv.qnli_prompt(template="{passage}", variant=1)


def test_lm_eval_lists_and_validates_every_new_task():
    env = {**os.environ, "CULNIG_DATA": "sample", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    names = [*GROUPS, *LEAVES, "crc"]
    listed = run_console(["lm_eval", "ls", "tasks"], env=env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    shown = set(listed.stdout.replace("|", " ").split())
    assert set(names) <= shown, sorted(set(names) - shown)
    valid = run_console(["lm_eval", "validate", "--tasks", ",".join(names)], env=env)
    assert valid.returncode == 0 and "All tasks found and valid" in valid.stdout + valid.stderr, valid.stderr[-2000:]
    bad = run_console(["lm_eval", "validate", "--tasks", "qnli_culnig_9"], env=env)
    assert bad.returncode != 0


# ---------------------------------------------------------------------------------- CountryRC


def crc_spec() -> dict:
    return json.loads((task_dir() / "crc" / "passages.json").read_text(encoding="utf-8"))


def test_crc_default_is_about_800_documents_over_4_wordings_and_8_countries(loaded):
    task = loaded["tasks"]["crc"]
    pairs = requests(task)
    assert 750 <= len(pairs) <= 850
    per_item = Counter((d["id"].rsplit("-", 2)[0], d["culture"]) for d, _ in pairs)
    assert set(per_item.values()) == {4}  # every (passage, country) under every wording
    assert {d["culture"] for d, _ in pairs} == TARGETS
    kinds = Counter()
    for doc, reqs in pairs:
        labels = [c.strip() for _, c in reqs]
        assert labels in (list("ABCD"), list("1234"))
        kinds[(doc["id"].rsplit("-", 2)[0], doc["culture"], labels[0])] += 1
        assert task.doc_to_target(doc) == doc["gold"]
        assert f"\n{labels[doc['gold']]}. {doc['options'][doc['gold']]}\n" in reqs[0][0]
        assert doc["passage"] in reqs[0][0] and doc["question"] in reqs[0][0]
    assert set(kinds.values()) == {2}  # 2 letter + 2 digit wordings per item
    assert Counter(d["gold"] for d, _ in pairs).keys() == {0, 1, 2, 3}


def test_crc_distractors_come_from_blends_other_countries_and_never_equal_the_answer():
    spec = crc_spec()
    names = {c["name"]: c["id"] for c in spec["countries"]}
    assert len(names) == 16 and set(names.values()) == set(cultures.CULTURE_ALIASES)
    for name, cid in names.items():
        assert cultures.culture_id(name) == cid  # a spelling BLEnD uses
    seen = set()
    for doc in builders.crc(passages=54, dummy_share=0.4)["test"].to_list():
        answer = doc["options"][doc["gold"]]
        assert names[answer] == doc["culture"]
        distractors = [o for i, o in enumerate(doc["options"]) if i != doc["gold"]]
        assert len(set(distractors)) == 3 and answer not in distractors and set(distractors) <= set(names)
        seen.update(distractors)
        if doc["dummy"]:
            assert doc["dummy"] in distractors and doc["dummy"] != answer
    assert len(seen) == 16  # every country, targets included, serves as a distractor somewhere


@pytest.mark.parametrize("passages, share", [(25, 0.4), (10, 0.0), (20, 0.5), (5, 1.0)])
def test_crc_dummy_share_and_size_follow_the_settings(passages, share):
    spec = crc_spec()
    docs = builders.crc(passages=passages, dummy_share=share)["test"].to_list()
    assert len(docs) == passages * len(spec["instructions"]) * len(spec["targets"])
    passage_ids = {d["id"].rsplit("-", 2)[0] for d in docs}
    with_dummy = {d["id"].rsplit("-", 2)[0] for d in docs if d["dummy"]}
    assert len(passage_ids) == passages and len(with_dummy) == round(share * passages)
    for doc in docs:
        if doc["dummy"]:
            second = next(c for c in spec["countries"] if c["name"] == doc["dummy"])
            assert second.get("in_text", second["name"]) in doc["passage"]


def test_crc_is_deterministic_and_a_leading_slice_is_balanced():
    first = builders.crc()["test"].to_list()
    assert builders.crc()["test"].to_list() == first
    head = first[:96]  # crc:96, as the smollm2-135m experiment uses it
    assert Counter(d["culture"] for d in head) == {c: 12 for c in TARGETS}
    assert Counter(d["variant"] for d in head) == {v: 24 for v in range(1, 5)}
    assert any(d["dummy"] for d in head) and not all(d["dummy"] for d in head)


@pytest.mark.parametrize("kwargs, message", [
    ({"dummy_share": 1.5}, "dummy_share must be a number from 0 to 1"),
    ({"dummy_share": "lots"}, "dummy_share must be a number from 0 to 1"),
    ({"passages": 500}, "need .* dummy and .* plain passages"),
    ({"passages": 0}, "need .* dummy and .* plain passages"),
    ({"passages": "many"}, "passages must be a whole number"),
])
def test_crc_refuses_impossible_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        builders.crc(**kwargs)
