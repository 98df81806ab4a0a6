"""LAPE corpora, token rows, block NLL, set algebra and the ``culnig-lape`` command, on tiny models.

The annotation fixture (``tests/fixtures/blend_annotations``) is invented text in BLEnD's
official annotation schema; the real-data check at the end reads ``../shared`` and skips
when it is absent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from culnig_lm_eval.cli import lape as cli
from culnig_lm_eval.lape import corpora as C
from culnig_lm_eval.lape.intervene import block_nll, delta_matrix, row_nll
from culnig_lm_eval.lape.pipeline import combine
from culnig_lm_eval.neuron_set import NeuronSet, new_meta
from tiny_models import save_tiny_llama, tiny_llama

FIXTURE = Path(__file__).parent / "fixtures" / "blend_annotations"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "blend" / "annotations"


# -- corpora ------------------------------------------------------------------------------------
def test_blend_annotations_give_english_culture_and_native_corpora_split_by_question():
    built = C.blend_annotation_corpora(FIXTURE, eval_fraction=0.2)
    names = [c.name for c in built["culture"]["record"]]
    assert names == ["mexico", "spain", "uk", "usa"]  # canonical culture ids, sorted
    raw = json.loads((FIXTURE / "Spain_data.json").read_text())
    spain = {side: built[kind][side][names.index("spain")] for kind in ("culture",) for side in ("record", "eval")}
    # every question lands on exactly one side, chosen by its id
    expect_eval = [q for q in raw if C.in_evaluation_split(q, 0.2)]  # file order
    assert len(spain["eval"].documents) == len(expect_eval) and len(spain["record"].documents) == len(raw) - len(expect_eval)
    first_eval = raw[expect_eval[0]]
    assert spain["eval"].documents[0].startswith(first_eval["en_question"])
    native_eval = built["native"]["eval"][names.index("spain")].documents[0]
    assert native_eval.startswith(first_eval["question"]) and first_eval["annotations"][0]["answers"][0] in native_eval
    assert spain["record"].sources[0]["sha256"] and spain["record"].sources[0]["path"].endswith("Spain_data.json")


def test_language_corpora_group_native_text_by_language():
    built = C.blend_annotation_corpora(FIXTURE)
    langs = C.language_corpora(built["native"]["record"], C.BLEND_LANGUAGES)
    assert [c.name for c in langs] == ["en", "es"]
    es = langs[1]
    by_name = {c.name: c for c in built["native"]["record"]}
    assert es.documents == by_name["mexico"].documents + by_name["spain"].documents
    with pytest.raises(ValueError, match="no language given for culture 'uk'"):
        C.language_corpora(built["native"]["record"], {"spain": "es", "mexico": "es"})


@pytest.mark.parametrize("content, match", [
    ("not json", "not a JSON file"),
    (json.dumps({"q1": {"question": "x"}}), "needs 'question' and 'en_question'"),
    (json.dumps({"q1": {"question": "x", "en_question": "y", "annotations": "z"}}), "'annotations' is not a list"),
    (json.dumps([]), "expected a JSON object"),
])
def test_a_bad_annotation_file_is_named(tmp_path, content, match):
    (tmp_path / "UK_data.json").write_text(content)
    with pytest.raises(C.CorpusError, match=match) as err:
        C.blend_annotation_corpora(tmp_path)
    assert "UK_data.json" in str(err.value)


def test_corpus_folders_read_the_reference_layout_and_refuse_unsafe_or_empty(tmp_path):
    for name, text in (("en", "one line\n\ntwo line\n"), ("de", "eins\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.txt").write_text(text)
    corpora = C.read_corpus_folder(tmp_path)
    assert [(c.name, c.documents) for c in corpora] == [("de", ["eins"]), ("en", ["one line", "two line"])]
    (tmp_path / "fr").mkdir()
    with pytest.raises(C.CorpusError, match="holds no text"):
        C.read_corpus_folder(tmp_path)
    with pytest.raises(C.CorpusError, match="does not exist"):
        C.read_corpus_folder(tmp_path / "missing")


def test_token_rows_lead_with_bos_count_only_text_and_keep_every_token():
    _, tok = tiny_llama()
    docs = ["Tea is served with milk.", "Rice and bread are staple foods."]
    rows = C.token_rows(tok, docs, row_length=7)
    stream = tok("\n".join(docs), add_special_tokens=False)["input_ids"]
    assert (rows.input_ids[:, 0] == tok.bos_token_id).all()
    assert not rows.count_mask[:, 0].any()
    assert rows.tokens == len(stream)  # every text token counted once, BOS and padding never
    rebuilt = rows.input_ids[rows.count_mask].tolist()
    assert rebuilt == stream
    assert (rows.count_mask <= rows.attention_mask.bool()).all()
    assert rows.attention_mask[-1].sum() < 7 or len(stream) % 6 == 0  # last row padded
    full = C.token_rows(tok, docs, row_length=7, drop_partial=True)
    assert (full.attention_mask == 1).all()


# -- block NLL ----------------------------------------------------------------------------------
def _slow_row_nll(model, rows) -> list[float]:
    out = []
    for r in range(len(rows)):
        n = int(rows.attention_mask[r].sum())
        ids = rows.input_ids[r, :n]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids[None]).logits[0].double(), -1)
        terms = [-float(logp[t - 1, ids[t]]) for t in range(1, n) if rows.count_mask[r, t]]
        out.append(sum(terms) / len(terms))
    return out


def test_block_nll_equals_a_token_by_token_reference_with_padding():
    model, tok = tiny_llama(seed=3)
    rows = C.token_rows(tok, ["The quick brown fox jumps over the lazy dog.", "Tea with milk."], row_length=9)
    assert rows.attention_mask[-1].sum() < 9  # a padded row is part of the check
    fast = row_nll(model, rows, batch_size=2)
    assert fast.tolist() == pytest.approx(_slow_row_nll(model, rows), abs=1e-5)
    assert block_nll(model, rows) == pytest.approx(float(fast.mean()))


def _set(model, per_layer: list[list[int]], culture=None) -> NeuronSet:
    from culnig_lm_eval.architectures import model_shape

    return NeuronSet({"mlp_gate": [torch.tensor(x, dtype=torch.long) for x in per_layer]},
                     new_meta(model_shape(model.config), "lape", culture=culture))


def test_delta_matrix_masks_each_set_and_restores_the_model_exactly():
    model, tok = tiny_llama(seed=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = {"a": C.token_rows(tok, ["The quick brown fox."], 6), "b": C.token_rows(tok, ["Tea is served."], 6)}
    sets = {"big": _set(model, [list(range(40)), list(range(40))]), "empty": _set(model, [[], []])}
    result = delta_matrix(model, sets, rows)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.delta[1] == [0.0, 0.0]
    # the masked NLL, recomputed by hand with the rows zeroed, gives the same cell
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight[:40] = 0
    assert result.delta[0][0] == pytest.approx(block_nll(model, rows["a"]) - result.base[0], abs=1e-6)
    assert result.delta[0][0] != 0.0
    diag = result.diagonal([("big", "a")])
    assert diag[0]["own"] == result.delta[0][0] and diag[0]["row_max"] == (result.delta[0][0] >= result.delta[0][1])


def test_diagonal_dominance_is_judged_per_group_on_the_groups_own_corpora():
    from culnig_lm_eval.lape.intervene import InterventionResult
    from culnig_lm_eval.lape.pipeline import analyse_intervention, set_layers

    model, _ = tiny_llama()
    result = InterventionResult(
        ["culture/a", "culture/b", "language/x"], ["a", "b", "lang-x"], [1.0, 1.0, 1.0],
        [[0.5, 0.1, 9.0],   # a hurts a most among the culture texts (lang-x is another group's column)
         [0.3, 0.2, 0.0],   # b hurts a more than b: not dominant
         [0.0, 0.0, 0.4]], [3, 3, 3])
    sets = {n: _set(model, [[1], [2, 3]]) for n in result.set_names}
    payload = analyse_intervention(result, [("culture/a", "a"), ("culture/b", "b"), ("language/x", "lang-x")],
                                   set_layers(sets), "t")
    dom = {g["group"]: g for g in payload["dominance"]}
    assert dom["culture"]["own_largest"] == 1 and not dom["culture"]["diagonal_dominant"]
    assert dom["language"]["diagonal_dominant"]
    rows = {d["set"]: d for d in payload["diagonal"]}
    assert rows["culture/a"]["row_max"] is False  # the whole row's max is the language column
    assert payload["layers"]["culture/a"] == [1, 2]
    # a's own text: a hurts it by 0.5, b by 0.3 -> above its column; b's own text: 0.2 vs a's 0.1 -> above
    assert rows["culture/a"]["own_vs_column"] == pytest.approx(0.2) and rows["culture/b"]["own_vs_column"] == pytest.approx(0.1)
    assert dom["culture"]["own_above_column"] == 2


# -- set algebra ----------------------------------------------------------------------------------
def test_combine_gives_pure_compound_and_generic():
    model, _ = tiny_llama()
    cultures = {"uk": _set(model, [[1, 2, 3], [5]], "uk"), "usa": _set(model, [[2, 3, 4], [5, 6]], "usa")}
    languages = {"en": _set(model, [[3], [6]], "en")}
    out = combine(cultures, languages, {"uk": "en", "usa": "en"})
    as_lists = {k: [t.tolist() for t in s.indices["mlp_gate"]] for k, s in out.items()}
    assert as_lists["pure/uk"] == [[1, 2], [5]] and as_lists["compound/uk"] == [[3], []]
    assert as_lists["pure/usa"] == [[2, 4], [5]] and as_lists["compound/usa"] == [[3], [6]]
    assert as_lists["generic"] == [[2], [5]]
    alone = combine({"uk": cultures["uk"]}, languages, {"uk": "en"})  # one culture: generic = its pure set
    assert alone["pure/uk"].meta["selection"] == "lape-pure" and alone["generic"].meta["selection"] == "lape-generic"
    assert [t.tolist() for t in alone["generic"].indices["mlp_gate"]] == [[1, 2], [5]]
    assert out["pure/uk"].meta["selection"] == "lape-pure" and out["pure/uk"].meta["culture"] == "uk"
    with pytest.raises(ValueError, match="no language given for culture"):
        combine(cultures, languages, {"uk": "en"})
    with pytest.raises(ValueError, match="no language set for es"):
        combine(cultures, languages, {"uk": "es", "usa": "en"})


# -- the command ----------------------------------------------------------------------------------
def test_culnig_lape_steps_and_demo_on_a_tiny_model(tmp_path, capsys):
    model_dir = save_tiny_llama(tmp_path / "tiny", seed=5)
    args = f"pretrained={model_dir},device=cpu"
    corpora = tmp_path / "corpora"
    assert cli.main(["corpora", "--blend-annotations", str(FIXTURE), "--out", str(corpora)]) == 0
    manifest = json.loads((corpora / "manifest.json").read_text())
    assert manifest["culture_languages"]["uk"] == "en" and "culture/record/uk" in manifest["corpora"]
    counts = tmp_path / "counts"
    assert cli.main(["record", "--model_args", args, "--corpora", str(corpora / "culture" / "record"),
                     "--out", str(counts), "--row-length", "16"]) == 0
    files = sorted(p.name for p in counts.iterdir())
    assert files == [f"{c}.counts.pt" for c in ("mexico", "spain", "uk", "usa")]
    stamp = (counts / "uk.counts.pt").stat().st_mtime_ns
    assert cli.main(["record", "--model_args", args, "--corpora", str(corpora / "culture" / "record"),
                     "--out", str(counts), "--row-length", "16"]) == 0
    assert (counts / "uk.counts.pt").stat().st_mtime_ns == stamp  # reused, not recomputed
    sets = tmp_path / "sets"
    assert cli.main(["identify", str(counts), "--out", str(sets), "--top-rate", "0.1"]) == 0
    uk = NeuronSet.load(sets / "uk.pt")
    assert uk.meta["method"] == "lape" and uk.meta["culture"] == "uk"
    report = tmp_path / "report"
    assert cli.main(["evaluate", "--model_args", args, "--sets-dir", str(sets), "--corpora", str(corpora / "culture" / "eval"),
                     "--out", str(report), "--row-length", "16"]) == 0
    result = json.loads((report / "intervention.json").read_text())
    assert result["corpus_names"] == ["mexico", "spain", "uk", "usa"] and len(result["delta"]) == 4
    assert all(math.isfinite(v) for row in result["delta"] for v in row)
    assert (report / "delta_nll.png").stat().st_size > 0

    run = tmp_path / "demo"
    assert cli.main(["demo", "--blend-annotations", str(FIXTURE), "--model_args", args, "--out", str(run),
                     "--row-length", "16", "--top-rate", "0.1"]) == 0
    for name in ("culture/uk", "language/en", "language/es", "pure/spain", "compound/mexico", "generic"):
        assert (run / "sets" / f"{name}.pt").is_file(), name
    md = (run / "report" / "intervention.md").read_text()
    assert "pure/uk" in md and "Same language, other culture" in md
    demo = json.loads((run / "report" / "intervention.json").read_text())
    assert demo["corpus_names"] == ["mexico", "spain", "uk", "usa", "lang-en", "lang-es"]
    assert {g["group"] for g in demo["dominance"]} <= {"culture", "pure", "compound", "language"}
    assert "Diagonal dominance" in md

    # culnig-report re-renders the LAPE report from its JSON alone (formatting only)
    from culnig_lm_eval.cli import report as report_cli

    assert report_cli.main([str(run / "report"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "intervention.md").read_text() == md
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "intervention.json").write_text(json.dumps({**demo, "delta": [[float("nan")]]}).replace("NaN", "NaN"))
    assert report_cli.main([str(tmp_path / "bad"), "--out", str(tmp_path / "bad_out")]) == 2


@pytest.mark.parametrize("argv, match", [
    (["corpora", "--blend-annotations", "/nonexistent", "--out", "x"], "does not exist"),
    (["identify", "/nonexistent", "--out", "x"], "nonexistent"),
    (["corpora", "--blend-annotations", str(FIXTURE), "--out", "x", "--eval-fraction", "1.5"], "--eval-fraction"),
    (["corpora", "--blend-annotations", str(FIXTURE), "--out", "x", "--culture-languages", "uk"], "culture=language"),
    (["identify", str(FIXTURE), "--out", "x"], "holds no *.counts.pt"),
    # the data is checked before the model loads: a missing corpus folder, not the bogus model, is reported
    (["record", "--model_args", "pretrained=/no/such/model", "--corpora", "/nonexistent", "--out", "x"],
     "corpus folder /nonexistent does not exist"),
    (["demo", "--blend-annotations", str(FIXTURE), "--model_args", "pretrained=/no/such/model", "--out", "x",
      "--top-rate", "0"], "top_rate"),
    (["demo", "--blend-annotations", str(FIXTURE), "--model_args", "pretrained=/no/such/model", "--out", "x",
      "--eval-max-tokens", "0"], "--eval-max-tokens 0"),
    (["evaluate", "--model_args", "pretrained=/no/such/model", "--sets-dir", str(FIXTURE), "--corpora", str(FIXTURE),
      "--out", "x", "--batch_size", "0"], "--batch_size 0"),
    (["evaluate", "--model_args", "pretrained=/no/such/model", "--sets-dir", str(FIXTURE), str(FIXTURE) + "/",
      "--corpora", str(FIXTURE), "--out", "x"], "two folders are named 'blend_annotations'"),
])
def test_culnig_lape_bad_input_is_one_line_with_status_2(tmp_path, monkeypatch, capsys, argv, match):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("culnig-lape: error:") and match in err and "\n" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(not REAL.is_dir(), reason="real BLEnD annotations not present at ../shared/data/blend/annotations")
def test_real_blend_annotations_give_eight_cultures_and_six_languages():
    built = C.blend_annotation_corpora(REAL)
    assert [c.name for c in built["culture"]["record"]] == sorted(C.BLEND_LANGUAGES)
    langs = C.language_corpora(built["native"]["eval"], C.BLEND_LANGUAGES)
    assert [c.name for c in langs] == ["en", "es", "fa", "id", "ko", "zh"]
    for kind in built.values():
        for side in kind.values():
            assert all(len(c.documents) > 20 for c in side)


def test_published_lape_files_and_our_sets_mask_and_evaluate_through_the_same_commands(tmp_path):
    """Our identified sets, written in the reference's ``[culture][layer]`` layout and imported
    back with ``culnig-sets convert``, are the same sets and give the same intervention row and
    the same masked model."""
    from culnig_lm_eval.cli import sets as sets_cli
    from culnig_lm_eval.model.masked_hf import MaskedHFLM

    model_dir = save_tiny_llama(tmp_path / "tiny", seed=6)
    args = f"pretrained={model_dir},device=cpu"
    corpora = tmp_path / "corpora"
    assert cli.main(["corpora", "--blend-annotations", str(FIXTURE), "--out", str(corpora)]) == 0
    assert cli.main(["record", "--model_args", args, "--corpora", str(corpora / "culture" / "record"),
                     "--out", str(tmp_path / "counts"), "--row-length", "16"]) == 0
    ours = tmp_path / "ours"
    assert cli.main(["identify", str(tmp_path / "counts"), "--out", str(ours), "--top-rate", "0.2"]) == 0
    names = ["mexico", "spain", "uk", "usa"]
    our_sets = [NeuronSet.load(ours / f"{n}.pt") for n in names]
    assert any(len(s) for s in our_sets)
    published = tmp_path / "model.cultural"
    torch.save([list(s.indices["mlp_gate"]) for s in our_sets], published)  # the reference's torch.save layout
    imported = tmp_path / "imported"
    assert sets_cli.main(["convert", str(published), "--model_args", f"pretrained={model_dir}",
                          "--cultures", ",".join(names), "--lape-layout", "indices",
                          "--out", str(imported / "{culture}.pt")]) == 0
    for ours_set, name in zip(our_sets, names):
        theirs = NeuronSet.load(imported / f"{name}.pt")
        assert [t.tolist() for t in theirs.indices["mlp_gate"]] == [t.tolist() for t in ours_set.indices["mlp_gate"]]
    report = tmp_path / "report"
    assert cli.main(["evaluate", "--model_args", args, "--sets-dir", str(ours), str(imported),
                     "--corpora", str(corpora / "culture" / "eval"), "--out", str(report), "--row-length", "16"]) == 0
    result = json.loads((report / "intervention.json").read_text())
    rows = dict(zip(result["set_names"], result["delta"]))
    for name in names:
        assert rows[f"ours/{name}"] == rows[f"imported/{name}"]
    biggest = max(names, key=lambda n: len(NeuronSet.load(ours / f"{n}.pt")))
    for path in (ours / f"{biggest}.pt", imported / f"{biggest}.pt"):
        lm = MaskedHFLM(pretrained=str(model_dir), neurons=str(path), device="cpu", batch_size=1)
        for layer, idx in zip(lm.model.model.layers, NeuronSet.load(path).indices["mlp_gate"]):
            assert idx.numel() == 0 or bool((layer.mlp.gate_proj.weight[idx] == 0).all())


def test_corpora_come_with_harness_perplexity_tasks_on_the_evaluation_split(tmp_path):
    """``lm_eval --include_path CORPORA/tasks --tasks lape_ppl_culture_uk`` reads the held-out text only."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from culnig_lm_eval.model.masked_hf import MaskedHFLM

    corpora = tmp_path / "corpora"
    assert cli.main(["corpora", "--blend-annotations", str(FIXTURE), "--out", str(corpora)]) == 0
    manifest = json.loads((corpora / "manifest.json").read_text())
    assert "lape_ppl_culture_uk" in manifest["tasks"] and "lape_ppl_language_es" in manifest["tasks"]
    moved = tmp_path / "moved"
    corpora.rename(moved)  # the tasks find their text relative to themselves
    model_dir = save_tiny_llama(tmp_path / "tiny", seed=7)
    lm = MaskedHFLM(pretrained=str(model_dir), device="cpu", batch_size=2)
    tm = TaskManager(include_path=str(moved / "tasks"))
    out = simple_evaluate(model=lm, tasks=["lape_ppl_culture_uk"], task_manager=tm, log_samples=True)
    samples = out["samples"]["lape_ppl_culture_uk"]
    texts = [s["doc"]["text"] for s in samples]
    assert texts == (moved / "culture" / "eval" / "uk" / "text.txt").read_text().splitlines()
    record = (moved / "culture" / "record" / "uk" / "text.txt").read_text().splitlines()
    assert not set(texts) & set(record)
    ppl = out["results"]["lape_ppl_culture_uk"]["word_perplexity,none"]
    assert math.isfinite(ppl) and ppl > 1


def _record_in_process_group(rank: int, world: int, port: int, model_dir: str, out: str):
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from culnig_lm_eval.lape.pipeline import RecordSettings, record_corpora

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        corpora = C.blend_annotation_corpora(FIXTURE)["culture"]["record"][:2]
        record_corpora(model, tokenizer, corpora, out, RecordSettings(row_length=8, batch_size=2))
    finally:
        dist.destroy_process_group()


def test_data_parallel_recording_gives_the_single_process_counts(tmp_path):
    """Two gloo processes each record every other row; rank 0 writes the summed counts."""
    import socket

    import torch.multiprocessing as mp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from culnig_lm_eval.lape.counts import ActivationCounts
    from culnig_lm_eval.lape.pipeline import RecordSettings, record_corpora

    model_dir = save_tiny_llama(tmp_path / "tiny", seed=8)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_record_in_process_group, args=(2, port, str(model_dir), str(tmp_path / "dp")), nprocs=2, join=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    corpora = C.blend_annotation_corpora(FIXTURE)["culture"]["record"][:2]
    record_corpora(model, tokenizer, corpora, tmp_path / "one", RecordSettings(row_length=8, batch_size=2))
    for corpus in corpora:
        dp = ActivationCounts.load(tmp_path / "dp" / f"{corpus.name}.counts.pt")
        one = ActivationCounts.load(tmp_path / "one" / f"{corpus.name}.counts.pt")
        assert dp.n == one.n > 0 and torch.equal(dp.over_zero, one.over_zero)
        assert dp.meta["processes"] == 2 and one.meta["processes"] == 1
