"""Issue 25: the defaults that make ``culnig-paper`` and LAPE's recording the published code --
attention scored, CountryRC unclamped, the uniform random draw evaluated by the paper-model
configs, LAPE's rows and token budgets -- and the names a selection gets where they are not.
(The selection itself is checked against the published scripts in test_selection_reference.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from culnig_lm_eval.experiment.config import DEFAULT_CONFIG, ConfigError, ExperimentConfig
from culnig_lm_eval.scoring.attribution import ScoreTable

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "culnig_lm_eval" / "experiments"
PAPER_MODEL_CONFIGS = ["falcon3-10b-instruct-blend", "gemma-3-12b-it-blend", "gemma-3-27b-it-blend",
                       "llama-3.1-8b-instruct-blend", "phi-4-blend", "qwen3-14b-blend"]
ATTENTION = ("attn_q", "attn_k", "attn_v")


# -- scoring defaults ---------------------------------------------------------------------------
def run_settings(*flags):
    from culnig_lm_eval.cli.score import build_parser, settings_from_args

    return settings_from_args(build_parser().parse_args(["run", "--tasks", "t", "--out", "o", *flags]))


def test_culnig_score_run_scores_attention_and_leaves_crc_unclamped_by_default():
    default = run_settings()
    assert default.kinds == ("mlp_gate", *ATTENTION) and default.clamp_crc is False
    assert run_settings("--attention").kinds == default.kinds  # the old spelling still works
    assert run_settings("--no-attention").kinds == ("mlp_gate",)
    assert run_settings("--no-attention", "--up-proj").kinds == ("mlp_gate", "mlp_up")
    assert run_settings("--clamp-crc").clamp_crc is True


def test_the_default_experiment_scores_attention_and_paper_models_evaluate_both_random_draws():
    assert set(ExperimentConfig.from_yaml(DEFAULT_CONFIG).scoring.kinds) == {"mlp_gate", *ATTENTION}
    for stem in PAPER_MODEL_CONFIGS:
        config = ExperimentConfig.from_yaml(EXPERIMENTS / f"{stem}.yaml")
        assert set(config.scoring.kinds) == {"mlp_gate", *ATTENTION}, stem
        assert not config.scoring.clamp_crc, stem
        # the published baseline (uniform over gate + q/k/v) beside ours (per layer and kind)
        assert set(config.evaluate.random_draws) == {"layer-matched", "uniform"}, stem
        assert config.random_seeds == list(range(10)), stem  # decide_random_neuron.py: seeds 0..9


def test_clamp_crc_is_an_experiment_setting_of_its_own():
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["scoring"]["clamp_crc"] = True
    assert ExperimentConfig.from_mapping(raw).scoring.clamp_crc is True
    raw["scoring"]["clamp_crc"] = "no"
    with pytest.raises(ConfigError, match="clamp_crc"):
        ExperimentConfig.from_mapping(raw)


# -- names -----------------------------------------------------------------------------------------
SHAPE = {"model_type": "llama", "num_layers": 2, "widths": {"mlp_gate": 50, "attn_q": 20, "attn_k": 10, "attn_v": 10}}


def toy_table(kinds, role, **meta):
    gen = torch.Generator().manual_seed(len(role))
    scores = {k: torch.randn(2, SHAPE["widths"][k], 3, generator=gen) for k in kinds}
    return ScoreTable(["korea", "spain", "uk"], scores, torch.tensor([6, 6, 6]),
                      {"model": SHAPE, "task": role, "path": role, **meta})


@pytest.mark.parametrize("kinds, crc_meta, name", [
    (("mlp_gate", *ATTENTION), {"clamped_at_zero": False}, "culnig-paper"),
    (("mlp_gate",), {"clamped_at_zero": False}, "culnig-paper-gate-only"),
    (("mlp_gate", *ATTENTION), {"clamped_at_zero": True}, "culnig-paper+crc-clamped"),
    # a CRC score file of an earlier version (settings, no record): its samples were clamped
    (("mlp_gate", *ATTENTION), {"settings": {"kinds": ["mlp_gate"]}}, "culnig-paper+crc-clamped"),
    (("mlp_gate",), {"clamped_at_zero": True}, "culnig-paper-gate-only+crc-clamped"),
])
def test_a_selection_is_named_culnig_paper_only_where_the_tables_allow_it(tmp_path, caplog, kinds, crc_meta, name):
    from culnig_lm_eval.selection.rules import Thresholds
    from culnig_lm_eval.selection.save import select_and_save

    tables = {"task": toy_table(kinds, "task"), "control": toy_table(kinds, "control"),
              "crc": toy_table(kinds, "crc", **crc_meta)}
    with caplog.at_level("WARNING", logger="culnig-selection"):
        written = select_and_save(tables, Thresholds(top_mlp=5.0, top_attention=5.0, top_specific=5.0), tmp_path / "s")
    summary = json.loads((tmp_path / "s" / "selection.json").read_text())
    assert summary["selection"] == name
    assert all(summary["summary"][label]["selection"] == name for label in written if not label.startswith("random"))
    said = [r.getMessage() for r in caplog.records if "not the published rule" in r.getMessage()]
    assert len(said) == len(summary.get("differs_from_published", [])) == ("gate-only" in name) + ("clamped" in name)


# -- LAPE recording defaults ---------------------------------------------------------------------
def fake_model(max_positions):
    return SimpleNamespace(config=SimpleNamespace(model_type="llama", max_position_embeddings=max_positions))


def test_lape_records_the_published_rows_and_token_budgets_by_default():
    from culnig_lm_eval.lape.pipeline import RecordSettings, row_length_for

    default = RecordSettings()
    assert default.row_length is None and default.max_tokens == 10_000_000
    assert row_length_for(default, fake_model(8192)) == 4096  # the published vLLM recorders' rows
    assert row_length_for(default, fake_model(2048)) == 2048  # never past the model's maximum length
    assert row_length_for(RecordSettings(row_length=128), fake_model(8192)) == 128
    with pytest.raises(ValueError, match="--row-length 1"):
        RecordSettings(row_length=1)


def test_culnig_lape_defaults_are_the_published_budgets_and_the_readme_demo_names_its_smaller_ones():
    from culnig_lm_eval.cli.lape import build_parser

    parser = build_parser()
    record = parser.parse_args(["record", "--model_args", "m", "--corpora", "c", "--out", "o"])
    assert record.row_length is None and record.max_tokens == 10_000_000
    evaluate = parser.parse_args(["evaluate", "--model_args", "m", "--sets-dir", "s", "--corpora", "c", "--out", "o"])
    assert evaluate.max_tokens == 100_000
    demo = parser.parse_args(["demo", "--blend-annotations", "a", "--model_args", "m", "--out", "o"])
    assert (demo.row_length, demo.max_tokens, demo.eval_max_tokens) == (None, 10_000_000, 100_000)
    # the measured demo (docs/lape.md, its findings page) names the smaller budgets it ran with
    docs = "\n".join(page.read_text() for page in [REPO / "README.md", REPO / "docs" / "lape.md",
                                                   *sorted((REPO / "docs" / "findings").glob("*.md"))])
    demo_lines = [line for line in docs.splitlines() if line.startswith("culnig-lape demo")]
    assert demo_lines and all(re.search(r"--row-length \d+", line) and "--eval-max-tokens" in line
                              for line in demo_lines)


def test_the_differences_are_listed_in_one_place_and_the_readme_points_there():
    from culnig_lm_eval.selection.rules import PAPER_GATE_ONLY

    listed = (REPO / "docs" / "differences.md").read_text()
    for name in (PAPER_GATE_ONLY, "+up-proj", "+crc-clamped", "--clamp-crc", "--no-attention"):
        assert name in listed, name
    # the remaining differences, each with its effect or an honest "not measured"
    for topic in ("ignores padding", "min_samples", "missing from the control", "unique ids", "torch's generator",
                  "int64", "BOS", "partial row", "hash of the question id", "** 0.5"):
        assert topic in listed, topic
    assert listed.count("*Effect:*") >= 15 and "not measured" in listed
    readme = (REPO / "README.md").read_text()
    assert "CRC samples are clamped at 0 per sample, as in the paper" not in readme
    assert "docs/differences.md" in readme
    assert "docs/differences.md" in (REPO / "docs" / "method.md").read_text()
