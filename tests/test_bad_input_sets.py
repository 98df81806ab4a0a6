"""Bad input to neuron-set files, the importers and `culnig-sets`: one clear line, exit 2, nothing
half-written -- including a full disk, an unwritable folder and a kill in the middle of a write."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from culnig_lm_eval import importers
from culnig_lm_eval import neuron_set as ns
from culnig_lm_eval.cli.sets import main
from culnig_lm_eval.neuron_set import (
    FORMAT,
    NeuronSet,
    NeuronSetError,
    load_sets,
    new_meta,
)

REPO = Path(__file__).resolve().parent.parent
SHAPE = {"name": "tiny", "model_type": "llama", "num_layers": 3, "widths": {"mlp_gate": 64, "mlp_up": 64}}
SHAPE_ARGS = ["--num-layers", "3", "--widths", "mlp_gate=64,mlp_up=64"]


def write_set(path, indices=None, shape=SHAPE, **meta) -> Path:
    indices = indices if indices is not None else {"mlp_gate": [[1, 2], [5], []]}
    return NeuronSet(indices, new_meta(shape, "test", **meta)).save(path)


def fails(argv, capsys, *phrases) -> str:
    """``main(argv)`` exits 2 with exactly one ``culnig-sets: error:`` line holding every phrase."""
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("culnig-sets: error:") and "\n" not in err, err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in err, err
    return err


def visible_and_hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def pairs(s: NeuronSet) -> set:
    return {(k, layer, int(i)) for k, v in s.indices.items() for layer, t in enumerate(v) for i in t}


# -- LAPE: masks stored as integers are masks, not the indices {0, 1} ------------------------------------
def int_masks(rows: list[list[int]], width=64) -> list[torch.Tensor]:
    out = []
    for chosen in rows:
        mask = torch.zeros(width, dtype=torch.long)
        mask[chosen] = 1
        out.append(mask)
    return out


def test_lape_int64_masks_are_read_as_masks(tmp_path, capsys):
    chosen = [[[3, 40], [], [0, 63]], [[7], [8, 9], [10]]]
    torch.save([int_masks(c) for c in chosen], tmp_path / "mask.pt")
    assert main(["convert", str(tmp_path / "mask.pt"), *SHAPE_ARGS, "--cultures", "de,jp",
                 "--out", str(tmp_path / "s_{culture}.pt")]) == 0
    for c, culture in enumerate(("de", "jp")):
        s = NeuronSet.load(tmp_path / f"s_{culture}.pt")
        assert pairs(s) == {("mlp_gate", layer, i) for layer, idx in enumerate(chosen[c]) for i in idx}
        assert s.meta["provenance"]["layout"] == "mask" and s.meta["provenance"]["layout_chosen_by"] == "detected"
    assert "(read as mask)" in capsys.readouterr().out


def test_lape_bool_masks_and_stacked_tensors(tmp_path):
    masks = torch.zeros(2, 3, 64, dtype=torch.bool)  # [cultures, layers, width]
    masks[0, 1, 5] = masks[1, 2, 6] = masks[1, 2, 60] = True
    torch.save(masks, tmp_path / "stacked.pt")
    a, b = importers.import_lape(tmp_path / "stacked.pt", SHAPE, ["a", "b"])
    assert pairs(a) == {("mlp_gate", 1, 5)} and pairs(b) == {("mlp_gate", 2, 6), ("mlp_gate", 2, 60)}
    torch.save([list(masks[0]), masks[1]], tmp_path / "list_of_2d.pt")  # a [layers, width] tensor per culture
    a2, b2 = importers.import_lape(tmp_path / "list_of_2d.pt", SHAPE, ["a", "b"])
    assert pairs(a2) == pairs(a) and pairs(b2) == pairs(b)


def test_lape_index_lists_are_still_index_lists(tmp_path):
    torch.save([[torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([], dtype=torch.long)]], tmp_path / "idx.pt")
    [s] = importers.import_lape(tmp_path / "idx.pt", SHAPE, ["x"])
    assert pairs(s) == {("mlp_gate", 0, 0), ("mlp_gate", 0, 1), ("mlp_gate", 1, 1)}
    assert s.meta["provenance"]["layout"] == "indices"


def test_lape_ambiguous_layout_is_refused_unless_forced(tmp_path, capsys):
    mixed = [[int_masks([[3]])[0], torch.tensor([4, 5]), torch.tensor([6])]]  # one mask row, two index lists
    torch.save(mixed, tmp_path / "mixed.pt")
    out = ["--out", str(tmp_path / "o.pt")]
    fails(["convert", str(tmp_path / "mixed.pt"), *SHAPE_ARGS, "--cultures", "x", *out], capsys,
          "mixed.pt", "cannot tell whether it holds 0/1 masks or neuron indices", "layer 0", "--lape-layout")
    fails(["convert", str(tmp_path / "mixed.pt"), *SHAPE_ARGS, "--cultures", "x", "--lape-layout", "mask", *out],
          capsys, "layer 1", "--lape-layout mask needs 64 values")
    # forcing 'indices' reads the mask row as the index list it also is (64 entries of 0/1 -> neurons 0 and 1)
    assert main(["convert", str(tmp_path / "mixed.pt"), *SHAPE_ARGS, "--cultures", "x", "--lape-layout", "indices",
                 *out]) == 0
    s = NeuronSet.load(tmp_path / "o.pt")
    assert s.per_layer()["mlp_gate"] == [2, 2, 1]
    assert s.meta["provenance"]["layout"] == "indices" and s.meta["provenance"]["layout_chosen_by"] == "--lape-layout"
    # a width of 2: a 0/1 row of length 2 is a mask and an index list alike
    torch.save([[torch.tensor([0, 1])] * 3], tmp_path / "narrow.pt")
    fails(["convert", str(tmp_path / "narrow.pt"), "--num-layers", "3", "--widths", "mlp_gate=2", "--cultures", "x",
           "--out", str(tmp_path / "n.pt")], capsys, "width of 2 or less", "--lape-layout")
    assert not (tmp_path / "n.pt").exists()


def test_lape_booleans_are_never_indices(tmp_path, capsys):
    torch.save([[torch.tensor([True, False]), torch.tensor([1]), torch.tensor([2])]], tmp_path / "b.pt")
    fails(["convert", str(tmp_path / "b.pt"), *SHAPE_ARGS, "--cultures", "x", "--out", str(tmp_path / "o.pt")], capsys,
          "b.pt", "holds booleans")
    fails(["convert", str(tmp_path / "b.pt"), *SHAPE_ARGS, "--cultures", "x", "--lape-layout", "indices",
           "--out", str(tmp_path / "o.pt")], capsys, "boolean tensors", "not neuron indices")
    assert not (tmp_path / "o.pt").exists()


# -- CULNIG JSON: booleans, NaN and huge numbers are not indices -------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("neuron_idx", True), ("layer_idx", False), ("neuron_idx", math.nan), ("neuron_idx", math.inf),
    ("neuron_idx", 2**70), ("layer_idx", [0]),
])
def test_culnig_json_non_integer_indices(tmp_path, capsys, field, value):
    record = {"module_name": "mlp.gate_proj", "layer_idx": 0, "neuron_idx": 3, field: value}
    (tmp_path / "c.json").write_text(json.dumps({"top_neurons": [record]}))  # json writes NaN/Infinity
    fails(["convert", str(tmp_path / "c.json"), *SHAPE_ARGS, "--out", str(tmp_path / "o.pt")], capsys,
          "c.json", "must be integers", field)
    with pytest.raises(NeuronSetError, match="must be integers"):
        importers.import_culnig_json(tmp_path / "c.json", SHAPE)
    assert visible_and_hidden(tmp_path) == ["c.json"]


def test_importers_raise_neuron_set_errors_only(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "lape.pt").write_bytes(b"")
    torch.save([[torch.tensor([1])]], tmp_path / "short.pt")
    calls = [
        lambda: importers.import_culnig_json(tmp_path / "list.json", SHAPE),
        lambda: importers.import_culnig_json(tmp_path / "missing.json", SHAPE),
        lambda: importers.import_lape(tmp_path / "lape.pt", SHAPE, ["a"]),
        lambda: importers.import_lape(tmp_path / "short.pt", SHAPE, ["a"]),
        lambda: importers.import_lape(tmp_path / "short.pt", SHAPE, ["a", "b"]),
        lambda: importers.import_lape(tmp_path / "short.pt", SHAPE, ["a+b"]),
        lambda: importers.import_lape(tmp_path / "short.pt", SHAPE, ["a"], layout="rows"),
        lambda: importers.shape_of_model(str(tmp_path / "no-model")),
    ]
    for call in calls:
        with pytest.raises(NeuronSetError):
            call()


# -- seeds ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("option,value,phrase", [
    ("--seeds", "-1", "out of range"),
    ("--seeds", str(2**63), "out of range"),
    ("--seeds", "1.5", "integers"),
    ("--seeds", "seven", "integers"),
    ("--seeds", "0,-3", "out of range"),
    ("--seeds", f"0,{2**64}", "out of range"),
    ("--seeds", "0,2.0", "integers"),
])
def test_bad_seeds_are_one_line(tmp_path, capsys, option, value, phrase):
    base = write_set(tmp_path / "base.pt")
    fails(["random", str(base), f"{option}={value}", "--out", str(tmp_path / "r.pt")], capsys, option, phrase)
    assert visible_and_hidden(tmp_path) == ["base.pt"]


def test_largest_seed_works_and_random_like_checks_its_seed(tmp_path):
    base = write_set(tmp_path / "base.pt")
    assert main(["random", str(base), "--seeds", str(2**63 - 1), "--out", str(tmp_path / "r.pt")]) == 0
    assert NeuronSet.load(tmp_path / "r.pt").meta["hyperparameters"] == {"seed": 2**63 - 1}
    s = NeuronSet.load(base)
    for seed in (-1, 2**63, 1.0, True, "3"):
        with pytest.raises(ValueError, match="seed"):
            s.random_like(seed)


# -- writing: unwritable folder, full disk ------------------------------------------------------------------
def test_unwritable_output_folder(tmp_path, capsys, monkeypatch):
    base = write_set(tmp_path / "base.pt")
    (tmp_path / "a-file").write_text("x")
    # a parent that is a file (works as root, unlike chmod)
    fails(["random", str(base), "--out", str(tmp_path / "a-file" / "r.pt")], capsys, "a-file")
    # a folder we may not write to: mkstemp is refused by the OS
    locked = tmp_path / "locked"
    locked.mkdir()
    old = write_set(locked / "r.pt", {"mlp_gate": [[9], [], []]})
    before = old.read_bytes()

    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", str(Path(dir) / ".r.pt.XYZ.tmp"))

    monkeypatch.setattr(ns.tempfile, "mkstemp", refuse)
    err = fails(["random", str(base), "--out", str(locked / "r.pt")], capsys, "Permission denied")
    assert f"{locked / 'r.pt'}: Permission denied" in err  # the file the user named, not a temp name
    assert old.read_bytes() == before and visible_and_hidden(locked) == ["r.pt"]


@pytest.mark.parametrize("suffix", [".pt", ".json"])
def test_disk_full_while_saving(tmp_path, capsys, monkeypatch, suffix):
    base = write_set(tmp_path / "base.pt")
    out = tmp_path / f"r{suffix}"
    old = write_set(out, {"mlp_gate": [[9], [], []]})
    before = old.read_bytes()

    def full(*args, **kwargs):
        target = args[1] if len(args) > 1 else args[0]
        Path(target if isinstance(target, (str, Path)) else target.name).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(Path, "write_text", lambda self, text, *a, **k: full(self))
    err = fails(["random", str(base), "--seeds", "1,2", "--out", str(tmp_path / "r{seed}" ) + suffix], capsys,
                "No space left on device", "free some space")
    assert "r1" + suffix in err
    err = fails(["random", str(base), "--out", str(out)], capsys, f"{out}: No space left on device")
    assert out.read_bytes() == before
    assert visible_and_hidden(tmp_path) == sorted(["base.pt", out.name])
    with pytest.raises(OSError) as raised:
        NeuronSet.load(base).save(out)
    assert raised.value.filename == str(out) and out.read_bytes() == before


# -- '+' joins set files ----------------------------------------------------------------------------------
def test_plus_in_a_set_file_name(tmp_path, capsys):
    base = write_set(tmp_path / "base.pt")
    fails(["random", str(base), "--out", str(tmp_path / "a+b.pt")], capsys, "a+b.pt", "'+' joins several set files")
    fails(["union", str(base), str(base), "--out", str(tmp_path / "u+.json")], capsys, "'+' joins")
    with pytest.raises(NeuronSetError, match=r"'\+' joins several set files"):
        NeuronSet.load(base).save(tmp_path / "x+y.pt")
    with pytest.raises(NeuronSetError, match=r"'\+' joins"):
        ns.save_many([(NeuronSet.load(base), tmp_path / "ok.pt"), (NeuronSet.load(base), tmp_path / "x+y.pt")])
    assert visible_and_hidden(tmp_path) == ["base.pt"]
    # a file that was named with '+' some other way: say so instead of "no such file"
    os.link(base, tmp_path / "x+y.pt")
    with pytest.raises(NeuronSetError) as err:
        load_sets(str(tmp_path / "x+y.pt"))
    assert "'+' joins several set files" in str(err.value) and "rename x+y.pt to a name without" in str(err.value)
    # two real files still join
    other = write_set(tmp_path / "y.pt")
    assert len(load_sets(f"{base}+{other}")) == 2


# -- pickled files: one plain line on every route, never 'weights_only=False' ---------------------------------
class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture(params=["torch.save", "pickle"])
def pickled(request, tmp_path) -> tuple[Path, Path]:
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    content = {"format": FORMAT, "indices": {"mlp_gate": [[1], [2], [3]]}, "meta": {"x": Evil(marker)}}
    if request.param == "torch.save":
        torch.save(content, path)
    else:
        path.write_bytes(pickle.dumps(content, protocol=2))
    return path, marker


def check_pickle_message(text: str, path: Path):
    assert str(path) in text and "pickled Python objects" in text
    assert "only tensors, lists, dicts, numbers and strings" in text
    assert "culnig-score" in text and "culnig-sets convert" in text
    assert "weights_only" not in text and "\n" not in text.strip()


def test_pickled_set_every_route(pickled, tmp_path, capsys):
    path, marker = pickled
    with pytest.raises(NeuronSetError) as err:
        NeuronSet.load(path)
    check_pickle_message(str(err.value), path)
    with pytest.raises(NeuronSetError) as err:
        load_sets(str(path))
    check_pickle_message(str(err.value), path)
    check_pickle_message(fails(["info", str(path)], capsys), path)
    check_pickle_message(fails(["random", str(path), "--out", str(tmp_path / "r.pt")], capsys), path)
    check_pickle_message(fails(["convert", str(path), *SHAPE_ARGS, "--cultures", "a", "--out", str(tmp_path / "o.pt")],
                               capsys), path)
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]


# -- non-finite and non-integer numbers ---------------------------------------------------------------------
def set_payload(indices, model=None) -> dict:
    return {"format": FORMAT, "indices": indices, "meta": {"model": model if model is not None else dict(SHAPE)}}


@pytest.mark.parametrize("case,content,phrase", [
    ("nan-json-index", set_payload({"mlp_gate": [[math.nan], [], []]}), "must be a list of integers"),
    ("inf-json-index", set_payload({"mlp_gate": [[math.inf], [], []]}), "must be a list of integers"),
    ("bool-json-index", set_payload({"mlp_gate": [[True], [], []]}), "must be a list of integers"),
    ("nan-layers", set_payload({"mlp_gate": [[1], [], []]}, dict(SHAPE, num_layers=math.nan)), "num_layers=nan"),
    ("float-layers", set_payload({"mlp_gate": [[1], [], []]}, dict(SHAPE, num_layers=3.0)), "num_layers=3.0"),
    ("bool-layers", set_payload({"mlp_gate": [[1]]}, dict(SHAPE, num_layers=True)), "num_layers=True"),
    ("nan-width", set_payload({"mlp_gate": [[1], [], []]}, dict(SHAPE, widths={"mlp_gate": math.nan})),
     "must be positive integers"),
    ("zero-width", set_payload({"mlp_gate": [[], [], []]}, dict(SHAPE, widths={"mlp_gate": 0})),
     "must be positive integers"),
])
def test_non_finite_numbers_in_json_sets(tmp_path, case, content, phrase):
    path = tmp_path / f"{case}.json"
    path.write_text(json.dumps(content))
    with pytest.raises(NeuronSetError) as err:
        NeuronSet.load(path)
    assert str(path) in str(err.value) and phrase in str(err.value)


def test_non_finite_numbers_in_torch_sets_and_lape_files(tmp_path, capsys):
    torch.save(set_payload({"mlp_gate": [torch.tensor([math.nan]), torch.tensor([1]), torch.tensor([2])]}),
               tmp_path / "nan.pt")
    with pytest.raises(NeuronSetError, match="must be integers"):
        NeuronSet.load(tmp_path / "nan.pt")
    torch.save([[torch.tensor([math.nan]), torch.tensor([1]), torch.tensor([2])]], tmp_path / "lape.pt")
    fails(["convert", str(tmp_path / "lape.pt"), *SHAPE_ARGS, "--cultures", "a", "--out", str(tmp_path / "o.pt")],
          capsys, "must be integers")


def test_nan_metadata_is_not_written_as_json(tmp_path):
    s = NeuronSet({"mlp_gate": [[1], [], []]}, new_meta(SHAPE, "test", hyperparameters={"top": math.nan}))
    with pytest.raises(NeuronSetError, match="cannot be written as JSON"):
        s.save(tmp_path / "s.json")
    assert visible_and_hidden(tmp_path) == []


# -- empty sets ---------------------------------------------------------------------------------------------------
def test_empty_set_is_flagged(tmp_path, capsys):
    empty = write_set(tmp_path / "empty.pt", {"mlp_gate": [[], [], []]})
    full = write_set(tmp_path / "full.pt")
    assert NeuronSet.load(empty).is_empty and not NeuronSet.load(full).is_empty
    assert main(["info", str(empty), str(full)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert warnings == [f"culnig-sets: warning: {empty} holds 0 neurons: masking it changes nothing"]
    assert main(["info", "--json", str(empty)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["total"] == 0 and "holds 0 neurons" in captured.err


# -- SIGTERM / SIGINT in the middle of `culnig-sets random --seeds 0,...,199` -------------------------------------
SLOW_WRITER = """
import sys, time, torch
real_save = torch.save
def slow_save(*args, **kwargs):  # slow each file down so the signal lands while files are being written
    real_save(*args, **kwargs)
    time.sleep(0.02)
torch.save = slow_save
from culnig_lm_eval.cli.sets import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_kill_during_many_seeds_leaves_old_files_or_all_new(tmp_path, signum, status):
    gen = torch.Generator().manual_seed(0)
    shape = {"name": "smollm2-like", "model_type": "llama", "num_layers": 30, "widths": {"mlp_gate": 1536}}
    base = NeuronSet({"mlp_gate": [torch.randperm(1536, generator=gen)[:12] for _ in range(30)]},
                     new_meta(shape, "test")).save(tmp_path / "base.pt")
    out = tmp_path / "out"
    out.mkdir()
    seeds = list(range(200))
    targets = [out / f"r-seed{seed}.pt" for seed in seeds]
    old = {t: NeuronSet.load(base).random_like(10_000 + i).save(t).read_bytes() for i, t in enumerate(targets[:3])}
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, "random", str(base), "--seeds", ",".join(map(str, seeds)),
         "--out", str(out / "r.pt")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(".*.tmp")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no temporary file appeared"
            time.sleep(0.005)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status, err.decode()
    assert "Traceback" not in err.decode()
    assert not list(tmp_path.rglob("*.tmp"))
    new = [t for t in targets if t.exists() and old.get(t) != t.read_bytes()]
    assert new == [] or new == targets  # the seeds' files are written as a unit
    for target in targets:
        if target in old and target not in new:
            assert target.read_bytes() == old[target]
        if target.exists():
            NeuronSet.load(target)  # complete and loadable
    if not new:
        assert sorted(p.name for p in out.iterdir()) == sorted(t.name for t in old)
