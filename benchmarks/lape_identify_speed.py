"""Wall time of LAPE ``identify`` on random counts the size of a 12B model (target < 5 s):

    python benchmarks/lape_identify_speed.py             # 48 layers x 15360 gate neurons x 6 corpora
    python benchmarks/lape_identify_speed.py --repeats 5

Seeded random int64 counts (``over_zero <= n``) are drawn once; ``identify`` with the default
hyperparameters runs ``--repeats`` times.  Prints each run and the median; exits 1 if the median
is over the target.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from culnig_lm_eval.lape.identify import LapeHyperparameters, identify

LAYERS, WIDTH, CORPORA = 48, 15360, 6
TARGET_S = 5.0


def random_counts(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    n = torch.randint(200_000, 2_000_000, (CORPORA,), generator=gen, dtype=torch.int64)
    # activation rates per neuron, skewed so that some neurons are corpus-specific
    rate = torch.rand(LAYERS, WIDTH, CORPORA, generator=gen, dtype=torch.float64) ** 3
    over_zero = (rate * n.to(torch.float64)).floor().to(torch.int64)
    return over_zero, n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    over_zero, n = random_counts(args.seed)
    hp = LapeHyperparameters()
    print(f"counts: {LAYERS}x{WIDTH}x{CORPORA} int64, hyperparameters {hp.as_dict()}; "
          f"torch threads {torch.get_num_threads()}")
    times = []
    for rep in range(args.repeats):
        start = time.perf_counter()
        result = identify(over_zero, n, hp)
        times.append(time.perf_counter() - start)
        sizes = [int(m.sum()) for m in result.masks]
        print(f"run {rep}: {times[-1]:.2f} s, kept {int(result.kept.sum())}/{result.target}, per corpus {sizes}")
    median = statistics.median(times)
    print(f"identify {LAYERS}x{WIDTH}x{CORPORA}: median {median:.2f} s (target {TARGET_S:g} s: {median / TARGET_S:.2f}x)")
    return 0 if median <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
