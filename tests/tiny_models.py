"""Tiny, randomly initialised models (and a tokenizer) for tests: offline, seeded, milliseconds.

Import it from any test (``tests/`` is on ``sys.path`` under pytest's default rootdir
import mode)::

    from tiny_models import tiny_llama, tiny_model, save_tiny_llama

* ``tiny_llama(seed=0, **overrides) -> (model, tokenizer)``: a 2-layer Llama
  (hidden 32, MLP 64, 4 query / 2 key-value heads, vocab = the tokenizer's) in eval mode,
  float32, plus a byte-level BPE ``PreTrainedTokenizerFast`` trained offline on a few
  sentences (``<pad>``=0, ``<s>``=1, ``</s>``=2).  ``overrides`` go to ``LlamaConfig``
  (e.g. ``num_hidden_layers=3``, ``intermediate_size=48``).
* ``tiny_model(model_type, seed=0, **overrides) -> model``: the same idea for every
  architecture in :data:`TINY_CONFIGS` (``llama``, ``mistral``, ``qwen2``, ``qwen3``, ``gemma``,
  ``gemma2``, ``gemma3_text``, ``gemma3`` = multimodal Gemma-3 with a 1-layer vision tower,
  ``phi3``), one per row of ``culnig_lm_eval.architectures.ADAPTERS``.
* ``save_tiny_llama(folder, seed=0, **overrides) -> folder``: writes the model and the
  tokenizer with ``save_pretrained`` so ``HFLM(pretrained=folder)`` / ``masked-hf`` load it.
* ``tiny_tokenizer()``: the tokenizer alone (cached; same object each call).

Everything is deterministic in ``seed``; nothing touches the network.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Culture neurons are output channels of the MLP gate projection.",
    "Tea is served with milk in some countries and without it in others.",
    "Which festival is celebrated with lanterns in the middle of autumn?",
    "A: the answer is yes. B: the answer is no. Answer:",
    "Rice, bread, maize and cassava are staple foods around the world.",
]
SPECIALS = ["<pad>", "<s>", "</s>"]
VOCAB_SIZE = 384  # upper bound for the trained BPE; the model's vocab is the tokenizer's length


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """Byte-level BPE trained on :data:`SENTENCES`: encodes any text, decodes losslessly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", model_max_length=256
    )


def _llama(**kw):
    from transformers import LlamaConfig

    return LlamaConfig(**kw)


def _mistral(**kw):
    from transformers import MistralConfig

    return MistralConfig(**kw)


def _qwen2(**kw):
    from transformers import Qwen2Config

    return Qwen2Config(**kw)  # q/k/v carry a bias: folding must scale it too


def _qwen3(**kw):
    from transformers import Qwen3Config

    return Qwen3Config(**{"head_dim": 16, **kw})  # head_dim * heads != hidden on purpose


def _gemma(**kw):
    from transformers import GemmaConfig

    return GemmaConfig(**{"head_dim": 8, **kw})


def _gemma2(**kw):
    from transformers import Gemma2Config

    return Gemma2Config(**{"head_dim": 8, "sliding_window": 8, "query_pre_attn_scalar": 8, **kw})


def _gemma3_text(**kw):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(**{"head_dim": 16, "sliding_window": 8, "query_pre_attn_scalar": 16, **kw})


def _gemma3(**kw):
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    text = Gemma3TextConfig(**{"head_dim": 16, "sliding_window": 8, "query_pre_attn_scalar": 16, **kw})
    # 2x2 patches pooled to 1 image token; image tokens are ids beyond the tiny vocab
    return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=1,
                        boi_token_index=kw.get("vocab_size", VOCAB_SIZE) - 2,
                        eoi_token_index=kw.get("vocab_size", VOCAB_SIZE) - 1,
                        image_token_index=kw.get("vocab_size", VOCAB_SIZE) + 7)


def _phi3(**kw):
    from transformers import Phi3Config

    return Phi3Config(**{"pad_token_id": 0, **kw})  # fused gate_up_proj and qkv_proj


TINY_CONFIGS = {
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "gemma": _gemma,
    "gemma2": _gemma2,
    "gemma3_text": _gemma3_text,
    "gemma3": _gemma3,
    "phi3": _phi3,
}

BASE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)


def tiny_config(model_type: str, **overrides):
    if model_type not in TINY_CONFIGS:
        raise KeyError(f"no tiny config for {model_type!r}; known: {', '.join(TINY_CONFIGS)}")
    kw = {**BASE, "vocab_size": len(tiny_tokenizer()), **overrides}
    return TINY_CONFIGS[model_type](**kw)


def tiny_model(model_type: str = "llama", seed: int = 0, **overrides):
    """A randomly initialised causal LM of ``model_type`` (eval mode, float32, CPU)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init leaves norms at 1 and some biases at 0; perturb every parameter a little so
    # biases are non-zero (fold must scale them) and no channel is accidentally zero.
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def tiny_llama(seed: int = 0, **overrides):
    """``(model, tokenizer)``: a 2-layer random Llama and the offline BPE tokenizer it matches."""
    return tiny_model("llama", seed=seed, **overrides), tiny_tokenizer()


def save_tiny_llama(folder, seed: int = 0, **overrides) -> Path:
    """Save a tiny Llama + tokenizer to ``folder`` (for ``HFLM(pretrained=folder)``)."""
    model, tokenizer = tiny_llama(seed=seed, **overrides)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
