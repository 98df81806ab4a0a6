"""The report's transfer section (issue 27) on fake lm-eval output folders: per held-out culture the
drop of the set selected without it, its empirical p among its random sets, the in-sample drop of the
full set on the same items and the culture's own culture set; the pooled transfer effect with its
interval and verdict; the figure.  Outcomes are chosen by hand, the numbers worked out in comments."""

import json
from pathlib import Path

import numpy as np
import pytest

from culnig_lm_eval.neuron_set import NeuronSet, new_meta
from culnig_lm_eval.report import stats
from culnig_lm_eval.report.transfer import PooledTransfer, transfer_verdict
from test_report_build import MODEL, _row, _section, write_run

BASE = {"pretrained": "tiny-model"}
UNMASKED = {"blend_cloze_test_korea": "1111111100", "blend_cloze_test_uk": "1111110000"}  # 8/10, 6/10
FULL = {"blend_cloze_test_korea": "1111110000", "blend_cloze_test_uk": "1111100000"}  # in-sample drops 0.2, 0.1
HELD_OUT = {"korea": "1111111000", "uk": "1111000000"}  # held-out drops 0.1 and 0.2
RANDOM = {  # per seed, the held-out set's random sets on its culture's items
    "korea": ["1111111100", "1111111000", "1111111110", "1111111100"],  # drops 0, 0.1, -0.1, 0
    "uk": ["1111110000", "1111100000", "1111110000", "1111111000"],  # drops 0, 0.1, 0, -0.1
}
# the main report: korea's culture set drops 0.4 on blend_korea, within its 4 random sets (p 0.4)
MAIN_UNMASKED = {"blend_korea": "1111111100", "blend_uk": "1111110000"}
MAIN_KOREA = {"blend_korea": "1111000000", "blend_uk": "1111110000"}
MAIN_KOREA_RANDOM = [("1111111000", "1111110000"), ("1111111100", "1111100000"), ("1111110000", "1111110000"),
                     ("1111000000", "1111100000")]
PPL = {"unmasked": [-10.0, -20.0, -30.0, -40.0], "general": [-10.5, -20.5, -30.5, -40.5]}  # ratio exp(2/30)


def _set(path: Path, per_layer, **meta) -> NeuronSet:
    NeuronSet({"mlp_gate": per_layer}, new_meta(MODEL, "culnig", selection="culnig-paper", **meta)).save(path)
    return NeuronSet.load(path)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    sets, main, transfer = root / "sets", root / "eval", root / "transfer"
    (sets / "random").mkdir(parents=True)
    full = _set(sets / "general.pt", [[0, 1], [2], [], [], [3], []])
    korea = _set(sets / "korea.pt", [[1], [], [], [], [], [2, 3]], culture="korea")
    # main evaluation: per-culture tasks blend_korea / blend_uk and general perplexity
    write_run(main / "unmasked", BASE, MAIN_UNMASKED, PPL["unmasked"])
    write_run(main / "general", {**BASE, "neurons": str(full.source)}, MAIN_UNMASKED, PPL["general"])
    write_run(main / "korea", {**BASE, "neurons": str(korea.source)}, MAIN_KOREA)
    for seed, (bk, bu) in enumerate(MAIN_KOREA_RANDOM):
        path = korea.random_like(seed).save(sets / "random" / f"korea-random{seed}.pt")
        write_run(main / "random", {**BASE, "neurons": str(path)}, {"blend_korea": bk, "blend_uk": bu})
    # leave-one-culture-out evaluations: unmasked and the full set on both cultures' test tasks ...
    write_run(transfer / "unmasked", BASE, UNMASKED)
    write_run(transfer / "general", {**BASE, "neurons": str(full.source)}, FULL)
    # ... each held-out set and its random sets on its own culture's task only
    for culture, per_layer in (("korea", [[0], [2], [], [], [3], []]), ("uk", [[0, 1], [2], [], [], [], [5]])):
        task = f"blend_cloze_test_{culture}"
        folder = sets / "loco" / culture
        folder.mkdir(parents=True)
        held = _set(folder / "general.pt", per_layer, held_out=culture)
        write_run(transfer / "loco" / culture, {**BASE, "neurons": str(held.source)}, {task: HELD_OUT[culture]})
        for seed, bits in enumerate(RANDOM[culture]):
            drawn = held.random_like(seed)
            drawn.meta["provenance"]["size_matched_to"]["held_out"] = culture
            path = drawn.save(folder / f"random{seed}.pt")
            write_run(transfer / "loco" / culture / "random", {**BASE, "neurons": str(path)}, {task: bits})
    from culnig_lm_eval.report import build_report

    path = build_report([main], root / "report", transfer_dirs=[transfer])
    return path, path.read_text()


def test_per_culture_transfer_rows_by_hand(report):
    _, text = report
    sec = _section(text, "## Transfer")
    # korea: unmasked 0.8; in-sample drop 0.2; held-out drop 0.1; random drops 0, 0.1, -0.1, 0 -> mean 0,
    # 5th pct -0.1 + 0.15 * 0.1 = -0.085, 95th 0.085; p = (1 + 1 tie) / 5 = 0.4; held-out set 3 neurons,
    # the full set 4, overlap 3/4; korea's own culture set: drop 0.4, p 0.4 among 4, 10 items (main report)
    row = _row(sec, "korea")
    assert row[1:5] == ["10", "0.8000", "+0.2000", "+0.1000"]
    assert row[6:] == ["+0.0000", "-0.0850", "+0.0850", "0.400 (n=4)", "3 / 4 (Jaccard 0.750)",
                       "+0.4000, p 0.400 (n=4), n=10"]
    # uk: unmasked 0.6; in-sample 0.1; held-out 0.2; random drops 0, 0.1, 0, -0.1 -> p = 1/5; no culture set
    row = _row(sec, "uk")
    assert row[1:5] == ["10", "0.6000", "+0.1000", "+0.2000"]
    assert row[9] == "0.200 (n=4)" and row[10].startswith("4 / 4") and row[11] == "-"


def test_pooled_transfer_effect_and_verdict(report):
    _, text = report
    sec = _section(text, "## Transfer")
    # mean held-out drop (0.1 + 0.2) / 2 = 0.15; in-sample (0.2 + 0.1) / 2 = 0.15; the random means seed by
    # seed: 0, 0.1, -0.05, -0.05 -> mean 0, p = (1 + 0) / 5 = 0.2; the full set's perplexity ratio
    # exp(2/30) = 1.0689 from the main report
    row = _row(sec, "`culnig-paper`")
    assert row[1:4] == ["2", "20", "+0.1500"]
    assert row[5:11] == ["+0.1500", "+0.0000", "-0.0500", "+0.0850", "0.200 (n=4)", "1.0689 (general_ppl)"]
    assert row[11] == ("does not transfer: mean held-out drop 0.1500 is within its random sets' (4) "
                       "(empirical p 0.200 >= 0.05)")
    low, high = (float(x) for x in row[4].strip("[]").split(", "))
    assert low <= 0.15 <= high


def test_json_rows_and_figure(report):
    path, text = report
    rows = json.loads((path.parent / "report.json").read_text())["rows"]
    per_culture = {r["culture"]: r for r in rows if r["section"] == "transfer"}
    assert per_culture["korea"]["random_drops"] == pytest.approx([0.0, 0.1, -0.1, 0.0])
    assert per_culture["uk"]["empirical_p"] == pytest.approx(0.2)
    (pooled,) = [r for r in rows if r["section"] == "transfer_pooled"]
    assert pooled["cultures"] == ["korea", "uk"] and pooled["random_drops"] == pytest.approx([0, 0.1, -0.05, -0.05])
    assert "](figures/tiny-model_transfer.png)" in text
    assert (path.parent / "figures" / "tiny-model_transfer.png").read_bytes()[:4] == b"\x89PNG"
    # the per-culture test tasks stay out of the main report's tables
    assert "blend_cloze_test_korea" not in _section(text, "## Runs")


def test_a_transfer_needs_the_random_sets_and_the_general_cost():
    ok = PooledTransfer(selection="s", cultures=["a", "b"], held_out_drop=0.05, n_random=20, empirical_p=1 / 21,
                        ppl_ratio=1.05)
    assert transfer_verdict(ok, 0.05, 1.1).startswith("transfers: mean held-out drop 0.0500 over 2 cultures")
    costly = PooledTransfer(**{**vars(ok), "ppl_ratio": 6.0})
    assert "general perplexity ratio 6.0000 > 1.1" in transfer_verdict(costly, 0.05, 1.1)
    unmeasured = PooledTransfer(**{**vars(ok), "ppl_ratio": None})
    assert transfer_verdict(unmeasured, 0.05, 1.1).startswith("does not transfer: the full set's general")


def test_stratified_interval_of_one_group_is_the_paired_interval():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 2, 40).astype(float), rng.integers(0, 2, 40).astype(float)
    assert stats.stratified_bootstrap_ci([(a, b)], 500, 3) == stats.paired_bootstrap_ci(a, b, 500, 3)
    # two groups weigh the same whatever their sizes: shifting the small one moves the mean by half the shift
    low, high = stats.stratified_bootstrap_ci([(a, b), (np.ones(5), np.zeros(5))], 500, 3)
    base = stats.paired_bootstrap_ci(a, b, 500, 3)
    assert low == pytest.approx((base.low + 1) / 2) and high == pytest.approx((base.high + 1) / 2)
    assert all(np.isnan(stats.stratified_bootstrap_ci([(a, b), ([], [])])))


def test_culnig_report_takes_the_transfer_folder(report, tmp_path):
    from culnig_lm_eval.cli.report import main

    root = report[0].parent.parent
    out = tmp_path / "cli-report"
    assert main([str(root / "eval"), "--out", str(out), "--transfer", str(root / "transfer")]) == 0
    assert "## Transfer: culture-general sets" in (out / "report.md").read_text()
    assert main([str(root / "eval"), "--out", str(tmp_path / "r2"), "--transfer", str(root / "nope")]) == 2
