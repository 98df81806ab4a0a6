"""lm-eval's task index, built only as far as the task names asked for need.

A stock ``TaskManager`` indexes every task lm-eval ships (about 15,000 YAML files: about 10 s on
a 2-core CPU) before it can load one.  This plugin's task folder alone indexes in a fraction of
a second, so :class:`TaskIndex` answers from it and builds lm-eval's full index (which includes
ours, through the start-up hook) only for a name that is not ours, such as ``qnli``.  The task
objects are the same either way: the same YAML, read by the same ``TaskManager``.
"""

from __future__ import annotations

from collections.abc import Iterable


class TaskIndex:
    """``TaskManager`` for a set of task names: over the plugin's folder when it knows them all,
    else lm-eval's full index.  ``full``: use this manager for every name (e.g. one made with
    ``metadata=`` or another ``include_path``)."""

    def __init__(self, full=None):
        self._given = full is not None
        self._full = full
        self._ours = None

    @property
    def ours(self):
        if self._ours is None:
            from lm_eval.tasks import TaskManager

            from .._startup import task_dir

            self._ours = TaskManager(include_defaults=False, include_path=str(task_dir()))
        return self._ours

    @property
    def full(self):
        if self._full is None:
            from lm_eval.tasks import TaskManager

            self._full = TaskManager()
        return self._full

    def manager_for(self, names: Iterable[str]):
        """The manager that knows every one of ``names`` if any does (an unknown name gets the
        full index, whose ``all_tasks`` then says it is unknown)."""
        if self._given:
            return self._full
        names = list(names)
        return self.ours if all(name in self.ours.all_tasks for name in names) else self.full

    def knows(self, name: str) -> bool:
        return name in self.manager_for([name]).all_tasks
