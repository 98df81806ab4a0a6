"""Selection refuses bad thresholds, bad score tables and unsafe culture names, and writes its
sets folder as one unit: errors and SIGINT/SIGTERM leave the previous folder byte for byte."""

import errno
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from culnig_lm_eval._io import UnsafeNameError
from culnig_lm_eval.neuron_set import NeuronSet
from culnig_lm_eval.scoring.attribution import ScoreTable
from culnig_lm_eval.selection.rules import ScoreTableError, ThresholdError, Thresholds, select
from culnig_lm_eval.selection.save import select_and_save

SHAPE = {"model_type": "llama", "num_layers": 2, "widths": {"mlp_gate": 100}}


def table(cultures=("korea", "spain"), counts=(3, 4), path="scores/task.scores.pt", seed=0):
    gen = torch.Generator().manual_seed(seed)
    scores = {"mlp_gate": torch.randn(2, 100, len(cultures), generator=gen)}
    return ScoreTable(list(cultures), scores, torch.tensor(counts), {"model": SHAPE, "path": path, "sha256": "0" * 64})


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.rglob("*") if "staging" in p.name or p.name.endswith((".tmp", ".old"))]


# -- thresholds ---------------------------------------------------------------------------------
PERCENTS = ["top_mlp", "top_attention", "top_specific", "crc_exclude", "general_exclude"]


@pytest.mark.parametrize("field", PERCENTS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 100.5, "many", True])
def test_percentages_must_be_finite_and_in_range(field, value):
    with pytest.raises(ThresholdError, match=f"^{field}=") as err:
        Thresholds(**{field: value})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("field", ["top_mlp", "top_attention", "top_specific", "general_exclude"])
def test_zero_is_refused_except_for_crc_exclude(field):
    with pytest.raises(ThresholdError, match=field):
        Thresholds(**{field: 0})
    assert Thresholds(crc_exclude=0).crc_exclude == 0  # 0 = exclude no CRC neurons
    assert Thresholds(top_mlp=100).top_mlp == 100


@pytest.mark.parametrize("kwargs, field", [
    (dict(z_min=float("nan")), "z_min"), (dict(z_min=float("-inf")), "z_min"), (dict(z_min="high"), "z_min"),
    (dict(min_samples=-1), "min_samples"), (dict(min_samples=2.5), "min_samples"),
    (dict(rule="paper-ish"), "rule"), (dict(normalise_z="yes"), "normalise_z"),
])
def test_other_options_are_checked(kwargs, field):
    with pytest.raises(ThresholdError, match=f"^{field}="):
        Thresholds(**kwargs)


# -- score tables -------------------------------------------------------------------------------
def test_table_with_wrong_culture_count_is_refused_with_its_file():
    bad = table()
    bad.cultures = ["korea", "spain", "uk"]
    bad.counts = torch.tensor([3, 4, 1])
    with pytest.raises(ScoreTableError, match=r"scores/task.scores.pt.*\[layers, width, 3 cultures\]"):
        select(bad)


def test_counts_that_do_not_match_the_cultures_are_refused():
    bad = table(path="x/control.scores.pt")
    bad.counts = torch.tensor([3, 4, 5])
    with pytest.raises(ScoreTableError, match="x/control.scores.pt.*counts"):
        select(table(), control=bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_scores_are_refused(value):
    bad = table(path="runs/crc.scores.pt")
    bad.scores["mlp_gate"][1, 7, 0] = value
    with pytest.raises(ScoreTableError, match="runs/crc.scores.pt.*NaN or infinite"):
        select(table(), crc=bad)


def test_control_without_the_task_kinds_is_refused():
    control = table(path="c.pt")
    control.scores = {"mlp_up": control.scores["mlp_gate"]}
    with pytest.raises(ScoreTableError, match="c.pt: no scores for mlp_gate"):
        select(table(), control=control)


@pytest.mark.parametrize("culture", ["../../x", "/abs/path", "a/b", "..", "", "general", "random3", "selection"])
def test_unsafe_culture_names_write_nothing(tmp_path, culture):
    out = tmp_path / "sets"
    with pytest.raises(ValueError, match="culture"):
        select_and_save({"task": table(cultures=("korea", culture))}, Thresholds(min_samples=0), out)
    assert list(tmp_path.rglob("*")) == []


def test_unsafe_name_error_is_the_shared_one():
    with pytest.raises(UnsafeNameError):
        select(table(cultures=("korea", "../x")))


# -- the folder as a unit -------------------------------------------------------------------------
def test_a_failing_write_leaves_the_previous_folder(tmp_path, monkeypatch):
    out = tmp_path / "sets"
    select_and_save({"task": table()}, Thresholds(min_samples=0), out, random_seeds=[1, 2])
    before = snapshot(out)
    assert {"general.pt", "korea.pt", "spain.pt", "random1.pt", "random-uniform2.pt", "selection.json"} <= set(before)

    real_save, calls = NeuronSet.save, []

    def full_disk(self, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, path)

    monkeypatch.setattr(NeuronSet, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        select_and_save({"task": table(seed=1)}, Thresholds(min_samples=0), out, random_seeds=[5])
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_a_target_that_is_a_file_is_refused_and_kept(tmp_path):
    out = tmp_path / "sets"
    out.write_text("not a folder")
    with pytest.raises(OSError):
        select_and_save({"task": table()}, Thresholds(), out)
    assert out.read_text() == "not a folder"
    assert leftovers(tmp_path) == []


WRITER = textwrap.dedent("""
    import sys, time, torch
    import culnig_lm_eval.selection.save as save
    from culnig_lm_eval._io import exit_cleanly_on_sigterm
    from culnig_lm_eval.scoring.attribution import ScoreTable
    from culnig_lm_eval.selection.rules import Thresholds
    from culnig_lm_eval.selection.save import select_and_save

    exit_cleanly_on_sigterm()
    pause = float(sys.argv[3])
    if pause:  # hold selection.json, written after the set files in the staging folder, so the test can interrupt
        real_write_text = save.write_text
        def slow_write_text(*args, **kwargs):
            time.sleep(pause)
            return real_write_text(*args, **kwargs)
        save.write_text = slow_write_text
    seed = int(sys.argv[2])
    gen = torch.Generator().manual_seed(seed)
    layers, cultures = 30, [f"c{i}" for i in range(8)]
    widths = {"mlp_gate": 1536, "attn_q": 576, "attn_k": 192, "attn_v": 192}
    shape = {"model_type": "llama", "num_layers": layers, "widths": widths}
    def table(role):
        scores = {k: torch.randn(layers, w, 8, generator=gen) for k, w in widths.items()}
        return ScoreTable(cultures, scores, torch.full((8,), 20), {"model": shape, "path": role, "sha256": role})
    tables = {role: table(role) for role in ("task", "control", "crc")}
    select_and_save(tables, Thresholds(), sys.argv[1], random_seeds=range(seed, seed + 20))
    print("done")
""")


def run_writer(out: Path, seed: int, pause: float = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(seed), str(pause)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_writing_leaves_the_previous_folder(tmp_path, sig):
    out = tmp_path / "sets"
    first = run_writer(out, seed=0)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    before = snapshot(out)
    assert len(before) == 1 + 8 + 1 + 40 + 1  # general, 8 cultures, selection.json, 2 x 20 random sets, marker

    second = run_writer(out, seed=1, pause=60)
    deadline = time.monotonic() + 90
    while not any(p.suffix == ".pt" for d in tmp_path.glob(".sets.*.staging") for p in d.iterdir()):
        assert second.poll() is None, second.stderr.read()
        assert time.monotonic() < deadline, "the second run never started writing"
        time.sleep(0.1)
    second.send_signal(sig)
    code = second.wait(timeout=60)
    assert code != 0, "the interrupted run reported success"
    assert "done" not in second.stdout.read()
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []
