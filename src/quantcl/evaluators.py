"""``quantcl.evaluators``: the evaluators, re-exported from :mod:`quantcl.tasks.evaluators`.

Examples:
    >>> from quantcl.evaluators import MultipleChoice, NumericMatch, CodeExecution
    >>> NumericMatch().answer_phrase
    'The final answer is:'
"""

from quantcl.tasks.evaluators import *  # noqa: F403
from quantcl.tasks.evaluators import __all__  # noqa: F401
