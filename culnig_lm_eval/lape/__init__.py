"""LAPE: language/culture neurons by activation-probability entropy, beside CULNIG: corpora and
their token rows (``corpora``), the corpora folder with its lm-eval perplexity tasks (``harness``),
activation counts (``counts``), the identification (``identify``), the intervention (masking a
set, NLL per corpus: ``intervene``), the pipeline around them (``pipeline``) and the demo."""
