"""One masked state's evaluation: stock ``hf`` as the experiment ran it before, against ``masked-hf`` now.

    python benchmarks/masked_eval_speed.py --model smollm2-135m --tasks blend_cloze_test,blend_test --limit 200
    python benchmarks/masked_eval_speed.py --model gemma-3-270m --tasks blend_cloze_test,blend_test --limit 200

Real BLEnD when ``CULNIG_BLEND_MCQ`` / ``CULNIG_BLEND_QUESTIONS`` name its files (or
``--real-blend ../shared/data/blend``), else the shipped sample.  One model is loaded; every
repetition applies a fresh seeded random set (1% of the gate neurons of every layer, folded
in) and evaluates each task twice, in alternating order so drift on a shared machine hits both:

* stock: ``simple_evaluate`` with the task loaded and its requests built again, and ``hf``'s own
  log-likelihood code (``fast=false``) -- what each masked state cost before;
* masked-hf: the task loaded and built once (``model/states.py``), shared contexts and scored
  positions only (``model/fast_loglikelihood.py``).

It prints per task the median seconds of each, their ratio, the largest per-request
log-likelihood difference and whether every item's accuracy agrees; the time to fold a set in
and restore the weights (switching states) against one state's evaluation; and, with
``--memory``, the peak resident memory of a child process that evaluates one state in each way
(while loading the model, and while evaluating after it: Linux's VmHWM, reset after loading).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="pretrained= of the model (default smollm2-135m)")
    parser.add_argument("--tasks", default="blend_cloze_test,blend_test", help="comma-separated tasks")
    parser.add_argument("--limit", type=int, default=200, help="documents per task (default 200)")
    parser.add_argument("--batch_size", type=int, default=8, help="batch size of both (default 8)")
    parser.add_argument("--reps", type=int, default=3, help="masked states per task (default 3)")
    parser.add_argument("--real-blend", help="folder with mc_questions.csv and questions/ (real BLEnD)")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory per way, in child processes")
    parser.add_argument("--child", choices=("stock", "fast"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def environment(args):
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if args.real_blend:
        os.environ["CULNIG_BLEND_MCQ"] = os.path.join(args.real_blend, "mc_questions.csv")
        os.environ["CULNIG_BLEND_QUESTIONS"] = os.path.join(args.real_blend, "questions")
    if "CULNIG_BLEND_MCQ" not in os.environ:
        os.environ["CULNIG_DATA"] = "sample"


def random_gate_set(lm, seed: int):
    import torch

    from culnig_lm_eval.architectures import model_shape
    from culnig_lm_eval.neuron_set import NeuronSet, new_meta

    shape = model_shape(lm.model.config)
    width = shape["widths"]["mlp_gate"]
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(width, generator=gen)[: width // 100].sort().values for _ in range(shape["num_layers"])]
    return NeuronSet({"mlp_gate": rows}, new_meta(shape, "benchmark"))


def per_item(results) -> tuple[list, list]:
    """(per-request log-likelihoods, per-document accuracy) of one task's logged samples."""
    (samples,) = results["samples"].values()
    samples = sorted(samples, key=lambda s: s["doc_id"])
    return [r[0][0] for s in samples for r in s["resps"]], [s["acc"] for s in samples]


def evaluate(lm, way: str, task: str, limit: int, reused):
    from lm_eval import simple_evaluate

    from culnig_lm_eval.model.states import evaluate_state

    lm.fast = way == "fast"
    started = time.perf_counter()
    if way == "fast":
        results = evaluate_state(lm, reused, task, None, model_args="benchmark", limit=limit)
    else:
        results = simple_evaluate(model=lm, tasks=[task], task_manager=reused.manager_of(task), limit=limit, log_samples=True,
                                  bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    return time.perf_counter() - started, per_item(results)


def child(args):
    """One state evaluated one way; prints the seconds (peak memory is read by the parent)."""
    from culnig_lm_eval.model.lm import load_lm
    from culnig_lm_eval.model.states import ReusedTasks

    lm = load_lm(f"pretrained={args.model},dtype=float32", batch_size=args.batch_size, device="cpu")
    reused = ReusedTasks()
    loaded = high_water_mark()
    reset_high_water_mark()
    for task in args.tasks.split(","):
        with lm.masked([random_gate_set(lm, 0)]):
            seconds, _ = evaluate(lm, args.child, task, args.limit, reused)
    print(json.dumps({"loaded": loaded, "evaluating": high_water_mark()}))


def high_water_mark() -> float:
    """This process's peak resident memory so far (GB; Linux VmHWM)."""
    with open("/proc/self/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return kb / 1e6


def reset_high_water_mark() -> None:
    """Start VmHWM again from the current resident memory (Linux: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def peak_memory(args, way: str) -> dict[str, float]:
    """Peak resident memory (GB) of a child process: while loading the model, and while evaluating
    one state on every task after that (the peak reset once the model is loaded)."""
    argv = [sys.executable, __file__, "--child", way, "--model", args.model, "--tasks", args.tasks,
            "--limit", str(args.limit), "--batch_size", str(args.batch_size)]
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if done.returncode:
        raise SystemExit(f"memory child ({way}) failed with status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    environment(args)
    if args.child:
        return child(args)
    import torch

    from culnig_lm_eval.model.lm import load_lm
    from culnig_lm_eval.model.states import ReusedTasks

    lm = load_lm(f"pretrained={args.model},dtype=float32", batch_size=args.batch_size, device="cpu")
    reused = ReusedTasks()
    print(f"model {args.model}, torch threads {torch.get_num_threads()}, batch_size {args.batch_size}, "
          f"limit {args.limit}, data {'real BLEnD' if 'CULNIG_BLEND_MCQ' in os.environ else 'shipped sample'}")
    state_seconds = []
    for task in args.tasks.split(","):
        times = {"stock": [], "fast": []}
        worst, same_acc = 0.0, True
        for rep in range(args.reps):
            with lm.masked([random_gate_set(lm, rep)]):
                order = ("stock", "fast") if rep % 2 == 0 else ("fast", "stock")
                got = {}
                for way in order:
                    seconds, got[way] = evaluate(lm, way, task, args.limit, reused)
                    times[way].append(seconds)
            worst = max(worst, max(abs(a - b) for a, b in zip(got["stock"][0], got["fast"][0])))
            same_acc &= got["stock"][1] == got["fast"][1]
        stock, fast = statistics.median(times["stock"]), statistics.median(times["fast"])
        state_seconds.append(fast)
        n = len(got["fast"][1])
        print(f"{task}: {n} documents, {len(got['fast'][0])} requests; stock hf {stock:.2f} s, masked-hf {fast:.2f} s "
              f"per state (medians of {args.reps}): ratio {fast / stock:.3f}; "
              f"max |delta loglik| {worst:.1e}, per-item accuracy identical: {same_acc}")
    sets = [random_gate_set(lm, 100 + seed) for seed in range(5)]
    started = time.perf_counter()
    for neuron_set in sets:
        with lm.masked([neuron_set]):
            pass
    switch = (time.perf_counter() - started) / len(sets)
    print(f"switching states (fold in + restore): {switch * 1e3:.0f} ms = "
          f"{switch / min(state_seconds):.1%} of the fastest state's evaluation")
    if args.memory:
        del lm
        for way in ("fast", "stock"):
            peak = peak_memory(args, way)
            print(f"peak memory ({way}): {peak['loaded']:.2f} GB loading the model, "
                  f"{peak['evaluating']:.2f} GB evaluating one state on {args.tasks} after that")


if __name__ == "__main__":
    main()
