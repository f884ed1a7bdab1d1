"""Ready-made task sequences.

- :func:`lessismore`: the paper's NLU -> Math -> Code sequence (arXiv 2512.18934), from the
  Hub or a local directory.
- :func:`synthetic`: offline stand-ins for the same three tasks, no download.
- :func:`stdlib_sequence`: an offline NLU -> Math -> Code sequence for real (BPE, chat) models,
  built from the Python standard library's own names, docstrings and functions.
- :func:`python_stdlib`, :func:`python_stdlib_cloze`: language modelling on the Python standard
  library's source (real text on every machine) and a held-out next-line cloze task.

Examples:
    >>> import quantcl as qcl
    >>> tasks = qcl.recipes.lessismore(data_dir="data/lessismore", limit_train=1000)  # doctest: +SKIP
"""

from __future__ import annotations

from quantcl.tasks.recipes.lessismore import lessismore
from quantcl.tasks.recipes.stdlib import python_stdlib, python_stdlib_cloze, stdlib_metadata
from quantcl.tasks.recipes.stdlib_sequence import stdlib_sequence, stdlib_sequence_metadata
from quantcl.tasks.recipes.synthetic import pretraining_corpus, synthetic

__all__ = ["lessismore", "synthetic", "pretraining_corpus", "python_stdlib", "python_stdlib_cloze", "stdlib_metadata",
           "stdlib_sequence", "stdlib_sequence_metadata"]
