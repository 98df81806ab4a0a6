"""culnig-score's command line: selection from score files, and bad input that writes nothing."""

import json

import torch

from culnig_lm_eval.cli.score import main
from culnig_lm_eval.neuron_set import NeuronSet
from culnig_lm_eval.scoring.attribution import ScoreTable
from culnig_lm_eval.scoring.tables import save_table

SHAPE = {"model_type": "llama", "num_layers": 2, "widths": {"mlp_gate": 100}, "name": "tiny"}


def write_table(path, means, role):
    counts = torch.tensor([5, 5])
    table = ScoreTable(["korea", "spain"], {"mlp_gate": means * counts.float()}, counts,
                       {"model": SHAPE, "task": role, "role": role})
    save_table(table, path)
    return path


def test_select_writes_sets_from_score_files(tmp_path):
    task = torch.zeros(2, 100, 2)
    task[1, 7] = torch.tensor([3.0, 1.0])
    task[0, 3] = torch.tensor([2.0, 2.0])
    write_table(tmp_path / "task.scores.pt", task, "task")
    out = tmp_path / "sets"
    assert main(["select", "--scores-dir", str(tmp_path), "--out", str(out), "--top-mlp", "1"]) == 0
    general = NeuronSet.load(out / "general.pt")
    assert general.indices["mlp_gate"][0].tolist() == [3] and general.indices["mlp_gate"][1].tolist() == [7]
    assert {p.name for p in out.iterdir()} == {"general.pt", "korea.pt", "spain.pt", "selection.json",
                                               ".culnig-output.json"}  # the marker: our output, replaceable
    summary = json.loads((out / "selection.json").read_text())
    assert summary["summary"]["general"]["neurons"] == 2
    assert general.meta["provenance"]["task"]["sha256"]


def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "sets"
    (tmp_path / "task.scores.pt").write_bytes(b"not a score file")
    assert main(["select", "--task-scores", str(tmp_path / "task.scores.pt"), "--out", str(out)]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert not out.exists()

    write_table(tmp_path / "task.scores.pt", torch.zeros(2, 100, 2), "task")
    assert main(["select", "--scores-dir", str(tmp_path), "--out", str(out), "--exclude-general"]) == 2
    assert "general" in capsys.readouterr().err
    assert not out.exists()

    assert main(["select", "--scores-dir", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert not out.exists()

    assert main(["run", "--tasks", "no_such_task", "--out", str(tmp_path / "scores")]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert not (tmp_path / "scores").exists()
