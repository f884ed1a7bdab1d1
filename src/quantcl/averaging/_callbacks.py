"""LAWA and EMA: averages of the trainable weights taken during training, as Trainer callbacks
(see :mod:`quantcl.averaging`)."""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from quantcl._checks import require_int, require_number
from quantcl.averaging._weights import StateDict, _check_keys, _trainable, load_trainable, soup, trainable_state_dict
from quantcl.errors import ConfigError

__all__ = ["LAWA", "EMA"]


def _model_from(kwargs: dict[str, Any]) -> nn.Module | None:
    model = kwargs.get("model")
    return model if isinstance(model, nn.Module) else None


class LAWA(TrainerCallback):
    """Latest weight averaging (Kaddour 2022): the mean of the last ``window`` snapshots of the
    trainable weights, one taken every ``every`` optimizer steps.

    As a ``transformers.TrainerCallback`` it snapshots in ``on_step_end`` when
    ``state.global_step % every == 0``; :meth:`snapshot` takes one by hand. Snapshots are CPU
    copies, so memory is ``window`` x the trainable parameters (small for LoRA). The window
    carries across Trainer runs (e.g. ContinualTrainer stages) until :meth:`reset`.

    Examples:
        >>> lawa = LAWA(every=50, window=5)
        >>> # Trainer(..., callbacks=[lawa]).train(); averaged = lawa.apply(model)
        >>> lawa.window, len(lawa.snapshots)
        (5, 0)
    """

    def __init__(self, every: int, window: int) -> None:
        self.every = require_int(every, "LAWA(every=...)", minimum=1)
        self.window = require_int(window, "LAWA(window=...)", minimum=1)
        self._snapshots: deque[StateDict] = deque(maxlen=self.window)
        self._steps: deque[int] = deque(maxlen=self.window)

    @property
    def snapshots(self) -> list[StateDict]:
        """The kept snapshots, oldest first (at most ``window``)."""
        return list(self._snapshots)

    @property
    def snapshot_steps(self) -> list[int]:
        """The ``global_step`` of each kept snapshot (-1 for one taken by hand)."""
        return list(self._steps)

    def snapshot(self, model: nn.Module, step: int = -1) -> None:
        """Take a snapshot of ``model``'s trainable weights now (the oldest drops out of a full window)."""
        self._snapshots.append(trainable_state_dict(model))
        self._steps.append(step)

    def reset(self) -> None:
        """Forget every snapshot (e.g. when a new adapter starts)."""
        self._snapshots.clear()
        self._steps.clear()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = _model_from(kwargs)
        if model is not None and state.global_step % self.every == 0:
            self.snapshot(model, int(state.global_step))

    def state(self) -> tuple[StateDict, dict[str, Any]]:
        """The snapshots as flat tensors (``"<i>/<name>"``) and JSON metadata, for saving."""
        tensors = {f"{i}/{name}": t for i, snap in enumerate(self._snapshots) for name, t in snap.items()}
        return tensors, {"steps": list(self._steps)}

    def load_state(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned (the window's size stays this object's)."""
        self.reset()
        for i, step in enumerate(meta["steps"]):
            prefix = f"{i}/"
            self._snapshots.append({k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)})
            self._steps.append(int(step))

    def averaged_state_dict(self) -> StateDict:
        """The uniform mean of the kept snapshots: ``(1/k) * sum_{j=1..k} theta_{t_j}``, ``k <= window``.

        Raises:
            ConfigError: no snapshot was taken yet.
        """
        if not self._snapshots:
            raise ConfigError(f"LAWA has no snapshot yet: it takes one every {self.every} optimizer steps "
                              "(train with it as a callback, or call .snapshot(model))")
        return soup(list(self._snapshots))

    def apply(self, model: nn.Module) -> nn.Module:
        """A deep copy of ``model`` with the averaged trainable weights; ``model`` is untouched."""
        averaged = self.averaged_state_dict()
        return load_trainable(copy.deepcopy(model), averaged)


class _Params(nn.Module):
    """Just the given parameters, in name order (what AveragedModel averages)."""

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        super().__init__()
        self.params = nn.ParameterList(params)


class EMA(TrainerCallback):
    """Exponential moving average of the trainable weights, updated every ``every`` optimizer steps.

    ``ema_1 = theta_1``; ``ema_n = decay * ema_{n-1} + (1 - decay) * theta_n``, i.e.
    ``ema_n = decay^(n-1) theta_1 + sum_{j=2..n} (1 - decay) decay^(n-j) theta_j``
    (``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn(decay)``), over a small
    module holding copies of the trainable tensors only, on ``device`` (default CPU).

    Examples:
        >>> ema = EMA(decay=0.9)
        >>> m = torch.nn.Linear(1, 1, bias=False)
        >>> _ = torch.nn.init.zeros_(m.weight); ema.update(m)
        >>> _ = torch.nn.init.ones_(m.weight); ema.update(m)
        >>> round(ema.averaged_state_dict()["weight"].item(), 6)
        0.1
    """

    def __init__(self, decay: float, every: int = 1, *, device: str | torch.device = "cpu") -> None:
        self.decay = require_number(decay, "EMA(decay=...)", low=0, high=1, low_open=True)
        if self.decay >= 1:
            raise ConfigError(f"EMA(decay=...) must be a number in (0, 1), got {decay!r}")
        self.every = require_int(every, "EMA(every=...)", minimum=1)
        self.device = torch.device(device)
        self._names: list[str] | None = None
        self._averaged: torch.optim.swa_utils.AveragedModel | None = None

    @property
    def num_updates(self) -> int:
        """How many parameter values have been averaged in."""
        return 0 if self._averaged is None else int(self._averaged.n_averaged.item())

    def reset(self) -> None:
        """Forget the average (the next update starts from the parameters as they are)."""
        self._names, self._averaged = None, None

    def update(self, model: nn.Module) -> None:
        """Average ``model``'s current trainable weights in (the first update copies them)."""
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        params = _trainable(model)
        names = [n for n, _ in params]
        if self._averaged is None or self._names is None:
            holder = _Params([nn.Parameter(p.detach().to(self.device, copy=True), requires_grad=False)
                              for _, p in params])
            self._averaged = AveragedModel(holder, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=False)
            self._names = names
        else:
            _check_keys(self._names, names, "the EMA", "the model's trainable parameters")
        # a view of the live parameters (no copy); AveragedModel moves them to its device itself
        self._averaged.update_parameters(_Params([p for _, p in params]))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = _model_from(kwargs)
        if model is not None and state.global_step % self.every == 0:
            self.update(model)

    def state(self) -> tuple[StateDict, dict[str, Any]]:
        """The average (CPU tensors) and JSON metadata (names, updates), for saving."""
        if self._averaged is None or self._names is None:
            return {}, {"names": None, "num_updates": 0}
        return self.averaged_state_dict(), {"names": list(self._names), "num_updates": self.num_updates}

    def load_state(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned: the next update continues the same average."""
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.reset()
        if not meta["num_updates"]:
            return
        names = list(meta["names"])
        holder = _Params([nn.Parameter(tensors[n].to(self.device, copy=True), requires_grad=False) for n in names])
        self._averaged = AveragedModel(holder, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=False)
        for mine, saved in zip(self._averaged.module.parameters(), holder.parameters()):
            mine.detach().copy_(saved)  # AveragedModel deep-copies its module
        self._averaged.n_averaged.fill_(int(meta["num_updates"]))
        self._names = names

    def averaged_state_dict(self) -> StateDict:
        """CPU copies of the averaged trainable weights, keyed like :func:`trainable_state_dict`.

        Raises:
            ConfigError: no update happened yet.
        """
        if self._averaged is None or self._names is None or self.num_updates == 0:
            raise ConfigError(f"EMA has no average yet: it updates every {self.every} optimizer steps "
                              "(train with it as a callback, or call .update(model))")
        values = list(self._averaged.module.parameters())  # the holder's, in name order
        return {n: p.detach().to("cpu", copy=True) for n, p in zip(self._names, values)}

    def apply(self, model: nn.Module) -> nn.Module:
        """A deep copy of ``model`` with the averaged trainable weights; ``model`` is untouched."""
        averaged = self.averaged_state_dict()
        return load_trainable(copy.deepcopy(model), averaged)
