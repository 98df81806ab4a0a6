"""The masked harness model: ``lm`` loads any model the way ``lm_eval`` does, ``embedded`` resolves
the shipped aliases (smollm2-135m, gemma-3-270m), ``ablation`` folds a neuron set into the weights,
and ``masked_hf`` is the ``masked-hf`` model (``hf`` plus ``neurons=``) registered with lm-eval."""
