"""State dicts of the trainable parameters and model soups (see :mod:`quantcl.averaging`)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Union

import torch
from torch import nn

from quantcl._checks import require_number
from quantcl.errors import ConfigError

__all__ = ["soup", "greedy_soup", "trainable_state_dict", "load_trainable", "load_state_dict_from", "StateDict",
           "Candidate", "ADAPTER_FILE"]

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

    Examples:
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

    Examples:
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

    Examples:
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

    Examples:
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


