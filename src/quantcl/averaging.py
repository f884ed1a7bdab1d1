"""Weight averaging of the trainable parameters: LAWA, EMA, model soups.

Everything here works on the *trainable* parameters only (``requires_grad``), keyed by
``model.named_parameters()`` names: for a peft LoRA model that is the adapter, so a snapshot
costs a few MB; for a fully fine-tuned model it is every trained weight.

- :class:`LAWA` (Kaddour 2022, "latest weight averaging"): every ``every`` optimizer steps keep a
  CPU copy of the trainable weights, the last ``window`` of them; the average is their mean.
- :class:`EMA`: an exponential moving average (``torch.optim.swa_utils.AveragedModel``) of the
  trainable weights, updated every ``every`` steps.
- :func:`soup` / :func:`greedy_soup` (Wortsman et al. 2022): uniform/weighted mean of finished
  checkpoints or adapters, and the greedy subset that does not hurt a validation loss.

Example:
    >>> import torch
    >>> a = {"w": torch.tensor([0.0, 2.0])}
    >>> b = {"w": torch.tensor([2.0, 4.0])}
    >>> soup([a, b])["w"]
    tensor([1., 3.])
"""

from __future__ import annotations

import copy
import math
import os
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn
from transformers import TrainerCallback

from quantcl._checks import require_int, require_number
from quantcl.errors import ConfigError

__all__ = ["LAWA", "EMA", "soup", "greedy_soup", "trainable_state_dict", "load_trainable", "load_state_dict_from",
           "StateDict", "Candidate"]

StateDict = dict[str, torch.Tensor]
#: A checkpoint to average: a state dict, a module (its trainable parameters), a saved peft
#: adapter directory (``adapter_model.safetensors``) or a ``.safetensors`` file.
Candidate = Union[Mapping[str, torch.Tensor], nn.Module, str, "os.PathLike[str]"]

ADAPTER_FILE = "adapter_model.safetensors"


# ----------------------------------------------------------------------------- state dicts


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def trainable_state_dict(model: nn.Module) -> StateDict:
    """CPU clones of ``model``'s parameters with ``requires_grad``, keyed by ``named_parameters`` names.

    For a peft LoRA model these are the adapter weights only.

    Example:
        >>> m = torch.nn.Linear(2, 1)
        >>> m.bias.requires_grad_(False) and None
        >>> list(trainable_state_dict(m))
        ['weight']
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"trainable_state_dict(model=...) must be a torch.nn.Module, got {type(model).__name__}")
    return {n: p.detach().to("cpu", copy=True) for n, p in _trainable(model)}


def load_trainable(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Copy ``state_dict`` into ``model``'s trainable parameters in place; returns ``model``.

    The keys must be exactly the trainable parameter names (as :func:`trainable_state_dict`
    gives them) and the shapes must match; values are cast to each parameter's dtype and device.
    A state dict read from a saved adapter file (peft's key names, without the adapter name) is
    loaded with ``peft.set_peft_model_state_dict`` instead.

    Raises:
        ConfigError: a missing or unexpected key, or a shape mismatch (nothing is copied then).

    Example:
        >>> m = torch.nn.Linear(1, 1, bias=False)
        >>> load_trainable(m, {"weight": torch.tensor([[3.0]])}).weight.item()
        3.0
    """
    params = _trainable(model)
    names = [n for n, _ in params]
    _check_keys(names, list(state_dict), "the model's trainable parameters", "the state dict")
    for name, p in params:
        if tuple(state_dict[name].shape) != tuple(p.shape):
            raise ConfigError(f"load_trainable: {name!r} has shape {tuple(state_dict[name].shape)} in the state dict, "
                              f"{tuple(p.shape)} in the model")
    with torch.no_grad():
        for name, p in params:
            p.copy_(state_dict[name].to(device=p.device, dtype=p.dtype))
    return model


def load_state_dict_from(candidate: Candidate) -> StateDict:
    """``candidate`` as a ``{name: tensor}`` dict: a mapping as is (shallow copy), a module's
    :func:`trainable_state_dict`, or the tensors of an adapter directory / ``.safetensors`` file.

    Raises:
        ConfigError: a path with no ``adapter_model.safetensors``, or another type.
    """
    if isinstance(candidate, nn.Module):
        return trainable_state_dict(candidate)
    if isinstance(candidate, Mapping):
        if not candidate:
            raise ConfigError("a state dict must map parameter names (str) to torch.Tensor, but it is empty")
        for k, v in candidate.items():
            if not isinstance(k, str) or not isinstance(v, torch.Tensor):
                raise ConfigError("a state dict must map parameter names (str) to torch.Tensor, but it maps "
                                  f"{k!r} to a {type(v).__name__}")
        return dict(candidate)
    if isinstance(candidate, (str, os.PathLike)):
        from safetensors.torch import load_file

        path = Path(candidate)
        file = path / ADAPTER_FILE if path.is_dir() else path
        if not file.is_file() or file.suffix != ".safetensors":
            raise ConfigError(f"{str(candidate)!r} is neither a saved adapter directory (with {ADAPTER_FILE}) "
                              "nor a .safetensors file")
        return load_file(str(file), device="cpu")
    raise ConfigError("a checkpoint to average must be a state dict, a torch.nn.Module, an adapter directory or a "
                      f".safetensors path, got {type(candidate).__name__}")


def _check_keys(ref: list[str], other: list[str], ref_what: str, other_what: str) -> None:
    missing = [k for k in ref if k not in set(other)]
    if missing:
        raise ConfigError(f"key {missing[0]!r} is in {ref_what} but not in {other_what}")
    extra = [k for k in other if k not in set(ref)]
    if extra:
        raise ConfigError(f"key {extra[0]!r} is in {other_what} but not in {ref_what}")


def _check_compatible(state_dicts: Sequence[StateDict]) -> None:
    ref = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], start=1):
        _check_keys(list(ref), list(sd), "checkpoint 0", f"checkpoint {i}")
        for k, t in ref.items():
            if tuple(sd[k].shape) != tuple(t.shape):
                raise ConfigError(f"key {k!r} has shape {tuple(t.shape)} in checkpoint 0 but {tuple(sd[k].shape)} "
                                  f"in checkpoint {i}")


# ----------------------------------------------------------------------------- soups


def soup(models_or_state_dicts: Sequence[Candidate], *, weights: Sequence[float] | None = None) -> StateDict:
    """The uniform (or ``weights``-weighted) mean of several checkpoints, key by key.

    ``soup[k] = sum_i w_i * sd_i[k] / sum_i w_i`` (``w_i = 1`` by default), computed in at least
    float32 and cast back to the first checkpoint's dtype. Non-float tensors (integer buffers)
    must be equal in every checkpoint and are kept as they are. The result is on the CPU.

    Args:
        models_or_state_dicts: state dicts, modules (their trainable parameters), saved adapter
            directories or ``.safetensors`` files, all with the same keys and shapes.
        weights: one non-negative number per checkpoint, not all zero.

    Raises:
        ConfigError: no checkpoints; keys or shapes differ (naming the first differing key); bad weights.

    Example:
        >>> soup([{"w": torch.tensor(0.0)}, {"w": torch.tensor(3.0)}], weights=[2, 1])["w"]
        tensor(1.)
    """
    if isinstance(models_or_state_dicts, (str, Mapping, nn.Module)) or not isinstance(models_or_state_dicts, Sequence):
        raise ConfigError("soup(models_or_state_dicts=...) must be a list of checkpoints, got "
                          f"{type(models_or_state_dicts).__name__}")
    if not models_or_state_dicts:
        raise ConfigError("soup(models_or_state_dicts=...) needs at least one checkpoint, got an empty list")
    sds = [load_state_dict_from(c) for c in models_or_state_dicts]
    _check_compatible(sds)
    w: torch.Tensor | None = None
    if weights is not None:
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) or len(weights) != len(sds):
            raise ConfigError(f"soup(weights=...) must be a list of {len(sds)} numbers (one per checkpoint), "
                              f"got {weights!r}")
        ws = [require_number(x, f"soup(weights[{i}])", low=0) for i, x in enumerate(weights)]
        if sum(ws) <= 0:
            raise ConfigError(f"soup(weights=...) must not all be zero, got {list(weights)!r}")
        w = torch.tensor(ws, dtype=torch.float64) / sum(ws)
    out: StateDict = {}
    for k, t in sds[0].items():
        if not (t.is_floating_point() or t.is_complex()):
            if any(not torch.equal(sd[k].cpu(), t.cpu()) for sd in sds[1:]):
                raise ConfigError(f"key {k!r} is a non-float tensor ({t.dtype}) that differs between checkpoints; "
                                  "only floating-point tensors can be averaged")
            out[k] = t.detach().to("cpu", copy=True)
            continue
        acc = torch.promote_types(t.dtype, torch.float32)
        stacked = torch.stack([sd[k].detach().to(device="cpu", dtype=acc) for sd in sds])
        if w is None:
            mean = stacked.mean(dim=0)
        else:
            mean = (stacked * w.to(acc).view(-1, *([1] * t.dim()))).sum(dim=0)
        out[k] = mean.to(t.dtype)
    return out


def _loss(evaluate_loss: Callable[[StateDict], float], sd: StateDict, what: str) -> float:
    value = evaluate_loss(sd)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"evaluate_loss must return a number (lower is better), got {type(value).__name__} "
                          f"for {what}")
    return math.inf if math.isnan(value) else float(value)  # a diverged candidate is the worst


def greedy_soup(candidates: Sequence[Candidate],
                evaluate_loss: Callable[[StateDict], float]) -> tuple[StateDict, list[int]]:
    """Greedy model soup (Wortsman et al. 2022).

    Sort the candidates by their own ``evaluate_loss`` ascending; start from the best; then for
    each next one, keep it if the uniform :func:`soup` of the kept ones plus it has a loss
    ``<=`` the current soup's. So the result is never worse (on ``evaluate_loss``) than the best
    single candidate. ``evaluate_loss`` is called ``2 * len(candidates) - 1`` times.

    Args:
        candidates: state dicts, modules, adapter directories or ``.safetensors`` files with the
            same keys and shapes.
        evaluate_loss: ``state_dict -> float``, lower is better (e.g. load the state dict into a
            copy of the model with :func:`load_trainable` and return its validation loss).
            NaN counts as infinitely bad.

    Returns:
        ``(soup state dict, chosen indices into candidates, in the order they were added)``.

    Example:
        >>> cands = [{"w": torch.tensor(1.0)}, {"w": torch.tensor(-1.0)}, {"w": torch.tensor(5.0)}]
        >>> sd, chosen = greedy_soup(cands, lambda s: float(s["w"] ** 2))
        >>> chosen, sd["w"].item()
        ([0, 1], 0.0)
    """
    if isinstance(candidates, (str, Mapping, nn.Module)) or not isinstance(candidates, Sequence):
        raise ConfigError(f"greedy_soup(candidates=...) must be a list of checkpoints, got {type(candidates).__name__}")
    if not candidates:
        raise ConfigError("greedy_soup(candidates=...) needs at least one checkpoint, got an empty list")
    if not callable(evaluate_loss):
        raise ConfigError(f"greedy_soup(evaluate_loss=...) must be callable, got {type(evaluate_loss).__name__}")
    sds = [load_state_dict_from(c) for c in candidates]
    _check_compatible(sds)
    losses = [_loss(evaluate_loss, sd, f"candidate {i}") for i, sd in enumerate(sds)]
    order = sorted(range(len(sds)), key=lambda i: (losses[i], i))
    chosen = [order[0]]
    best_loss = losses[order[0]]
    best = soup([sds[order[0]]])  # a copy: the caller's tensors are never returned
    for i in order[1:]:
        trial = soup([sds[j] for j in [*chosen, i]])
        loss = _loss(evaluate_loss, trial, f"the soup of candidates {[*chosen, i]}")
        if loss <= best_loss:
            chosen.append(i)
            best, best_loss = trial, loss
    return best, chosen


# ----------------------------------------------------------------------------- callbacks


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

    Example:
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

    Example:
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
