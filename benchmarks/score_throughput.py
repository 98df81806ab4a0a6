"""Scoring throughput on the same batches, in one run:

* ours:   culnig-score's batched attribution (hooks + fp32 product/max in the backward, index_add_)
* floor:  the same forward + backward with nothing captured (the least any gradient method pays)
* loop:   our per-sample scores followed by a per-neuron Python accumulation in the published
          style (one .tolist() per layer and sample, a dict update per neuron), on a few batches

    python benchmarks/score_throughput.py                 # smollm2-135m, blend_cloze_neur
    python benchmarks/score_throughput.py --tiny          # a tiny random Llama, seconds

Prints seconds per sample and the ratios ours/floor (target <= 1.15) and loop/floor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def published_style_accumulate(per_sample: dict, cultures: list[str], store: dict):
    """What the reference code does: walk every neuron of every sample in Python."""
    for kind, scores in per_sample.items():  # [layers, B, width]
        for layer in range(scores.shape[0]):
            for b, culture in enumerate(cultures):
                row = scores[layer, b].tolist()
                bucket = store.setdefault((kind, layer, culture), {})
                for neuron, value in enumerate(row):
                    bucket[neuron] = bucket.get(neuron, 0.0) + value


def load(args):
    from culnig_lm_eval.scoring.samples import Sample

    if args.tiny:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=384,
                                             num_hidden_layers=6, num_attention_heads=4)).eval()
        gen = torch.Generator().manual_seed(0)
        samples = [
            Sample("tiny", i, ["a", "b", "c"][i % 3], "", tuple(torch.randint(1, 512, (30 + i % 20,), generator=gen).tolist()),
                   tuple(torch.randint(1, 512, (3,), generator=gen).tolist()))
            for i in range(args.samples)
        ]
        return model, samples, 0
    from lm_eval.api.registry import get_model

    from culnig_lm_eval.model.embedded import resolve_pretrained
    from culnig_lm_eval.scoring.samples import load_tasks, samples_from_task

    lm = get_model("hf").create_from_arg_string(f"pretrained={resolve_pretrained(args.model)},device=cpu", {"batch_size": args.batch_size})
    task = load_tasks([args.task])[args.task]
    samples = samples_from_task(args.task, task, lm)[: args.samples]
    return lm.model.eval(), samples, lm.tokenizer.pad_token_id or 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="blend_cloze_neur")
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--loop-batches", type=int, default=2, help="batches for the published-style loop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("CULNIG_DATA", "sample")

    from culnig_lm_eval.scoring.attribution import AttributionScorer, ScoreTable, collate
    from culnig_lm_eval.scoring.run import batches

    model, samples, pad_id = load(args)
    scorer = AttributionScorer(model, ("mlp_gate",))
    cultures = sorted({s.culture for s in samples})
    index = {c: i for i, c in enumerate(cultures)}
    chunks = [(collate(c, pad_id), torch.tensor([index[s.culture] for s in c]), [s.culture for s in c])
              for c in batches(samples, args.batch_size)]
    n = sum(len(c[1]) for c in chunks)

    def ours():
        table = ScoreTable.empty(scorer, cultures, "cpu")
        for batch, ids, _ in chunks:
            table.add(scorer.sample_scores(batch), ids, clamp_at_zero=False)

    def floor():
        for batch, _, _ in chunks:
            scorer.floor(batch)

    floor()  # warm-up
    times = {"ours": [], "floor": []}
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        for name, fn in (("floor", floor), ("ours", ours)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    per_sample = {k: statistics.median(v) / n for k, v in times.items()}

    loop_chunks = chunks[: args.loop_batches]
    loop_n = sum(len(c[1]) for c in loop_chunks)
    start = time.perf_counter()
    store = {}
    for batch, _, names in loop_chunks:
        published_style_accumulate(scorer.sample_scores(batch), names, store)
    per_sample["loop"] = (time.perf_counter() - start) / loop_n

    model_name = "tiny random Llama" if args.tiny else args.model
    print(f"model: {model_name}; {n} samples in batches of {args.batch_size}; median of {args.repeats} interleaved runs; "
          f"torch threads {torch.get_num_threads()}")
    print(f"floor (forward+backward):     {per_sample['floor']:.4f} s/sample")
    print(f"ours (culnig-score):          {per_sample['ours']:.4f} s/sample   ours/floor = {per_sample['ours'] / per_sample['floor']:.3f}  (target <= 1.15)")
    print(f"published-style neuron loop:  {per_sample['loop']:.4f} s/sample   loop/floor = {per_sample['loop'] / per_sample['floor']:.2f}  ({loop_n} samples)")


if __name__ == "__main__":
    main()
