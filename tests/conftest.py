"""Shared fixtures and markers.

* ``slow`` marks tests that load an embedded model or run a whole pipeline (seconds to a
  minute each); ``pytest -m "not slow"`` skips them for a quick loop.
* ``real_blend``: the real BLEnD folder ``../shared/data/blend`` beside the checkout (the
  project's CI has it); tests that need it skip with the reason when it is absent.
* ``tiny_llama_dir``: a saved tiny Llama (see ``tiny_models.py``) that ``hf``/``masked-hf`` load.
* ``plugin_tasks_only``: lm-eval indexes this package's task folder alone (offline, sample data):
  a ``TaskManager`` then costs milliseconds instead of ~10 s; for tests that use no stock task.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
