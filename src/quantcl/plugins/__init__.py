"""Plug-ins: what watches or changes a continual stage through its hooks.

Examples:
    >>> from quantcl.plugins import StagePlugin
    >>> class Halve(StagePlugin):
    ...     def loss(self, trainer, model, inputs, outputs, loss):
    ...         return loss / 2
"""

from quantcl.plugins.base import StageCallback, StagePlugin, TrainerSpec
from quantcl.plugins.precision_schedule import PrecisionSchedule
from quantcl.plugins.ptq_probe import PTQProbe, PTQProbeResult
from quantcl.plugins.replay import ReplayPlugin

__all__ = ["StagePlugin", "StageCallback", "TrainerSpec", "ReplayPlugin", "PrecisionSchedule", "PTQProbe",
           "PTQProbeResult"]
