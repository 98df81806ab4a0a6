"""Issue 26: the new commands on hostile but realistic input -- no silent wrong numbers, one-line
errors (``PROG: error: ...``, exit 2, no traceback) naming the file or argument, before a model loads
where that is possible.  Output folders (data loss) are in ``test_output_folders.py``.

Every test runs in-process on tiny models and files; ``plugin_tasks_only`` (conftest) makes lm-eval
index this package's task folder only (a stock index costs ~10 s per ``TaskManager``)."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest
import torch

from culnig_lm_eval.architectures import model_shape
from culnig_lm_eval.neuron_set import NeuronSet, new_meta
from tiny_models import tiny_llama

# lm-eval's log records and progress bars (transformers' "Loading weights") are not error output
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d:\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) |\d+/\d+ \[[\d:<?]+")


def one_line_error(capsys, prog: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


def tiny_set(model, picks: dict[int, list[int]], **meta) -> NeuronSet:
    shape = model_shape(model.config)
    per_layer = [torch.tensor(picks.get(layer, []), dtype=torch.long) for layer in range(shape["num_layers"])]
    return NeuronSet({"mlp_gate": per_layer}, new_meta(shape, "hand", **meta))


# -- stock lm_eval: the plugin's line, not a traceback --------------------------------------------
@pytest.fixture
def restore_logging():
    """lm-eval's CLI gives its logger a handler on the (captured) stderr: take it away afterwards."""
    saved = {name: (list(lg.handlers), lg.level, lg.propagate)
             for name, lg in ((n, logging.getLogger(n)) for n in ("", "lm_eval"))}
    # an earlier in-process run (logging.basicConfig, lm-eval's setup_logging) may have left a handler
    # on a capture that pytest has closed since
    for name in saved:
        lg = logging.getLogger(name)
        lg.handlers[:] = [h for h in lg.handlers if type(h) is not logging.StreamHandler]
    yield
    for name, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def _other_model_set(tmp_path) -> Path:
    """A set whose indices are out of the tiny model's range (made for a wider model)."""
    model, _ = tiny_llama(intermediate_size=200)
    return tiny_set(model, {0: [150]}).save(tmp_path / "wide.pt")


@pytest.mark.parametrize("case, extra, match", [
    ("bad-file", "neurons={bad}", "neuron set"),
    ("out-of-range", "neurons={wide}", "wide.pt"),
    ("factor-nan", "neurons={good},operation=scale,factor=nan", "factor"),
])
def test_stock_lm_eval_prints_the_plugins_line_not_a_traceback(tiny_llama_dir, tmp_path, monkeypatch, capsys,
                                                                 plugin_tasks_only, restore_logging, case, extra, match):
    from lm_eval.__main__ import cli_evaluate

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a neuron set")
    model, _ = tiny_llama()
    good = tiny_set(model, {0: [1]}).save(tmp_path / "good.pt")
    args = f"pretrained={tiny_llama_dir}," + extra.format(bad=bad, wide=_other_model_set(tmp_path), good=good)
    monkeypatch.setattr(sys, "argv", ["lm_eval", "--model", "masked-hf", "--model_args", args,
                                      "--tasks", "blend_cloze_test", "--device", "cpu"])
    with pytest.raises(SystemExit) as stop:
        cli_evaluate()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    ours = [line for line in err.splitlines() if line.strip() and not LOG_LINE.search(line)]
    assert ours and ours[0].startswith("masked-hf: error: ") and match in ours[0], err
    assert len(ours) == 1, err


def test_stock_hf_given_an_embedded_alias_is_one_line(monkeypatch, capsys, plugin_tasks_only, restore_logging):
    """``lm_eval --model hf --model_args pretrained=smollm2-135m`` would ask the hub for the alias."""
    from lm_eval.__main__ import cli_evaluate

    monkeypatch.setattr(sys, "argv", ["lm_eval", "--model", "hf", "--model_args", "pretrained=smollm2-135m",
                                      "--tasks", "blend_cloze_test", "--device", "cpu"])
    with pytest.raises(SystemExit) as stop:
        cli_evaluate()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.strip() and not LOG_LINE.search(line)]
    assert ours == ["hf: error: pretrained=smollm2-135m is an embedded model of culnig-lm-eval, not a Hugging Face "
                    "hub id: use --model masked-hf (hf plus the aliases), or pretrained=$(culnig-models path "
                    "smollm2-135m) with --model hf"], err


def test_hf_refuses_an_alias_only_where_no_folder_has_its_name(tmp_path, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    from culnig_lm_eval.model.masked_hf import refuse_alias_for_hf

    with pytest.raises(ValueError, match="gemma-3-270m is an embedded model.*--model masked-hf"):
        HFLM(pretrained="gemma-3-270m")  # a library caller gets the exception
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m").mkdir()
    refuse_alias_for_hf("smollm2-135m")  # a local folder of that name: hf loads it as usual
    refuse_alias_for_hf("HuggingFaceTB/SmolLM2-135M")


def test_a_library_caller_still_gets_the_exception(tiny_llama_dir, tmp_path):
    from culnig_lm_eval.model.masked_hf import MaskedHFLM

    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.pt"):
        MaskedHFLM(pretrained=str(tiny_llama_dir), neurons=str(tmp_path / "bad.pt"), device="cpu")
    with pytest.raises(ValueError, match="factor"):
        MaskedHFLM(pretrained=str(tiny_llama_dir), operation="scale", factor=float("nan"), device="cpu")


# -- silent wrong results ---------------------------------------------------------------------------
def _study_inputs(effect: float):
    """Two cultures; 'paper' selected nothing for either, 'contrast' hurts each own culture by ``effect``."""
    from culnig_lm_eval.selection.study import StudySettings

    base = {"acc": {"a": 0.8, "b": 0.8}, "n": {"a": 40, "b": 40}}
    masked = {"a": {"acc": {"a": 0.8 - effect, "b": 0.8}}, "b": {"acc": {"a": 0.8, "b": 0.8 - effect}}}
    evaluations = {"unmasked": base, "random": [{"acc": {"a": 0.8, "b": 0.8}}] * 3,
                   "sets": {"paper": {"a": {"empty": True}, "b": {"empty": True}}, "contrast": masked}}
    info = {name: {"selection": name, "seconds": 0.1, "stability": {}, "sizes": {"a": n, "b": n}}
            for name, n in (("paper", 0), ("contrast", 5))}
    return StudySettings(select_only=True), evaluations, info


@pytest.mark.parametrize("effect", [0.1, -0.05])
def test_a_study_never_recommends_a_variant_that_masks_nothing(effect):
    from culnig_lm_eval.selection.study_report import analyse, render_markdown

    results = analyse(*_study_inputs(effect))
    # before: the empty variant (gap 0) won over a real effect whenever no culture passed
    assert results["recommended"] == "contrast"
    assert results["variants"]["paper"]["masks_nothing"]
    text = render_markdown(results)
    assert "paper (empty: masks nothing)" in text and "**Empty:** paper" in text


def test_a_study_of_empty_variants_only_recommends_none():
    from culnig_lm_eval.selection.study_report import analyse, render_markdown

    settings, evaluations, info = _study_inputs(0.1)
    evaluations["sets"].pop("contrast")
    info.pop("contrast")
    results = analyse(settings, evaluations, info)
    assert results["recommended"] is None
    assert "No variant is recommended" in render_markdown(results)


def _finetune_lm(folder):
    from culnig_lm_eval.model.lm import load_lm

    lm = load_lm(f"pretrained={folder},dtype=float32", batch_size=4, device="cpu")
    for p in lm.model.parameters():
        p.requires_grad_(False)
    return lm


def test_finetune_does_not_resume_a_checkpoint_of_other_base_weights(tiny_llama_dir, tmp_path, plugin_tasks_only):
    from culnig_lm_eval.finetune.examples import Example, tokenise
    from culnig_lm_eval.finetune.train import FinetuneSettings, Run

    lm = _finetune_lm(tiny_llama_dir)
    data = tokenise(lm, [Example(f"Is {i} even? Answer:", " yes" if i % 2 == 0 else " no") for i in range(8)], 32)
    settings = FinetuneSettings(steps=1, batch_size=4, grad_accum=1, learning_rate=1e-3, max_length=32, eval_every=1,
                                eval_tasks=["qa_match_demo"], eval_limit=2)
    modules = ["model.layers.1.mlp.down_proj"]
    loaded = {n: p.detach().clone() for n, p in lm.model.named_parameters()}

    def load_again():  # a new process loads the same weights again
        with torch.no_grad():
            for n, p in lm.model.named_parameters():
                p.copy_(loaded[n])

    Run(lm, data, modules, settings, tmp_path / "run", "pretrained=tiny", progress=False).run()
    load_again()
    Run(lm, data, modules, settings, tmp_path / "run", "pretrained=tiny", progress=False).run()  # resumes: same weights
    load_again()
    with torch.no_grad():  # the same --model_args, other weights (another checkpoint behind the same name)
        lm.model.model.layers[0].self_attn.q_proj.weight.mul_(1.5)
    with pytest.raises(ValueError, match="base weights"):
        Run(lm, data, modules, settings, tmp_path / "run", "pretrained=tiny", progress=False).run()


@pytest.fixture
def lape_corpora(tmp_path):
    from culnig_lm_eval.cli import lape

    fixture = Path(__file__).parent / "fixtures" / "blend_annotations"
    assert lape.main(["corpora", "--blend-annotations", str(fixture), "--out", str(tmp_path / "corpora")]) == 0
    return tmp_path / "corpora"


def test_lape_evaluate_refuses_nan_nll(tmp_path, lape_corpora, capsys):
    from culnig_lm_eval.cli import lape

    model, tokenizer = tiny_llama()
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(tmp_path / "nan-model")
    tokenizer.save_pretrained(tmp_path / "nan-model")
    sets = tmp_path / "sets"
    tiny_set(model, {0: [1, 2]}, culture="uk").save(sets / "uk.pt")
    out = tmp_path / "report"
    assert lape.main(["evaluate", "--model_args", f"pretrained={tmp_path / 'nan-model'},device=cpu", "--sets-dir", str(sets),
                      "--corpora", str(lape_corpora / "culture" / "eval"), "--out", str(out), "--row-length", "16",
                      "--max-tokens", "32"]) == 2
    line = [x for x in capsys.readouterr().err.strip().splitlines() if x.startswith("culnig-lape")][-1]
    assert "NLL on corpus" in line and "nan" in line
    assert not out.exists()  # before: nan rows written, exit 0


def _intervention(tmp_path, **changes) -> Path:
    from culnig_lm_eval.lape.intervene import InterventionResult
    from culnig_lm_eval.lape.pipeline import analyse_intervention

    result = InterventionResult(["culture/a", "culture/b"], ["a", "b"], [2.0, 2.0], [[0.5, 0.1], [0.2, 0.4]], [3, 3])
    payload = analyse_intervention(result, [("culture/a", "a"), ("culture/b", "b")], {}, "t")
    payload.update(changes)
    (tmp_path / "lape").mkdir(exist_ok=True)
    (tmp_path / "lape" / "intervention.json").write_text(json.dumps(payload))
    return tmp_path / "lape"


@pytest.mark.parametrize("changes, match", [
    ({"base": [float("nan"), 2.0]}, "base"),
    ({"set_names": ["culture/a"]}, "2 rows for 1 set names"),
    ({"set_sizes": [3]}, "set_sizes"),
    ({"delta": [[0.5], [0.2, 0.4]]}, "delta row of 'culture/a'"),
])
def test_culnig_report_refuses_a_lape_report_it_would_render_wrong(tmp_path, capsys, changes, match):
    from culnig_lm_eval.cli import report

    folder = _intervention(tmp_path, **changes)
    assert report.main([str(folder), "--out", str(tmp_path / "out")]) == 2
    assert match in one_line_error(capsys, "culnig-report")
    assert not (tmp_path / "out").exists()


def test_an_empty_lape_set_is_not_its_rows_max(tmp_path):
    from culnig_lm_eval.lape.intervene import InterventionResult
    from culnig_lm_eval.lape.pipeline import analyse_intervention, render_intervention

    result = InterventionResult(["culture/a", "culture/b"], ["a", "b"], [2.0, 2.0], [[0.5, 0.1], [0.0, 0.0]], [3, 0])
    payload = analyse_intervention(result, [("culture/a", "a"), ("culture/b", "b")], {}, "t")
    rows = {d["set"]: d for d in payload["diagonal"]}
    assert rows["culture/b"]["row_max"] is False and rows["culture/b"]["empty"]  # before: "yes"
    assert payload["dominance"][0]["sets"] == 1  # the empty set takes no part
    md = render_intervention(payload, tmp_path / "out").read_text()
    assert "| culture/b | b | +0.000 | +0.000 | n/a (empty set) |" in md and "Empty sets" in md


def _saved_set(path: Path, folder: Path, picks: dict[int, list[int]]) -> Path:
    from transformers import AutoConfig

    shape = model_shape(AutoConfig.from_pretrained(folder))
    per_layer = [torch.tensor(picks.get(layer, []), dtype=torch.long) for layer in range(shape["num_layers"])]
    return NeuronSet({"mlp_gate": per_layer}, new_meta(shape, "hand")).save(path)


def test_culnig_modules_refuses_an_empty_set(tiny_llama_dir, tmp_path, capsys):
    from culnig_lm_eval.cli import finetune

    empty = _saved_set(tmp_path / "empty.pt", tiny_llama_dir, {})
    assert finetune.modules_main(["--model_args", f"pretrained={tiny_llama_dir}", "--sets", str(empty)]) == 2
    assert "empty.pt: the set holds 0 neurons" in one_line_error(capsys, "culnig-modules")


def _finetune_argv(tmp_path, *extra, command="train", model="pretrained=/no/such/model") -> list[str]:
    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "a", "target": " b"}\n{"prompt": "c", "target": " d"}\n')
    return [command, "--model_args", model, "--train-file", str(train), "--out", str(tmp_path / "run"),
            "--train-eval-task", "", "--eval-tasks", "qa_match_demo", *extra]


def test_culnig_finetune_compare_refuses_an_empty_set_before_the_model_loads(tiny_llama_dir, tmp_path, capsys,
                                                                             plugin_tasks_only):
    from culnig_lm_eval.cli import finetune

    empty = _saved_set(tmp_path / "empty.pt", tiny_llama_dir, {})
    assert finetune.finetune_main(_finetune_argv(tmp_path, "--sets", str(empty), command="compare")) == 2
    assert "0 neurons" in one_line_error(capsys, "culnig-finetune")  # before: "no clear difference"


def test_a_report_on_one_item_shows_no_interval_and_says_why(tmp_path):
    from culnig_lm_eval.cli import report
    from test_bad_input_report import write_run

    write_run(tmp_path / "runs" / "unmasked" / "m", "pretrained=m", "1")
    write_run(tmp_path / "runs" / "masked" / "m", "pretrained=m,neurons=missing.pt", "0")
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--n-resamples", "50"]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "n/a (n=1: no interval)" in text and "[-1.0000, -1.0000]" not in text  # before: a zero-width CI
    assert "**Small samples:** 1 paired item(s)" in text


def test_a_finetune_comparison_on_one_item_says_it_is_too_few():
    from culnig_lm_eval.finetune.compare import analyse, verdict
    from culnig_lm_eval.finetune.report import render

    def curve(acc):
        return [{"step": 0, "tasks": {"t": {"acc": 1.0, "items": [1.0]}}},
                {"step": 1, "tasks": {"t": {"acc": acc, "items": [acc]}}}]

    analysis = analyse({"top": curve(0.0), "bottom": curve(1.0)})
    lines = verdict(analysis, ["t"], None)
    assert lines and "too few items to tell top from bottom" in lines[0] and "1 item(s)" in lines[0]
    body = {"settings": {"steps": 1, "batch_size": 1, "grad_accum": 1, "learning_rate": 1e-3, "seed": 0,
                         "eval_every": 1, "eval_tasks": ["t"]}, "model_args": "m", "modules": {},
            "analysis": analysis, "verdict": lines}
    text = render(body)
    assert "n/a (n=1: no interval)" in text and "**Small samples:**" in text


def test_max_train_examples_refuses_negatives_and_0_means_all(tmp_path, capsys):
    from culnig_lm_eval.cli import finetune
    from culnig_lm_eval.finetune.examples import from_jsonl

    assert finetune.finetune_main(_finetune_argv(tmp_path, "--sets", "x.pt", "--max-train-examples", "-3")) == 2
    assert "--max-train-examples -3" in one_line_error(capsys, "culnig-finetune")
    path = tmp_path / "train.jsonl"
    assert len(from_jsonl(path, 0)) == len(from_jsonl(path, None)) == 2 and len(from_jsonl(path, 1)) == 1
    assert "0: all examples" in " ".join(finetune.finetune_parser().format_help().split()) or \
        "0: all examples" in " ".join(
            next(a for a in finetune.finetune_parser()._actions if a.dest == "command").choices["train"]
            .format_help().split())


def test_a_task_training_split_with_0_means_all(plugin_tasks_only):
    from culnig_lm_eval.finetune.examples import from_task

    assert len(from_task("qa_match_demo", 0)) == len(from_task("qa_match_demo", None)) > 0  # before: 0 examples


# -- tracebacks that are one line now -------------------------------------------------------------
def test_finetune_refuses_a_task_without_accuracy_before_the_model_loads(tmp_path, capsys, tiny_llama_dir,
                                                                         plugin_tasks_only):
    from culnig_lm_eval.cli import finetune

    hand = _saved_set(tmp_path / "hand.pt", tiny_llama_dir, {0: [1]})
    argv = _finetune_argv(tmp_path, "--sets", str(hand))
    argv[argv.index("--eval-tasks") + 1] = "general_ppl"
    assert finetune.finetune_main(argv) == 2  # before: StopIteration after the model loaded
    line = one_line_error(capsys, "culnig-finetune")
    assert "--eval-tasks general_ppl" in line and "per-item accuracy" in line


@pytest.mark.parametrize("damage", ["truncated", "pickled", "other-format"])
def test_a_damaged_checkpoint_is_one_line_before_the_model_loads(tmp_path, capsys, tiny_llama_dir, plugin_tasks_only,
                                                                 damage):
    import datetime

    from culnig_lm_eval.cli import finetune

    hand = _saved_set(tmp_path / "hand.pt", tiny_llama_dir, {0: [1]})
    run = tmp_path / "run"
    run.mkdir()
    checkpoint = run / "checkpoint.pt"
    if damage == "truncated":
        torch.save({"fingerprint": "x", "step": 1, "tensors": {"w": torch.zeros(100)}, "optimizer": {}, "curve": "[]"},
                   checkpoint)
        checkpoint.write_bytes(checkpoint.read_bytes()[:300])
    elif damage == "pickled":
        torch.save({"fingerprint": "x", "when": datetime.datetime(2020, 1, 1)}, checkpoint)
    else:
        torch.save([1, 2, 3], checkpoint)
    assert finetune.finetune_main(_finetune_argv(tmp_path, "--sets", str(hand))) == 2
    line = one_line_error(capsys, "culnig-finetune")
    assert str(checkpoint) in line and "weights_only" not in line and "--force" in line


def test_crc_countries_as_strings_is_one_line(tmp_path, capsys, plugin_tasks_only, monkeypatch):
    from culnig_lm_eval.cli import score
    from culnig_lm_eval.taskdata import sources

    spec = json.loads((Path(__file__).parents[1] / "tasks" / "crc" / "passages.json").read_text())
    spec["countries"] = [c["id"] for c in spec["countries"]]
    (tmp_path / "crc.json").write_text(json.dumps(spec))
    monkeypatch.setenv("CULNIG_CRC", str(tmp_path / "crc.json"))
    sources._read.cache_clear()
    assert score.main(["run", "--model_args", "pretrained=/no/such/model", "--tasks", "crc:8",
                       "--out", str(tmp_path / "scores"), "--no-select"]) == 2  # before: TypeError
    line = one_line_error(capsys, "culnig-score")
    assert "crc.json" in line and "countries[0]" in line


def _count_file(path: Path, shape=(2, 8), **meta) -> Path:
    from culnig_lm_eval.lape.counts import FORMAT

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "over_zero": torch.zeros(shape, dtype=torch.long), "n": 10, "meta": meta}, path)
    return path


@pytest.mark.parametrize("files, match", [
    # two shapes that meta.model does not pin down: before, torch.stack's RuntimeError
    ({"a": ((2, 8), {"model": {"model_type": "llama"}, "corpus": "a"}),
      "b": ((2, 9), {"model": {"model_type": "llama"}, "corpus": "b"})}, "b.counts.pt: (2, 9) counts"),
    # no meta.model: before, "culnig-lape: error: 'model'"
    ({"a": ((2, 8), {"corpus": "a"}), "b": ((2, 8), {"corpus": "b"})}, "a.counts.pt: its meta has no 'model'"),
    # no meta.corpus: before, "two count files are for the same corpus 'None'"
    ({"a": ((2, 8), {"model": {"model_type": "llama"}}), "b": ((2, 8), {"model": {"model_type": "llama"}})},
     "a.counts.pt: its meta has no 'corpus'"),
    ({"a": ((2, 8), {"model": {"model_type": "llama"}, "corpus": "x"}),
      "b": ((2, 8), {"model": {"model_type": "llama"}, "corpus": "x"})},
     "a.counts.pt and"),
])
def test_lape_identify_names_the_count_file(tmp_path, capsys, files, match):
    from culnig_lm_eval.cli import lape

    for name, (shape, meta) in files.items():
        _count_file(tmp_path / "counts" / f"{name}.counts.pt", shape, **meta)
    assert lape.main(["identify", str(tmp_path / "counts"), "--out", str(tmp_path / "sets")]) == 2
    assert match in one_line_error(capsys, "culnig-lape")
    assert not (tmp_path / "sets").exists()


# -- unclear messages ----------------------------------------------------------------------------------
def test_an_unknown_slot_in_a_crc_passage_names_it(tmp_path, capsys, plugin_tasks_only, monkeypatch):
    from culnig_lm_eval.cli import score
    from culnig_lm_eval.taskdata import sources

    spec = json.loads((Path(__file__).parents[1] / "tasks" / "crc" / "passages.json").read_text())
    spec["passages"][0]["text"] += " It rained in {city}."
    (tmp_path / "crc.json").write_text(json.dumps(spec))
    monkeypatch.setenv("CULNIG_CRC", str(tmp_path / "crc.json"))
    sources._read.cache_clear()
    assert score.main(["run", "--model_args", "pretrained=/no/such/model", "--tasks", "crc:8",
                       "--out", str(tmp_path / "scores"), "--no-select"]) == 2  # before: "error: 'city'"
    line = one_line_error(capsys, "culnig-score")
    assert "crc.json: passages[0] text uses the slot {city}" in line


def test_a_task_group_is_not_scorable_and_its_tasks_are_named(tmp_path, capsys, plugin_tasks_only):
    from culnig_lm_eval.cli import score

    assert score.main(["run", "--model_args", "pretrained=/no/such/model", "--tasks", "blend_gen",
                       "--out", str(tmp_path / "scores"), "--no-select"]) == 2  # before: "error: 'blend_gen'"
    line = one_line_error(capsys, "culnig-score")
    assert "--tasks blend_gen: a group of tasks" in line and "blend_gen_algeria" in line


def test_a_corrupt_baseline_is_named_before_the_model_loads(tmp_path, capsys, tiny_llama_dir, plugin_tasks_only):
    from culnig_lm_eval.cli import finetune

    hand = _saved_set(tmp_path / "hand.pt", tiny_llama_dir, {0: [1]})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "baseline.json").write_text('{"key": "x", "tasks": ')
    assert finetune.finetune_main(_finetune_argv(tmp_path, "--sets", str(hand), command="compare")) == 2
    assert "baseline.json: not readable JSON" in one_line_error(capsys, "culnig-finetune")


@pytest.mark.parametrize("module, match", [
    ("model.layers.0.mlp", "'model.layers.0.mlp' is a LlamaMLP, not a linear module"),
    ("model.layers.0.mlp.act_fn", "not a linear module"),
    ("model.layers.9.mlp.gate_proj", "not a module of this model"),
])
def test_a_modules_file_naming_no_linear_module_is_refused_before_weights_load(tmp_path, capsys, tiny_llama_dir,
                                                                               plugin_tasks_only, module, match):
    from culnig_lm_eval.cli import finetune

    modules = tmp_path / "m.json"
    modules.write_text(json.dumps({"format": "culnig-modules/1", "target_modules": [module]}))
    argv = _finetune_argv(tmp_path, "--modules", str(modules), model=f"pretrained={tiny_llama_dir}")
    assert finetune.finetune_main(argv) == 2  # before: "optimizer got an empty parameter list"
    line = one_line_error(capsys, "culnig-finetune")
    assert f"--modules {modules}" in line and match in line
