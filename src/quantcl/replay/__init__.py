"""Replay of earlier tasks' examples: :class:`ReplayBuffer` and selection strategies."""

from quantcl.replay.buffer import FORMAT_VERSION, ReplayBuffer
from quantcl.replay.strategies import (
    ReplayScorer,
    ReplayStrategy,
    Reservoir,
    get_strategy,
    register_strategy,
    strategy_names,
)

__all__ = ["ReplayBuffer", "ReplayScorer", "ReplayStrategy", "Reservoir", "FORMAT_VERSION",
           "get_strategy", "register_strategy", "strategy_names"]
