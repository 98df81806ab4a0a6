"""Wall time of ``masked-hf`` (fold mode, a real neuron set) over plain ``hf``, same requests, one run:

    python benchmarks/masked_overhead.py            # embedded smollm2-135m (first load converts, ~1 min, cached)
    python benchmarks/masked_overhead.py --tiny     # a tiny random Llama, seconds
    python benchmarks/masked_overhead.py --neurons neuron_sets/x.pt --reps 7

Both models are loaded side by side; the same loglikelihood requests (multiple-choice style:
one context, four continuations) run on each, interleaved as plain/masked, masked/plain, ...
so drift on a shared machine hits both alike.  Without ``--neurons`` the set is a seeded
random 1% of the gate neurons of every layer (``--share``), saved to a real file and loaded
through ``neurons=`` exactly as an evaluation would.  Prints the per-repetition times, the
ratios masked/plain of the median and of the best pass (target <= 1.02x; on a shared machine
the best pass is the steadier figure), and the one-off cost of folding the set.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

CONTEXTS = [
    "Question: In which country is the Lantern Festival a major celebration?\nAnswer:",
    "Question: What is the traditional breakfast drink in Britain?\nAnswer:",
    "Question: Which meal is usually the largest of the day in Spain?\nAnswer:",
    "Question: In Japan, what do people usually do before entering a home?\nAnswer:",
    "Question: Which instrument is central to Argentine tango music?\nAnswer:",
    "Question: What is the customary greeting between friends in France?\nAnswer:",
    "Question: In India, which hand is traditionally used for eating?\nAnswer:",
    "Question: What colour is worn at weddings in many Chinese traditions?\nAnswer:",
    "Question: Which staple food is served with most meals in Ethiopia?\nAnswer:",
    "Question: In Germany, when are shops usually closed?\nAnswer:",
    "Question: Which festival marks the end of Ramadan?\nAnswer:",
    "Question: What is the most popular sport in Brazil?\nAnswer:",
    "Question: In Korea, what is served as a side dish with almost every meal?\nAnswer:",
    "Question: How do people usually greet each other in Thailand?\nAnswer:",
    "Question: What is the traditional Mexican celebration of the dead called?\nAnswer:",
    "Question: In Russia, what is offered to guests as a sign of welcome?\nAnswer:",
]
CHOICES = [" China", " tea with milk", " lunch", " take off their shoes", " the bandoneon", " a kiss on the cheek",
           " the right hand", " red", " injera", " on Sunday", " Eid al-Fitr", " football", " kimchi", " the wai",
           " Día de Muertos", " bread and salt"]


def build_requests(n: int):
    from lm_eval.api.instance import Instance

    out = []
    for i in range(n):
        ctx = CONTEXTS[(i // 4) % len(CONTEXTS)]
        cont = CHOICES[(i // 4 + 5 * (i % 4)) % len(CHOICES)]
        out.append(Instance("loglikelihood", {}, (ctx, cont), i))
    return out


def make_set(config, share: float, seed: int, path: Path) -> Path:
    from culnig_lm_eval.architectures import model_shape
    from culnig_lm_eval.neuron_set import NeuronSet, new_meta

    shape = model_shape(config)
    width, layers = shape["widths"]["mlp_gate"], shape["num_layers"]
    k = max(1, round(share * width))
    gen = torch.Generator().manual_seed(seed)
    indices = {"mlp_gate": [torch.randperm(width, generator=gen)[:k] for _ in range(layers)]}
    meta = new_meta(shape, "random", hyperparameters={"seed": seed, "share": share},
                    provenance={"purpose": "benchmarks/masked_overhead.py"})
    return NeuronSet(indices, meta).save(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", default="smollm2-135m", help="hub id, folder or embedded alias (default smollm2-135m)")
    parser.add_argument("--tiny", action="store_true", help="use a tiny random Llama saved to a temporary folder")
    parser.add_argument("--neurons", help="neuron-set file(s) joined with + (default: random --share of gate neurons)")
    parser.add_argument("--share", type=float, default=0.01, help="share of gate neurons per layer in the default set")
    parser.add_argument("--requests", type=int, default=16, help="loglikelihood requests per pass (default 16)")
    parser.add_argument("--reps", type=int, default=9, help="timed passes per model, interleaved (default 9)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: steadier timings on a shared machine; 0 = torch's choice)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from lm_eval.models.huggingface import HFLM
    from transformers import AutoConfig

    from culnig_lm_eval.model.ablation import Ablation
    from culnig_lm_eval.model.embedded import resolve_pretrained
    from culnig_lm_eval.model.masked_hf import MaskedHFLM

    tmp = Path(tempfile.mkdtemp(prefix="masked-overhead-"))
    if args.tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from tiny_models import save_tiny_llama

        pretrained = str(save_tiny_llama(tmp / "tiny", num_hidden_layers=4, hidden_size=64, intermediate_size=256))
    else:
        pretrained = resolve_pretrained(args.pretrained)  # converts an embedded alias once, then cached
    neurons = args.neurons or str(make_set(AutoConfig.from_pretrained(pretrained), args.share, 0, tmp / "set.pt"))

    common = dict(pretrained=pretrained, device="cpu", batch_size=args.batch_size)
    plain = HFLM(**common)
    masked = MaskedHFLM(neurons=neurons, mode="fold", **common)
    ablation = masked.ablation
    print(f"model {args.pretrained if not args.tiny else 'tiny llama'} ({pretrained}); set {neurons}: "
          f"{ablation.num_neurons} neurons in {ablation.folded} folded / {ablation.hooked} hooked modules; "
          f"torch threads {torch.get_num_threads()}")

    # one-off cost of applying the set (load is shared with hf; this is the fold itself)
    ablation.remove()
    t0 = time.perf_counter()
    ablation = masked.ablation = Ablation(masked.model, masked.neuron_sets, "suppress", None, "fold")
    fold_ms = 1000 * (time.perf_counter() - t0)

    requests = build_requests(args.requests)
    run = {"plain": lambda: plain.loglikelihood(requests, disable_tqdm=True),
           "masked": lambda: masked.loglikelihood(requests, disable_tqdm=True)}
    first = {name: [x for x, _ in fn()] for name, fn in run.items()}  # warm-up, and a sanity check
    diff = max(abs(a - b) for a, b in zip(first["plain"], first["masked"], strict=True))

    times = {"plain": [], "masked": []}
    for rep in range(args.reps):
        order = ("plain", "masked") if rep % 2 == 0 else ("masked", "plain")
        for name in order:
            t0 = time.perf_counter()
            run[name]()
            times[name].append(time.perf_counter() - t0)

    med = {k: statistics.median(v) for k, v in times.items()}
    pair = [m / p for m, p in zip(times["masked"], times["plain"], strict=True)]
    for name in ("plain", "masked"):
        print(f"{name:>6}: " + " ".join(f"{t:.3f}" for t in times[name]) + f"  s/pass  (median {med[name]:.3f} s,"
              f" {args.requests} requests)")
    best = min(times["masked"]) / min(times["plain"])
    print(f"masked/plain: {med['masked'] / med['plain']:.3f}x ratio of medians, {best:.3f}x ratio of best passes "
          f"(per-pair ratios: median {statistics.median(pair):.3f}x, range {min(pair):.3f}-{max(pair):.3f}x); "
          "target <= 1.02x")
    print(f"fold of the set: {fold_ms:.1f} ms once; max |loglikelihood change| from masking: {diff:.4f}")


if __name__ == "__main__":
    main()
