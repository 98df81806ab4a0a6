"""Documents and metrics of the harness tasks in ``tasks/``: where a dataset's rows come from
(``sources``), what every builder's documents share (``documents``) and how builders read their
options (``options``), the builders the task YAMLs name as ``custom_dataset`` (``builders``,
``prompt_variants``, ``wvb``, ``finetune_demo``) and the hooks that score the answers
(``generation``, ``wvb``)."""
