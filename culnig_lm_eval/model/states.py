"""One loaded model evaluated in many masked states, on harness tasks loaded and built once.

lm-eval's ``simple_evaluate`` loads a task's data and builds its requests on every call.  An
experiment evaluates the same task in hundreds of masked states, so :class:`ReusedTasks` loads
each task once and makes its ``build_all_requests`` build the requests on the first call only;
a later call with the same arguments clears the kept instances' responses instead.  Everything
else -- filters, metrics, aggregation, the results and samples files -- stays lm-eval's own, so
a state's folder is what ``lm_eval --output_path ... --log_samples`` writes.
"""

from __future__ import annotations

from pathlib import Path


def build_requests_once(task) -> None:
    """Make ``task.build_all_requests`` build once per set of arguments (e.g. once for all items
    and once for one culture's ``samples``); a later call with the same arguments puts the kept
    instances back, their responses cleared (lm-eval appends each state's responses to them)."""
    if getattr(task, "culnig_builds_once", False):
        return
    build = task.build_all_requests
    built: dict[str, list] = {}

    def build_all_requests(*args, **kwargs):
        key = repr((args, sorted(kwargs.items())))
        if key in built:
            task._instances = built[key]
            for instance in task._instances:
                instance.resps.clear()
                instance.filtered_resps.clear()
            return None
        result = build(*args, **kwargs)
        built[key] = task._instances
        return result

    task.build_all_requests = build_all_requests
    task.culnig_builds_once = True


def reuse_environment_info() -> None:
    """Make torch's ``get_pretty_env_info`` answer from its first call on.  ``simple_evaluate``
    records it in every results file: about 0.4 s of ``pip list`` and other subprocesses per state
    (a tenth of a masked state of a 270M model on 100 items), for an answer that cannot change
    while one process evaluates its states."""
    import functools

    from torch.utils import collect_env

    if not hasattr(collect_env.get_pretty_env_info, "cache_info"):
        collect_env.get_pretty_env_info = functools.lru_cache(maxsize=1)(collect_env.get_pretty_env_info)


class ReusedTasks:
    """Task (or group) objects by name, each loaded on first use through one
    :class:`~culnig_lm_eval.taskdata.index.TaskIndex` (``index``; or a ``TaskManager`` given as
    ``manager``, used for every name); creating one also makes the environment record of the
    results files computed once (:func:`reuse_environment_info`)."""

    def __init__(self, manager=None, index=None):
        from ..taskdata.index import TaskIndex

        reuse_environment_info()
        self.index = index if index is not None else TaskIndex(manager)
        self.loaded: dict[str, object] = {}

    def knows(self, name: str) -> bool:
        return self.index.knows(name)

    def manager_of(self, name: str):
        """The ``TaskManager`` that loads ``name`` (``simple_evaluate`` builds a full one without it)."""
        return self.index.manager_for([name])

    def get(self, name: str):
        """The loaded task or group ``name`` (raises what loading its data raises)."""
        if name not in self.loaded:
            loaded = self.manager_of(name).load([name])
            for task in loaded["tasks"].values():
                build_requests_once(task)
            self.loaded[name] = loaded["groups"].get(name) or loaded["tasks"][name]
        return self.loaded[name]


def evaluate_state(lm, tasks: ReusedTasks, task: str, folder: str | Path | None, *, model_args: str,
                   limit: int | None = None, apply_chat_template: bool = False,
                   samples: list[int] | None = None) -> dict:
    """``simple_evaluate`` of ``lm`` in its current state on ``task`` (results with ``samples``); with
    ``folder``, the results and per-sample files are saved there by lm-eval's ``EvaluationTracker``.
    ``samples``: only these document indices of ``task`` (lm-eval's ``--samples``; ``limit`` is then unused)."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker

    tracker = EvaluationTracker(output_path=str(folder)) if folder is not None else None
    results = simple_evaluate(
        model=lm, model_args=model_args, tasks=[tasks.get(task)], task_manager=tasks.manager_of(task),
        limit=None if samples is not None else limit, samples={task: samples} if samples is not None else None,
        log_samples=True, evaluation_tracker=tracker, bootstrap_iters=0,
        apply_chat_template=apply_chat_template, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
    )
    if tracker is not None:
        samples = results.pop("samples")
        tracker.save_results_aggregated(results=results, samples=samples)
        for name in results["configs"]:
            tracker.save_results_samples(task_name=name, samples=samples[name])
        results["samples"] = samples
    return results
