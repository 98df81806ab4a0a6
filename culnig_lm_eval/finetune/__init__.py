"""Fine-tuning by module choice: rank a model's modules by the neuron sets they hold and pick
top, bottom or random ones within a parameter budget (``modules``), build training examples from
a harness task or a JSONL file (``examples``), train and evaluate along the way (``train``), and
compare the choices (``compare``, formatted by ``report``)."""
