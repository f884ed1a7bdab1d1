"""Plug-ins: what watches or changes a continual stage through its hooks.

Examples:
    >>> from quantcl.plugins import StagePlugin
    >>> class Halve(StagePlugin):
    ...     def loss(self, trainer, model, inputs, outputs, loss):
    ...         return loss / 2
"""

from quantcl.plugins.base import (AfterLossLog, StageCallback, StagePlugin, TrainerSpec, load_checkpoint_state,
                                  save_checkpoint_state)
from quantcl.plugins.agem import AGEM
from quantcl.plugins.ewc import EWC
from quantcl.plugins.gradients import GradientSimilarity
from quantcl.plugins.joint import JointTraining
from quantcl.plugins.lwf import LwF
from quantcl.plugins.merging import AdapterMerging
from quantcl.plugins.olora import OLoRA
from quantcl.plugins.osf import OSFBudget
from quantcl.plugins.precision_schedule import PrecisionSchedule
from quantcl.plugins.ptq_probe import PTQProbe, PTQProbeResult
from quantcl.plugins.replay import ReplayPlugin
from quantcl.plugins.stage_soup import StageSoup
from quantcl.plugins.weight_averaging import WeightAveraging

__all__ = ["StagePlugin", "StageCallback", "TrainerSpec", "ReplayPlugin", "PrecisionSchedule", "PTQProbe",
           "PTQProbeResult", "LwF", "WeightAveraging", "StageSoup", "GradientSimilarity", "EWC", "AGEM", "JointTraining", "OLoRA", "OSFBudget", "AdapterMerging", "AfterLossLog", "save_checkpoint_state", "load_checkpoint_state",
           "NAMED_PLUGINS", "plugin_path"]

#: the built-in plug-ins a YAML config names with ``type:`` (replay has a key of its own)
NAMED_PLUGINS = ("LwF", "EWC", "AGEM", "OLoRA", "AdapterMerging", "JointTraining", "PTQProbe", "WeightAveraging",
                 "GradientSimilarity", "PrecisionSchedule", "StageSoup", "OSFBudget")


def plugin_path(name: str) -> str:
    """The dotted path of the built-in plug-in ``name`` (``{type: LwF}`` in a config's ``plugins:``).

    Raises:
        UnknownNameError: not one of :data:`NAMED_PLUGINS` (the message lists them).

    Examples:
        >>> plugin_path("LwF")
        'quantcl.plugins.LwF'
    """
    from quantcl.errors import UnknownNameError

    if name not in NAMED_PLUGINS:
        raise UnknownNameError(f"{name!r} is not a built-in plug-in; valid: {list(NAMED_PLUGINS)}, or name any "
                               "StagePlugin with _component_: package.module.Class")
    return f"quantcl.plugins.{name}"
