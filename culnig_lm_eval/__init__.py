"""culnig-lm-eval: culture neurons (CULNIG and LAPE) inside lm-evaluation-harness.

The folders follow the flow: ``tasks/`` (harness YAML) -> ``taskdata`` (the tasks' documents)
-> ``scoring`` (attribution scores from the same task requests) -> ``selection``
(culture-general and culture-specific sets) -> ``neuron_set`` (the file format) -> ``model``
(the ``masked-hf`` harness model) -> ``experiment`` (the whole study from one config) ->
``report`` (masked vs unmasked comparison); ``lape`` and ``finetune`` sit beside them, the
commands in ``cli``.

This module stays import-light: it is imported at interpreter start-up by the ``.pth`` hook.
"""

__all__ = ["NeuronSet", "NeuronSetError", "MaskedHFLM"]


def __getattr__(name):
    if name in ("NeuronSet", "NeuronSetError"):
        from . import neuron_set

        return getattr(neuron_set, name)
    if name == "MaskedHFLM":
        from .model.masked_hf import MaskedHFLM

        return MaskedHFLM
    raise AttributeError(name)
