"""Score tables -> neuron sets: the CULNIG selection rules (``rules``), random baselines
(``random_sets``), the sets folder written as one unit (``save``), the stability of a selection
over halves of the items (``stability``), and the study that compares selection rules on one
score folder (``study``, its results and Markdown in ``study_report``)."""
