"""Paired statistics for masked-vs-unmasked comparisons on the same items.

Everything here works on per-item vectors that are already aligned (item ``k`` of ``a`` and
item ``k`` of ``b`` are the same document scored under two conditions).  The convention
throughout is ``a`` = masked (or "treatment"), ``b`` = unmasked (or "reference"), and the
reported difference is ``mean(a) - mean(b)``.

* :func:`paired_difference` - the point estimate ``mean(a - b)``.
* :func:`paired_bootstrap_ci` - percentile interval of ``mean(a - b)`` from a paired
  bootstrap over items (items are resampled with replacement, both conditions together).
* :func:`discordant_counts` / :func:`mcnemar_exact` - exact McNemar test for 0/1 outcomes:
  a two-sided binomial test on the discordant pairs.
* :func:`weighted_perplexity`, :func:`perplexity_ratio`, :func:`paired_bootstrap_ratio_ci` -
  lm-eval's corpus perplexity ``exp(-sum(loglik) / sum(units))`` and the masked/unmasked
  ratio with a paired bootstrap interval.
* :func:`stratified_bootstrap_ci` - the mean over groups (e.g. held-out cultures) of each
  group's ``mean(a - b)``, with a paired bootstrap over items within each group.
* :func:`empirical_p` - where a set's accuracy drop falls among its random sets' drops
  (``(1 + #{random >= set}) / (1 + n)``), with :func:`distribution_summary` for their spread.

The bootstrap is vectorised: resample indices are drawn as a ``(resamples, n)`` integer
matrix from ``numpy.random.default_rng(seed)`` (in row chunks to bound memory; chunking does
not change the draws), so ``rng.integers(0, n, size=n)`` called once per resample in a loop
gives exactly the same resamples.
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import numpy as np

__all__ = [
    "Interval",
    "paired_difference",
    "paired_bootstrap_ci",
    "discordant_counts",
    "mcnemar_exact",
    "weighted_perplexity",
    "perplexity_ratio",
    "paired_bootstrap_ratio_ci",
    "stratified_bootstrap_ci",
    "bootstrap_indices",
    "empirical_p",
    "rank_p_value",
    "distribution_summary",
]

# largest number of index cells drawn at once (resamples x items); 4M int64 = 32 MB
_CHUNK_CELLS = 4_000_000

# Fewer paired items than this: a percentile bootstrap interval is far too narrow (with one item it
# has zero width: every resample is that item) and an exact McNemar test on so few items cannot
# reach p < 0.05 (it needs 6 discordant items).  Reports show such intervals as "small n" or not at all.
MIN_INTERVAL_ITEMS = 10


def sample_size_caveat(n) -> str:
    """'' when ``n`` paired items are enough for the interval and test a report shows, else a
    short reason ("n=1: no interval" / "small n")."""
    if n is None or n >= MIN_INTERVAL_ITEMS:
        return ""
    return f"n={n}: no interval" if n < 2 else "small n"


class Interval(NamedTuple):
    """A confidence interval; unpacks as ``low, high``."""

    low: float
    high: float


def is_finite(x) -> bool:
    """Whether ``x`` is a number (int or float) that is neither NaN nor infinite."""
    return isinstance(x, (int, float)) and math.isfinite(x)


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired vectors must have the same length, got {a.size} and {b.size}")
    return a, b


def paired_difference(a, b) -> float:
    """``mean(a - b)`` (NaN for empty input)."""
    a, b = _pair(a, b)
    return float(np.mean(a - b)) if a.size else float("nan")


def bootstrap_indices(n: int, n_resamples: int = 2000, seed: int = 0) -> Iterator[np.ndarray]:
    """Yield ``(k, n)`` blocks of resample indices, ``n_resamples`` rows in total.

    Equivalent to ``rng = np.random.default_rng(seed)`` followed by ``n_resamples`` calls of
    ``rng.integers(0, n, size=n)``.
    """
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_CELLS // max(n, 1))
    done = 0
    while done < n_resamples:
        k = min(rows, n_resamples - done)
        yield rng.integers(0, n, size=(k, n))
        done += k


def _percentile_interval(stats: np.ndarray, alpha: float) -> Interval:
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return Interval(float(lo), float(hi))


def paired_bootstrap_ci(a, b, n_resamples: int = 2000, seed: int = 0, alpha: float = 0.05) -> Interval:
    """Percentile ``1 - alpha`` interval of ``mean(a - b)`` by paired bootstrap over items.

    Each resample draws ``n`` item indices with replacement (the same indices for ``a`` and
    ``b``: the pairing is kept) and takes the mean difference; the interval is the
    ``alpha/2`` and ``1 - alpha/2`` percentiles (numpy's default linear interpolation) of
    the ``n_resamples`` means.  Deterministic for a given ``seed``.  Empty input gives
    ``(nan, nan)``.
    """
    a, b = _pair(a, b)
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    if a.size == 0:
        return Interval(float("nan"), float("nan"))
    d = a - b
    means = np.concatenate([d[idx].mean(axis=1) for idx in bootstrap_indices(d.size, n_resamples, seed)])
    return _percentile_interval(means, alpha)


def stratified_bootstrap_ci(groups, n_resamples: int = 2000, seed: int = 0, alpha: float = 0.05) -> Interval:
    """Percentile ``1 - alpha`` interval of ``mean over groups of mean(a_g - b_g)``.

    ``groups``: ``(a, b)`` pairs of aligned item vectors, one pair per group (e.g. per held-out
    culture).  Each resample draws every group's items with replacement within the group (the
    pairing kept, group ``k`` from seed ``seed + k``), so every group weighs the same whatever its
    size, as in the point estimate.  ``(nan, nan)`` without groups or with an empty one."""
    pairs = [_pair(a, b) for a, b in groups]
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    if not pairs or any(a.size == 0 for a, _ in pairs):
        return Interval(float("nan"), float("nan"))
    total = np.zeros(n_resamples)
    for k, (a, b) in enumerate(pairs):
        d = a - b
        total += np.concatenate([d[idx].mean(axis=1) for idx in bootstrap_indices(d.size, n_resamples, seed + k)])
    return _percentile_interval(total / len(pairs), alpha)


def discordant_counts(a, b) -> tuple[int, int]:
    """For 0/1 outcomes: ``b_count`` = items right in ``a`` only, ``c_count`` = right in ``b`` only."""
    a, b = _pair(a, b)
    ra, rb = a > 0.5, b > 0.5
    return int(np.sum(ra & ~rb)), int(np.sum(~ra & rb))


def _binom_tail_half(k: int, n: int) -> float:
    """``sum_{i<=k} C(n, i) / 2**n`` (exact integers up to n = 5000, log-space beyond)."""
    if n <= 5000:
        total = sum(math.comb(n, i) for i in range(k + 1))
        return total / (1 << n)  # int / int is correctly rounded in Python
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)]
    top = max(logs)
    return math.exp(top + math.log(sum(math.exp(x - top) for x in logs)) - n * math.log(2))


def mcnemar_exact(a, b) -> float:
    """Exact two-sided McNemar p-value for paired 0/1 outcomes.

    With ``b`` and ``c`` the discordant counts (:func:`discordant_counts`), under the null each
    discordant pair is a fair coin flip, so ``p = min(1, 2 * sum_{k <= min(b, c)} C(b + c, k)
    0.5**(b + c))``; ``p = 1`` when there is no discordant pair.  Values other than 0/1 are
    read as correct when > 0.5.
    """
    nb, nc = discordant_counts(a, b)
    return mcnemar_exact_counts(nb, nc)


def mcnemar_exact_counts(b: int, c: int) -> float:
    """:func:`mcnemar_exact` from the discordant counts themselves."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * _binom_tail_half(min(b, c), n))


def weighted_perplexity(loglik, units) -> float:
    """lm-eval's corpus perplexity: ``exp(-sum(loglik) / sum(units))``."""
    ll = np.asarray(loglik, dtype=float)
    u = np.asarray(units, dtype=float)
    return float(math.exp(-ll.sum() / u.sum())) if u.sum() > 0 else float("nan")


def perplexity_ratio(loglik_a, loglik_b, units) -> float:
    """``perplexity(a) / perplexity(b)`` on the same documents (same word/byte counts)."""
    ll_a, ll_b = _pair(loglik_a, loglik_b)
    u = np.asarray(units, dtype=float)
    if u.sum() <= 0:
        return float("nan")
    return float(math.exp(-(ll_a.sum() - ll_b.sum()) / u.sum()))


def paired_bootstrap_ratio_ci(
    loglik_a, loglik_b, units, n_resamples: int = 2000, seed: int = 0, alpha: float = 0.05
) -> Interval:
    """Percentile interval of :func:`perplexity_ratio` by paired bootstrap over documents."""
    ll_a, ll_b = _pair(loglik_a, loglik_b)
    u = np.asarray(units, dtype=float).ravel()
    if ll_a.size == 0:
        return Interval(float("nan"), float("nan"))
    d = ll_a - ll_b
    ratios = []
    for idx in bootstrap_indices(d.size, n_resamples, seed):
        denom = u[idx].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios.append(np.exp(-d[idx].sum(axis=1) / denom))
    return _percentile_interval(np.concatenate(ratios), alpha)


def _finite_values(values) -> np.ndarray:
    return np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)


def empirical_p(drop: float, random_drops) -> float:
    """One-sided empirical p-value of a set's accuracy drop within the drops of its random sets:
    ``(1 + #{random drops >= drop}) / (1 + n_random)``.

    A drop is ``unmasked accuracy - masked accuracy`` on the same items.  The observed set counts
    as one draw (the permutation-test convention), so p is never 0 and its smallest value is
    ``1 / (1 + n_random)``: 20 random sets are the fewest that allow p < 0.05.  Ties count
    against the set.  Non-finite random drops are left out; NaN without a finite ``drop`` or
    without a finite random drop."""
    r = _finite_values(random_drops)
    if r.size == 0 or drop is None or not math.isfinite(drop):
        return float("nan")
    return float((1 + np.count_nonzero(r >= drop)) / (1 + r.size))


def rank_p_value(value: float, baseline) -> float:
    """:func:`empirical_p` for differences (masked - unmasked, lower = more extreme):
    ``(1 + #{b <= value}) / (1 + n)``."""
    b = _finite_values(baseline)
    return empirical_p(-value if value is not None else None, -b)


def distribution_summary(values, low: float = 5.0, high: float = 95.0) -> dict:
    """``n``, ``mean`` and the ``low``/``high`` percentiles (numpy's linear interpolation) of the
    finite ``values``; NaN statistics when there is none."""
    v = _finite_values(values)
    if v.size == 0:
        nan = float("nan")
        return {"n": 0, "mean": nan, "low": nan, "high": nan}
    lo, hi = np.percentile(v, [low, high])
    return {"n": int(v.size), "mean": float(v.mean()), "low": float(lo), "high": float(hi)}
