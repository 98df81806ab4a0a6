"""``masked-hf``: the stock ``hf`` model with culture neurons ablated (see :class:`MaskedHFLM`).

Errors in the plugin's own arguments (a bad or missing neurons file, an index out of the model's
range, ``factor=nan``, an unknown ``mode``) are ``ValueError``/``OSError`` with one line saying
what is wrong.  The stock ``lm_eval`` command catches nothing, so under it (and only there: a
library caller gets the exception) :func:`plugin_errors` prints that line as
``masked-hf: error: ...`` and exits with status 2 instead of a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import sys

from lm_eval import utils as lm_eval_utils
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from .._io import file_sha256
from .ablation import MODES, Ablation, operation_factor
from .embedded import hf_kwargs, is_alias
from .fast_loglikelihood import shared_context_loglikelihood
from ..neuron_set import NeuronSet, load_sets

log = logging.getLogger("culnig-lm-eval")


def under_lm_eval_cli() -> bool:
    """Whether this call runs inside the stock ``lm_eval`` command (its ``cli_evaluate``, from the
    console script or ``python -m lm_eval``) rather than under a library caller."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "cli_evaluate":
            module = frame.f_globals.get("__name__")
            spec = frame.f_globals.get("__spec__")
            if module == "lm_eval.__main__" or getattr(spec, "name", None) == "lm_eval.__main__":
                return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def plugin_errors(model: str = "masked-hf"):
    """A user's mistake in the plugin's arguments: the exception for library callers, one line
    ``masked-hf: error: ...`` (``MODEL: error: ...``) and exit status 2 under the ``lm_eval`` command."""
    try:
        yield
    except (ValueError, LookupError, OSError) as err:
        if not under_lm_eval_cli():
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        if isinstance(err, OSError) and err.strerror:
            message = f"{err.filename + ': ' if err.filename else ''}{err.strerror}"
        print(f"{model}: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def refuse_alias_for_hf(pretrained) -> None:
    """The stock ``hf`` model given an embedded alias (``pretrained=smollm2-135m``), which it would
    look up on the hub: one line naming what works instead (called from ``HFLM.__init__`` by the
    start-up hook, ``culnig_lm_eval._startup``)."""
    if is_alias(pretrained):
        with plugin_errors("hf"):
            raise ValueError(f"pretrained={pretrained} is an embedded model of culnig-lm-eval, not a Hugging Face "
                             f"hub id: use --model masked-hf (hf plus the aliases), or "
                             f"pretrained=$(culnig-models path {pretrained}) with --model hf")


def _warn_if_empty(neuron_sets: list[NeuronSet]):
    for s in neuron_sets:
        if len(s) == 0:
            # a masked run that masks nothing would report "no effect" as if it were a finding
            log.warning("WARNING: neuron set %s holds 0 neurons: this run masks nothing", s.source)


@register_model("masked-hf")
class MaskedHFLM(HFLM):
    def __init__(
        self,
        pretrained,
        neurons: str | None = None,
        operation: str = "suppress",
        factor: float | None = None,
        mode: str = "auto",
        fast: bool = True,
        **kwargs,
    ):
        """HFLM with neuron sets ablated: ``--model masked-hf --model_args pretrained=...,neurons=a.pt+b.pt``.

        Args (besides everything ``hf`` takes):
            pretrained: hub id, local path, or an embedded alias (``smollm2-135m``, ``gemma-3-270m``).
            neurons: one or more neuron-set files joined with ``+``; their union is ablated.
                Without it the model is exactly ``hf`` (plus the aliases and a CPU default
                where there is no CUDA).
            operation: ``suppress`` (set to 0), ``enhance`` (multiply by ``factor`` > 1, default 2),
                or ``scale`` (multiply by a finite ``factor``).
            mode: ``auto`` (fold into weights where exact, hooks elsewhere), ``fold`` or ``hooks``.
            fast: score log-likelihood requests with each distinct context run once (a batch's
                contexts and options as token-trie rows) and the vocabulary projected only at
                scored positions (``fast_loglikelihood``): ``hf``'s numbers to within float
                rounding.  ``fast=false`` runs ``hf``'s own code.

        The set files (format: ``culnig_lm_eval.neuron_set``) are read and the arguments checked
        before the model loads; each set is checked against the loaded model before anything
        changes.  Folding scales the chosen projection rows once, so masked evaluation costs
        nothing extra.
        """
        with plugin_errors():  # bad arguments fail before the model loads
            if mode not in MODES:
                raise ValueError(f"mode={mode!r} is not one of {', '.join(MODES)}")
            operation_factor(operation, factor)
            if not isinstance(fast, bool):
                raise ValueError(f"fast={fast!r}: write fast=true or fast=false")
            self.neuron_sets = load_sets(neurons) if neurons else []
        self.operation, self.factor, self.mode, self.fast = operation, factor, mode, fast
        # the same (context, continuation) pairs come back in every masked state: tokenise once
        self._encoded_pairs: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        _warn_if_empty(self.neuron_sets)
        super().__init__(**hf_kwargs({"pretrained": pretrained, **kwargs}))
        with plugin_errors():  # each set against the loaded model (layers, widths, index range)
            self.ablation = (
                Ablation(self.model, self.neuron_sets, operation, factor, mode) if self.neuron_sets else None
            )

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """As ``LM.create_from_arg_string``, but ``--model_args`` win over the CLI's defaults.

        lm-eval passes ``device`` (default ``cuda:0``) and ``batch_size`` beside the parsed
        ``--model_args``; the stock method then fails with "got multiple values for keyword
        argument 'device'" when ``device=`` is also in ``--model_args``.
        """
        return cls.create_from_arg_obj(lm_eval_utils.simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """As ``LM.create_from_arg_obj`` (the path of ``lm_eval --model_args`` on lm-eval 0.4.13,
        which parses the string first), with ``--model_args`` winning over the CLI's defaults."""
        args = dict(arg_dict or {})
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        return cls(**args, **extra)

    def _encode_pair(self, context: str, continuation: str):
        key = (context, continuation)
        if key not in self._encoded_pairs:
            if len(self._encoded_pairs) >= 1_000_000:  # bounded: a long-lived model sees many tasks
                self._encoded_pairs.clear()
            self._encoded_pairs[key] = super()._encode_pair(context, continuation)
        return self._encoded_pairs[key]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if not self.fast or self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        return shared_context_loglikelihood(self, requests, disable_tqdm=disable_tqdm, override_bs=override_bs)

    @contextlib.contextmanager
    def masked(self, neuron_sets: list[NeuronSet]):
        """Apply ``neuron_sets`` (with this model's operation, factor and mode) for the block only.

        The experiment loads one model and evaluates many sets on it: inside the block
        ``get_model_info`` (and so lm-eval's results file) records exactly the sets applied.
        """
        if self.ablation is not None:
            raise RuntimeError("masked() needs an unmasked model: this one was loaded with neurons=")
        _warn_if_empty(neuron_sets)
        self.ablation = Ablation(self.model, neuron_sets, self.operation, self.factor, self.mode) if neuron_sets else None
        self.neuron_sets = list(neuron_sets)
        try:
            yield self
        finally:
            if self.ablation is not None:
                self.ablation.remove()
            self.ablation, self.neuron_sets = None, []

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        sets = [
            {"path": s.source, "sha256": file_sha256(s.source) if s.source != "<memory>" else None, "counts": s.counts()}
            for s in self.neuron_sets
        ]
        applied = self.ablation.describe() if self.ablation else {"neurons": 0}
        info["culnig_ablation"] = {**applied, "neuron_sets": sets, "fast_loglikelihood": self.fast}
        return info
