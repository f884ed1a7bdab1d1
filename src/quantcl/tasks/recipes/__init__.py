"""Ready-made task sequences.

- :func:`lessismore`: the paper's NLU -> Math -> Code sequence (arXiv 2512.18934), from the
  Hub or a local directory.
- :func:`synthetic`: offline stand-ins for the same three tasks, no download.

Example:
    >>> import quantcl as qcl
    >>> tasks = qcl.recipes.lessismore(data_dir="data/lessismore", limit_train=1000)  # doctest: +SKIP
"""

from __future__ import annotations

from quantcl.tasks.recipes.lessismore import lessismore
from quantcl.tasks.recipes.synthetic import pretraining_corpus, synthetic

__all__ = ["lessismore", "synthetic", "pretraining_corpus"]
