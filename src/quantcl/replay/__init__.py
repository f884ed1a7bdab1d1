"""Replay of earlier tasks' examples: :class:`ReplayBuffer` and selection strategies.

Modules, each importing only those before it: ``reservoir`` (Algorithm R sampling), ``strategies``
(what to keep), ``mixing`` (replayed + new rows on Arrow tables), ``storage`` (files on disk),
``buffer`` (the :class:`ReplayBuffer` composing them).
"""

from quantcl.replay.buffer import ReplayBuffer
from quantcl.replay.reservoir import Reservoir
from quantcl.replay.storage import FORMAT_VERSION
from quantcl.replay.strategies import (
    ReplayScorer,
    ReplayStrategy,
    get_strategy,
    register_strategy,
    strategy_names,
)

__all__ = ["ReplayBuffer", "ReplayScorer", "ReplayStrategy", "Reservoir", "FORMAT_VERSION",
           "get_strategy", "register_strategy", "strategy_names"]
