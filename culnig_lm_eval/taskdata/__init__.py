"""Documents and metrics of the harness tasks in ``tasks/``: where the rows come from
(``sources``), the dataset builders the task YAMLs name as ``custom_dataset`` (``builders``,
``prompt_variants``, ``wvb``, ``finetune_demo``) and the hooks that score their answers
(``generation``, ``wvb``)."""
