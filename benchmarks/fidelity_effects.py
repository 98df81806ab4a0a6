"""Effects, on synthetic score tables, of choices where this package can differ from the published
CULNIG code (docs/differences.md quotes the output):

    OMP_NUM_THREADS=1 python benchmarks/fidelity_effects.py            # 5 seeds, 3 regimes: 10 min on 2 cores
    OMP_NUM_THREADS=1 python benchmarks/fidelity_effects.py --only crc-clamp --regime zero-mean

* ``crc-clamp``: CountryRC samples clamped at 0 per sample (``--clamp-crc``, this package's scoring
  before issue 25) against unclamped (the published ``calc_neuron_score.py``: only data sets named
  "control" are clamped).  Per-sample scores are heavy-tailed and of both signs (a neuron's mean
  plus a scaled Student-t(2) draw, times the sample's P^2); task, control and CRC share a per-neuron
  importance so that CRC's top neurons overlap the task's, as the method assumes.  Printed: the
  Jaccard overlap of the CRC top-r exclusion sets (MLP and attention rankings) and of the
  culture-general and culture-specific sets the paper rule selects with each CRC table.
* ``padding``: the published max over token positions lets padding positions (set to 0) take part,
  so in a batch every sample shorter than the longest scores ``max(real max, 0)``.  Simulated
  per-position products (the same generator), batches of 16 with random lengths: the share of
  sample scores that change, and the Jaccard of the selected sets.
* ``sqrt``: the z-score's std by a correctly rounded square root (ours) against Python's ``** 0.5``
  (C ``pow``, the published script): how often the two differ in the last bit.

Sizes: 8 layers, gate 1024, q 256, k/v 64 (grouped-query), 8 cultures, 100 samples per culture
and role.  Nothing here loads a model; the figures describe these synthetic tables only.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics

import torch

from culnig_lm_eval.scoring.attribution import ScoreTable
from culnig_lm_eval.selection.ranking import neuron_order, ordered_sum, pooled_top
from culnig_lm_eval.selection.rules import Thresholds, select

LAYERS = 8
WIDTHS = {"mlp_gate": 1024, "attn_q": 256, "attn_k": 64, "attn_v": 64}
CULTURES = ["china", "indonesia", "iran", "korea", "mexico", "spain", "uk", "usa"]
PER_CULTURE = 100
SHAPE = {"model_type": "llama", "num_layers": LAYERS, "widths": WIDTHS}
MLP, ATTENTION = ("mlp_gate",), ("attn_q", "attn_k", "attn_v")


# synthetic regimes: neuron means that dominate the tails, tails that dominate the means, and
# sample scores of mean 0 (half of them negative: the case where clamping matters most)
REGIMES = {"mean-driven": {"mean": 1.0, "df": 2.0}, "tail-driven": {"mean": 0.1, "df": 1.2},
           "zero-mean": {"mean": 0.0, "df": 3.0}}


def importances(gen, regime: str, like: dict | None = None, rho: float = 0.5) -> dict[str, torch.Tensor]:
    """Per-neuron importance (lognormal, centred); ``like``: correlated ``rho`` with another role's."""
    scale = REGIMES[regime]["mean"]
    fresh = {k: scale * (torch.exp(torch.randn(LAYERS, w, generator=gen)) - 1.5) for k, w in WIDTHS.items()}
    if like is None:
        return fresh
    return {k: rho * like[k] + math.sqrt(1 - rho**2) * fresh[k] for k in WIDTHS}


def neuron_means(gen, importance, culture_effect):
    """{kind: [layers, width, cultures]} per-neuron mean sample score of each culture."""
    return {k: importance[k][..., None] + 0.5 * torch.randn(*importance[k].shape, len(CULTURES), generator=gen)
            * importance[k].abs().mean() + culture_effect[k] for k in WIDTHS}


def sample_scores(gen, means, culture: int, positions: int | None = None, df: float = 2.0):
    """{kind: [samples, layers, width]}: mean + scale * t(df) per sample (positions=None), or per
    position [samples, positions, layers, width] for the padding study."""
    out = {}
    student = torch.distributions.StudentT(df)
    for k, mean in means.items():
        shape = (PER_CULTURE,) + ((positions,) if positions else ()) + mean.shape[:2]
        noise = student.sample(shape) * torch.exp(0.5 * torch.randn(mean.shape[:2], generator=gen))
        out[k] = mean[..., culture] + noise
    return out


def weights(gen):
    return torch.distributions.Beta(2.0, 2.0).sample((PER_CULTURE,)) ** 2  # P^2 of each sample


def table(sums: dict[str, list[torch.Tensor]], role: str, clamped: bool) -> ScoreTable:
    scores = {k: torch.stack(cols, dim=-1).float() for k, cols in sums.items()}
    return ScoreTable(list(CULTURES), scores, torch.full((len(CULTURES),), PER_CULTURE),
                      {"model": SHAPE, "task": role, "clamped_at_zero": clamped})


def role_tables(gen, means, clamp_options, df):
    """{clamp: ScoreTable} of one role, the same samples summed with and without clamping."""
    sums = {clamp: {k: [] for k in WIDTHS} for clamp in clamp_options}
    for c in range(len(CULTURES)):
        w = weights(gen)
        per_sample = sample_scores(gen, means, c, df=df)
        for clamp in clamp_options:
            for k, s in per_sample.items():
                scored = s * w[:, None, None]
                sums[clamp][k].append((scored.clamp(min=0) if clamp else scored).sum(0))
    return {clamp: table(sums[clamp], "role", clamp) for clamp in clamp_options}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def members(neuron_set) -> set:
    return {(kind, layer, int(i)) for kind, per_layer in neuron_set.indices.items()
            for layer, idx in enumerate(per_layer) for i in idx}


def crc_exclusion(crc: ScoreTable, r: float) -> set:
    order = neuron_order({k: tuple(v.shape[:2]) for k, v in crc.scores.items()}, "llama")
    out = set()
    for group in (MLP, ATTENTION):
        top = pooled_top({k: ordered_sum(crc.scores[k].double()) for k in group}, r, order=order)
        out |= {(k, int(layer), int(i)) for k in group for layer, i in top[k].nonzero().tolist()}
    return out


def crc_clamp_effect(seed: int, regime: str) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    df = REGIMES[regime]["df"]
    importance = importances(gen, regime)
    effect = {k: 0.3 * REGIMES[regime]["mean"] * torch.randn(1, 1, len(CULTURES), generator=gen) for k in WIDTHS}
    task = role_tables(gen, neuron_means(gen, importance, effect), [False], df)[False]
    control_importance = {k: 0.5 * v for k, v in importances(gen, regime, importance).items()}
    control = role_tables(gen, neuron_means(gen, control_importance, effect), [True], df)[True]
    crc = role_tables(gen, neuron_means(gen, importances(gen, regime, importance), effect), [False, True], df)
    thresholds = Thresholds(min_samples=0)
    sets = {clamp: select(task, control, crc[clamp], thresholds=thresholds) for clamp in (False, True)}
    specific = [jaccard(members(sets[False][c]), members(sets[True][c])) for c in CULTURES
                if c in sets[False] and c in sets[True] and (len(sets[False][c]) or len(sets[True][c]))]
    return {"crc exclusion": jaccard(crc_exclusion(crc[False], 1.0), crc_exclusion(crc[True], 1.0)),
            "general set": jaccard(members(sets[False]["general"]), members(sets[True]["general"])),
            "specific sets (mean)": statistics.mean(specific) if specific else math.nan,
            "general size unclamped": len(sets[False]["general"]), "general size clamped": len(sets[True]["general"])}


def padding_effect(seed: int, regime: str, batch: int = 16) -> dict[str, float]:
    """Task and control per-position products; our max over real positions against the published
    max with padding positions at 0 (every sample shorter than its batch's longest)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    df = REGIMES[regime]["df"]
    importance = importances(gen, regime)
    effect = {k: 0.3 * REGIMES[regime]["mean"] * torch.randn(1, 1, len(CULTURES), generator=gen) for k in WIDTHS}
    tables, changed, total = {}, 0, 0
    for role, scale, clamp in (("task", 1.0, False), ("control", 0.5, True)):
        means = neuron_means(gen, {k: scale * v for k, v in importance.items()}, effect)
        sums = {rule: {k: [] for k in WIDTHS} for rule in ("ours", "published")}
        for c in range(len(CULTURES)):
            w = weights(gen)
            lengths = torch.randint(4, 24, (PER_CULTURE,), generator=gen)
            longest = torch.tensor([int(lengths[i - i % batch: i - i % batch + batch].max()) for i in range(PER_CULTURE)])
            padded = lengths < longest  # shorter than its batch's longest: the published max sees padding at 0
            per_position = sample_scores(gen, means, c, positions=24, df=df)
            for k, s in per_position.items():
                real = torch.arange(24)[None, :, None, None] < lengths[:, None, None, None]
                ours = s.masked_fill(~real, -math.inf).amax(1)
                published = torch.where(padded[:, None, None], ours.clamp(min=0), ours)
                changed += int((published != ours).sum())
                total += ours.numel()
                for rule, value in (("ours", ours), ("published", published)):
                    scored = value * w[:, None, None]
                    sums[rule][k].append((scored.clamp(min=0) if clamp else scored).sum(0))
        tables[role] = {rule: table(sums[rule], role, clamp) for rule in sums}
    thresholds = Thresholds(min_samples=0, crc_exclude=0.0)
    sets = {rule: select(tables["task"][rule], tables["control"][rule], thresholds=thresholds)
            for rule in ("ours", "published")}
    specific = [jaccard(members(sets["ours"][c]), members(sets["published"][c])) for c in CULTURES
                if len(sets["ours"][c]) or len(sets["published"][c])]
    return {"sample scores changed": changed / total,
            "general set": jaccard(members(sets["ours"]["general"]), members(sets["published"]["general"])),
            "specific sets (mean)": statistics.mean(specific) if specific else math.nan}


def sqrt_effect(draws: int = 2_000_000) -> float:
    rng = random.Random(0)
    differ = 0
    for _ in range(draws):
        x = rng.random() * 10 ** rng.randint(-30, 30)
        differ += math.sqrt(x) != x ** 0.5
    return differ / draws


def summary(rows: list[dict[str, float]]) -> None:
    for key in rows[0]:
        values = [r[key] for r in rows]
        print(f"  {key:>24}: " + " ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in values)
              + (f"   (min {min(values):.3f}, max {max(values):.3f})" if isinstance(values[0], float) else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="synthetic tables drawn per study")
    parser.add_argument("--only", choices=["crc-clamp", "padding", "sqrt"], default=None, help="run one study")
    parser.add_argument("--regime", choices=list(REGIMES), default=None, help="run one regime")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for regime in [args.regime] if args.regime else REGIMES:
        if args.only in (None, "crc-clamp"):
            print(f"crc-clamp, {regime}: Jaccard of clamped vs unclamped CountryRC (paper thresholds), per seed")
            summary([crc_clamp_effect(seed, regime) for seed in range(args.seeds)])
        if args.only in (None, "padding"):
            print(f"padding, {regime}: published max with padding at 0 vs ours (batches of 16, 4-23 tokens)")
            summary([padding_effect(seed, regime) for seed in range(args.seeds)])
    if args.only in (None, "sqrt"):
        print(f"sqrt: math.sqrt(x) != x ** 0.5 for {sqrt_effect():.5f} of 2,000,000 random doubles")


if __name__ == "__main__":
    main()
