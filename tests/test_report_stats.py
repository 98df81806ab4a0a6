"""Paired statistics of culnig-report, checked against values worked out by hand."""

import math

import numpy as np
import pytest

from culnig_lm_eval.report.stats import (
    discordant_counts,
    mcnemar_exact,
    mcnemar_exact_counts,
    paired_bootstrap_ci,
    paired_bootstrap_ratio_ci,
    paired_difference,
    perplexity_ratio,
    weighted_perplexity,
)


def _vectors(b, c, both=0, neither=0):
    """0/1 vectors (a = masked, b = unmasked) with b items right only in a, c right only in b."""
    a = [1] * b + [0] * c + [1] * both + [0] * neither
    r = [0] * b + [1] * c + [1] * both + [0] * neither
    return np.array(a), np.array(r)


# ---------------------------------------------------------------------------------------- McNemar
def test_discordant_counts():
    a = [1, 1, 0, 0, 1, 0]
    b = [1, 0, 1, 1, 1, 0]
    # item 1: right only in a -> b=1; items 2, 3: right only in b -> c=2; items 0, 4 agree (1), 5 agrees (0)
    assert discordant_counts(a, b) == (1, 2)


def test_mcnemar_b1_c5():
    # n = b + c = 6 discordant pairs, min(b, c) = 1:
    # p = 2 * (C(6,0) + C(6,1)) / 2^6 = 2 * (1 + 6) / 64 = 14 / 64 = 0.21875
    a, r = _vectors(1, 5, both=7, neither=3)  # concordant items must not matter
    assert mcnemar_exact(a, r) == pytest.approx(0.21875, abs=1e-15)
    assert mcnemar_exact(r, a) == pytest.approx(0.21875, abs=1e-15)  # two-sided: symmetric


def test_mcnemar_b0_c4():
    # p = 2 * C(4,0) / 2^4 = 2 / 16 = 0.125
    a, r = _vectors(0, 4)
    assert mcnemar_exact(a, r) == 0.125


def test_mcnemar_b1_c3():
    # p = 2 * (C(4,0) + C(4,1)) / 16 = 2 * 5 / 16 = 0.625
    assert mcnemar_exact(*_vectors(1, 3)) == 0.625


def test_mcnemar_b2_c8():
    # n = 10: p = 2 * (C(10,0) + C(10,1) + C(10,2)) / 1024 = 2 * (1 + 10 + 45) / 1024 = 112 / 1024 = 0.109375
    assert mcnemar_exact(*_vectors(2, 8)) == 0.109375


def test_mcnemar_capped_at_one_and_no_discordant_pairs():
    # b = c = 2: 2 * (1 + 4 + 6) / 16 = 22/16 > 1 -> capped at 1
    assert mcnemar_exact(*_vectors(2, 2)) == 1.0
    # b + c = 0 -> p = 1 by definition
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0
    assert mcnemar_exact_counts(0, 0) == 1.0


def test_mcnemar_large_n_log_space_path():
    # n = 6000 takes the log-space branch; b = c gives p = min(1, 2 * P(X <= n/2)) = 1
    assert mcnemar_exact_counts(3000, 3000) == 1.0
    # b = 0, c = 6000: p = 2 * 0.5^6000, which underflows to 0.0
    assert mcnemar_exact_counts(0, 6000) == 0.0
    # compare the log-space path with exact integers just beyond the switch point
    exact = 2 * sum(math.comb(5001, k) for k in range(2400)) / (1 << 5001)
    assert mcnemar_exact_counts(2399, 2602) == pytest.approx(exact, rel=1e-9)


# ---------------------------------------------------------------------------------------- bootstrap
def test_paired_difference_by_hand():
    # a = 3/5 right, b = 4/5 right -> mean(a - b) = 0.6 - 0.8 = -0.2
    assert paired_difference([1, 1, 1, 0, 0], [1, 1, 1, 1, 0]) == pytest.approx(-0.2)


def test_bootstrap_degenerate_interval():
    # every item has a - b = -1 (right unmasked, wrong masked): every resample mean is -1,
    # so both percentiles are -1 whatever the seed
    lo, hi = paired_bootstrap_ci([0, 0, 0, 0], [1, 1, 1, 1], n_resamples=500, seed=3)
    assert (lo, hi) == (-1.0, -1.0)
    # identical conditions: the difference is 0 on every item -> [0, 0]
    assert tuple(paired_bootstrap_ci([1, 0, 1], [1, 0, 1])) == (0.0, 0.0)


def test_bootstrap_single_discordant_item_enumeration():
    # n = 2 items, differences d = (-1, 0).  A resample draws 2 indices; its mean is
    # -1 (both index 0), -0.5 (one of each) or 0 (both index 1).  With the same seed we
    # enumerate the resamples one by one and take the percentiles by hand.
    a, b = [0, 1], [1, 1]
    d = np.array([-1.0, 0.0])
    rng = np.random.default_rng(7)
    means = [d[rng.integers(0, 2, size=2)].mean() for _ in range(400)]
    assert set(means) <= {-1.0, -0.5, 0.0}
    # every value is one of three; the interval ends must therefore be among them
    lo, hi = paired_bootstrap_ci(a, b, n_resamples=400, seed=7)
    assert lo in (-1.0, -0.5, 0.0) and hi in (-1.0, -0.5, 0.0)
    assert (lo, hi) == tuple(np.percentile(means, [2.5, 97.5]))
    # with 400 draws each of P(-1) = P(0) = 1/4 is far above 2.5%: the interval is [-1, 0]
    assert (lo, hi) == (-1.0, 0.0)


def test_bootstrap_matches_slow_reference_loop():
    rs = np.random.default_rng(123)
    a = rs.integers(0, 2, size=57)
    b = rs.integers(0, 2, size=57)

    def slow(a, b, n_resamples, seed, alpha):
        rng = np.random.default_rng(seed)
        d = np.asarray(a, float) - np.asarray(b, float)
        means = []
        for _ in range(n_resamples):  # one resample at a time
            idx = rng.integers(0, len(d), size=len(d))
            means.append(d[idx].mean())
        return tuple(np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)]))

    for seed, alpha in ((0, 0.05), (5, 0.1)):
        assert tuple(paired_bootstrap_ci(a, b, 2000, seed, alpha)) == pytest.approx(slow(a, b, 2000, seed, alpha),
                                                                                   abs=1e-12)


def test_bootstrap_chunking_does_not_change_draws(monkeypatch):
    import culnig_lm_eval.report.stats as st

    a, b = np.arange(30) % 2, np.arange(30) % 3 == 0
    whole = paired_bootstrap_ci(a, b, 300, seed=1)
    monkeypatch.setattr(st, "_CHUNK_CELLS", 7 * 30)  # 7 resamples per block
    assert paired_bootstrap_ci(a, b, 300, seed=1) == whole


def test_bootstrap_is_seeded_and_contains_estimate():
    a, b = _vectors(3, 9, both=20, neither=8)
    ci1 = paired_bootstrap_ci(a, b, seed=11)
    assert ci1 == paired_bootstrap_ci(a, b, seed=11)
    est = paired_difference(a, b)  # (3 - 9) / 40 = -0.15
    assert est == pytest.approx(-0.15)
    assert ci1.low < est < ci1.high


def test_bootstrap_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1, 0], [1])


# ---------------------------------------------------------------------------------------- perplexity
def test_weighted_perplexity_and_ratio_by_hand():
    ll_u = [-10.0, -20.0, -30.0, -40.0]  # sum -100
    ll_m = [-10.5, -20.5, -30.5, -40.5]  # sum -102
    words = [5, 5, 10, 10]  # sum 30
    # perplexity = exp(-sum ll / sum words): exp(100/30) and exp(102/30); ratio exp(2/30)
    assert weighted_perplexity(ll_u, words) == pytest.approx(math.exp(100 / 30))
    assert perplexity_ratio(ll_m, ll_u, words) == pytest.approx(math.exp(2 / 30))
    # every document worsens by the same 0.5 nats, but resampling changes the word total, so the
    # interval is not degenerate; it must still bracket the estimate
    lo, hi = paired_bootstrap_ratio_ci(ll_m, ll_u, words, 1000, 0)
    assert lo <= math.exp(2 / 30) <= hi and lo >= 1.0


def test_rank_p_value_counts_the_observed_value_as_one_draw():
    from culnig_lm_eval.report.stats import rank_p_value

    baseline = [-0.02, 0.0, 0.01, 0.03]
    assert rank_p_value(-0.10, baseline) == pytest.approx(1 / 5)  # below every random set
    assert rank_p_value(0.0, baseline) == pytest.approx(3 / 5)  # ties count against the set
    assert rank_p_value(0.05, baseline) == pytest.approx(1.0)
    assert math.isnan(rank_p_value(-0.1, [])) and math.isnan(rank_p_value(float("nan"), baseline))


def test_empirical_p_of_a_drop_by_hand():
    from culnig_lm_eval.report.stats import distribution_summary, empirical_p

    random_drops = [0.10, 0.00, 0.20, 0.40]  # unmasked - masked accuracy of four random sets
    # the set's drop 0.40: one random drop is >= it (the tie counts against the set): (1 + 1) / (1 + 4)
    assert empirical_p(0.40, random_drops) == pytest.approx(2 / 5)
    # above every random drop: the smallest p four random sets allow, 1 / 5
    assert empirical_p(0.50, random_drops) == pytest.approx(1 / 5)
    # below every random drop: (1 + 4) / 5
    assert empirical_p(-0.10, random_drops) == pytest.approx(1.0)
    # 20 random sets beaten: 1 / 21 < 0.05 (19 would give exactly 0.05)
    assert empirical_p(0.3, [0.0] * 20) == pytest.approx(1 / 21) and 1 / 21 < 0.05
    # non-finite random drops are left out; nothing to compare with -> nan
    assert empirical_p(0.40, random_drops + [float("nan"), None]) == pytest.approx(2 / 5)
    assert math.isnan(empirical_p(0.4, [])) and math.isnan(empirical_p(float("nan"), random_drops))
    # spread: sorted 0, 0.1, 0.2, 0.4; 5th percentile at rank 0.15 -> 0.015, 95th at rank 2.85 -> 0.37
    spread = distribution_summary(random_drops)
    assert spread["n"] == 4 and spread["mean"] == pytest.approx(0.175)
    assert spread["low"] == pytest.approx(0.015) and spread["high"] == pytest.approx(0.37)
