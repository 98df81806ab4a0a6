"""Issue 26: the new commands on hostile but realistic input -- no silent wrong numbers, one-line
errors (``PROG: error: ...``, exit 2, no traceback) naming the file or argument, before a model loads
where that is possible.  Output folders (data loss) are in ``test_output_folders.py``.

Every test runs in-process on tiny models and files; ``plugin_tasks_only`` makes lm-eval index
this package's task folder only (a stock index costs ~10 s per ``TaskManager``)."""

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


@pytest.fixture
def plugin_tasks_only(monkeypatch):
    """lm-eval's TaskManager on this package's tasks alone (fast; the tests use no stock task)."""
    import lm_eval.evaluator
    import lm_eval.tasks

    from culnig_lm_eval._startup import task_dir

    real = lm_eval.tasks.TaskManager

    class PluginTasks(real):
        def __init__(self, *args, **kwargs):
            kwargs.update(include_path=str(task_dir()), include_defaults=False)
            super().__init__(**{k: v for k, v in kwargs.items() if k != "verbosity"})

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", PluginTasks)
    monkeypatch.setattr(lm_eval.evaluator, "TaskManager", PluginTasks, raising=False)
    monkeypatch.setenv("CULNIG_DATA", "sample")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return PluginTasks


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


def test_a_library_caller_still_gets_the_exception(tiny_llama_dir, tmp_path):
    from culnig_lm_eval.model.masked_hf import MaskedHFLM

    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.pt"):
        MaskedHFLM(pretrained=str(tiny_llama_dir), neurons=str(tmp_path / "bad.pt"), device="cpu")
    with pytest.raises(ValueError, match="factor"):
        MaskedHFLM(pretrained=str(tiny_llama_dir), operation="scale", factor=float("nan"), device="cpu")
