"""Teach the stock ``lm_eval`` about this plugin, at interpreter start-up, for free.

lm-eval 0.4.13 has no plugin entry point: its model registry and task index only know what
ships inside ``lm_eval``.  The wheel therefore installs ``culnig_lm_eval.pth`` into
site-packages, whose single line imports this module.  Importing lm-eval (and torch) here would
slow down every Python process, so this module only installs an import hook: when a Python
process later imports lm-eval, the hook

* registers ``masked-hf`` in lm-eval's model registry as a lazy ``module:Class`` target
  (right after ``lm_eval.models`` has registered the stock models),
* adds this package's task folder to every ``TaskManager`` that includes the defaults
  (``--include_path`` keeps working; the same folder is never indexed twice),
* stops the stock ``hf`` model given an embedded alias (``pretrained=smollm2-135m``), which it
  would look up on the hub, with one line pointing to ``masked-hf`` or ``culnig-models path``.

Later lm-eval releases find ``masked-hf`` through the ``lm_eval.models`` entry point declared in
``pyproject.toml`` (both name the same class; lm-eval skips a name already registered).  The
stock ``hf`` model is otherwise untouched: embedded aliases and the CPU default belong to
``masked-hf``.  A failing hook warns once and switches the plugin off, so stock lm_eval keeps
working.  Set ``CULNIG_LM_EVAL_DISABLE=1`` to switch all of it off.
"""

from __future__ import annotations

import functools
import inspect
import importlib.abc
import importlib.machinery
import os
import sys
import warnings
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
        registry.register("masked-hf", target="culnig_lm_eval.model.masked_hf:MaskedHFLM")


def _wrap_init(cls, make_init):
    """Replace ``cls.__init__`` by ``make_init(original)``, once."""
    if getattr(cls.__init__, "_culnig", False):
        return
    wrapped = functools.wraps(cls.__init__)(make_init(cls.__init__))
    wrapped._culnig = True
    cls.__init__ = wrapped


def _patch_task_manager(manager_module):
    def make_init(original):
        signature = inspect.signature(original)

        def __init__(self, *args, **kwargs):
            # bind against the real signature so a positional include_path works too
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            if bound.arguments.get("include_defaults", True):
                ours = task_dir()
                include_path = bound.arguments.get("include_path")
                paths = list(include_path) if isinstance(include_path, (list, tuple)) else ([include_path] if include_path else [])
                if all(Path(p).resolve() != ours for p in paths):
                    paths.insert(0, ours)  # user paths come later and may override our tasks
                bound.arguments["include_path"] = paths
            original(*bound.args, **bound.kwargs)

        return __init__

    _wrap_init(manager_module.TaskManager, make_init)


def _guard_hf_aliases(huggingface_module):
    def make_init(original):
        def __init__(self, *args, **kwargs):
            from .model.masked_hf import refuse_alias_for_hf  # lm-eval and torch are loaded by now

            refuse_alias_for_hf(kwargs["pretrained"] if "pretrained" in kwargs else (args[0] if args else None))
            original(self, *args, **kwargs)

        return __init__

    _wrap_init(huggingface_module.HFLM, make_init)


_disabled_reason: str | None = None


def _run_callback(name, module):
    """Run one hook; a failure disables the plugin with one warning instead of breaking lm_eval."""
    global _disabled_reason
    if _disabled_reason is not None:
        return
    try:
        AFTER_IMPORT[name](module)
    except Exception as error:  # noqa: BLE001 - never break `import lm_eval` for the environment
        _disabled_reason = f"{name}: {type(error).__name__}: {error}"
        warnings.warn(f"culnig-lm-eval disabled: {_disabled_reason}", RuntimeWarning, stacklevel=2)


AFTER_IMPORT = {
    "lm_eval.models": _register_model,
    "lm_eval.tasks.manager": _patch_task_manager,
    "lm_eval.models.huggingface": _guard_hf_aliases,
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
                    _run_callback(_name, module)

                loader.exec_module = exec_module
                return spec
        return None


def install():
    if os.environ.get("CULNIG_LM_EVAL_DISABLE"):
        return
    if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
    for name in list(AFTER_IMPORT):  # already imported (e.g. installed late in a session)
        if name in sys.modules:
            _run_callback(name, sys.modules[name])


install()
