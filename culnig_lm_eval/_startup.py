"""Teach the stock ``lm_eval`` about this plugin, at interpreter start-up, for free.

lm-eval has no plugin entry point: its model registry and task index only know what ships
inside ``lm_eval``.  The wheel therefore installs ``culnig_lm_eval.pth`` into site-packages,
whose single line imports this module.  Importing lm-eval (and torch) here would slow down
every Python process, so this module only installs an import hook: when a Python process
later imports lm-eval, the hook

* registers ``masked-hf`` in lm-eval's model registry as a lazy ``module:Class`` target
  (right after ``lm_eval.models`` has registered the stock models),
* adds this package's task folder to every ``TaskManager`` that includes the defaults
  (``--include_path`` keeps working; the same folder is never indexed twice), and
* lets the stock ``hf`` model accept the embedded aliases (``pretrained=smollm2-135m``) and,
  on a machine without CUDA, default to ``device=cpu`` instead of failing on ``cuda``.

Set ``CULNIG_LM_EVAL_DISABLE=1`` to switch all of it off.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import os
import sys
from pathlib import Path


def task_dir() -> Path:
    """The harness task folder: inside the package in a wheel, at the repository root in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "tasks", here.parent / "tasks"):
        if (candidate / "blend").is_dir():
            return candidate
    raise FileNotFoundError(f"culnig-lm-eval task folder not found next to {here}")


def _register_model(_models_module):
    # after lm_eval.models, not lm_eval.api.registry: get_model() imports lm_eval.models (and so
    # registers the stock models) only while the registry is empty
    from lm_eval.api.registry import model_registry as registry

    if "masked-hf" not in registry:
        registry.register("masked-hf", target="culnig_lm_eval.masked_hf:MaskedHFLM")


def _wrap_init(cls, make_init):
    """Replace ``cls.__init__`` by ``make_init(original)``, once."""
    if getattr(cls.__init__, "_culnig", False):
        return
    wrapped = functools.wraps(cls.__init__)(make_init(cls.__init__))
    wrapped._culnig = True
    cls.__init__ = wrapped


def _patch_task_manager(manager_module):
    def make_init(original):
        def __init__(self, *args, include_path=None, include_defaults=True, **kwargs):
            if include_defaults:
                ours = task_dir()
                paths = list(include_path) if isinstance(include_path, (list, tuple)) else ([include_path] if include_path else [])
                if all(Path(p).resolve() != ours for p in paths):
                    paths.insert(0, ours)  # user paths come later and may override our tasks
                include_path = paths
            original(self, *args, include_path=include_path, include_defaults=include_defaults, **kwargs)

        return __init__

    _wrap_init(manager_module.TaskManager, make_init)


def _patch_hflm(hf_module):
    def make_init(original):
        def __init__(self, *args, **kwargs):
            from culnig_lm_eval.embedded import hf_kwargs

            if args and "pretrained" not in kwargs:
                kwargs["pretrained"], args = args[0], args[1:]
            original(self, *args, **hf_kwargs(kwargs))

        return __init__

    _wrap_init(hf_module.HFLM, make_init)


AFTER_IMPORT = {
    "lm_eval.models": _register_model,
    "lm_eval.tasks.manager": _patch_task_manager,
    "lm_eval.models.huggingface": _patch_hflm,
}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a callback right after one of the modules in AFTER_IMPORT has executed."""

    def find_spec(self, name, path=None, target=None):
        if name not in AFTER_IMPORT:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                loader = spec.loader
                original_exec = loader.exec_module

                def exec_module(module, _exec=original_exec, _name=name):
                    _exec(module)
                    AFTER_IMPORT[_name](module)

                loader.exec_module = exec_module
                return spec
        return None


def install():
    if os.environ.get("CULNIG_LM_EVAL_DISABLE"):
        return
    if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
    for name, callback in AFTER_IMPORT.items():  # already imported (e.g. installed late in a session)
        if name in sys.modules:
            callback(sys.modules[name])


install()
