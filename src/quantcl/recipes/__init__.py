"""Ready-made task sequences: data, prompt formats and evaluators, never training (the studies
that train models on them are in :mod:`quantcl.studies`).

- :func:`lessismore`: the paper's NLU -> Math -> Code sequence (arXiv 2512.18934), from the
  Hub or a local directory.
- :func:`synthetic`: offline stand-ins for the same three tasks, no download.
- :func:`stdlib_sequence`: an offline NLU -> Math -> Code sequence for real (BPE, chat) models,
  built from the Python standard library's own names, docstrings and functions.
- :func:`python_stdlib`, :func:`python_stdlib_cloze`: language modelling on the Python standard
  library's source (real text on every machine) and a held-out next-line cloze task.
- :func:`stdlib_cloze_probe`: that cloze task as a probe (general ability, scored at every row by
  lm-evaluation-harness or quantcl), offline; :func:`write_lm_eval_task` turns any rows into an
  lm-eval task folder.

Examples:
    >>> import quantcl as qcl
    >>> tasks = qcl.recipes.lessismore(data_dir="data/lessismore", limit_train=1000)  # doctest: +SKIP
"""

from __future__ import annotations

from quantcl._moved import forward_moved_names
from quantcl.recipes.lessismore import lessismore
from quantcl.recipes.probes import stdlib_cloze_probe, write_lm_eval_task
from quantcl.recipes.stdlib import python_stdlib, python_stdlib_cloze, stdlib_metadata
from quantcl.recipes.stdlib_sequence import stdlib_sequence, stdlib_sequence_metadata
from quantcl.recipes.synthetic import pretraining_corpus, synthetic

__all__ = ["lessismore", "synthetic", "pretraining_corpus", "python_stdlib", "python_stdlib_cloze", "stdlib_metadata",
           "stdlib_sequence", "stdlib_sequence_metadata", "stdlib_cloze_probe", "write_lm_eval_task"]

# the studies train models and live in quantcl.studies; here for one release, with a DeprecationWarning
__getattr__ = forward_moved_names(__name__, dict.fromkeys(
    ("transition_study", "ptq_dynamics_study", "ptq_continual_study"), "quantcl.studies"))
