"""Score tables -> neuron sets: the CULNIG selection rules (``rules``), random baselines, the
sets folder written as one unit, the stability of a selection over halves of the items
(``stability``) and the study that compares selection rules on one score folder (``study``)."""
