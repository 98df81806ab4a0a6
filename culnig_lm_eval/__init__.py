"""culnig-lm-eval: culture neurons (CULNIG and LAPE) inside lm-evaluation-harness.

The flow of the package follows the folders: ``tasks/`` (harness YAML) -> ``scoring``
(attribution scores from the same task requests) -> ``selection`` (culture-general and
culture-specific sets) -> ``neuron_set`` (the file format) -> ``masked_hf`` (the ``masked-hf``
harness model) -> ``report`` (masked vs unmasked comparison).

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
