"""Wall time of LAPE ``record_counts`` over a plain forward of the same batches:

    python benchmarks/lape_record_overhead.py                  # embedded smollm2-135m (cached checkpoint)
    python benchmarks/lape_record_overhead.py --tiny           # a random Llama of moderate size
    python benchmarks/lape_record_overhead.py --batches 4 --repeats 5

The batches look like ``culnig-lape record`` rows: random token ids, BOS first and not counted,
the last row of the last batch half padding.  The plain forward gets exactly the keyword
arguments ``record_counts`` passes (``use_cache=False``, positions from the attention mask,
logits of the last position only) with no hooks, so the ratio is the cost of counting:
one comparison and one masked sum per layer, plus checking the masks.  The two run in
alternating order; the ratio of the medians is compared with the target (default 1.05x) and
the script exits 1 above it.  Timings on a machine shared with other jobs are noisy; the best
pass of each is printed too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def load_model(name: str, tiny: bool):
    from transformers import AutoModelForCausalLM, LlamaConfig

    if not tiny:
        try:
            from culnig_lm_eval.model.embedded import resolve_pretrained

            path = resolve_pretrained(name)
            return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), name
        except Exception as err:  # weights not installed, conversion failed, ...
            print(f"could not load {name} ({type(err).__name__}: {str(err)[:200]}); falling back to --tiny",
                  file=sys.stderr)
    config = LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval(), "tiny random llama 8x1536"


def make_batches(vocab: int, batches: int, batch_size: int, length: int, bos: int = 1, pad: int = 0):
    gen = torch.Generator().manual_seed(0)
    out = []
    for b in range(batches):
        ids = torch.randint(3, vocab, (batch_size, length), generator=gen)
        ids[:, 0] = bos
        attention = torch.ones_like(ids)
        if b == batches - 1:  # the corpus's last, partial row
            ids[-1, length // 2:] = pad
            attention[-1, length // 2:] = 0
        count = attention.bool().clone()
        count[:, 0] = False
        out.append({"input_ids": ids, "attention_mask": attention, "count_mask": count})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="embedded alias, hub id or folder (default smollm2-135m)")
    parser.add_argument("--tiny", action="store_true", help="a randomly initialised Llama (8 layers x 1536 MLP)")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each, alternating (default 3)")
    parser.add_argument("--target", type=float, default=1.05, help="largest acceptable ratio (default 1.05)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: steadier on a shared machine; 0 = torch's choice)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from culnig_lm_eval.lape.counts import forward_inputs, prepare_batch, record_counts
    from culnig_lm_eval.model.lm import parameter_device

    model, label = load_model(args.model, args.tiny)
    device = parameter_device(model)
    batches = make_batches(model.config.vocab_size, args.batches, args.batch_size, args.length)
    prepared = [forward_inputs(model, prepare_batch(b, device)[0]) for b in batches]

    @torch.no_grad()
    def plain():
        for kwargs in prepared:
            model(**kwargs)

    def record():
        return record_counts(model, batches)

    # warm-up on one batch each, and a sanity check of what is counted
    with torch.no_grad():
        model(**prepared[0])
    over_zero, n = record_counts(model, batches[:1])
    assert n == int(batches[0]["count_mask"].sum()) and over_zero.dtype == torch.int64

    times = {"plain": [], "record": []}
    run = {"plain": plain, "record": record}
    for rep in range(args.repeats):
        for name in (("plain", "record") if rep % 2 == 0 else ("record", "plain")):
            t0 = time.perf_counter()
            run[name]()
            times[name].append(time.perf_counter() - t0)

    med = {k: statistics.median(v) for k, v in times.items()}
    for name in ("plain", "record"):
        print(f"{name:>6}: " + " ".join(f"{t:.2f}" for t in times[name]) + f" s/pass (median {med[name]:.2f} s)")
    ratio = med["record"] / med["plain"]
    best = min(times["record"]) / min(times["plain"])
    shape = f"{args.batches}x{args.batch_size}x{args.length} tokens"
    print(f"record vs plain forward ({label}, {shape}): {ratio:.2f}x (target <= {args.target:.2f}x); "
          f"best passes {best:.3f}x; torch threads {torch.get_num_threads()}")
    return 0 if ratio <= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
