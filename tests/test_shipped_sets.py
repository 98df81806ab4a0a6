"""The sets in neuron_sets/ load, are non-empty, and come from real BLEnD (not the fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from culnig_lm_eval import NeuronSet
from culnig_lm_eval._startup import task_dir

SETS = Path(__file__).resolve().parent.parent / "neuron_sets"
CULTURES = ("china", "indonesia", "iran", "korea", "mexico", "spain", "uk", "usa")
FOLDERS = sorted(p.parent for p in SETS.rglob("selection.json"))


def fixture_items() -> int:
    import csv

    with open(task_dir() / "blend" / "sample" / "mc_questions.csv", encoding="utf-8") as fh:
        return sum(1 for _ in csv.DictReader(fh))


def test_there_are_shipped_sets():
    assert FOLDERS, "no neuron_sets/**/selection.json"


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: str(p.relative_to(SETS)))
def test_a_shipped_folder_is_complete_and_from_real_data(folder):
    summary = json.loads((folder / "selection.json").read_text())
    assert set(CULTURES) | {"general"} <= set(summary["files"])
    on_disk = {p.name for p in folder.glob("*.pt")}
    assert set(summary["files"].values()) == on_disk  # nothing stale, nothing missing
    for label, name in summary["files"].items():
        s = NeuronSet.load(folder / name)
        if label not in CULTURES:  # a culture set may be empty under one rule (neuron_sets/README.md says which)
            assert len(s) > 0, f"{folder / name} masks nothing"
        assert len(s) == summary["summary"][label]["neurons"]
        if s.meta["method"] == "culnig":
            samples = s.meta["provenance"]["task"]["samples"]
            assert set(CULTURES) <= set(samples)
            # more neuron-finding samples than the whole shipped fixture holds: real data
            assert sum(samples.values()) > fixture_items()


@pytest.mark.parametrize("model", sorted({f.relative_to(SETS).parts[0] for f in FOLDERS}))
def test_every_culture_has_a_non_empty_shipped_set(model):
    """Where the paper's rule leaves a culture empty, another shipped selection covers it."""
    for culture in CULTURES:
        sizes = {str(p.parent.relative_to(SETS)): len(NeuronSet.load(p)) for p in (SETS / model).rglob(f"{culture}.pt")}
        assert any(sizes.values()), f"{model}: every shipped {culture}.pt is empty: {sizes}"


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: str(p.relative_to(SETS)))
def test_a_shipped_set_records_its_code_version_and_countryrc_2(folder):
    """Rebuilt with today's code: each set names the commit that made it, and was selected with
    CountryRC as published (task version 2, 100 samples per culture)."""
    for path in sorted(folder.glob("*.pt")):
        meta = NeuronSet.load(path).meta
        assert meta["code_version"]["package"] and len(meta["code_version"]["commit"] or "") == 40, path
        if meta["method"] == "culnig":
            crc = meta["provenance"]["crc"]
            assert crc["task_versions"] == {"crc": 2.0}, path
            assert set(crc["samples"].values()) == {100}, path
