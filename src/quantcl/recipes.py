"""``quantcl.recipes``: ready-made task sequences, re-exported from :mod:`quantcl.tasks.recipes`,
and the studies of :mod:`quantcl.studies` (``transition_study``, ``ptq_dynamics_study``,
``ptq_continual_study``).

Examples:
    >>> from quantcl.recipes import synthetic
    >>> synthetic(n_train=8, n_eval=4).names
    ['nlu', 'math', 'code']
"""

from typing import Any

from quantcl.tasks.recipes import *  # noqa: F403
from quantcl.tasks.recipes import __all__ as _TASK_RECIPES

_STUDIES = ("transition_study", "ptq_dynamics_study", "ptq_continual_study")
__all__ = [*_TASK_RECIPES, *_STUDIES]


def __getattr__(name: str) -> Any:
    # the studies import the trainer: loaded on first use, not with the task recipes
    if name in _STUDIES:
        import quantcl.studies

        return getattr(quantcl.studies, name)
    raise AttributeError(f"module 'quantcl.recipes' has no attribute {name!r}")
