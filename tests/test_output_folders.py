"""Issue 26, data loss: no command deletes what a user keeps in or beside an output folder.

The rule (``culnig_lm_eval._io``, shown in every command's ``--help``): a folder a command
*replaces* as a whole must be new, empty, or an earlier culnig output (``.culnig-output.json``
lists what it wrote); a folder holding anything else is refused with one line and exit status 2
and left as it was -- ``--force`` does not change that.  A *run* folder is written into: files the
command did not write survive.

:func:`test_every_output_folder_flag_is_listed` reads ``[project.scripts]`` and every parser, so a
new option naming an output (``--out``, ``--sets-out``) fails until it is listed here;
:func:`test_a_foreign_file_survives_every_command` runs each listed folder flag in-process on tiny
inputs with a user's file in the folder (and beside it), plain and with ``--force``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import tomllib
from pathlib import Path

import pytest
import torch

from conftest import REPO, index_plugin_tasks_only
from culnig_lm_eval._io import MARKER, ForeignFilesError, atomic_folder, check_output_folder
from culnig_lm_eval.neuron_set import NeuronSet, new_meta
from tiny_models import save_tiny_llama

FIXTURE = Path(__file__).parent / "fixtures" / "blend_annotations"

# (script, subcommand) -> {dest: "replaced" | "into"}: every option that names an output folder
FOLDER_FLAGS = {
    ("culnig-score", "run"): {"out": "into", "sets_out": "replaced"},
    ("culnig-score", "select"): {"sets_out": "replaced"},
    ("culnig-score", "study"): {"out": "replaced"},
    ("culnig-lape", "corpora"): {"out": "replaced"},
    ("culnig-lape", "record"): {"out": "into"},
    ("culnig-lape", "identify"): {"out": "replaced"},
    ("culnig-lape", "combine"): {"out": "replaced"},
    ("culnig-lape", "evaluate"): {"out": "replaced"},
    ("culnig-lape", "demo"): {"out": "into"},
    ("culnig-experiment", None): {"out": "into"},
    ("culnig-report", None): {"out": "replaced"},
    ("culnig-finetune", "train"): {"out": "into"},
    ("culnig-finetune", "compare"): {"out": "into"},
    ("culnig-sets", "export-model"): {"out": "replaced"},
}
# options that name an output *file* (atomic, never a folder)
FILE_FLAGS = {
    ("culnig-modules", None): {"out"},
    **{("culnig-sets", c): {"out"} for c in ("union", "intersect", "subtract", "random", "convert")},
}


# -- the parsers ----------------------------------------------------------------------------------
class _Captured(Exception):
    pass


def script_parsers() -> dict[tuple[str, str | None], argparse.ArgumentParser]:
    """(script, subcommand or None) -> its parser, for every console script of pyproject.toml."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    found = {}
    for script, target in scripts.items():
        module, func = target.split(":")
        captured = []

        def capture(self, *args, **kwargs):
            captured.append(self)
            raise _Captured

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(argparse.ArgumentParser, "parse_args", capture)
            with pytest.raises(_Captured):
                getattr(importlib.import_module(module), func)([])
        parser = captured[0]
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subs:
            found.update({(script, name): p for name, p in subs[0].choices.items()})
        else:
            found[(script, None)] = parser
    return found


def output_options(parser: argparse.ArgumentParser) -> set[str]:
    """dests of the options that say "out" (--out, --sets-out ...)."""
    def says_out(text: str) -> bool:
        return any(word in ("out", "output", "o") for word in text.strip("-").replace("-", "_").split("_"))

    not_outputs = {"leave_out"}  # --leave-out CULTURES: which cultures to hold out, no path
    return {a.dest for a in parser._actions if a.option_strings and a.dest not in not_outputs
            and (says_out(a.dest) or any(says_out(s) for s in a.option_strings))}


def test_every_output_folder_flag_is_listed():
    parsers = script_parsers()
    assert {s for s, _ in parsers} >= {"culnig-score", "culnig-lape", "culnig-report", "culnig-finetune"}
    for key, parser in parsers.items():
        listed = set(FOLDER_FLAGS.get(key, {})) | FILE_FLAGS.get(key, set())
        assert output_options(parser) == listed, f"{key}: list its output options in FOLDER_FLAGS or FILE_FLAGS"
    assert set(FOLDER_FLAGS) <= set(parsers)


@pytest.mark.parametrize("key", sorted((k for k in FOLDER_FLAGS), key=str))
def test_help_says_which_folders_are_replaced(key):
    parser = script_parsers()[key]
    text = parser.format_help()
    if key[0] != "culnig-sets":  # export-model's help says it in its own words (model/export.py)
        assert "Output folders:" in " ".join(text.split()), key
    for dest, kind in FOLDER_FLAGS[key].items():
        action = next(a for a in parser._actions if a.dest == dest)
        assert ("replaced" if kind == "replaced" else "written into") in (action.help or ""), (key, dest)


# -- tiny inputs for every command, built once ------------------------------------------------------
SHAPE = {"model_type": "llama", "num_layers": 2, "widths": {"mlp_gate": 100}, "name": "tiny"}


def _score_tables(folder: Path) -> Path:
    from culnig_lm_eval.scoring.attribution import ScoreTable
    from culnig_lm_eval.scoring.tables import save_table

    gen = torch.Generator().manual_seed(0)
    counts = torch.tensor([5, 5])
    for role in ("task", "control"):
        means = torch.rand(2, 100, 2, generator=gen)
        save_table(ScoreTable(["korea", "spain"], {"mlp_gate": means * counts.float()}, counts,
                              {"model": SHAPE, "task": role, "role": role}), folder / f"{role}.scores.pt")
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Everything the commands read: a tiny model, score tables, LAPE corpora/counts/sets, lm-eval
    runs, a fine-tuning file, a neuron set and an experiment config."""
    from culnig_lm_eval.cli import lape

    root = tmp_path_factory.mktemp("work")
    with pytest.MonkeyPatch.context() as mp:
        index_plugin_tasks_only(mp)
        mp.chdir(root)
        model = save_tiny_llama(root / "tiny", seed=2)
        args = f"pretrained={model},device=cpu"
        scores = _score_tables(root / "scores")
        assert lape.main(["corpora", "--blend-annotations", str(FIXTURE), "--out", "corpora"]) == 0
        for side in ("culture", "language"):
            assert lape.main(["record", "--model_args", args, "--corpora", f"corpora/{side}/record",
                              "--out", f"counts/{side}", "--row-length", "16"]) == 0
            assert lape.main(["identify", f"counts/{side}", "--out", f"lape_sets/{side}", "--top-rate", "0.1"]) == 0
    from transformers import AutoConfig

    from culnig_lm_eval.architectures import model_shape

    shape = model_shape(AutoConfig.from_pretrained(model))
    neuron_set = NeuronSet({"mlp_gate": [torch.tensor([1, 2]), torch.tensor([3])]}, new_meta(shape, "hand"))
    set_path = neuron_set.save(root / "hand.pt")
    from test_bad_input_report import write_run

    write_run(root / "runs" / "unmasked" / "m", "pretrained=m", "1111110011")
    write_run(root / "runs" / "masked" / "m", f"pretrained=m,neurons={set_path}", "0011110011")
    (root / "train.jsonl").write_text("".join(json.dumps({"prompt": f"Is {i} even? Answer:",
                                                          "target": " yes" if i % 2 == 0 else " no"}) + "\n"
                                              for i in range(8)))
    (root / "experiment.yaml").write_text(json.dumps({
        "name": "tiny", "model_args": f"pretrained={model},dtype=float32", "data": "sample",
        "scoring": {"tasks": ["blend_cloze_neur:8"], "batch_size": 8, "stability_fold": None, "attention": False},
        "thresholds": {"top_mlp": 1.0, "top_specific": 1.0, "min_samples": 1},
        "selections": {"paper": {}}, "random_seeds": [0],
        "evaluate": {"batch_size": 8, "limit": 4, "cultural": ["blend_cloze_test"], "random_tasks": []},
    }))
    return {"root": root, "model": model, "args": args, "scores": scores, "set": set_path}


FINETUNE = ["--device", "cpu", "--train-eval-task", "", "--eval-tasks", "qa_match_demo", "--eval-limit", "2",
            "--steps", "1", "--eval-every", "1", "--batch_size", "2", "--grad-accum", "1", "--max-length", "32",
            "--budget", "0.05"]


def invocation(key, dest: str, folder: Path, w: dict) -> tuple[str, list[str]]:
    """(module of the command's main, argv) of a minimal valid run writing ``folder`` through ``dest``."""
    root, args = w["root"], w["args"]
    out = str(folder)
    table = {
        ("culnig-score", "run", "out"): ("score", ["run", "--model_args", args, "--tasks", "blend_cloze_neur:4",
                                                  "--no-attention", "--out", out, "--no-select"]),
        ("culnig-score", "run", "sets_out"): ("score", ["run", "--model_args", args, "--tasks", "blend_cloze_neur:4",
                                                       "--no-attention", "--out", str(root / "run_scores"),
                                                       "--sets-out", out, "--top-mlp", "1", "--min-samples", "1"]),
        ("culnig-score", "select", "sets_out"): ("score", ["select", "--scores-dir", str(w["scores"]),
                                                          "--out", out, "--top-mlp", "1"]),
        ("culnig-score", "study", "out"): ("score", ["study", "--scores-dir", str(w["scores"]), "--out", out,
                                                    "--select-only", "--variants", "paper", "--min-samples", "1"]),
        ("culnig-lape", "corpora", "out"): ("lape", ["corpora", "--blend-annotations", str(FIXTURE), "--out", out]),
        ("culnig-lape", "record", "out"): ("lape", ["record", "--model_args", args, "--corpora",
                                                   str(root / "corpora/culture/record"), "--out", out,
                                                   "--row-length", "16", "--max-tokens", "64"]),
        ("culnig-lape", "identify", "out"): ("lape", ["identify", str(root / "counts/culture"), "--out", out]),
        ("culnig-lape", "combine", "out"): ("lape", ["combine", "--culture-sets-dir", str(root / "lape_sets/culture"),
                                                    "--language-sets-dir", str(root / "lape_sets/language"),
                                                    "--out", out]),
        ("culnig-lape", "evaluate", "out"): ("lape", ["evaluate", "--model_args", args, "--sets-dir",
                                                     str(root / "lape_sets/culture"), "--corpora",
                                                     str(root / "corpora/culture/eval"), "--out", out,
                                                     "--row-length", "16", "--max-tokens", "64"]),
        ("culnig-lape", "demo", "out"): ("lape", ["demo", "--blend-annotations", str(FIXTURE), "--model_args", args,
                                                 "--out", out, "--row-length", "16", "--max-tokens", "64",
                                                 "--eval-max-tokens", "64", "--top-rate", "0.1"]),
        ("culnig-experiment", None, "out"): ("experiment", ["--config", str(root / "experiment.yaml"), "--out", out]),
        ("culnig-report", None, "out"): ("report", [str(root / "runs"), "--out", out, "--n-resamples", "20"]),
        ("culnig-finetune", "train", "out"): ("finetune", ["train", "--model_args", args, "--sets", str(w["set"]),
                                                          "--train-file", str(root / "train.jsonl"), *FINETUNE,
                                                          "--out", out]),
        ("culnig-finetune", "compare", "out"): ("finetune", ["compare", "--model_args", args, "--sets", str(w["set"]),
                                                            "--choices", "top", "--train-file",
                                                            str(root / "train.jsonl"), *FINETUNE, "--out", out]),
        ("culnig-sets", "export-model", "out"): ("sets", ["export-model", "--model_args", args, "--sets",
                                                         str(w["set"]), "--out", out]),
    }
    return table[(*key, dest)]


def run_command(module: str, argv: list[str], script: str) -> int:
    cli = importlib.import_module(f"culnig_lm_eval.cli.{module}")
    main = {"culnig-finetune": "finetune_main", "culnig-modules": "modules_main"}.get(script, "main")
    return getattr(cli, main)(argv)


def has_force(key) -> bool:
    return any(a.dest == "force" for a in script_parsers()[key]._actions)


def error_lines(capsys) -> list[str]:
    """stderr without progress bars (transformers' "Loading weights" is not an error message)."""
    return [line for line in capsys.readouterr().err.strip().splitlines() if not re.search(r"\d+/\d+ \[", line)]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


CASES = [(key, dest, kind) for key, flags in FOLDER_FLAGS.items() for dest, kind in flags.items()]


@pytest.mark.parametrize("key, dest, kind", CASES, ids=[f"{k[0]}-{k[1]}-{d}" for k, d, _ in CASES])
def test_a_foreign_file_survives_every_command(work, tmp_path, monkeypatch, capsys, key, dest, kind):
    index_plugin_tasks_only(monkeypatch)
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "out"
    beside = tmp_path / "thesis-beside.tex"
    beside.write_text("beside")
    module, argv = invocation(key, dest, folder, work)
    runs = [argv] + ([argv + ["--force"]] if has_force(key) else [])

    if kind == "into":
        folder.mkdir()
        (folder / "thesis.tex").write_text("mine")
        for args in runs:
            assert run_command(module, args, key[0]) == 0, capsys.readouterr().err
            assert (folder / "thesis.tex").read_text() == "mine" and beside.read_text() == "beside"
        return

    # a folder of the user's own: refused, untouched, with or without --force
    folder.mkdir()
    (folder / "thesis.tex").write_text("mine")
    for args in runs:
        assert run_command(module, args, key[0]) == 2
        err = error_lines(capsys)
        assert len(err) == 1 and str(folder) in err[0], err
        assert ".staging" not in err[0] and ".tmp" not in err[0]
        assert snapshot(folder) == {"thesis.tex": b"mine"}
    # our earlier output is replaced ...
    (folder / "thesis.tex").unlink()
    assert run_command(module, argv, key[0]) == 0, capsys.readouterr().err
    assert (folder / MARKER).is_file()
    capsys.readouterr()
    # ... but not once the user put a file in it
    (folder / "notes.md").write_text("mine too")
    before = snapshot(folder)
    for args in runs:
        assert run_command(module, args, key[0]) == 2
        err = error_lines(capsys)
        assert len(err) == 1 and "notes.md" in err[0], err
        assert snapshot(folder) == before
    assert beside.read_text() == "beside"


# -- the mechanism ------------------------------------------------------------------------------------
def write(folder: Path, **files: str) -> None:
    with atomic_folder(folder, "--out") as staging:
        for name, text in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_text(text)


def test_the_issue_cases_copied_sets_folder_and_a_thesis(tmp_path):
    """``cp -r neuron_sets ns && culnig-score select --out ns`` and ``identify --out d`` with d/thesis.tex."""
    import shutil

    from culnig_lm_eval.cli.score import main

    ns = tmp_path / "ns"
    shutil.copytree(REPO / "neuron_sets", ns)
    before = snapshot(ns)
    scores = _score_tables(tmp_path / "scores")
    assert main(["select", "--scores-dir", str(scores), "--out", str(ns), "--top-mlp", "1"]) == 2
    assert snapshot(ns) == before and (ns / "README.md").is_file()
    # a shipped selection (written before markers: set files and selection.json) is ours to replace
    paper = ns / "smollm2-135m" / "paper"
    assert main(["select", "--scores-dir", str(scores), "--out", str(paper), "--top-mlp", "1"]) == 0
    assert (paper / MARKER).is_file() and json.loads((paper / "selection.json").read_text())
    # its parent is a selection too (shipped with its marker) and holds the other selections: replacing it
    # carries them over untouched
    nested = {name: snapshot(ns / "smollm2-135m" / name) for name in ("paper", "general-excluded", "normalised-z")}
    assert main(["select", "--scores-dir", str(scores), "--out", str(ns / "smollm2-135m"), "--top-mlp", "1"]) == 0
    assert {name: snapshot(ns / "smollm2-135m" / name) for name in nested} == nested
    assert json.loads((ns / "smollm2-135m" / MARKER).read_text())["command"] == "culnig-score select"


def test_a_nested_output_is_carried_over_and_a_clash_refused(tmp_path):
    out = tmp_path / "sets"
    write(out, **{"general.pt": "1"})
    write(out / "random", **{"a-random0.pt": "r"})  # another command's output inside (culnig-experiment)
    write(out, **{"general.pt": "2"})
    assert (out / "general.pt").read_text() == "2" and (out / "random" / "a-random0.pt").read_text() == "r"
    with pytest.raises(ForeignFilesError, match="random/ is the output of another culnig command"):
        write(out, **{"random/x.pt": "3"})
    assert (out / "random" / "a-random0.pt").read_text() == "r" and (out / "general.pt").read_text() == "2"
    (out / "random" / "mine.txt").write_text("x")  # a user's file inside the nested output counts too
    with pytest.raises(ForeignFilesError, match="random/"):
        write(out, **{"general.pt": "4"})


def test_an_empty_or_missing_folder_is_fine_and_a_file_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty", a="1")
    write(tmp_path / "new" / "deep", a="1")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        check_output_folder(tmp_path / "file", "--out")
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    with pytest.raises(ValueError, match="symbolic link"):
        check_output_folder(tmp_path / "link", "--out")


def test_errors_name_the_users_path_not_a_temporary_one(tmp_path, capsys, tiny_llama_dir):
    """A failing write inside the staging folder, and a file written onto a folder's name."""
    from culnig_lm_eval._io import write_text
    from culnig_lm_eval.cli._common import one_line

    with pytest.raises(OSError) as err:
        with atomic_folder(tmp_path / "out", "--out") as staging:
            open(staging / "missing" / "x.pt", "w")
    assert one_line(err.value) == f"{tmp_path / 'out' / 'missing' / 'x.pt'}: No such file or directory"
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError) as err:
        write_text(tmp_path / "adir", "x")
    assert ".tmp" not in one_line(err.value) and str(tmp_path / "adir") in one_line(err.value)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    from transformers import AutoConfig

    from culnig_lm_eval.architectures import model_shape
    from culnig_lm_eval.cli import finetune

    shape = model_shape(AutoConfig.from_pretrained(tiny_llama_dir))
    hand = NeuronSet({"mlp_gate": [torch.tensor([1]), torch.tensor([2])]}, new_meta(shape, "hand")).save(tmp_path / "h.pt")
    assert finetune.modules_main(["--model_args", f"pretrained={tiny_llama_dir}", "--sets", str(hand),
                                  "--out", str(tmp_path / "adir")]) == 2  # culnig-modules --out names a file
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"culnig-modules: error: {tmp_path / 'adir'}: is a folder; give a file name"


def test_a_failed_swap_puts_the_previous_folder_and_its_nested_output_back(tmp_path, monkeypatch):
    import os

    from culnig_lm_eval import _io

    out = tmp_path / "sets"
    write(out, **{"general.pt": "1"})
    write(out / "random", **{"a-random0.pt": "r"})
    monkeypatch.setattr(_io, "_exchange", lambda a, b: False)  # the two-rename path
    real_rename = os.rename

    def failing(src, dst):
        if str(src).endswith(".staging") and Path(dst) == out:
            raise OSError(28, "No space left on device", str(dst))
        return real_rename(src, dst)

    monkeypatch.setattr(_io.os, "rename", failing)
    with pytest.raises(OSError, match="No space"):
        write(out, **{"general.pt": "2"})
    assert (out / "general.pt").read_text() == "1" and (out / "random" / "a-random0.pt").read_text() == "r"
    assert [p.name for p in tmp_path.iterdir()] == ["sets"]  # no staging or .old folder left


@pytest.mark.parametrize("script, inner", [("experiment", "report"), ("experiment", "sets/paper"),
                                            ("lape-demo", "sets"), ("finetune", "report")])
def test_a_replaced_folder_inside_a_run_folder_is_checked_before_the_model_loads(tmp_path, capsys, script, inner,
                                                                                 plugin_tasks_only):
    """The run folder is written into, but its report/ and sets/ are replaced: a user's file there stops
    the run at once (the bogus model would fail otherwise), and nothing is created."""
    from culnig_lm_eval.cli import experiment, finetune, lape

    run = tmp_path / "run"
    (run / inner).mkdir(parents=True)
    (run / inner / "notes.md").write_text("mine")
    bogus = "pretrained=/no/such/model"
    if script == "experiment":
        (tmp_path / "c.yaml").write_text(f"model_args: {bogus}\nscoring: {{tasks: [blend_cloze_neur]}}\n"
                                         "selections: {paper: {}}\nevaluate: {}\n")
        code = experiment.main(["--config", str(tmp_path / "c.yaml"), "--out", str(run)])
    elif script == "lape-demo":
        code = lape.main(["demo", "--blend-annotations", str(FIXTURE), "--model_args", bogus, "--out", str(run)])
    else:
        (tmp_path / "t.jsonl").write_text('{"prompt": "a", "target": " b"}\n')
        code = finetune.finetune_main(["compare", "--model_args", bogus, "--train-file", str(tmp_path / "t.jsonl"),
                                       "--train-eval-task", "", "--eval-tasks", "qa_match_demo", "--out", str(run),
                                       "--sets", str(_hand_set(tmp_path))])
    assert code == 2
    err = error_lines(capsys)
    assert len(err) == 1 and str(run / inner) in err[0] and "notes.md" in err[0], err
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == sorted(
        [*[str(Path(inner).parents[i]) for i in range(len(Path(inner).parts) - 1)], inner, f"{inner}/notes.md"])


def _hand_set(tmp_path: Path) -> Path:
    model_shape = {"model_type": "llama", "num_layers": 2, "widths": {"mlp_gate": 64}}
    return NeuronSet({"mlp_gate": [torch.tensor([1]), torch.tensor([2])]}, new_meta(model_shape, "hand")).save(
        tmp_path / "hand.pt")
