"""Plug-ins: what watches or changes a continual stage through its hooks.

Examples:
    >>> from quantcl.plugins import StagePlugin
    >>> class Halve(StagePlugin):
    ...     def loss(self, trainer, model, inputs, outputs, loss):
    ...         return loss / 2
"""

from quantcl.plugins.base import (AfterLossLog, StageCallback, StagePlugin, TrainerSpec, load_checkpoint_state,
                                  save_checkpoint_state)
from quantcl.plugins.lwf import LwF
from quantcl.plugins.precision_schedule import PrecisionSchedule
from quantcl.plugins.ptq_probe import PTQProbe, PTQProbeResult
from quantcl.plugins.replay import ReplayPlugin
from quantcl.plugins.weight_averaging import WeightAveraging

__all__ = ["StagePlugin", "StageCallback", "TrainerSpec", "ReplayPlugin", "PrecisionSchedule", "PTQProbe",
           "PTQProbeResult", "LwF", "WeightAveraging", "AfterLossLog", "save_checkpoint_state", "load_checkpoint_state"]
