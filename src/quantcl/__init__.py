"""quantcl: continual LoRA fine-tuning of causal LMs at any weight precision.

Four composable objects make up the public API::

    import quantcl as qcl
    policy = qcl.PrecisionPolicy("nf4")
    tasks = qcl.recipes.synthetic(seed=0)
    replay = qcl.ReplayBuffer(fraction=0.01, strategy="reservoir", seed=0)
    trainer = qcl.ContinualTrainer(model="path-or-hub-id", precision=policy, tasks=tasks,
                                   replay=replay, output_dir="runs/x")
    result = trainer.fit()

Heavy submodules (torch, transformers) are imported on first attribute access, so
``import quantcl`` and ``quantcl --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from quantcl import _moved
from quantcl._version import __version__
from quantcl.errors import (
    ConfigError,
    HubUnreachableError,
    QuantCLError,
    RunsFailedError,
    StateError,
    UnknownNameError,
    UnsafeCodeError,
    UnsupportedDeviceError,
)
from quantcl.precision.bnb import quiet_bitsandbytes_import

quiet_bitsandbytes_import()
_moved.install()  # modules moved in 0.2 stay importable at their old paths for one release

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "PrecisionPolicy": "quantcl.precision",
    "ReplayBuffer": "quantcl.replay",
    "ReplayStrategy": "quantcl.replay",
    "ReplayScorer": "quantcl.replay",
    "register_strategy": "quantcl.replay",
    "strategy_names": "quantcl.replay",
    "Task": "quantcl.tasks",
    "TaskSequence": "quantcl.tasks",
    "Probe": "quantcl.tasks",
    "EvalResult": "quantcl.evaluators",
    "Evaluator": "quantcl.evaluators",
    "register_evaluator": "quantcl.evaluators",
    "Component": "quantcl.components",
    "ContinualTrainer": "quantcl.trainer",
    "StageArgs": "quantcl.stage_args",
    "StageCallback": "quantcl.plugins",
    "StagePlugin": "quantcl.plugins",
    "TrainerSpec": "quantcl.plugins",
    "ReplayPlugin": "quantcl.plugins",
    "PrecisionSchedule": "quantcl.plugins",
    "PTQProbe": "quantcl.plugins",
    "GradientSimilarity": "quantcl.plugins",
    "EWC": "quantcl.plugins",
    "AGEM": "quantcl.plugins",
    "JointTraining": "quantcl.plugins",
    "OLoRA": "quantcl.plugins",
    "AdapterMerging": "quantcl.plugins",
    "LwF": "quantcl.plugins",
    "PTQProbeResult": "quantcl.plugins",
    "ContinualResult": "quantcl.results",
    "compute_metrics": "quantcl.metrics",
    "Sweep": "quantcl.sweep",
    "SweepResult": "quantcl.sweep",
}
# subpackages and modules reachable as attributes (``qcl.studies``) without importing them first
_SUBMODULES = {name: f"quantcl.{name}" for name in (
    "tasks", "evaluators", "sandbox", "recipes", "precision", "replay", "plugins", "averaging", "metrics",
    "results", "components", "sweep", "studies", "models")}

__all__ = [
    "__version__",
    "QuantCLError",
    "ConfigError",
    "UnknownNameError",
    "UnsupportedDeviceError",
    "StateError",
    "UnsafeCodeError",
    "HubUnreachableError",
    "RunsFailedError",
    *_LAZY,
    *_SUBMODULES,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(_SUBMODULES[name])
    else:
        raise AttributeError(f"module 'quantcl' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from quantcl.components import Component
    from quantcl.metrics import compute_metrics
    from quantcl.plugins import (AGEM, EWC, AdapterMerging, GradientSimilarity, JointTraining, LwF, OLoRA, PrecisionSchedule, PTQProbe,
                                 PTQProbeResult, ReplayPlugin, StageCallback, StagePlugin, TrainerSpec)
    from quantcl.precision import PrecisionPolicy
    from quantcl.replay import ReplayBuffer, ReplayScorer, ReplayStrategy, register_strategy, strategy_names
    from quantcl.results import ContinualResult
    from quantcl.stage_args import StageArgs
    from quantcl.sweep import Sweep, SweepResult
    from quantcl.evaluators import EvalResult, Evaluator, register_evaluator
    from quantcl.tasks import Probe, Task, TaskSequence
    from quantcl.trainer import ContinualTrainer
