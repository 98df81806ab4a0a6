"""`culnig-sets`: info, algebra, random baselines, and importing both published formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from culnig_lm_eval.cli.sets import main
from culnig_lm_eval.neuron_set import NeuronSet, new_meta

SHAPE = {"name": "tiny", "model_type": "llama", "num_layers": 3,
         "widths": {"mlp_gate": 64, "mlp_up": 64, "attn_q": 32, "attn_k": 16, "attn_v": 16}}
SHAPE_ARGS = ["--num-layers", "3", "--widths", "mlp_gate=64,mlp_up=64,attn_q=32,attn_k=16,attn_v=16"]


def write_set(path, indices, **meta) -> Path:
    return NeuronSet(indices, new_meta(SHAPE, "test", **meta)).save(path)


def pairs(path) -> set:
    s = NeuronSet.load(path)
    return {(k, layer, int(i)) for k, v in s.indices.items() for layer, t in enumerate(v) for i in t}


def fails(argv, capsys, *phrases) -> str:
    """Run main(argv), expect exit status 2 and one error line containing every phrase."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("culnig-sets: error:") and "\n" not in err, err
    for phrase in phrases:
        assert phrase in err, err
    return err


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def sets(tmp_path):
    a = write_set(tmp_path / "a.pt", {"mlp_gate": [[1, 2, 3], [10], []], "attn_q": [[0], [], [5]]}, culture="jp")
    b = write_set(tmp_path / "b.json", {"mlp_gate": [[3, 4], [10, 11], [63]]}, culture="jp")
    c = write_set(tmp_path / "c.pt", {"mlp_gate": [[1], [], [63]], "attn_q": [[0], [1], []]})
    return a, b, c


# -- help -----------------------------------------------------------------------------------------
def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("info", "union", "intersect", "subtract", "random", "convert"):
        assert command in out
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    out = capsys.readouterr().out
    assert "top_neurons" in out and "[culture][layer]" in out and "--cultures" in out


# -- info --------------------------------------------------------------------------------------------
def test_info_text(sets, capsys):
    a = sets[0]
    assert main(["info", str(a)]) == 0
    out = capsys.readouterr().out
    assert "neurons: 6" in out
    assert f"mlp_gate: 4 = {100 * 4 / 192:.3f}% of all mlp_gate neurons" in out
    assert f"attn_q: 2 = {100 * 2 / 96:.3f}% of all attn_q neurons" in out
    assert "culture: jp" in out and "method: test" in out
    bars = [line.split() for line in out.splitlines()
            if line.strip().startswith("L") and set(line.split()[1]) <= {"#", "."}]
    assert len(bars) == 6
    gate_bars = bars[:3]  # mlp_gate histogram comes first: 3, 1, 0 neurons
    assert [b[-1] for b in gate_bars] == ["3", "1", "0"]
    assert gate_bars[0][1].count("#") == 40 and gate_bars[1][1].count("#") == 13 and gate_bars[2][1].count("#") == 0


def test_info_json(sets, capsys):
    a, b, _ = sets
    main(["info", "--json", str(a)])
    info = json.loads(capsys.readouterr().out)
    assert info["counts"] == {"mlp_gate": 4, "attn_q": 2}
    assert info["per_layer"] == {"mlp_gate": [3, 1, 0], "attn_q": [1, 0, 1]}
    assert info["fraction"] == pytest.approx({"mlp_gate": 4 / 192, "attn_q": 2 / 96})
    assert info["fraction_of_kinds"] == pytest.approx(6 / 288)
    assert info["meta"]["culture"] == "jp"
    main(["info", "--json", str(a), str(b)])
    both = json.loads(capsys.readouterr().out)
    assert [i["path"] for i in both] == [str(a), str(b)] and both[1]["total"] == 5


# -- algebra -----------------------------------------------------------------------------------------
def test_union_intersect_subtract(sets, tmp_path, capsys):
    a, b, c = sets
    pa, pb, pc = pairs(a), pairs(b), pairs(c)
    assert main(["union", str(a), str(b), str(c), "--out", str(tmp_path / "u.pt")]) == 0
    assert pairs(tmp_path / "u.pt") == pa | pb | pc
    main(["intersect", str(a), str(b), "--out", str(tmp_path / "i.json")])
    assert pairs(tmp_path / "i.json") == pa & pb == {("mlp_gate", 0, 3), ("mlp_gate", 1, 10)}
    main(["subtract", str(a), str(b), str(c), "--out", str(tmp_path / "s.pt")])
    assert pairs(tmp_path / "s.pt") == pa - pb - pc == {("mlp_gate", 0, 2), ("attn_q", 2, 5)}
    u = NeuronSet.load(tmp_path / "u.pt")
    assert u.meta["method"] == "set-algebra" and u.meta["culture"] is None  # cultures differ
    assert [o["source"] for o in u.meta["provenance"]["operands"]] == [str(a), str(b), str(c)]
    assert all(len(o["sha256"]) == 64 for o in u.meta["provenance"]["operands"])
    assert NeuronSet.load(tmp_path / "i.json").meta["culture"] == "jp"  # shared culture is kept
    assert "union: 10 neurons" in capsys.readouterr().out


def test_algebra_errors_write_nothing(sets, tmp_path, capsys):
    a, b, _ = sets
    other = NeuronSet({"mlp_gate": [[1], [2]]}, new_meta(dict(SHAPE, num_layers=2), "t")).save(tmp_path / "two.pt")
    before = names(tmp_path)
    fails(["union", str(a), str(other), "--out", str(tmp_path / "x.pt")], capsys, "different models", "two.pt")
    fails(["union", str(a), str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x.pt")], capsys, "nope.pt: no such file")
    (tmp_path / "junk.pt").write_bytes(b"\x00junk")
    fails(["intersect", str(a), str(tmp_path / "junk.pt"), "--out", str(tmp_path / "x.pt")], capsys, "junk.pt", "cannot be read")
    fails(["union", str(a), str(b), "--out", str(tmp_path / "x.txt")], capsys, ".pt or .json")
    fails(["union", str(a), "--out", str(tmp_path / "x.pt")], capsys, "at least two sets")
    fails(["info", str(a), str(tmp_path / "gone.json")], capsys, "gone.json: no such file")
    assert names(tmp_path) == sorted(before + ["junk.pt"])


# -- random ------------------------------------------------------------------------------------------
def test_random_keeps_counts_and_is_seeded(sets, tmp_path):
    a = sets[0]
    main(["random", str(a), "--seeds", "7", "--out", str(tmp_path / "r7.pt")])
    main(["random", str(a), "--seeds", "7", "--out", str(tmp_path / "r7b.json")])
    main(["random", str(a), "--seeds", "0,1,2", "--out", str(tmp_path / "r.pt")])
    main(["random", str(a), "--seeds", "3,4", "--out", str(tmp_path / "t_{seed}.pt")])
    assert {"r-seed0.pt", "r-seed1.pt", "r-seed2.pt", "t_3.pt", "t_4.pt"} <= set(names(tmp_path))
    original = NeuronSet.load(a)
    draws = {}
    for name in ("r7.pt", "r7b.json", "r-seed0.pt", "r-seed1.pt", "r-seed2.pt", "t_3.pt", "t_4.pt"):
        r = NeuronSet.load(tmp_path / name)
        assert r.per_layer() == original.per_layer()
        assert r.meta["method"] == "random"
        draws[name] = pairs(tmp_path / name)
    assert NeuronSet.load(tmp_path / "r-seed1.pt").meta["hyperparameters"] == {"seed": 1}
    assert draws["r7.pt"] == draws["r7b.json"]  # same seed, same draw
    assert len({frozenset(draws[n]) for n in ("r7.pt", "r-seed0.pt", "r-seed1.pt", "r-seed2.pt")}) == 4


def test_random_bad_seeds(sets, tmp_path, capsys):
    fails(["random", str(sets[0]), "--seeds", "1,x", "--out", str(tmp_path / "r.pt")], capsys, "comma-separated integers")
    fails(["random", str(sets[0]), "--seeds", "1,1", "--out", str(tmp_path / "r.pt")], capsys, "each seed once")
    assert not list(tmp_path.glob("r*"))


# -- convert: CULNIG JSON ---------------------------------------------------------------------------------
def culnig_json(path, records, **extra) -> Path:
    path.write_text(json.dumps({"top_neurons": records, **extra}))
    return path


RECORDS = [
    {"module_name": "mlp.gate_proj", "layer_idx": 0, "neuron_idx": 5, "score": 0.9},
    {"module_name": "gate_proj", "layer_idx": 0, "neuron_idx": 2, "score": 0.8},
    {"module_name": "model.layers.2.mlp.gate_proj", "layer_idx": 2, "neuron_idx": 63, "score": 0.7},
    {"module_name": "mlp.up_proj", "layer_idx": 1, "neuron_idx": 0, "score": 0.6},
    {"module_name": "self_attn.q_proj", "layer_idx": 1, "neuron_idx": 31, "score": 0.5},
    {"module_name": "self_attn.k_proj", "layer_idx": 2, "neuron_idx": 15, "score": 0.4},
    {"module_name": "v_proj", "layer_idx": 0, "neuron_idx": 7, "score": 0.3},
    {"module_name": "mlp.gate_proj", "layer_idx": 0, "neuron_idx": 5, "score": 0.2},  # listed twice
]


def test_convert_culnig_json(tmp_path, capsys):
    src = culnig_json(tmp_path / "culnig.json", RECORDS, top_k=8)
    assert main(["convert", str(src), *SHAPE_ARGS, "--cultures", "de", "--out", str(tmp_path / "de.pt")]) == 0
    s = NeuronSet.load(tmp_path / "de.pt")
    assert pairs(tmp_path / "de.pt") == {
        ("mlp_gate", 0, 2), ("mlp_gate", 0, 5), ("mlp_gate", 2, 63), ("mlp_up", 1, 0),
        ("attn_q", 1, 31), ("attn_k", 2, 15), ("attn_v", 0, 7),
    }
    assert s.per_layer()["mlp_gate"] == [2, 0, 1]
    assert s.meta["method"] == "culnig" and s.meta["culture"] == "de"
    prov = s.meta["provenance"]
    assert prov["format"] == "culnig-json" and prov["entries"] == 8 and prov["duplicates_dropped"] == 1
    assert prov["source_fields"] == {"top_k": 8} and len(prov["sha256"]) == 64
    assert s.meta["model"]["num_layers"] == 3 and s.meta["model"]["widths"]["attn_q"] == 32
    assert "convert: 7 neurons" in capsys.readouterr().out


def test_convert_culnig_json_with_model_folder(tmp_path):
    from tiny_models import tiny_config

    folder = tmp_path / "model"
    tiny_config("llama", num_hidden_layers=3).save_pretrained(folder)  # a config is all convert reads
    src = culnig_json(tmp_path / "c.json", RECORDS)
    main(["convert", str(src), "--model_args", f"pretrained={folder}", "--out", str(tmp_path / "out.json")])
    s = NeuronSet.load(tmp_path / "out.json")
    assert s.meta["model"]["model_type"] == "llama" and s.meta["model"]["num_layers"] == 3
    assert s.meta["model"]["widths"] == {"mlp_gate": 64, "mlp_up": 64, "attn_q": 32, "attn_k": 16, "attn_v": 16}
    assert len(s) == 7


def test_convert_with_embedded_alias_reads_the_cached_config(tmp_path, monkeypatch):
    from tiny_models import tiny_config

    from culnig_lm_eval.model import embedded

    monkeypatch.setenv("CULNIG_CACHE", str(tmp_path / "cache"))
    tiny_config("llama", num_hidden_layers=3).save_pretrained(tmp_path / "cache" / "models" / "smollm2-135m")
    monkeypatch.setattr(embedded, "checkpoint_dir", lambda alias: pytest.fail("must not convert"))
    src = culnig_json(tmp_path / "c.json", RECORDS)
    main(["convert", str(src), "--model_args", "pretrained=smollm2-135m", "--out", str(tmp_path / "out.pt")])
    s = NeuronSet.load(tmp_path / "out.pt")
    assert s.meta["model"]["name"] == "smollm2-135m" and s.meta["model"]["num_layers"] == 3


@pytest.mark.parametrize("records,phrases", [
    ([{"module_name": "mlp.down_proj", "layer_idx": 0, "neuron_idx": 1}], ["'down_proj'", "known:"]),
    ([{"module_name": "gate_proj", "layer_idx": 3, "neuron_idx": 1}], ["layer index 3", "has 3", "wrong --model"]),
    ([{"module_name": "gate_proj", "layer_idx": 0, "neuron_idx": 64}], ["mlp_gate neuron 64", "has 64"]),
    ([{"module_name": "q_proj", "layer_idx": 0, "neuron_idx": -1}], ["attn_q neuron -1"]),
    ([{"module_name": "gate_proj", "layer_idx": 0}], ["entry 0 lacks"]),
    ([{"module_name": "gate_proj", "layer_idx": 0, "neuron_idx": 1.5}], ["must be integers"]),
    ([{"module_name": "gate_proj", "layer_idx": "zero", "neuron_idx": 1}], ["must be integers"]),
    ({"not": "a list"}, ["expected a CULNIG JSON"]),
])
def test_convert_culnig_json_errors(tmp_path, capsys, records, phrases):
    src = tmp_path / "bad.json"
    src.write_text(json.dumps({"top_neurons": records} if isinstance(records, list) else records))
    fails(["convert", str(src), *SHAPE_ARGS, "--out", str(tmp_path / "out.pt")], capsys, "bad.json", *phrases)
    assert names(tmp_path) == ["bad.json"]


def test_convert_argument_errors(tmp_path, capsys):
    src = culnig_json(tmp_path / "c.json", RECORDS)
    out = ["--out", str(tmp_path / "o.pt")]
    fails(["convert", str(src), *out], capsys, "needs the model shape", "--model_args pretrained=")
    fails(["convert", str(src), "--num-layers", "3", "--widths", "mlp_gate=64", *out], capsys,
          "no mlp_up width", "add mlp_up=WIDTH")
    fails(["convert", str(src), "--num-layers", "3", "--widths", "gate=64", *out], capsys, "KIND=WIDTH")
    fails(["convert", str(src), "--num-layers", "3", "--widths", "mlp_gate=x", *out], capsys, "must be an integer")
    fails(["convert", str(src), "--model_args", f"pretrained={tmp_path / 'no-model'}", *out], capsys, "cannot read its config")
    fails(["convert", str(src), "--model_args", "pretrained=m", *SHAPE_ARGS, *out], capsys, "not both")
    fails(["convert", str(tmp_path / "missing.json"), *SHAPE_ARGS, *out], capsys, "missing.json: no such file")
    (tmp_path / "broken.json").write_text("{\"top_neurons\": [")
    fails(["convert", str(tmp_path / "broken.json"), *SHAPE_ARGS, *out], capsys, "broken.json", "not readable")
    fails(["convert", str(src), *SHAPE_ARGS, "--cultures", "a,b", *out], capsys, "--cultures a,b", "holds one set")
    assert names(tmp_path) == ["broken.json", "c.json"]


# -- convert: LAPE (Culture_Neurons) ------------------------------------------------------------------
def lape_file(path, cultures=3, layers=3) -> tuple[Path, list]:
    gen = torch.Generator().manual_seed(0)
    data = [[torch.randperm(64, generator=gen)[: int(torch.randint(0, 6, (1,), generator=gen))].long()
             for _ in range(layers)] for _ in range(cultures)]
    data[0][1] = torch.tensor([], dtype=torch.long)  # a layer with no neuron
    torch.save(data, path)
    return path, data


def test_convert_lape(tmp_path, capsys):
    src, data = lape_file(tmp_path / "activation_mask.pt")
    main(["convert", str(src), *SHAPE_ARGS, "--cultures", "china,india,usa", "--out", str(tmp_path / "lape_{culture}.pt")])
    for c, culture in enumerate(("china", "india", "usa")):
        path = tmp_path / f"lape_{culture}.pt"
        s = NeuronSet.load(path)
        assert set(s.indices) == {"mlp_gate"}
        assert pairs(path) == {("mlp_gate", layer, int(i)) for layer, t in enumerate(data[c]) for i in t}
        assert s.meta["culture"] == culture and s.meta["method"] == "lape"
        assert s.meta["provenance"]["culture_index"] == c and s.meta["provenance"]["format"] == "lape"
    out = capsys.readouterr().out
    assert out.count("convert:") == 3
    # without {culture}, the name gets -CULTURE; a lists-of-ints file works too
    torch.save([[[1, 2], [3], []]], tmp_path / "lists.pt")
    main(["convert", str(tmp_path / "lists.pt"), *SHAPE_ARGS, "--cultures", "jp", "--out", str(tmp_path / "one.json")])
    assert pairs(tmp_path / "one.json") == {("mlp_gate", 0, 1), ("mlp_gate", 0, 2), ("mlp_gate", 1, 3)}
    torch.save([[[1], [], []], [[2], [], []]], tmp_path / "two.pt")
    main(["convert", str(tmp_path / "two.pt"), *SHAPE_ARGS, "--cultures", "a,b", "--out", str(tmp_path / "two_out.pt")])
    assert {"two_out-a.pt", "two_out-b.pt"} <= set(names(tmp_path))


def test_convert_lape_errors_write_nothing(tmp_path, capsys):
    src, _ = lape_file(tmp_path / "mask.pt")
    out = ["--out", str(tmp_path / "o_{culture}.pt")]
    fails(["convert", str(src), *SHAPE_ARGS, *out], capsys, "--cultures")
    fails(["convert", str(src), *SHAPE_ARGS, "--cultures", "a,b", *out], capsys, "holds 3 cultures", "names 2")
    fails(["convert", str(src), "--num-layers", "2", "--widths", "mlp_gate=64", "--cultures", "a,b,c", *out], capsys,
          "has 3 layers but the model has 2")
    fails(["convert", str(src), "--num-layers", "3", "--widths", "mlp_gate=4", "--cultures", "a,b,c", *out], capsys,
          "mlp_gate neuron", "wrong --model")
    fails(["convert", str(src), *SHAPE_ARGS, "--cultures", "a,a,b", *out], capsys, "distinct names")
    fails(["convert", str(src), *SHAPE_ARGS, "--cultures", "a,../b,c", *out], capsys, "'../b' cannot be used as a file name")
    torch.save([[torch.tensor([1.5]), torch.tensor([1]), torch.tensor([2])]], tmp_path / "floats.pt")
    fails(["convert", str(tmp_path / "floats.pt"), *SHAPE_ARGS, "--cultures", "a", *out], capsys, "must be integers")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "dict.pt")
    fails(["convert", str(tmp_path / "dict.pt"), *SHAPE_ARGS, "--cultures", "a", *out], capsys, "expected a LAPE file")
    NeuronSet({"mlp_gate": [[1], [], []]}, new_meta(SHAPE, "t")).save(tmp_path / "set.pt")
    fails(["convert", str(tmp_path / "set.pt"), *SHAPE_ARGS, "--cultures", "a", *out], capsys, "already a neuron set")
    (tmp_path / "noise.pt").write_bytes(b"\x80\x02garbage")
    fails(["convert", str(tmp_path / "noise.pt"), *SHAPE_ARGS, "--cultures", "a", *out], capsys,
          "noise.pt", "cannot be read, the file is corrupt")
    assert not list(tmp_path.glob("o_*")) and not list(tmp_path.glob(".*"))


class Evil:
    """Unpickling this would create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_convert_lape_refuses_pickled_objects(tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save([[Evil(marker), torch.tensor([1]), torch.tensor([2])]], tmp_path / "evil.pt")
    err = fails(["convert", str(tmp_path / "evil.pt"), *SHAPE_ARGS, "--cultures", "a", "--out", str(tmp_path / "o.pt")],
                capsys, "evil.pt", "refused: the file holds pickled Python objects", "culnig-sets convert")
    assert "weights_only" not in err
    assert not marker.exists() and not (tmp_path / "o.pt").exists()
