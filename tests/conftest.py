"""Shared fixtures and markers.

* Every test process runs torch on ``OMP_NUM_THREADS`` threads, 1 unless the caller set it.
* ``slow`` marks tests that load an embedded model or run a whole pipeline (seconds to a
  minute each); ``pytest -m "not slow"`` skips them for a quick loop.
* ``real_blend``: the real BLEnD folder ``../shared/data/blend`` beside the checkout (the
  project's CI has it); tests that need it skip with the reason when it is absent.
* ``tiny_llama_dir``: a saved tiny Llama (see ``tiny_models.py``) that ``hf``/``masked-hf`` load.
* ``plugin_tasks_only``: lm-eval indexes this package's task folder alone (offline, sample data):
  a ``TaskManager`` then costs milliseconds instead of ~10 s; for tests that use no stock task.
* The task index of lm-eval's own task folder and of this repository's ``tasks/`` is built once per
  session (``shared_task_index``): every ``TaskManager`` made in the test process reuses it
  (~5 s each otherwise); any other folder (a test's tmp task folder) is indexed afresh each time.
  torch's environment report, which lm-eval puts in every results dict (~1 s of subprocesses per
  ``simple_evaluate``), is also computed once per session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One thread per process: the tests run tiny models, where a second thread only adds synchronisation,
# and on a shared 2-core machine two threads per process against other jobs are several times slower
# (the paper-model tests: 114 s with torch's default against 25 s).  Set before torch is imported, so
# that the subprocesses some tests start inherit it too; a value the caller set is kept.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

REPO = Path(__file__).resolve().parent.parent
REAL_BLEND = Path(os.environ.get("CULNIG_REAL_BLEND", REPO.parent / "shared" / "data" / "blend"))


def pytest_configure(config):
    # Tests that interrupt a child process with SIGINT need the child to start with SIGINT's
    # default disposition; a run launched from a background shell (`nohup pytest &`) inherits
    # SIG_IGN, which exec passes on to every child.  A Python handler is not inherited by exec,
    # so installing the default one here gives the children SIG_DFL.
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    config.addinivalue_line("markers", "slow: loads an embedded model or runs a whole pipeline")


def _memoise_task_index() -> None:
    """lm-eval's ``TaskIndex.build`` with the folders that do not change during the session (lm-eval's
    own tasks, this repository's ``tasks/``) indexed once.  A build of several folders is the merge of
    one build per folder, later folders overriding earlier ones with lm-eval's warning -- what
    ``build`` itself does -- so the result is the same; each caller gets its own dict and entries."""
    import logging

    import lm_eval.tasks
    from lm_eval.tasks import _index

    from culnig_lm_eval._startup import task_dir

    index_cls, entry_cls = _index.TaskIndex, _index.Entry
    if getattr(index_cls.build, "_culnig_memoised", False):
        return
    original = index_cls.build
    stable = {Path(lm_eval.tasks.__file__).parent.resolve(), task_dir().resolve()}
    cache: dict = {}
    log = logging.getLogger(_index.__name__)

    def build(paths, *, resolve_includes=True):
        paths = list(paths)
        if not any(Path(p).resolve() in stable for p in paths):
            return original(paths, resolve_includes=resolve_includes)
        index = {}
        for root in paths:
            key = (Path(root).resolve(), resolve_includes)
            if key[0] in stable:
                if key not in cache:
                    cache[key] = original([root], resolve_includes=resolve_includes)
                part = {name: entry_cls(entry.name, entry.kind, entry.yaml_path, entry.cfg, set(entry.tags))
                        for name, entry in cache[key].items()}
            else:
                part = original([root], resolve_includes=resolve_includes)
            for name, entry in part.items():
                if name in index:
                    log.warning("Task '%s' from %s overrides existing task from %s",
                                name, entry.yaml_path, index[name].yaml_path)
                index[name] = entry
        return index

    build._culnig_memoised = True
    index_cls.build = staticmethod(build)


@pytest.fixture(scope="session", autouse=True)
def shared_task_index():
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case torch was imported before this file
    _memoise_task_index()
    from culnig_lm_eval.model.states import reuse_environment_info

    reuse_environment_info()  # every simple_evaluate of the session: ~0.4-1 s of subprocesses, once


@pytest.fixture(scope="session")
def real_blend() -> Path:
    if not (REAL_BLEND / "mc_questions.csv").is_file():
        pytest.skip(f"real BLEnD data not found at {REAL_BLEND} (set CULNIG_REAL_BLEND or place ../shared beside the clone)")
    return REAL_BLEND


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    from tiny_models import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def index_plugin_tasks_only(mp) -> None:
    """With ``mp`` (a MonkeyPatch): every ``TaskManager`` made through ``lm_eval.tasks`` (as the
    package's code and lm-eval's CLI make them) indexes only this package's tasks; offline, sample data."""
    import lm_eval.evaluator
    import lm_eval.tasks

    from culnig_lm_eval._startup import task_dir

    real = getattr(lm_eval.tasks.TaskManager, "_culnig_real", lm_eval.tasks.TaskManager)

    class PluginTasks(real):
        _culnig_real = real

        def __init__(self, *args, **kwargs):
            kwargs = {k: v for k, v in kwargs.items() if k not in ("verbosity", "include_path", "include_defaults")}
            super().__init__(include_path=str(task_dir()), include_defaults=False, **kwargs)

    mp.setattr(lm_eval.tasks, "TaskManager", PluginTasks)
    mp.setattr(lm_eval.evaluator, "TaskManager", PluginTasks, raising=False)
    for key, value in (("CULNIG_DATA", "sample"), ("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1")):
        mp.setenv(key, value)


@pytest.fixture
def plugin_tasks_only(monkeypatch):
    index_plugin_tasks_only(monkeypatch)


def sample_data_only(mp) -> None:
    """With ``mp`` (a MonkeyPatch): the shipped sample, no user overrides (``CULNIG_<KEY>``), no
    cached rows.  Module-scoped fixtures call it inside ``pytest.MonkeyPatch.context()``."""
    from culnig_lm_eval.taskdata import sources

    mp.setenv("CULNIG_DATA", "sample")
    for key in sources.SOURCES:
        mp.delenv(f"CULNIG_{key.upper()}", raising=False)
    sources._read.cache_clear()


@pytest.fixture
def fresh_data_state(monkeypatch):
    """Task data as a fresh process sees it: no cached rows or hub verdict, no earlier sample
    warning, no user overrides (``CULNIG_<KEY>``), and the shipped sample unless a test points elsewhere."""
    from culnig_lm_eval.taskdata import sources

    sample_data_only(monkeypatch)
    sources.hub_reachable.cache_clear()
    sources._warned_sample.clear()
    yield
    sources._read.cache_clear()
