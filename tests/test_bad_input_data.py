"""Bad data files fail while the task documents are built, with one DataError naming the file and
row (issue: reliability); and the BLEnD cap of at most N items per (country, question ID) that
the CULNIG reference applies (issue 10)."""

from __future__ import annotations

import csv
import json
import os
import random
from collections import Counter
from pathlib import Path

import pytest
from cli_inprocess import run_module

from culnig_lm_eval.taskdata import builders, sources
from culnig_lm_eval._startup import task_dir
from culnig_lm_eval.taskdata.sources import DataError

HEADER = ["MCQID", "ID", "country", "prompt", "choices", "choice_countries", "answer_idx"]


pytestmark = pytest.mark.usefixtures("fresh_data_state")  # tests/conftest.py


def mcq_row(mcqid, qid, country, options=("tea", "milk", "coffee", "juice"), answer="A"):
    letters = "ABCD"[: len(options)]
    question = f"What do people in {country} drink ({mcqid})?"
    prompt = (f"{question} Without any explanation, choose only one from the given alphabet choices(e.g., A, B, C). "
              'Provide as JSON format: {"answer_choice":""}\n\n'
              + "\n".join(f"{l}. {o}" for l, o in zip(letters, options)) + "\n\nAnswer:")
    return {"MCQID": mcqid, "ID": qid, "country": country, "prompt": prompt,
            "choices": json.dumps(dict(zip(letters, options))),
            "choice_countries": json.dumps(dict(zip(letters, [country] * len(options)))), "answer_idx": answer}


def write_csv(path: Path, rows: list[dict], header: list[str] | None = None) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, header or list(rows[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def good_rows(n=3):
    return [mcq_row(f"m{i}", "Sp-en-04", "UK") for i in range(1, n + 1)]


def blend_error(path: Path, **options) -> str:
    with pytest.raises(DataError) as info:
        builders.blend(blend_mcq=str(path), **options)
    message = str(info.value)
    assert str(path) in message
    return message


# ------------------------------------------------------------------------ BLEnD multiple choice


def test_missing_required_column(tmp_path):
    path = write_csv(tmp_path / "mcq.csv", good_rows(), header=[c for c in HEADER if c != "answer_idx"])
    message = blend_error(path)
    assert "missing column(s) answer_idx" in message


def test_empty_file_and_header_only(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "empty file" in blend_error(empty)
    sources._read.cache_clear()
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(HEADER) + "\n")
    assert "no rows" in blend_error(header_only)


def test_not_utf8(tmp_path):
    path = write_csv(tmp_path / "mcq.csv", good_rows())
    path.write_bytes(path.read_bytes().replace("coffee".encode(), "caf\xe9".encode("latin-1"), 1))
    message = blend_error(path)
    assert "not UTF-8" in message and "byte 0xe9 on line 6" in message and "iconv" in message  # "C. coffee" line


def test_choices_not_a_mapping(tmp_path):
    rows = good_rows()
    rows[1]["choices"] = "A) tea B) milk"
    message = blend_error(write_csv(tmp_path / "mcq.csv", rows))
    assert "row 2 (line " in message and "choices 'A) tea B) milk' is not a mapping" in message


def test_answer_letter_not_among_the_choices(tmp_path):
    rows = good_rows()
    rows[2]["answer_idx"] = "E"
    message = blend_error(write_csv(tmp_path / "mcq.csv", rows))
    assert "row 3 (line " in message and "answer_idx 'E'" in message and "A, B, C, D" in message


def test_answer_index_out_of_range(tmp_path):
    rows = good_rows()
    rows[0]["answer_idx"] = "7"  # used to become gold 7: a choice that does not exist, scored as wrong
    message = blend_error(write_csv(tmp_path / "mcq.csv", rows))
    assert "row 1 (line 2)" in message and "answer_idx '7'" in message and "below 4" in message


def test_short_row(tmp_path):
    path = write_csv(tmp_path / "mcq.csv", good_rows())
    lines = path.read_bytes().split(b"\r\n")  # the writer ends records with CRLF, prompts hold bare LFs
    path.write_bytes(b"\r\n".join(lines[:-2] + [b"m9,Sp-en-04,UK", b""]))
    message = blend_error(path)
    assert "row 3 (line " in message and "fewer fields than the header" in message


def test_row_numbers_count_multiline_prompts(tmp_path):
    rows = good_rows(4)
    rows[3]["answer_idx"] = "Z"
    message = blend_error(write_csv(tmp_path / "mcq.csv", rows))
    prompt_lines = rows[0]["prompt"].count("\n") + 1
    assert f"row 4 (line {2 + 3 * prompt_lines})" in message


def test_a_bad_row_fails_the_tasks_that_read_its_culture(tmp_path):
    """A per-country task checks its own culture's rows; the whole-BLEnD task checks them all."""
    rows = good_rows() + [mcq_row("x1", "Sp-en-04", "Spain", answer="Q")]
    path = write_csv(tmp_path / "mcq.csv", rows)
    assert len(builders.blend(culture="uk", blend_mcq=str(path))["test"]) == 3
    assert "row 4" in blend_error(path)


def test_jsonl_and_json_parse_errors(tmp_path):
    jsonl = tmp_path / "mcq.jsonl"
    jsonl.write_text(json.dumps(mcq_row("m1", "Q-1", "UK")) + "\n\n" + '{"MCQID": "m2", "ID": \n')
    message = blend_error(jsonl)
    assert "line 3: not valid JSON" in message
    jsonl.write_text(json.dumps(mcq_row("m1", "Q-1", "UK")) + "\n" + json.dumps(["not", "a", "row"]) + "\n")
    sources._read.cache_clear()
    assert "line 2: a list, not a JSON object" in blend_error(jsonl)
    bad = tmp_path / "mcq.json"
    bad.write_text('[{"MCQID": "m1",\n "ID": }]')
    assert "line 2: not valid JSON" in blend_error(bad)
    bad.write_text('{"rows": []}')
    sources._read.cache_clear()
    assert "expected a JSON list of row objects" in blend_error(bad)


def test_jsonl_row_without_a_required_field(tmp_path):
    row = mcq_row("m1", "Q-1", "UK")
    del row["choices"]
    jsonl = tmp_path / "mcq.jsonl"
    jsonl.write_text(json.dumps(mcq_row("m0", "Q-1", "UK")) + "\n" + json.dumps(row) + "\n")
    assert "line 2: no value for choices" in blend_error(jsonl)


def test_bad_cap_options_are_refused(tmp_path):
    path = str(write_csv(tmp_path / "mcq.csv", good_rows()))
    with pytest.raises(ValueError, match="per_question must be a whole number"):
        builders.blend(blend_mcq=path, per_question="many")
    with pytest.raises(ValueError, match="sample_seed must be a whole number"):
        builders.blend(blend_mcq=path, sample_seed=-1)


# ---------------------------------------------------------------------------- other readers


def test_questions_folder_missing_topic_column_and_not_utf8(tmp_path, monkeypatch):
    monkeypatch.setenv("CULNIG_BLEND_MCQ", str(write_csv(tmp_path / "mcq.csv", good_rows())))
    qdir = tmp_path / "questions"
    qdir.mkdir()
    bad = write_csv(qdir / "UK_questions.csv", [{"ID": "Sp-en-04", "Theme": "Food"}])
    with pytest.raises(DataError, match=f"{bad}: missing column\\(s\\) Topic"):
        builders.blend(blend_questions=str(qdir))
    bad.write_bytes(b"ID,Topic\nSp-en-04,Fo\xf6d\n")
    sources._read.cache_clear()
    with pytest.raises(DataError, match=f"{bad}: not UTF-8"):
        builders.blend(blend_questions=str(qdir))


def test_normad_missing_column(tmp_path):
    path = write_csv(tmp_path / "normad.csv", [{"ID": "n1", "Country": "china", "Story": "s", "Label": "yes"}])
    with pytest.raises(DataError, match="missing column\\(s\\) Gold Label") as info:
        builders.normad(normad=str(path))
    assert str(path) in str(info.value)


def test_culturalbench_not_utf8_and_bad_answer(tmp_path):
    sample = (task_dir() / "culturalbench" / "sample" / "culturalbench.csv").read_text(encoding="utf-8")
    path = tmp_path / "bench.csv"
    path.write_bytes(sample.encode("utf-16"))
    with pytest.raises(DataError, match="not UTF-8"):
        builders.culturalbench(culturalbench=str(path))
    lines = sample.splitlines()
    lines[2] = lines[2].rsplit(",", 2)[0] + ",F," + lines[2].rsplit(",", 1)[1]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sources._read.cache_clear()
    with pytest.raises(DataError, match="row 2 \\(line 3\\): answer 'F'") as info:
        builders.culturalbench(culturalbench=str(path))
    assert str(path) in str(info.value)


def test_crc_override_not_json(tmp_path):
    path = tmp_path / "passages.json"
    path.write_text('{"seed": 1,')
    with pytest.raises(DataError, match="not valid JSON") as info:
        builders.crc(crc=str(path))
    assert str(path) in str(info.value)


def test_error_reaches_the_harness_task_loader(tmp_path):
    """lm-eval calls the builder while it loads the task: the DataError is what it raises."""
    from lm_eval.tasks import TaskManager

    rows = good_rows()
    rows[0]["answer_idx"] = "9"
    path = write_csv(tmp_path / "mcq.csv", rows)
    manager = TaskManager(include_defaults=False, include_path=str(task_dir()), metadata={"blend_mcq": str(path)})
    with pytest.raises(DataError, match="row 1 \\(line 2\\)"):
        manager.load(["blend_cloze_neur"])


@pytest.mark.slow
def test_score_cli_names_the_file_and_row_before_the_model(tmp_path):
    rows = good_rows()
    rows[1]["answer_idx"] = "7"
    path = write_csv(tmp_path / "mcq.csv", rows)
    env = {**os.environ, "CULNIG_BLEND_MCQ": str(path), "CULNIG_DATA": "sample"}
    proc = run_module("culnig_lm_eval.cli.score", "run", "--model_args", "pretrained=/no/such/model",
                      "--tasks", "blend_cloze_neur", "--out", tmp_path / "s", env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "/no/such/model" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert str(path) in last and "row 2 (line " in last and "answer_idx '7'" in last


# ------------------------------------------------------------------ at most N per (country, ID)


def variants_file(tmp_path, per_group=12, name="mcq.csv", shuffle_seed=None) -> Path:
    """Two questions x two countries, ``per_group`` option variants each (the official file's shape)."""
    rows = []
    for qid in ("Sp-en-04", "Ed-en-07"):
        for country in ("UK", "South_Korea"):
            for k in range(per_group):
                answer = "ABCD"[k % 4]
                rows.append(mcq_row(f"{qid}_{country}_{k}", qid, country,
                                    options=(f"o{k}a", f"o{k}b", f"o{k}c", f"o{k}d"), answer=answer))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    return write_csv(tmp_path / name, rows)


def mcqids(**kwargs) -> list[str]:
    return builders.blend(**kwargs)["test"]["MCQID"]


def per_group(ids: list[str]) -> Counter:
    return Counter(i.rsplit("_", 1)[0] for i in ids)


def test_cap_defaults_to_the_reference_first_five_in_file_order(tmp_path):
    path = str(variants_file(tmp_path))
    ids = mcqids(blend_mcq=path)
    assert set(per_group(ids).values()) == {5}
    assert len(ids) == 4 * 5
    assert [i for i in ids if i.startswith("Sp-en-04_UK_")] == [f"Sp-en-04_UK_{k}" for k in range(5)]


def test_cap_is_configurable_and_zero_disables(tmp_path):
    path = str(variants_file(tmp_path))
    assert set(per_group(mcqids(blend_mcq=path, per_question=3)).values()) == {3}
    assert set(per_group(mcqids(blend_mcq=path, per_question="2")).values()) == {2}
    assert len(mcqids(blend_mcq=path, per_question=0)) == 4 * 12
    assert len(mcqids(blend_mcq=path, per_question=None)) == 4 * 12
    assert len(mcqids(blend_mcq=path, per_question=50)) == 4 * 12


def test_seeded_draw_is_deterministic_and_independent_of_row_order(tmp_path):
    ordered = str(variants_file(tmp_path))
    shuffled = str(variants_file(tmp_path, name="shuffled.csv", shuffle_seed=7))
    first = mcqids(blend_mcq=ordered, sample_seed=3)
    assert set(per_group(first).values()) == {5}
    assert first == mcqids(blend_mcq=ordered, sample_seed=3)
    assert sorted(first) == sorted(mcqids(blend_mcq=shuffled, sample_seed=3))
    assert set(first) != set(mcqids(blend_mcq=ordered, sample_seed=4))
    assert set(first) != set(mcqids(blend_mcq=ordered))  # a seed draws; no seed takes the first five


def test_cap_is_per_culture_question_and_the_same_for_one_culture(tmp_path):
    path = str(variants_file(tmp_path))
    everything = mcqids(blend_mcq=path, sample_seed=11)
    uk = mcqids(blend_mcq=path, sample_seed=11, culture="uk")
    assert uk == [i for i in everything if "_UK_" in i]


def test_control_and_task_get_the_same_items(tmp_path):
    from lm_eval.tasks import TaskManager

    path = str(variants_file(tmp_path))
    names = ["blend_neur", "blend_ctrl", "blend_cloze_neur", "blend_cloze_ctrl"]
    manager = TaskManager(include_defaults=False, include_path=str(task_dir()),
                          metadata={"blend_mcq": path, "per_question": 2, "sample_seed": 5})
    tasks = manager.load(names)["tasks"]
    ids = {name: [doc["MCQID"] for doc in tasks[name].test_docs()] for name in names}
    assert ids["blend_neur"] == ids["blend_ctrl"] == ids["blend_cloze_neur"] == ids["blend_cloze_ctrl"]
    # Sp-en-04 is Food and Ed-en-07 Work life in the shipped question metadata: both neuron topics
    assert set(per_group(ids["blend_neur"]).values()) == {2} and len(ids["blend_neur"]) == 8
    assert ids["blend_neur"] == mcqids(blend_mcq=path, per_question=2, sample_seed=5)


def test_cap_from_task_yaml_dataset_kwargs(tmp_path):
    from lm_eval.tasks import TaskManager

    path = str(variants_file(tmp_path))
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "capped.yaml").write_text(
        "task: blend_capped_test_only\n"
        "custom_dataset: !function culnig_lm_eval.taskdata.builders.blend\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: prompt\n"
        'doc_to_choice: ["A", "B", "C", "D"]\ndoc_to_target: gold\n'
        "dataset_kwargs:\n  per_question: 1\n  sample_seed: 2\n"
        "metadata:\n  version: 1.0\n"
    )
    manager = TaskManager(include_defaults=False, include_path=str(folder), metadata={"blend_mcq": path})
    task = manager.load(["blend_capped_test_only"])["tasks"]["blend_capped_test_only"]
    ids = [doc["MCQID"] for doc in task.test_docs()]
    assert ids == mcqids(blend_mcq=path, per_question=1, sample_seed=2) and len(ids) == 4


def test_cap_on_real_blend(real_blend):
    """The local real file has at most two variants per (country, ID): the default cap keeps them all,
    a cap of one keeps the first of each, in file order."""
    options = {"blend_mcq": str(real_blend / "mc_questions.csv"), "culture": "uk"}
    full = builders.blend(per_question=0, **options)["test"]
    assert builders.blend(**options)["test"]["MCQID"] == full["MCQID"]
    one = builders.blend(per_question=1, **options)["test"]
    assert len(one) == len(set(full["ID"])) < len(full)
    assert Counter(one["ID"]).most_common(1)[0][1] == 1
    first = {}
    for mcqid, qid in zip(full["MCQID"], full["ID"]):
        first.setdefault(qid, mcqid)
    assert one["MCQID"] == list(first.values())
    seeded = builders.blend(per_question=1, sample_seed=1, **options)["test"]
    assert sorted(seeded["ID"]) == sorted(one["ID"])
