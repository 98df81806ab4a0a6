"""culnig-report on bad input: missing runs, interrupted or failing writes, unpaired items,
empty neuron sets and bad numbers.  Each case failed (or reported wrong numbers) before.

The run folders are written here by hand in lm-eval's ``--log_samples`` layout
(``<model>/results_<date>.json`` + ``<model>/samples_<task>_<date>.jsonl``).
"""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from culnig_lm_eval.neuron_set import NeuronSet, new_meta

MODEL = {"name": "tiny-model", "model_type": "llama", "num_layers": 2, "widths": {"mlp_gate": 4}}
DATE = "2026-01-01T00-00-00.000000"


def _doc_hash(doc: dict) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def write_run(folder: Path, model_args: str, outcomes: str, docs: list[dict] | None = None, ablation=None):
    """One lm-eval run of task ``quiz``: item i is right when ``outcomes[i] == "1"``."""
    docs = docs or [{"question": f"q{i}"} for i in range(len(outcomes))]
    folder.mkdir(parents=True, exist_ok=True)
    acc = [float(x) for x in outcomes]
    config = {"model": "hf", "model_args": model_args, "limit": None}
    if ablation is not None:
        config["model_info"] = {"culnig_ablation": ablation}
    results = {"results": {"quiz": {"alias": "quiz", "acc,none": sum(acc) / len(acc)}},
               "configs": {"quiz": {"task": "quiz", "output_type": "multiple_choice"}},
               "n-samples": {"quiz": {"original": len(acc), "effective": len(acc)}}, "config": config}
    (folder / f"results_{DATE}.json").write_text(json.dumps(results))
    lines = [json.dumps({"doc_id": i, "doc": doc, "doc_hash": _doc_hash(doc), "filter": "none",
                         "metrics": ["acc"], "acc": a}) for i, (doc, a) in enumerate(zip(docs, acc))]
    (folder / f"samples_quiz_{DATE}.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def runs(tmp_path):
    """An unmasked and a masked run of the same 8 documents; masking loses items 0-2."""
    sets = tmp_path / "sets"
    sets.mkdir()
    NeuronSet({"mlp_gate": [[1], [2]]}, new_meta(MODEL, "culnig", selection="test")).save(sets / "s.pt")
    write_run(tmp_path / "runs" / "unmasked" / "m", "pretrained=m", "11111100")
    write_run(tmp_path / "runs" / "masked" / "m", f"pretrained=m,neurons={sets / 's.pt'}", "00011100")
    return tmp_path / "runs"


# culnig-report, optionally holding for PAUSE seconds once report.json is staged (the new report is
# complete in its staging folder but not yet swapped in), so a test can interrupt it there
PAUSABLE_REPORT = """
import sys, time
from pathlib import Path
import culnig_lm_eval.report.render as render
from culnig_lm_eval.cli.report import main

pause = float(sys.argv[1])
real_write_text = render.write_text
def write_then_wait(path, text):
    written = real_write_text(path, text)
    if pause and Path(path).name == "report.json":
        time.sleep(pause)
    return written
render.write_text = write_then_wait
sys.exit(main(sys.argv[2:]))
"""


def cli(*args, pause: float = 0, **popen):
    return subprocess.Popen([sys.executable, "-c", PAUSABLE_REPORT, str(pause), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def report_files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if "staging" in p.name or p.name.endswith((".tmp", ".old"))]


# ---- missing or empty run folders -------------------------------------------------------------
@pytest.mark.parametrize("make", ["missing", "empty"])
def test_no_runs_exits_2_naming_the_folder(tmp_path, capsys, make):
    from culnig_lm_eval.cli.report import main

    runs = tmp_path / "runs"
    if make == "empty":
        runs.mkdir()
    assert main([str(runs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("culnig-report: error:") and str(runs) in err[0]
    assert not (tmp_path / "out" / "report.md").exists()


# ---- the report folder is replaced as one unit ------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_write_keeps_previous_report(runs, tmp_path, sig):
    out = tmp_path / "out"
    first = cli(runs, "--out", out, "--n-resamples", 50)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    before = report_files(out)
    assert "report.md" in before and "report.json" in before

    second = cli(runs, "--out", out, "--n-resamples", 50, "--title", "second",
                 pause=30)
    deadline = time.time() + 90
    staged = []
    while time.time() < deadline and not staged:  # wait until the new report is fully staged
        staged = [p for p in tmp_path.glob(".out.*staging") if (p / "report.json").exists()]
        time.sleep(0.1)
    assert staged, "the second run never staged its report"
    second.send_signal(sig)
    rc = second.wait(timeout=60)
    assert rc == 128 + sig or rc == 130
    assert report_files(out) == before
    assert leftovers(tmp_path) == []


def test_failing_write_keeps_previous_report(runs, tmp_path, monkeypatch, capsys):
    from culnig_lm_eval.cli.report import main
    from culnig_lm_eval.report import render

    out = tmp_path / "out"
    assert main([str(runs), "--out", str(out), "--n-resamples", "50"]) == 0
    before = report_files(out)

    real_write_text = render.write_text

    def disk_full(path, text):
        if Path(path).name == "report.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write_text(path, text)

    monkeypatch.setattr(render, "write_text", disk_full)
    assert main([str(runs), "--out", str(out), "--n-resamples", "50", "--title", "new"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left" in err[-1]
    assert report_files(out) == before
    assert leftovers(tmp_path) == []


def test_refuses_to_replace_a_folder_with_other_files(runs, tmp_path, capsys):
    from culnig_lm_eval.cli.report import main

    assert main([str(runs), "--out", str(runs)]) == 2
    assert "holds files no culnig command wrote there" in capsys.readouterr().err
    assert (runs / "unmasked" / "m" / f"results_{DATE}.json").is_file()


# ---- pairing by doc_id and doc_hash -----------------------------------------------------------
def test_permuted_documents_are_not_compared(tmp_path, capsys):
    from culnig_lm_eval.cli.report import main

    docs = [{"question": f"q{i}"} for i in range(8)]
    runs = tmp_path / "runs"
    write_run(runs / "unmasked" / "m", "pretrained=m", "11111100", docs)
    # same documents in another order: doc_id i is another document than in the unmasked run
    write_run(runs / "masked" / "m", "pretrained=m,neurons=missing.pt", "00111111", docs[::-1])
    assert main([str(runs), "--out", str(tmp_path / "out"), "--n-resamples", "50"]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["rows"]
    assert not [r for r in rows if r.get("task") == "quiz" and "diff" in r]
    skipped = text[text.index("## Skipped"):]
    assert "quiz" in skipped and "doc_hash" in skipped and "not compared" in skipped


def test_same_documents_are_compared(runs, tmp_path):
    from culnig_lm_eval.cli.report import main

    assert main([str(runs), "--out", str(tmp_path / "out"), "--n-resamples", "50", "--alpha", "0.1"]) == 0
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["rows"]
    quiz = [r for r in rows if r.get("task") == "quiz"]
    assert len(quiz) == 1 and quiz[0]["diff"] == pytest.approx(-3 / 8) and quiz[0]["c"] == 3
    text = (tmp_path / "out" / "report.md").read_text()
    assert "90% CI" in text and "95% CI" not in text  # labels follow --alpha


# ---- empty neuron sets ------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["results", "set-file"])
def test_empty_neuron_set_is_flagged(tmp_path, source):
    from culnig_lm_eval.cli.report import main

    runs = tmp_path / "runs"
    write_run(runs / "unmasked" / "m", "pretrained=m", "11111100")
    if source == "set-file":
        NeuronSet({"mlp_gate": [[], []]}, new_meta(MODEL, "culnig", selection="test")).save(tmp_path / "empty.pt")
        write_run(runs / "masked" / "m", f"pretrained=m,neurons={tmp_path / 'empty.pt'}", "11111100")
    else:
        ablation = {"neuron_sets": [{"path": "gone.pt", "sha256": "0" * 64, "counts": {"mlp_gate": 0}}], "neurons": 0}
        write_run(runs / "masked" / "m", "pretrained=m,neurons=gone.pt", "11111100", ablation=ablation)
    assert main([str(runs), "--out", str(tmp_path / "out"), "--n-resamples", "50"]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "masked 0 neurons" in text and "0 neurons masked" in text
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["rows"]
    assert [r["masked_nothing"] for r in rows if r.get("task") == "quiz"] == [True]


def test_non_empty_set_is_not_flagged(runs, tmp_path):
    from culnig_lm_eval.cli.report import main

    assert main([str(runs), "--out", str(tmp_path / "out"), "--n-resamples", "50"]) == 0
    assert "0 neurons" not in (tmp_path / "out" / "report.md").read_text()


# ---- bad numbers ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    ["--alpha", "nan"], ["--alpha", "1"], ["--ppl-threshold", "nan"], ["--ppl-threshold", "inf"],
    ["--ppl-threshold", "0"], ["--ppl-threshold", "-1"], ["--n-resamples", "0"], ["--seed", "-1"],
    ["--seed", str(2**32)],
])
def test_bad_numbers_exit_2_with_one_line(runs, tmp_path, capsys, bad):
    from culnig_lm_eval.cli.report import main

    assert main([str(runs), "--out", str(tmp_path / "out"), *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("culnig-report: error:") and bad[0] in err[0]
    assert not (tmp_path / "out").exists()
