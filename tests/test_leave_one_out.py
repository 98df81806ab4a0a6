"""Leave-one-culture-out selection (issue 27): the set selected for held-out culture c is the set
that selection on score tables made WITHOUT c's documents gives, and c's items never enter it."""

import json

import pytest
import torch

from culnig_lm_eval.scoring.attribution import AttributionScorer, ScoreTable
from culnig_lm_eval.scoring.run import score_samples
from culnig_lm_eval.scoring.samples import Sample
from culnig_lm_eval.scoring.tables import restrict_cultures
from culnig_lm_eval.selection.loco import LeaveOutError, held_out_cultures, select_without, tables_without
from culnig_lm_eval.selection.rules import Thresholds, select_tables
from culnig_lm_eval.selection.save import loco_paths, select_and_save
from tiny_models import tiny_llama

CULTURES = ("china", "korea", "spain", "uk")
KINDS = ("mlp_gate", "attn_q", "attn_k", "attn_v")
TEXTS = {  # a few distinguishable items per culture: (question, answer)
    "china": [("Which festival has lanterns?", " the lantern festival"), ("Tea is served", " with no milk"),
              ("Staple food", " rice")],
    "korea": [("Which dish is fermented?", " kimchi"), ("Autumn festival", " chuseok"), ("Staple food", " rice")],
    "spain": [("Which dish has rice?", " paella"), ("Evening rest", " a siesta"), ("Staple food", " bread")],
    "uk": [("Tea is served", " with milk"), ("Which dog is lazy?", " the brown dog"), ("Staple food", " bread")],
}


def samples(role: str, tokenizer, cultures=CULTURES) -> list[Sample]:
    """Task: question -> answer; control: the answer after 'Answer:'; crc: a passage naming the country."""
    out = []
    for culture in cultures:
        for i, (question, answer) in enumerate(TEXTS[culture]):
            context = {"task": f"Question: {question}\nAnswer:", "control": "Answer:",
                       "crc": f"In {culture} people say:"}[role]
            if role == "crc" and i > 1:
                continue
            doc_id = CULTURES.index(culture) * 10 + i
            out.append(Sample(role, doc_id, culture, "t", tuple(tokenizer.encode(context)),
                              tuple(tokenizer.encode(answer))))
    return out


@pytest.fixture(scope="module")
def scored():
    """{"full": {role: table}, culture: {role: table scored without that culture's documents}}."""
    torch.manual_seed(0)
    model, tokenizer = tiny_llama(seed=3, intermediate_size=96)
    scorer = AttributionScorer(model, kinds=KINDS)

    def tables(cultures):
        out = {}
        for role in ("task", "control", "crc"):
            # batches of one: a sample's score is then bit-for-bit the same in both scoring runs
            table, _ = score_samples(scorer, samples(role, tokenizer, cultures), role=role, batch_size=1)
            table.meta.update(task=f"tiny_{role}", path=f"/scores/{role}.scores.pt", sha256=f"sha-{role}")
            out[role] = table
        return out

    result = {"full": tables(CULTURES)}
    for culture in CULTURES:
        result[culture] = tables([c for c in CULTURES if c != culture])
    return result


RULES = [Thresholds(top_mlp=10, top_attention=10, crc_exclude=5, min_samples=1),
         Thresholds(rule="crc-first", top_mlp=20, top_attention=20, crc_exclude=5, min_samples=1)]


@pytest.mark.parametrize("thresholds", RULES, ids=["paper", "crc-first"])
def test_the_held_out_set_is_the_selection_on_tables_scored_without_the_culture(scored, thresholds):
    full = select_tables(scored["full"], thresholds)["general"]
    differs = 0
    for culture in CULTURES:
        held = select_without(scored["full"], thresholds, culture)
        rescored = select_tables(scored[culture], thresholds)["general"]
        # set for set: the same neurons as selection on tables that never saw the culture's documents
        assert held.indices.keys() == rescored.indices.keys()
        assert held.neurons_sha256() == rescored.neurons_sha256(), culture
        assert len(held) > 0
        differs += held.neurons_sha256() != full.neurons_sha256()
        # the set says which culture was held out and what it was selected from, without that culture
        assert held.meta["held_out"] == culture
        provenance = held.meta["provenance"]
        assert provenance["held_out"]["dropped_from"] == ["task", "control", "crc"]
        assert provenance["held_out"]["score_files"]["task"] == {"path": "/scores/task.scores.pt", "sha256": "sha-task"}
        for role in ("task", "control", "crc"):
            assert culture not in provenance[role]["samples"]
            assert sum(provenance[role]["samples"].values()) == sum(
                int(n) for c, n in zip(scored["full"][role].cultures, scored["full"][role].counts) if c != culture)
    assert differs, "every held-out set equals the full set: the test would not see a leak"


def test_the_held_out_cultures_items_never_enter_its_selection(scored):
    """Whatever the held-out culture's columns hold (task, control, CountryRC), its set is the same."""
    thresholds = RULES[0]
    for culture in CULTURES:
        held = select_without(scored["full"], thresholds, culture)
        noisy = {}
        for role, table in scored["full"].items():
            i = table.cultures.index(culture)
            scores = {k: v.clone() for k, v in table.scores.items()}
            for k in scores:
                scores[k][..., i] = torch.randn(scores[k].shape[:2]) * 1e3
            counts = table.counts.clone()
            counts[i] += 1000
            noisy[role] = ScoreTable(table.cultures, scores, counts, dict(table.meta))
        assert select_without(noisy, thresholds, culture).neurons_sha256() == held.neurons_sha256()


def test_restricted_tables_keep_the_other_columns_and_counts(scored):
    task = scored["full"]["task"]
    kept = restrict_cultures(task, ["uk", "china", "nowhere"])
    assert kept.cultures == ["china", "uk"]  # the table's order
    assert kept.counts.tolist() == [3, 3]
    torch.testing.assert_close(kept.scores["mlp_gate"], task.scores["mlp_gate"][..., [0, 3]], rtol=0, atol=0)
    assert kept.meta["cultures_dropped"] == ["korea", "spain"] and kept.meta["sha256"] == "sha-task"
    assert restrict_cultures(task, CULTURES) is task
    # the general-prose table has no culture column to drop; tables of other roles are left as they are
    tables = tables_without({**scored["full"], "general": task}, "korea")
    assert tables["general"] is task and "korea" not in tables["control"].cultures


def test_which_cultures_can_be_held_out(scored):
    task = scored["full"]["task"]
    assert held_out_cultures(task) == list(CULTURES)
    assert held_out_cultures(task, ["uk", "korea"]) == ["korea", "uk"]
    with pytest.raises(LeaveOutError, match="cannot hold out narnia"):
        held_out_cultures(task, ["narnia"])
    with pytest.raises(LeaveOutError, match="at least two cultures"):
        held_out_cultures(restrict_cultures(task, ["uk"]))


def test_select_and_save_writes_the_held_out_sets_and_their_random_sets(scored, tmp_path):
    thresholds = RULES[0]
    out = tmp_path / "sets"
    written = select_and_save(scored["full"], thresholds, out, random_seeds=[0, 1], leave_out=["korea", "uk"])
    assert "general" in written and not any("loco" in str(p) for p in written.values())
    loco = loco_paths(out)
    assert sorted(loco) == ["korea", "uk"]
    assert sorted(loco["uk"]) == ["general", "random-uniform0", "random-uniform1", "random0", "random1"]
    from culnig_lm_eval.neuron_set import NeuronSet

    general = NeuronSet.load(loco["uk"]["general"])
    assert general.neurons_sha256() == select_without(scored["full"], thresholds, "uk").neurons_sha256()
    assert loco["uk"]["general"] == out / "loco" / "uk" / "general.pt"
    random0 = NeuronSet.load(loco["uk"]["random0"])
    assert random0.per_layer() == general.per_layer()
    assert random0.meta["provenance"]["size_matched_to"]["held_out"] == "uk"
    summary = json.loads((out / "selection.json").read_text())
    assert summary["leave_one_out"]["cultures"] == ["korea", "uk"]
    assert summary["leave_one_out"]["summary"]["uk"]["general"]["neurons"] == len(general)
    assert loco_paths(tmp_path / "sets") and not loco_paths(_plain(scored, tmp_path))


def _plain(scored, tmp_path):
    out = tmp_path / "plain"
    select_and_save(scored["full"], RULES[0], out)
    return out


# -- the selection study's transfer rows (culnig-score study --leave-out) ---------------------------
def test_study_transfer_analysis_by_hand():
    from types import SimpleNamespace

    from culnig_lm_eval.selection.study_transfer import analyse_transfer

    def state(acc, nll=None):
        return {"acc": acc, "n": {c: 10 for c in acc}, **({"nll_per_token": nll} if nll is not None else {})}

    class Fake:  # a neuron set as the analysis uses it: len(), union and intersect
        def __init__(self, neurons):
            self.neurons = set(neurons)

        def __len__(self):
            return len(self.neurons)

        def union(self, other):
            return Fake(self.neurons | other.neurons)

        def intersect(self, other):
            return Fake(self.neurons & other.neurons)

    transfer = {"v": {"full": Fake({1, 2, 3, 4}), "held_out": {"a": Fake({1, 2, 3}), "b": Fake({1, 2, 5, 6})}}}
    evaluations = {
        "unmasked": state({"a": 0.8, "b": 0.6}, nll=2.0),
        "transfer": {"v": {"full": state({"a": 0.6, "b": 0.5}, nll=2.05),
                           "held_out": {"a": state({"a": 0.7, "b": 0.6}), "b": state({"a": 0.8, "b": 0.4})}}},
        # random drops on a: 0, 0.1, -0.1; on b: 0, 0.1, 0 -> means 0, 0.1, -0.05
        "transfer_random": [state({"a": 0.8, "b": 0.6}), state({"a": 0.7, "b": 0.5}), state({"a": 0.9, "b": 0.6})],
    }
    settings = SimpleNamespace(alpha=0.5, ppl_max=1.1)
    result = analyse_transfer(settings, evaluations, transfer)
    v = result["variants"]["v"]
    # held-out drops 0.1 (a) and 0.2 (b): mean 0.15 > every random mean -> p = 1/4; in-sample 0.2, 0.1
    assert v["per_culture"]["a"]["held_out_drop"] == pytest.approx(0.1)
    assert v["per_culture"]["a"]["p_random"] == pytest.approx(2 / 4)  # a tie with the random 0.1
    assert v["per_culture"]["b"]["jaccard_full"] == pytest.approx(2 / 6)
    assert v["mean_held_out_drop"] == pytest.approx(0.15) and v["mean_in_sample_drop"] == pytest.approx(0.15)
    assert v["p_pooled"] == pytest.approx(1 / 4) and v["ppl_ratio"] == pytest.approx(2.718281828 ** 0.05)
    assert v["transfers"] and result["recommended"] == "v" and result["random_draws"] == 3
    strict = SimpleNamespace(alpha=0.05, ppl_max=1.1)  # 3 random sets allow no p below 0.25
    assert not analyse_transfer(strict, evaluations, transfer)["variants"]["v"]["transfers"]


def test_study_with_leave_out_on_a_tiny_model(scored, tmp_path, monkeypatch):
    from conftest import sample_data_only

    from culnig_lm_eval.selection.study import StudySettings, run_study
    from culnig_lm_eval.taskdata import sources
    from tiny_models import save_tiny_llama

    sample_data_only(monkeypatch)
    checkpoint = save_tiny_llama(tmp_path / "tiny", seed=3, intermediate_size=96)  # the model the tables scored
    settings = StudySettings(model_args=f"pretrained={checkpoint},dtype=float32", variants={"paper": {}},
                             thresholds={"top_mlp": 10, "top_attention": 10, "crc_exclude": 5, "min_samples": 1},
                             per_culture=2, general_task=None, random_draws=3, batch_size=8, leave_out=True)
    try:
        text = run_study(settings, scored["full"], tmp_path / "study", progress=lambda line: None).read_text()
    finally:
        sources._read.cache_clear()
    results = json.loads((tmp_path / "study" / "study.json").read_text())
    transfer = results["transfer"]
    assert transfer["random_draws"] == 3
    rows = transfer["variants"]["paper"]["per_culture"]
    assert sorted(rows) == list(CULTURES)
    for culture, row in rows.items():
        held = results["evaluations"]["transfer"]["paper"]["held_out"][culture]["acc"][culture]
        assert row["held_out_drop"] == pytest.approx(results["unmasked_acc"][culture] - held)
        assert row["neurons"] == len(select_without(scored["full"], RULES[0], culture))
    assert (tmp_path / "study" / "sets" / "paper" / "loco" / "korea.pt").is_file()
    assert "## Transfer: culture-general sets on held-out cultures" in text and "### paper: held out" in text


def test_study_holds_out_the_cultures_it_is_given(scored):
    from types import SimpleNamespace

    from culnig_lm_eval.selection.study_transfer import select_transfer

    settings = SimpleNamespace(variants={"paper": {}}, thresholds={"top_mlp": 10, "top_attention": 10,
                                                                   "crc_exclude": 5, "min_samples": 1},
                               leave_out=["uk", "china"])
    transfer = select_transfer(settings, scored["full"])
    assert list(transfer["paper"]["held_out"]) == ["china", "uk"]
    assert transfer["paper"]["held_out"]["uk"].neurons_sha256() == select_without(
        scored["full"], RULES[0], "uk").neurons_sha256()
    with pytest.raises(LeaveOutError, match="narnia"):
        select_transfer(SimpleNamespace(**{**vars(settings), "leave_out": ["narnia"]}), scored["full"])


def test_score_select_and_study_take_leave_out(scored, tmp_path, capsys):
    from culnig_lm_eval.cli.score import main
    from culnig_lm_eval.scoring.tables import save_table, score_file

    folder = tmp_path / "scores"
    for role, table in scored["full"].items():
        save_table(table, score_file(folder, role))
    flags = ["--top-mlp", "10", "--top-attention", "10", "--crc-exclude", "5", "--min-samples", "1"]
    out = tmp_path / "sets"
    assert main(["select", "--scores-dir", str(folder), "--sets-out", str(out), "--leave-out", "uk,korea"] + flags) == 0
    assert sorted(loco_paths(out)) == ["korea", "uk"]
    assert "without uk" in capsys.readouterr().out
    assert main(["select", "--scores-dir", str(folder), "--sets-out", str(out), "--leave-out"] + flags) == 0
    assert sorted(loco_paths(out)) == sorted(CULTURES)
    assert main(["select", "--scores-dir", str(folder), "--sets-out", str(out), "--leave-out", "narnia"] + flags) == 2
    assert "cannot hold out narnia" in capsys.readouterr().err
    study = tmp_path / "study"
    assert main(["study", "--scores-dir", str(folder), "--out", str(study), "--select-only", "--variants", "paper",
                 "--leave-out", "uk"] + flags) == 0
    sizes = json.loads((study / "study.json").read_text())["transfer_sizes"]["paper"]
    assert set(sizes) == {"full", "uk"} and (study / "sets" / "paper" / "loco" / "uk.pt").is_file()
