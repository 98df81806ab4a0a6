"""LAPE identification (culnig_lm_eval.lape.identify) against an independent slow implementation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from culnig_lm_eval.lape.identify import LapeHyperparameters, LapeResult, identify, sets_from_result


# -- an independent, deliberately naive implementation ---------------------------------------
def slow_identify(over_zero, n, top_rate, filter_rate, bar_ratio):
    """Plain-Python LAPE: loops over neurons, a sorted list of (entropy, flat index) tuples."""
    oz = np.asarray(over_zero, dtype=np.int64)
    n = [int(x) for x in np.asarray(n)]
    L, I, K = oz.shape
    p = [[[int(oz[l, i, k]) / n[k] for k in range(K)] for i in range(I)] for l in range(L)]
    flat = sorted(x for layer in p for row in layer for x in row)

    def kth(rate):
        k = min(max(round(len(flat) * rate), 1), len(flat))
        return flat[k - 1]

    tau = kth(filter_rate)
    entries = []
    entropy = np.zeros((L, I))
    for l in range(L):
        for i in range(I):
            ps = p[l][i]
            if not any(x > tau for x in ps):
                h = math.inf
            else:
                total = sum(ps)
                h = -sum((x / total) * math.log(x / total) for x in ps if x > 0)
            entropy[l, i] = h
            entries.append((h, l * I + i))
    entries.sort()  # equal entropies: the lower flat (layer-major) index first
    target = round(top_rate * L * I)
    kept_ids = {idx for h, idx in entries[:target] if h != math.inf}
    bar = kth(bar_ratio)
    kept = np.zeros((L, I), dtype=bool)
    masks = [np.zeros((L, I), dtype=bool) for _ in range(K)]
    for idx in kept_ids:
        l, i = divmod(idx, I)
        kept[l, i] = True
        for k in range(K):
            if p[l][i][k] > bar:
                masks[k][l, i] = True
    return {"masks": masks, "kept": kept, "tau": tau, "bar": bar, "target": target, "entropy": entropy,
            "p": np.array(p)}


def assert_same(result: LapeResult, slow: dict):
    assert result.filter_value == slow["tau"]
    assert result.activation_bar == slow["bar"]
    assert result.target == slow["target"]
    assert torch.equal(result.kept, torch.from_numpy(slow["kept"]))
    assert len(result.masks) == len(slow["masks"])
    for mine, theirs in zip(result.masks, slow["masks"], strict=True):
        assert mine.dtype == torch.bool
        assert torch.equal(mine, torch.from_numpy(theirs))
    assert torch.equal(result.probs, torch.from_numpy(slow["p"]))
    inf = torch.from_numpy(np.isinf(slow["entropy"]))
    assert torch.equal(torch.isinf(result.entropy), inf)
    assert torch.allclose(result.entropy[~inf], torch.from_numpy(slow["entropy"])[~inf], rtol=0, atol=1e-12)


def random_counts(seed, L=3, I=40, K=4, tiny=()):
    """Skewed random counts; corpora in ``tiny`` are barely active (they get no neuron)."""
    gen = np.random.default_rng(seed)
    n = gen.integers(500, 5000, size=K)
    rate = gen.random((L, I, K)) ** 3
    oz = np.floor(rate * n).astype(np.int64)
    for k in tiny:
        oz[..., k] = gen.integers(0, 2, size=(L, I))
    return oz, n


def run_both(oz, n, top_rate=0.1, filter_rate=0.95, bar_ratio=0.95):
    hp = LapeHyperparameters(top_rate, filter_rate, bar_ratio)
    result = identify(torch.from_numpy(np.ascontiguousarray(oz)), torch.from_numpy(np.asarray(n)), hp)
    slow = slow_identify(oz, n, top_rate, filter_rate, bar_ratio)
    assert_same(result, slow)
    return result


# -- agreement with the slow implementation --------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rates", [(0.1, 0.95, 0.95), (0.01, 0.95, 0.95), (0.3, 0.5, 0.8), (1.0, 0.9, 0.3)])
def test_matches_slow_random(seed, rates):
    oz, n = random_counts(seed)
    run_both(oz, n, *rates)


@pytest.mark.parametrize("shape", [(1, 7, 2), (2, 13, 3), (4, 9, 6)])
def test_matches_slow_other_shapes(shape):
    oz, n = random_counts(11, *shape)
    run_both(oz, n, 0.2, 0.8, 0.7)


def planted(seed, tiny=()):
    """Random counts plus neurons with known properties (3 x 40 x 4).

    The planted neurons are active on (almost) every token of their corpora, so they pass any
    filter the random neurons (rate**3 < 1) set.
    """
    oz, n = random_counts(seed, tiny=tiny)
    oz[0, 5, :] = 0  # never active: raw entropy 0, but filtered -> inf
    oz[1, 7, :] = n  # equally active everywhere: entropy ln 4
    oz[2, 11, :] = 0
    oz[2, 11, 0], oz[2, 11, 2] = n[0], n[2]  # specific to corpora 0 and 2: entropy ln 2
    # a tie group: identical single-corpus vectors (entropy exactly 0), out of flat order
    for l, i in [(2, 3), (0, 30), (1, 0), (0, 31), (2, 39)]:
        oz[l, i, :] = 0
        oz[l, i, 2] = n[2] - 1
    # a second tie group with identical two-corpus vectors (same entropy, bit for bit)
    for l, i in [(1, 20), (0, 20), (2, 20)]:
        oz[l, i, :] = 0
        oz[l, i, 0], oz[l, i, 2] = n[0], n[2] - 2
    return oz, n


TIE0 = [(0, 30), (0, 31), (1, 0), (2, 3), (2, 39)]  # the entropy-0 tie group in flat order


@pytest.mark.parametrize("seed", range(3))
def test_planted_neurons(seed):
    oz, n = planted(seed)
    L, I, _ = oz.shape
    r = run_both(oz, n, top_rate=24 / (L * I), filter_rate=0.9, bar_ratio=0.9)
    assert r.target == 24
    assert math.isinf(r.entropy[0, 5]) and not r.kept[0, 5]
    assert r.entropy[1, 7].item() == pytest.approx(math.log(4), abs=1e-12)
    assert r.entropy[2, 11].item() == pytest.approx(math.log(2), abs=1e-12)
    # the ln 2 neuron is kept and belongs to both corpora it is active on, and only to them
    assert r.kept[2, 11]
    assert [bool(m[2, 11]) for m in r.masks] == [True, False, True, False]
    assert all(r.kept[l, i] and r.masks[2][l, i] for l, i in TIE0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_tie_straddles_the_cut(seed, cut):
    """Of five neurons with identical entropy 0, the ``cut`` lowest flat indices are kept."""
    oz, n = planted(seed)
    L, I, _ = oz.shape
    zero = [(l, i) for l in range(L) for i in range(I) if np.count_nonzero(oz[l, i]) == 1]
    assert set(TIE0) <= set(zero)
    # the tie group must be the whole entropy-0 group for the cut to straddle it
    extra = [x for x in zero if x not in TIE0]
    for l, i in extra:
        oz[l, i, (int(np.argmax(oz[l, i])) + 1) % 4] = 1
    r = run_both(oz, n, top_rate=cut / (L * I), filter_rate=0.9, bar_ratio=0.9)
    assert r.target == cut
    assert [bool(r.kept[l, i]) for l, i in TIE0] == [k < cut for k in range(5)]
    assert int(r.kept.sum()) == cut


def test_tie_in_nonzero_entropy_straddles_the_cut():
    oz, n = planted(0)
    L, I, _ = oz.shape
    slow = slow_identify(oz, n, 1.0, 0.9, 0.9)
    group = [(0, 20), (1, 20), (2, 20)]
    h = slow["entropy"][0, 20]
    assert all(slow["entropy"][l, i] == h for l, i in group) and 0 < h < math.inf
    below = int((slow["entropy"] < h).sum())
    r = run_both(oz, n, top_rate=(below + 2) / (L * I), filter_rate=0.9, bar_ratio=0.9)
    assert [bool(r.kept[l, i]) for l, i in group] == [True, True, False]


@pytest.mark.parametrize("tiny", [(1,), (3,), (1, 3)])
def test_corpus_without_neurons_keeps_its_place(tiny):
    oz, n = planted(4, tiny=tiny)
    for k in tiny:  # the planted neurons active on a tiny corpus would still give it neurons
        oz[..., k] = np.minimum(oz[..., k], 1)
    r = run_both(oz, n, top_rate=0.1, filter_rate=0.9, bar_ratio=0.9)
    assert len(r.masks) == 4
    for k in range(4):
        assert (int(r.masks[k].sum()) == 0) == (k in tiny)


def test_strict_filter_keeps_fewer_than_target_and_never_inf():
    oz, n = random_counts(5)
    r = run_both(oz, n, top_rate=1.0, filter_rate=0.98, bar_ratio=0.5)  # tau: the 470th of 480 values
    assert r.target == 120
    assert 0 < int(r.kept.sum()) < r.target
    assert not bool(torch.isinf(r.entropy[r.kept]).any())
    assert int(r.kept.sum()) == int(torch.isfinite(r.entropy).sum())


def test_filter_rate_one_keeps_nothing():
    oz, n = random_counts(6)
    r = run_both(oz, n, top_rate=0.5, filter_rate=1.0, bar_ratio=0.5)
    assert int(r.kept.sum()) == 0 and len(r.masks) == 4 and all(int(m.sum()) == 0 for m in r.masks)


# -- a hand-checked example --------------------------------------------------------------------
HAND_OZ = [[[10, 0], [9, 9], [0, 0], [2, 8], [0, 6]]]  # 1 layer x 5 neurons x 2 corpora
HAND_N = [10, 10]
# p per neuron: n0 (1, 0)  n1 (.9, .9)  n2 (0, 0)  n3 (.2, .8)  n4 (0, .6)
# H:            0          ln 2 = .693  0 (raw)    .500         0
# sorted flat p (N = 10): 0 0 0 0 .2 .6 .8 .9 .9 1
# filter_rate .5 -> k = 5 -> tau = .2; n2 has no p > .2 -> H = inf; n3 passes by its .8
# activation_bar_ratio .5 -> bar = .2 too (strict: n3's .2 does not count for corpus 0)


@pytest.mark.parametrize(
    "top_rate, kept, corpus0, corpus1",
    [
        # target 3: n0, n4 (H 0, tie -> index order), n3 (.500); n0 -> c0, n4 -> c1, n3 -> c1 only
        (0.6, [1, 0, 0, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 1, 1]),
        # target 1: the H = 0 tie between n0 and n4 goes to n0; corpus 1 (the last) gets nothing
        (0.2, [1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]),
        # target 5: n2 (inf) is never kept, so 4 are; n1 (.9, .9) belongs to both corpora
        (1.0, [1, 1, 0, 1, 1], [1, 1, 0, 0, 0], [0, 1, 0, 1, 1]),
    ],
)
def test_hand_checked(top_rate, kept, corpus0, corpus1):
    oz, n = torch.tensor(HAND_OZ), torch.tensor(HAND_N)
    r = identify(oz, n, LapeHyperparameters(top_rate, 0.5, 0.5))
    assert r.filter_value == 0.2 and r.activation_bar == 0.2
    assert r.target == round(top_rate * 5)
    assert r.kept.tolist() == [[bool(x) for x in kept]]
    assert [m.tolist() for m in r.masks] == [[[bool(x) for x in corpus0]], [[bool(x) for x in corpus1]]]
    assert math.isinf(r.entropy[0, 2]) and r.entropy[0, 0] == 0 and r.entropy[0, 4] == 0
    assert r.entropy[0, 1].item() == pytest.approx(math.log(2))
    assert r.entropy[0, 3].item() == pytest.approx(-(0.2 * math.log(0.2) + 0.8 * math.log(0.8)))
    assert_same(r, slow_identify(HAND_OZ, HAND_N, top_rate, 0.5, 0.5))


def test_large_counts_do_not_overflow():
    n = torch.tensor([3_000_000_000, 5_000_000_000], dtype=torch.int64)
    oz = torch.tensor([[[2_900_000_000, 1], [1, 4_900_000_000], [1_500_000_000, 2_500_000_000]]])
    r = identify(oz, n, LapeHyperparameters(1.0, 0.5, 0.5))
    assert r.probs[0, 0, 0].item() == pytest.approx(2.9 / 3)
    assert [m.tolist() for m in r.masks] == [[[True, False, False]], [[False, True, False]]]


def test_defaults_and_int32_input():
    hp = LapeHyperparameters()
    assert hp.as_dict() == {"top_rate": 0.01, "filter_rate": 0.95, "activation_bar_ratio": 0.95}
    oz, n = random_counts(7, L=2, I=100)
    r = identify(torch.from_numpy(oz).to(torch.int32), torch.from_numpy(n).to(torch.int32))
    assert r.target == 2 and r.hyperparameters == hp
    assert_same(r, slow_identify(oz, n, 0.01, 0.95, 0.95))


# -- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["top_rate", "filter_rate", "activation_bar_ratio"])
@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), float("inf"), "0.5", True, None])
def test_bad_hyperparameters(name, bad):
    with pytest.raises(ValueError, match=name):
        LapeHyperparameters(**{name: bad})


def test_hyperparameter_one_is_allowed():
    hp = LapeHyperparameters(1, 1, 1)
    assert hp.as_dict() == {"top_rate": 1.0, "filter_rate": 1.0, "activation_bar_ratio": 1.0}


GOOD_OZ = torch.tensor([[[1, 2], [3, 0]]])
GOOD_N = torch.tensor([5, 5])


@pytest.mark.parametrize(
    "oz, n, match",
    [
        (torch.tensor([[[1, -2], [3, 0]]]), GOOD_N, "negative"),
        (torch.tensor([[[1, 2], [3, 6]]]), GOOD_N, "corpus 1 exceeds"),
        (GOOD_OZ.double(), GOOD_N, "integer"),
        (GOOD_OZ.bool(), GOOD_N, "integer"),
        (GOOD_OZ, GOOD_N.double(), "integer"),
        (torch.tensor([[[0, 2], [0, 0]]]), torch.tensor([5, 0]), "corpus 1"),
        (torch.tensor([[[1], [3]]]), torch.tensor([5]), "at least 2"),
        (GOOD_OZ[0], GOOD_N, r"\[layers, neurons, corpora\]"),
        (GOOD_OZ, torch.tensor([5, 5, 5]), "one per corpus"),
        (GOOD_OZ.tolist(), GOOD_N, "tensor"),
    ],
)
def test_bad_counts(oz, n, match):
    with pytest.raises(ValueError, match=match):
        identify(oz, n)


def test_good_counts_pass_validation():
    r = identify(GOOD_OZ, GOOD_N, LapeHyperparameters(1.0, 0.5, 0.5))
    assert len(r.masks) == 2


# -- neuron sets ----------------------------------------------------------------------------------
SHAPE = {"name": "toy", "model_type": "llama", "num_layers": 3, "widths": {"mlp_gate": 40, "mlp_up": 40, "attn_q": 16}}
NAMES = ["China", "Iran", "Mexico", "UK"]


def test_sets_from_result(tmp_path):
    oz, n = planted(0)
    hp = LapeHyperparameters(0.1, 0.9, 0.9)
    r = identify(torch.from_numpy(oz), torch.from_numpy(n), hp)
    sets = sets_from_result(r, NAMES, SHAPE, provenance={"counts_file": "x.pt", "kept": -1})
    assert [s.meta["culture"] for s in sets] == NAMES
    for s, mask in zip(sets, r.masks, strict=True):
        assert s.meta["method"] == "lape" and s.meta["selection"] == "lape"
        assert s.meta["hyperparameters"] == hp.as_dict()
        prov = s.meta["provenance"]
        assert prov == {"counts_file": "x.pt", "filter_value": r.filter_value, "activation_bar": r.activation_bar,
                        "kept": int(r.kept.sum()), "target": r.target}
        assert s.meta["model"] == SHAPE and s.meta["model"] is not SHAPE
        assert list(s.indices) == ["mlp_gate"]
        assert len(s.indices["mlp_gate"]) == 3
        for layer, idx in enumerate(s.indices["mlp_gate"]):
            assert torch.equal(idx, mask[layer].nonzero().flatten())
        assert len(s) == int(mask.sum())
        s.check_model(SHAPE)
    saved = sets[0].save(tmp_path / "China.json")
    assert json.loads(saved.read_text())["meta"]["provenance"]["target"] == r.target


def test_sets_from_result_keeps_empty_last_culture():
    oz, n = planted(4, tiny=(3,))
    oz[..., 3] = np.minimum(oz[..., 3], 1)
    r = identify(torch.from_numpy(oz), torch.from_numpy(n), LapeHyperparameters(0.1, 0.9, 0.9))
    sets = sets_from_result(r, NAMES, SHAPE)
    assert [s.meta["culture"] for s in sets] == NAMES
    assert sets[3].is_empty and not sets[0].is_empty


@pytest.mark.parametrize(
    "names, shape, match",
    [
        (NAMES, {**SHAPE, "num_layers": 4}, "another model"),
        (NAMES, {**SHAPE, "widths": {"mlp_gate": 41}}, "another model"),
        (NAMES, {**SHAPE, "widths": {"mlp_up": 40}}, "another model"),
        (["China", "Iran", "China", "UK"], SHAPE, "distinct"),
        (NAMES[:3], SHAPE, "one name per corpus"),
        (["China", "Iran", "", "UK"], SHAPE, "non-empty"),
    ],
)
def test_sets_from_result_refuses(names, shape, match):
    oz, n = random_counts(0)
    r = identify(torch.from_numpy(oz), torch.from_numpy(n), LapeHyperparameters(0.1))
    with pytest.raises(ValueError, match=match):
        sets_from_result(r, names, shape)


def test_sets_from_result_refuses_other_hyperparameters():
    oz, n = random_counts(0)
    r = identify(torch.from_numpy(oz), torch.from_numpy(n), LapeHyperparameters(0.1))
    assert sets_from_result(r, NAMES, SHAPE, hp=LapeHyperparameters(0.1))[0].meta["hyperparameters"]["top_rate"] == 0.1
    with pytest.raises(ValueError, match="differs"):
        sets_from_result(r, NAMES, SHAPE, hp=LapeHyperparameters())
