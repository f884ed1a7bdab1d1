"""``quantcl.recipes``: ready-made task sequences, re-exported from :mod:`quantcl.tasks.recipes`.

Example:
    >>> from quantcl.recipes import synthetic
    >>> synthetic(n_train=8, n_eval=4).names
    ['nlu', 'math', 'code']
"""

from quantcl.tasks.recipes import *  # noqa: F403
from quantcl.tasks.recipes import __all__  # noqa: F401
