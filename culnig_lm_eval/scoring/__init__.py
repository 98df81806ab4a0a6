"""CULNIG attribution scores from harness tasks: the harness's own requests as samples
(``samples``), activation x gradient per neuron summed per culture (``attribution``), whole
scoring runs per role (``run``), score files on disk (``tables``) and per-item set scores for the
report's instance view (``instances``)."""
