"""``culnig-experiment``: the whole study from one YAML config (``config``), score -> select ->
evaluate masked vs unmasked -> report, on one loaded model (``run``)."""
