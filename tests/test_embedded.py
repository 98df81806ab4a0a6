"""Converting an embedded model's GGUF: gguf-py's reader and tensor-name map are memoised for one
conversion only (``model.embedded.gguf_read_once``), and what they return is what the originals
return.  The whole conversion was checked byte for byte against the unmemoised one (both models,
docs/plugin.md#installing); here on a GGUF file written for the test."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")


def write_tiny_gguf(path):
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_token_list(["<s>", "a", "b"])
    writer.add_tensor("token_embd.weight", np.arange(6, dtype=np.float32).reshape(3, 2))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def fields_of(reader):
    return {name: [bytes(part) for part in field.parts] for name, field in reader.fields.items()}


def test_a_conversion_reads_the_file_once_and_sees_what_a_fresh_read_sees(tmp_path):
    from culnig_lm_eval.model.embedded import gguf_read_once

    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    fresh = gguf.GGUFReader(path)
    originals = gguf.GGUFReader, gguf.get_tensor_name_map
    with gguf_read_once():
        first, second = gguf.GGUFReader(path), gguf.GGUFReader(path)
        assert first is second  # config, tokenizer and weights share one parse
        assert fields_of(first) == fields_of(fresh)
        assert [t.name for t in first.tensors] == [t.name for t in fresh.tensors]
        assert np.array_equal(first.tensors[0].data, fresh.tensors[0].data)
        arch = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
        assert gguf.get_tensor_name_map(arch, 2).get_name("model.layers.1.mlp.gate_proj") == \
            originals[1](arch, 2).get_name("model.layers.1.mlp.gate_proj") == "blk.1.ffn_gate"
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == originals  # put back afterwards


def test_the_originals_come_back_when_the_conversion_fails(tmp_path):
    from culnig_lm_eval.model.embedded import gguf_read_once

    originals = gguf.GGUFReader, gguf.get_tensor_name_map
    with pytest.raises(RuntimeError), gguf_read_once():
        raise RuntimeError("conversion failed")
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == originals
