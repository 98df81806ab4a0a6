"""Neuron-set files: round trips, numbers, algebra, and every way a file can be bad."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from culnig_lm_eval import neuron_set as ns
from culnig_lm_eval.neuron_set import FORMAT, NeuronSet, NeuronSetError, load_sets, new_meta

SHAPE = {"name": "tiny", "model_type": "llama", "num_layers": 2,
         "widths": {"mlp_gate": 64, "mlp_up": 64, "attn_q": 32, "attn_k": 16, "attn_v": 16}}


def make(indices=None, shape=SHAPE, **meta) -> NeuronSet:
    indices = indices if indices is not None else {"mlp_gate": [[5, 1, 9], [0, 63]], "attn_q": [[], [31]]}
    return NeuronSet(indices, new_meta(shape, "test", **meta))


def payload(indices, shape=SHAPE) -> dict:
    return {"format": FORMAT, "indices": indices, "meta": new_meta(shape, "test")}


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- round trips and numbers --------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".pt", ".json"])
def test_round_trip(tmp_path, suffix):
    original = make(culture="jp", tasks=["blend"], hyperparameters={"top_k": 3})
    path = original.save(tmp_path / f"set{suffix}")
    loaded = NeuronSet.load(path)
    assert loaded.meta == original.meta
    assert loaded.indices.keys() == original.indices.keys()
    for kind in original.indices:
        for a, b in zip(loaded.indices[kind], original.indices[kind], strict=True):
            assert torch.equal(a, b) and a.dtype == torch.long
    assert loaded.source == str(path)
    if suffix == ".json":  # the twin is plain JSON with lists
        raw = json.loads(path.read_text())
        assert raw["format"] == FORMAT and raw["indices"]["mlp_gate"] == [[1, 5, 9], [0, 63]]
    assert files_in(tmp_path) == [f"set{suffix}"]  # no temporary files left behind


def test_json_and_pt_twins_agree(tmp_path):
    s = make()
    a, b = NeuronSet.load(s.save(tmp_path / "a.pt")), NeuronSet.load(s.save(tmp_path / "a.json"))
    assert a.per_layer() == b.per_layer() and a.meta == b.meta
    assert all(torch.equal(x, y) for k in a.indices for x, y in zip(a.indices[k], b.indices[k], strict=True))


def test_indices_are_sorted_on_construction():
    s = make({"mlp_gate": [[9, 1, 5], [63, 0]]})
    assert s.indices["mlp_gate"][0].tolist() == [1, 5, 9]
    assert s.indices["mlp_gate"][1].tolist() == [0, 63]


def test_counts_fraction_per_layer():
    s = make({"mlp_gate": [[1, 5, 9], [0, 63]], "attn_q": [[], [31]], "attn_k": [[0, 1, 2, 3], [4]]})
    assert s.counts() == {"mlp_gate": 5, "attn_q": 1, "attn_k": 5}
    assert len(s) == 11
    assert s.per_layer() == {"mlp_gate": [3, 2], "attn_q": [0, 1], "attn_k": [4, 1]}
    assert s.fraction() == pytest.approx({"mlp_gate": 5 / 128, "attn_q": 1 / 64, "attn_k": 5 / 32})
    assert s.num_layers == 2


def test_masks_and_from_masks_round_trip():
    s = make()
    masks = s.masks(SHAPE["widths"])
    assert masks["mlp_gate"].shape == (2, 64) and masks["mlp_gate"].sum() == 5
    assert masks["mlp_gate"][0, 9] and not masks["mlp_gate"][0, 8]
    back = NeuronSet.from_masks(masks, s.meta)
    assert back.per_layer() == s.per_layer()
    assert all(torch.equal(x, y) for k in s.indices for x, y in zip(back.indices[k], s.indices[k], strict=True))


def test_load_sets_joins_with_plus(tmp_path):
    a = make().save(tmp_path / "a.pt")
    b = make({"mlp_up": [[1], [2]]}).save(tmp_path / "b.json")
    sets = load_sets(f"{a}+{b}")
    assert [s.source for s in sets] == [str(a), str(b)]
    with pytest.raises(NeuronSetError, match="names no file"):
        load_sets("+")


# -- algebra ---------------------------------------------------------------------------------------
def as_pairs(s: NeuronSet) -> set:
    return {(k, layer, int(i)) for k, v in s.indices.items() for layer, t in enumerate(v) for i in t}


def test_union_intersect_subtract():
    a = make({"mlp_gate": [[1, 2, 3], [4]], "attn_q": [[0], []]})
    b = make({"mlp_gate": [[3, 4], [4, 5]]})
    c = make({"mlp_gate": [[1], []], "attn_q": [[0], [7]]})
    pa, pb, pc = as_pairs(a), as_pairs(b), as_pairs(c)
    assert as_pairs(a.union(b)) == pa | pb
    assert as_pairs(a.union(b, c)) == pa | pb | pc
    assert as_pairs(a.intersect(b)) == pa & pb
    assert as_pairs(a.intersect(b, c)) == set()
    assert as_pairs(a.subtract(b)) == pa - pb
    assert as_pairs(a.subtract(b, c)) == pa - pb - pc
    u = a.union(b)
    assert u.meta["method"] == "set-algebra" and u.meta["provenance"]["operation"] == "union"
    assert len(u.meta["provenance"]["operands"]) == 2


def test_algebra_refuses_sets_of_different_models():
    other = dict(SHAPE, num_layers=3)
    a, b = make(), make({"mlp_gate": [[1], [2], [3]]}, shape=other)
    with pytest.raises(NeuronSetError, match="different models"):
        a.union(b)
    wide = dict(SHAPE, widths=dict(SHAPE["widths"], mlp_gate=128))
    with pytest.raises(NeuronSetError, match="different models"):
        a.intersect(make({"mlp_gate": [[1], [2]]}, shape=wide))


def test_random_like_keeps_counts_and_is_seeded():
    s = make({"mlp_gate": [list(range(10)), [3]], "attn_k": [[1, 2], []]})
    r1, r1b, r2 = s.random_like(1), s.random_like(1), s.random_like(2)
    assert r1.per_layer() == s.per_layer() == r2.per_layer()
    assert as_pairs(r1) == as_pairs(r1b)
    assert as_pairs(r1) != as_pairs(r2)
    assert r1.meta["method"] == "random" and r1.meta["hyperparameters"] == {"seed": 1}
    for t in r1.indices["mlp_gate"]:  # valid: unique, in range (validated on construction too)
        assert t.unique().numel() == t.numel() and int(t.max()) < 64


# -- bad sets: each one names the file and the problem -----------------------------------------------
class Evil:
    """Unpickling this would create a marker file; weights_only loading must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


BAD_PAYLOADS = {
    "too-many-layers": (payload({"mlp_gate": [[1], [2], [3]]}), "has 3 layers but the model has 2"),
    "index-too-big": (payload({"mlp_gate": [[64], []]}), "index 64 but the layer has only 64"),
    "negative": (payload({"mlp_gate": [[-1, 2], []]}), "negative index"),
    "duplicate": (payload({"mlp_gate": [[2, 2], []]}), "same neuron more than once"),
    "float-indices": (payload({"mlp_gate": [torch.tensor([1.5]), torch.tensor([2.0])]}), "must be integers"),
    "unknown-kind": (payload({"mlp_down": [[1], [2]]}), "unknown module kind 'mlp_down'"),
    "kinds-disagree": ({"format": FORMAT, "indices": {"mlp_gate": [[1]], "attn_q": [[1], [2]]}, "meta": {}},
                       "disagree on the number of layers"),
    "indices-not-dict": ({"format": FORMAT, "indices": [[1, 2]], "meta": {}}, "'indices' must map"),
    "plain-dict": ({"weights": torch.zeros(3)}, "not a culnig-neuron-set/1 file"),
    "tensor": (torch.arange(5), "not a culnig-neuron-set/1 file (found a Tensor)"),
    "list": ([[torch.tensor([1])]], "import it with `culnig-sets convert`"),
}


@pytest.mark.parametrize("case", sorted(BAD_PAYLOADS))
def test_bad_payload(tmp_path, case):
    content, problem = BAD_PAYLOADS[case]
    path = tmp_path / f"{case}.pt"
    torch.save(content, path)
    with pytest.raises(NeuronSetError) as err:
        NeuronSet.load(path)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_bad_json_payload(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"format": FORMAT, "indices": {"mlp_gate": [[1, 1.5], []]}, "meta": {}}))
    with pytest.raises(NeuronSetError, match="bad.json.*must be a list of integers"):
        NeuronSet.load(path)
    path.write_text('{"format": ')  # truncated JSON
    with pytest.raises(NeuronSetError, match="bad.json: cannot be read"):
        NeuronSet.load(path)


def test_random_bytes_and_truncated_files(tmp_path):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(4096))
    with pytest.raises(NeuronSetError, match=r"noise\.pt: cannot be read, the file is corrupt"):
        NeuronSet.load(noise)
    good = make().save(tmp_path / "good.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(NeuronSetError, match=r"cut\.pt: cannot be read"):
        NeuronSet.load(cut)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(NeuronSetError, match=r"empty\.pt: cannot be read"):
        NeuronSet.load(empty)


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_pickled_objects_are_refused_without_running_them(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    evil = {"format": FORMAT, "indices": {"mlp_gate": [[1], [2]]}, "meta": {"x": Evil(marker)}}
    if writer == "torch":
        torch.save(evil, path)
    else:
        path.write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(NeuronSetError) as err:
        NeuronSet.load(path)
    assert str(path) in str(err.value)
    message = str(err.value)
    assert "refused" in message and "pickled Python objects" in message and "getattr" in message
    assert "culnig-sets convert" in message and "weights_only" not in message and "\n" not in message
    assert not marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(NeuronSetError, match=r"nope\.pt: no such file"):
        NeuronSet.load(tmp_path / "nope.pt")
    with pytest.raises(NeuronSetError, match="no such file"):
        NeuronSet.load(tmp_path)  # a folder is not a set file either


def test_set_for_another_model_is_refused_by_check_model(tmp_path):
    path = make().save(tmp_path / "s.pt")
    s = NeuronSet.load(path)
    with pytest.raises(NeuronSetError, match=r"s\.pt: was made for a model with 2 layers .* has 3"):
        s.check_model(dict(SHAPE, num_layers=3))
    with pytest.raises(NeuronSetError, match=r"s\.pt: was made for a model whose mlp_gate width is 64"):
        s.check_model(dict(SHAPE, widths=dict(SHAPE["widths"], mlp_gate=32)))
    # a set without model metadata is still checked index by index
    bare = NeuronSet({"mlp_gate": [[40], [1]]}, {}, source="bare.pt")
    with pytest.raises(NeuronSetError, match="bare.pt: mlp_gate layer 0 has index 40 but the layer has only 32"):
        bare.check_model(dict(SHAPE, widths=dict(SHAPE["widths"], mlp_gate=32)))
    bare.check_model(SHAPE)


# -- atomic saving ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".pt", ".json"])
def test_failed_save_leaves_nothing(tmp_path, monkeypatch, suffix):
    def broken_save(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    def broken_write_text(self, text, *a, **k):
        open(self, "w").write(text[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    monkeypatch.setattr(Path, "write_text", broken_write_text)
    with pytest.raises(OSError, match="No space"):
        make().save(tmp_path / f"out{suffix}")
    assert files_in(tmp_path) == []


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = make({"mlp_gate": [[1], [2]]}).save(tmp_path / "s.pt")
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        make().save(path)
    assert path.read_bytes() == before and files_in(tmp_path) == ["s.pt"]


def test_unserialisable_metadata_writes_nothing(tmp_path):
    s = make()
    s.meta["hyperparameters"] = {"bad": object()}
    with pytest.raises(NeuronSetError, match="cannot be written as JSON"):
        s.save(tmp_path / "s.json")
    assert files_in(tmp_path) == []


def test_mutated_invalid_set_is_not_saved(tmp_path):
    s = make()
    s.indices["mlp_gate"][0] = torch.tensor([3, 3])
    with pytest.raises(NeuronSetError, match="more than once"):
        s.save(tmp_path / "s.pt")
    assert files_in(tmp_path) == []


def test_save_many_is_all_or_nothing(tmp_path, monkeypatch):
    good, bad = make(), make()
    bad.indices["mlp_gate"][1] = torch.tensor([999])
    with pytest.raises(NeuronSetError):
        ns.save_many([(good, tmp_path / "a.pt"), (bad, tmp_path / "b.pt")])
    assert files_in(tmp_path) == []
    calls = []
    real = torch.save

    def second_fails(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", second_fails)
    with pytest.raises(OSError):
        ns.save_many([(good, tmp_path / "a.pt"), (good, tmp_path / "b.pt")])
    assert files_in(tmp_path) == []
    monkeypatch.setattr(torch, "save", real)
    assert [p.name for p in ns.save_many([(good, tmp_path / "a.pt"), (good, tmp_path / "b.json")])] == ["a.pt", "b.json"]
    assert files_in(tmp_path) == ["a.pt", "b.json"]


def test_saved_file_has_normal_permissions(tmp_path):
    path = make().save(tmp_path / "s.pt")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
