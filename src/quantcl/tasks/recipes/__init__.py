"""Ready-made task sequences.

- :func:`lessismore`: the paper's NLU -> Math -> Code sequence (arXiv 2512.18934), from the
  Hub or a local directory.
- :func:`synthetic`: offline stand-ins for the same three tasks, no download.

Example:
    >>> import quantcl as qcl
    >>> tasks = qcl.recipes.lessismore(data_dir="data/lessismore", limit_train=1000)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from quantcl.tasks.recipes.lessismore import lessismore

__all__ = ["lessismore", "synthetic"]

try:
    from quantcl.tasks.recipes.synthetic import synthetic
except ModuleNotFoundError as _exc:  # a part of the package not installed yet: import on use
    if not (_exc.name or "").startswith(("quantcl.tasks.evaluators", "quantcl.tasks.recipes.synthetic")):
        raise

    def __getattr__(name: str) -> Any:
        if name == "synthetic":
            value = importlib.import_module("quantcl.tasks.recipes.synthetic").synthetic
            globals()[name] = value
            return value
        raise AttributeError(f"module 'quantcl.tasks.recipes' has no attribute {name!r}")
