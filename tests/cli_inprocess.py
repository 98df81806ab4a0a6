"""Command lines run inside the test process: what a subprocess gives (exit status, stdout, stderr)
without the ~10 s a new interpreter spends importing torch, transformers and lm-eval, and with the
session's task index (conftest) instead of a fresh one.

    from cli_inprocess import run_console, run_module

    proc = run_console(["lm_eval", "ls", "tasks"], env=env)          # a console script by name
    proc = run_module("culnig_lm_eval.cli.score", "run", ...)         # python -m MODULE ...
    proc.returncode, proc.stdout, proc.stderr

Like a new process: the variables are ``env`` (or the current ones) and are put back afterwards, the
task-data caches start empty, the working folder is ``cwd``.  A traceback is not printed: the
exception reaches the test.  Keep true subprocesses for what only a process shows: the ``.pth``
start-up hook, signals, concurrent writers, another hash seed.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOGGERS = ("", "lm_eval", "culnig_lm_eval")


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


def console_scripts() -> dict[str, str]:
    """pyproject's [project.scripts]: command -> "module:function"."""
    text = (REPO / "pyproject.toml").read_text()
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?:^\[|\Z)", text, flags=re.S | re.M)
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.:]+)"', section.group(1), flags=re.M))


@contextlib.contextmanager
def keep_logging():
    """lm-eval's CLI and logging.basicConfig give loggers handlers on the current (captured) streams:
    take them away afterwards."""
    names = LOGGERS
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).level, logging.getLogger(n).propagate)
             for n in names}
    try:
        yield
    finally:
        for n, (handlers, level, propagate) in saved.items():
            lg = logging.getLogger(n)
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate


@contextlib.contextmanager
def hub_offline_as_in_a_new_process():
    """huggingface_hub and datasets read HF_HUB_OFFLINE / HF_DATASETS_OFFLINE once, when first imported:
    a process started with them set never asks the hub, but this process imported both long before a
    test set them, and would retry the hub with back-off (~20 s a dataset without a network).  The
    variables as they are now are put into both libraries' constants for the call."""
    import datasets.config
    import huggingface_hub.constants as hub

    def true(name):
        return os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")

    saved = (hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE)
    hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = true("HF_HUB_OFFLINE")
    datasets.config.HF_DATASETS_OFFLINE = true("HF_DATASETS_OFFLINE")
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved


def fresh_data_caches() -> None:
    from culnig_lm_eval.taskdata import sources

    sources._read.cache_clear()
    sources.hub_reachable.cache_clear()
    sources._warned_sample.clear()


def _lm_eval_main(argv: list[str]):
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm_eval", *argv]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0


def _call(func, argv: list[str], env: dict | None, cwd) -> Completed:
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    if env is not None:
        os.environ.clear()
        os.environ.update({k: str(v) for k, v in env.items()})
    try:
        if cwd is not None:
            os.chdir(cwd)
        fresh_data_caches()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), keep_logging(), \
                hub_offline_as_in_a_new_process():
            # as in a new process: no handler yet (pytest's capture, an earlier run's), so the command's
            # own logging.basicConfig / lm-eval's setup_logging write to this stderr
            for name in LOGGERS:
                logging.getLogger(name).handlers[:] = []
            try:
                code = func(list(argv))
            except SystemExit as stop:
                code = stop.code
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        fresh_data_caches()
    if isinstance(code, str):  # sys.exit("message") prints it and exits 1
        err.write(code + "\n")
        code = 1
    return Completed(int(code or 0), out.getvalue(), err.getvalue())


_LISTINGS: dict = {}


def run_console(argv: list[str], env: dict | None = None, cwd=None) -> Completed:
    """``argv[0]``: ``lm_eval`` or one of this package's console scripts (pyproject).

    ``lm_eval ls tasks`` is run once per session and plugin switch: its output depends only on the
    task index (built once per session, conftest), and lm-eval spends ~10 s formatting its ~15,000 rows."""
    name = Path(argv[0]).name
    if name == "lm_eval" and list(argv[1:]) == ["ls", "tasks"]:
        key = (env if env is not None else os.environ).get("CULNIG_LM_EVAL_DISABLE", "")
        if key not in _LISTINGS or _LISTINGS[key].returncode:
            _LISTINGS[key] = _call(_lm_eval_main, argv[1:], env, cwd)
        return _LISTINGS[key]
    if name == "lm_eval":
        return _call(_lm_eval_main, argv[1:], env, cwd)
    module, func = console_scripts()[name].split(":")
    return _call(getattr(importlib.import_module(module), func), argv[1:], env, cwd)


def run_module(module: str, *argv, env: dict | None = None, cwd=None) -> Completed:
    """``python -m MODULE ARGV...`` for a module with ``main(argv)``."""
    return _call(importlib.import_module(module).main, [str(a) for a in argv], env, cwd)
