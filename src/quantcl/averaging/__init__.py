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

Examples:
    >>> import torch
    >>> a = {"w": torch.tensor([0.0, 2.0])}
    >>> b = {"w": torch.tensor([2.0, 4.0])}
    >>> soup([a, b])["w"]
    tensor([1., 3.])
"""

from quantcl.averaging._callbacks import EMA, LAWA
from quantcl.averaging._weights import (
    Candidate,
    StateDict,
    greedy_soup,
    load_state_dict_from,
    load_trainable,
    soup,
    trainable_state_dict,
)

__all__ = ["LAWA", "EMA", "soup", "greedy_soup", "trainable_state_dict", "load_trainable", "load_state_dict_from",
           "StateDict", "Candidate"]
