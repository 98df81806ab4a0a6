"""Two published scoring choices measured on the embedded model and the shipped sample data
(docs/differences.md quotes the output):

    CULNIG_DATA=sample OMP_NUM_THREADS=1 python benchmarks/fidelity_on_model.py   # smollm2-135m, gate + q/k/v

* CountryRC clamping: the published scorer clamps only data sets named "control"; this package
  clamped CountryRC samples too until issue 25 (now ``--clamp-crc``).
* Padding in the max over positions: the published scorer sets padding positions to 0 before
  the max, so a sample shorter than the longest in its batch of 16 scores ``max(real max, 0)``;
  ours takes the max over the sample's real tokens only.

One backward pass per batch (batches of 16 in document order, as the published data loader
feeds them) gives every sample's scores both ways.  The task (``blend_cloze_neur``), control
(``blend_cloze_ctrl``) and CRC (``crc:96``) tables are summed each way and the paper rule (the
published thresholds) selects from them.  Printed: the share of per-sample scores that are
negative (what clamping removes) or that padding changes, and the Jaccard overlap of the CRC
exclusion sets and of the selected sets.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def scorer_class():
    from culnig_lm_eval.scoring.attribution import AttributionScorer

    class BothMaxima(AttributionScorer):
        """Per sample and neuron, the max over real tokens (ours) and the max with padding at 0."""

        @staticmethod
        def _capture(site, real, captured):
            def forward_hook(_module, _inputs, output):
                activation = output[..., site.start: site.stop].detach()

                def grad_hook(grad):
                    product = activation.float() * grad[..., site.start: site.stop].float()
                    mask = real.to(product.device)[..., None]
                    captured[(site.kind, site.layer)] = torch.stack(
                        [product.masked_fill(~mask, float("-inf")).amax(dim=1), product.masked_fill(~mask, 0.0).amax(dim=1)])

                output.register_hook(grad_hook)

            return forward_hook

        def both(self, batch):
            logp, captured = self._forward_backward(batch, hooks=True)
            weight = torch.exp(2 * logp)[None, None, :, None]
            return {k: torch.stack([captured[(k, layer)] for layer in range(self.num_layers)], dim=1) * weight
                    for k in self.kinds}  # {kind: [2 (ours, published), layers, B, width]}

    return BothMaxima


def score_role(scorer, lm, name: str, limit: int | None, batch_size: int):
    """{(rule, clamp): ScoreTable} for rule in ours/published and clamp in False/True, and the
    shares of negative and of padding-changed sample scores."""
    from culnig_lm_eval.scoring.attribution import ScoreTable, collate
    from culnig_lm_eval.scoring.samples import load_tasks, samples_from_task

    task = load_tasks([name])[name]
    samples = samples_from_task(name, task, lm, limit=limit)
    cultures = sorted({s.culture for s in samples})
    index = {c: i for i, c in enumerate(cultures)}
    tables = {(rule, clamp): ScoreTable.empty(scorer, cultures, "cpu") for rule in (0, 1) for clamp in (False, True)}
    negative = changed = total = 0
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start: start + batch_size]
        with torch.inference_mode(False):
            both = scorer.both(collate(chunk, pad))
        ids = torch.tensor([index[s.culture] for s in chunk])
        for rule in (0, 1):
            for clamp in (False, True):
                tables[(rule, clamp)].add({k: v[rule] for k, v in both.items()}, ids, clamp_at_zero=clamp)
        for v in both.values():
            negative += int((v[0] < 0).sum())
            changed += int((v[0] != v[1]).sum())
            total += v[0].numel()
    shape = dict(scorer.shape)
    for table in tables.values():
        table.meta.update(model=shape, task=name, path=name)
    return tables, negative / total, changed / total, len(samples)


def jaccard(a, b) -> float:
    union = len(a.union(b))
    return 1.0 if union == 0 else len(a.intersect(b)) / union


def crc_exclusion(crc) -> set:
    from culnig_lm_eval.selection.ranking import neuron_order, ordered_sum, pooled_top

    order = neuron_order({k: tuple(v.shape[:2]) for k, v in crc.scores.items()}, crc.meta["model"]["model_type"])
    out = set()
    for group in (("mlp_gate",), ("attn_q", "attn_k", "attn_v")):
        top = pooled_top({k: ordered_sum(crc.scores[k].double()) for k in group}, 1.0, order=order)
        out |= {(k, layer, i) for k in group for layer, i in top[k].nonzero().tolist()}
    return out


def compare(sets_a: dict, sets_b: dict) -> str:
    specific = [jaccard(sets_a[c], sets_b[c]) for c in sets_a if c != "general" and c in sets_b
                and (len(sets_a[c]) or len(sets_b[c]))]
    mean = sum(specific) / len(specific) if specific else float("nan")
    return (f"general set {jaccard(sets_a['general'], sets_b['general']):.3f} ({len(sets_a['general'])} vs "
            f"{len(sets_b['general'])} neurons), culture-specific sets mean {mean:.3f} over {len(specific)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_args", default="pretrained=smollm2-135m,dtype=float32")
    parser.add_argument("--batch-size", type=int, default=16, help="the published scorer's BATCH_SIZE")
    parser.add_argument("--crc-limit", type=int, default=96, help="CountryRC documents (the default config's crc:96)")
    args = parser.parse_args()
    os.environ.setdefault("CULNIG_DATA", "sample")
    from culnig_lm_eval.model.lm import load_lm
    from culnig_lm_eval.selection.rules import Thresholds, select

    started = time.perf_counter()
    lm = load_lm(args.model_args, batch_size=args.batch_size, device="cpu")
    scorer = scorer_class()(lm.model.eval(), ("mlp_gate", "attn_q", "attn_k", "attn_v"))
    roles = {}
    for role, name, limit in (("task", "blend_cloze_neur", None), ("control", "blend_cloze_ctrl", None),
                              ("crc", "crc", args.crc_limit)):
        roles[role] = score_role(scorer, lm, name, limit, args.batch_size)
        _, negative, changed, n = roles[role]
        print(f"{role} ({name}, {n} samples): negative sample scores {negative:.4f}, changed by padding {changed:.4f}")
    thresholds = Thresholds()

    def tables(rule: int, crc_clamped: bool):
        return roles["task"][0][(rule, False)], roles["control"][0][(rule, True)], roles["crc"][0][(rule, crc_clamped)]

    unclamped, clamped = tables(0, False), tables(0, True)
    print(f"CRC exclusion (top 1%, MLP and attention rankings), clamped vs unclamped: Jaccard "
          f"{len(crc_exclusion(unclamped[2]) & crc_exclusion(clamped[2])) / len(crc_exclusion(unclamped[2]) | crc_exclusion(clamped[2])):.3f}")
    print("selection, CRC clamped vs unclamped: " + compare(select(*clamped, thresholds=thresholds),
                                                            select(*unclamped, thresholds=thresholds)))
    print("selection, published padding vs ours: " + compare(select(*tables(1, False), thresholds=thresholds),
                                                             select(*unclamped, thresholds=thresholds)))
    print(f"wall {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
