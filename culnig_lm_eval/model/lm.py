"""The one way this package loads a model: lm-eval's own parser and factory, ``masked-hf``.

``--model_args`` strings are parsed by ``lm_eval.utils.simple_parse_args_string`` (so
``parallelize=False`` is the boolean False, as in ``lm_eval``) and the model is built by
``create_from_arg_string``, exactly as the ``lm_eval`` command builds it.  The device is
decided in one place, :func:`culnig_lm_eval.model.embedded.hf_kwargs`: ``device=`` in the model
args or the ``device`` argument here wins; otherwise CUDA when available, else the CPU.
"""

from __future__ import annotations


def parse_model_args(model_args: str) -> dict:
    from lm_eval.utils import simple_parse_args_string

    try:
        args = simple_parse_args_string(model_args or "")
    except ValueError as err:
        raise ValueError(f"--model_args {model_args!r}: write key=value pairs joined by commas ({err})") from None
    if "pretrained" not in args:
        raise ValueError(f"--model_args {model_args!r}: name the model with pretrained=<hub id, folder or alias>")
    return args


def model_label(model_args: str) -> str:
    """A short name for the model of ``model_args``: the last part of ``pretrained``."""
    return str(parse_model_args(model_args)["pretrained"]).rstrip("/").split("/")[-1]


def load_lm(model_args: str, *, batch_size: int | str = 8, device: str | None = None, model: str = "masked-hf"):
    """The harness model for ``model_args`` (``masked-hf`` by default: ``hf`` plus the aliases)."""
    from lm_eval.api.registry import get_model

    args = parse_model_args(model_args)  # a clear error before anything loads
    # model_args win, as with masked-hf on the lm_eval command line
    extra = {k: v for k, v in {"batch_size": batch_size, "device": device}.items() if v is not None and k not in args}
    return get_model(model).create_from_arg_string(model_args, extra)


def model_device(lm):
    """Where the model's first parameter lives: batches go there (``parallelize`` included)."""
    return parameter_device(lm.model)


def parameter_device(module):
    """Where a torch module's first parameter lives (:func:`model_device` for a bare module)."""
    return next(module.parameters()).device


def native_bfloat16(device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX (Linux's CPU flags).  Elsewhere bfloat16 matrix products are emulated and
    slower than float32."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
