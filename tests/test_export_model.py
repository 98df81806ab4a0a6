"""culnig-sets export-model: stock hf on the exported checkpoint gives masked-hf's per-item results."""

from __future__ import annotations

import json

import pytest

from culnig_lm_eval.architectures import model_shape
from culnig_lm_eval.cli.sets import main
from culnig_lm_eval.model.masked_hf import MaskedHFLM
from culnig_lm_eval.neuron_set import NeuronSet, new_meta


@pytest.fixture
def set_file(tiny_llama_dir, tmp_path):
    from transformers import AutoConfig

    shape = model_shape(AutoConfig.from_pretrained(tiny_llama_dir))
    path = tmp_path / "set.pt"
    NeuronSet({"mlp_gate": [list(range(0, 64, 3)), list(range(20))], "attn_v": [[1, 2], []]},
              new_meta(shape, "test")).save(path)
    return path


def items(lm, monkeypatch):
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("CULNIG_DATA", "sample")
    task = TaskManager().load(["blend_cloze_test"])["tasks"]["blend_cloze_test"]
    task.build_all_requests(limit=8, rank=0, world_size=1)
    return task.instances


def test_stock_hf_on_the_export_equals_masked_hf(tiny_llama_dir, set_file, tmp_path, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    out = tmp_path / "masked"
    assert main(["export-model", "--model_args", f"pretrained={tiny_llama_dir}", "--sets", str(set_file),
                 "--out", str(out)]) == 0
    record = json.loads((out / "culnig_export.json").read_text())
    assert record["neuron_sets"][0]["counts"]["mlp_gate"] == 42 and record["operation"] == "suppress"
    exported = HFLM(pretrained=str(out), device="cpu", batch_size=4)
    masked = MaskedHFLM(pretrained=str(tiny_llama_dir), neurons=str(set_file), device="cpu", batch_size=4, fast=False)
    unmasked = HFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=4)
    instances = items(exported, monkeypatch)
    from_export = exported.loglikelihood(instances, disable_tqdm=True)
    assert from_export == masked.loglikelihood(instances, disable_tqdm=True)  # the same weights, the same code
    assert from_export != unmasked.loglikelihood(instances, disable_tqdm=True)


@pytest.mark.parametrize("argv, message", [
    (["--operation", "enhance", "--factor", "3"], "cannot be folded into the weights exactly"),
    (["--operation", "scale", "--factor", "nan"], "not a finite number"),
])
def test_a_refused_export_is_one_line_and_writes_nothing(tiny_llama_dir, set_file, tmp_path, capsys, argv, message):
    out = tmp_path / "masked"
    code = main(["export-model", "--model_args", f"pretrained={tiny_llama_dir}", "--sets", str(set_file),
                 "--out", str(out), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0] and not out.exists()


def test_export_never_replaces_a_foreign_folder(tiny_llama_dir, set_file, tmp_path, capsys):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter.tex").write_text("x")
    code = main(["export-model", "--model_args", f"pretrained={tiny_llama_dir}", "--sets", str(set_file), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and (out / "chapter.tex").read_text() == "x" and "--out" in err and "chapter.tex" in err


def test_enhance_by_a_power_of_two_is_exported(tiny_llama_dir, set_file, tmp_path):
    out = tmp_path / "enhanced"
    assert main(["export-model", "--model_args", f"pretrained={tiny_llama_dir}", "--sets", str(set_file), "--out", str(out),
                 "--operation", "enhance", "--factor", "4"]) == 0
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).model.layers[1].mlp.gate_proj.weight
    saved = load_file(str(out / "model.safetensors"))["model.layers.1.mlp.gate_proj.weight"]
    assert (saved[:20] == 4 * base[:20]).all() and (saved[20:] == base[20:]).all()
