"""``evaluate.dtype: auto``: bfloat16 only where the device computes it natively."""

from __future__ import annotations

import pytest

from culnig_lm_eval.experiment.config import ExperimentConfig, load_config
from culnig_lm_eval.experiment.run import resolve_evaluation_dtype
from culnig_lm_eval.model import lm as lm_module


class ParameterOn:
    def __init__(self, device: str):
        import torch

        self.model = torch.nn.Linear(1, 1, device=device)


@pytest.mark.parametrize("native, expected, args", [
    (True, "bfloat16", "pretrained=smollm2-135m,dtype=bfloat16"),
    (False, None, "pretrained=smollm2-135m,dtype=float32"),
])
def test_auto_is_bfloat16_only_where_native(monkeypatch, native, expected, args):
    config = load_config(None)
    assert config.evaluate.dtype == "auto"  # the default job
    asked = []
    monkeypatch.setattr(lm_module, "native_bfloat16", lambda device: asked.append(str(device)) or native)
    resolved = resolve_evaluation_dtype(config, ParameterOn("cpu"))
    assert asked == ["cpu"] and resolved.evaluate.dtype == expected
    assert resolved.evaluation_model_args == args


def test_a_concrete_dtype_is_kept_and_a_wrong_one_refused(monkeypatch):
    monkeypatch.setattr(lm_module, "native_bfloat16", lambda device: pytest.fail("not asked for a concrete dtype"))
    config = load_config(None)
    fixed = ExperimentConfig.from_mapping({**_mapping(config), "evaluate": {"dtype": "float16"}})
    assert resolve_evaluation_dtype(fixed, ParameterOn("cpu")).evaluate.dtype == "float16"
    with pytest.raises(ValueError, match="evaluate.dtype must be one of"):
        ExperimentConfig.from_mapping({**_mapping(config), "evaluate": {"dtype": "bf16"}})


def test_native_bfloat16_reads_the_cpu_flags(monkeypatch, tmp_path):
    import builtins

    real_open = builtins.open
    for flags, expected in (("fpu avx512f avx512_bf16", True), ("fpu amx_bf16", True), ("fpu avx512f avx2", False)):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open",
                            lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k))
        assert lm_module.native_bfloat16("cpu") is expected
    assert lm_module.native_bfloat16("meta") is False


def _mapping(config) -> dict:
    return {"name": config.name, "model_args": config.model_args, "data": "sample",
            "scoring": {"tasks": ["blend_cloze_neur"]}, "selections": {"paper": {}}}
