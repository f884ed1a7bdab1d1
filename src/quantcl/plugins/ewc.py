"""EWC: Elastic Weight Consolidation (Kirkpatrick et al., 2017, arXiv 1612.00796) as a stage plug-in.

After each stage ``k`` the plug-in estimates how much each trainable parameter mattered for that
stage's task, by the diagonal of the **empirical** Fisher information at the stage's final
weights ``theta*_k``, over ``fisher_rows`` of the stage's training rows::

    F_k,i = 1/N sum_n ( d/d theta_i  log p(y_n | x_n; theta*_k) )^2

where ``log p(y_n | x_n)`` is the mean log-likelihood of example ``n``'s target tokens (its
training loss, negated): one backward pass per example, at the stage's end. ("Empirical": the
gradient of the observed targets, not of labels sampled from the model, which is the true Fisher.)
From stage 2 on, every training step's loss becomes::

    loss = CE + ewc_lambda / 2 * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2      (mode="separate")

with one term per finished stage, as in the paper; ``mode="online"`` (online EWC, Schwarz et al.,
2018, arXiv 1805.06370) keeps a single term, ``F <- decay_factor * F + F_k`` and
``theta* <- theta*_k``. The parameters are the trainable ones (the LoRA adapters on a frozen base,
whatever its precision). The Fisher and anchors are saved with every stage (safetensors) and
restored on resume; the Fisher pass runs under a forked torch RNG, in eval mode.

Examples:
    >>> EWC(ewc_lambda=100.0, mode="online", decay_factor=0.9).to_dict()["mode"]
    'online'
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantcl._checks import require_choice, require_int, require_number
from quantcl.errors import StateError
from quantcl.plugins.base import StagePlugin

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from quantcl.tasks import Task
    from quantcl.trainer import ContinualTrainer

__all__ = ["EWC", "empirical_fisher", "ewc_penalty"]

STATE_FILE = "ewc.safetensors"


def empirical_fisher(model: Any, rows: list[dict[str, Any]], collate: Any) -> dict[str, torch.Tensor]:
    """``{parameter name: F}`` over the trainable parameters: the mean over ``rows`` (tokenized
    training rows) of the squared gradient of each row's mean target log-likelihood."""
    import torch

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    device = next(iter(params.values())).device
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            for row in rows:
                batch = {k: v.to(device) for k, v in collate([row]).items()}
                model.zero_grad(set_to_none=True)
                model(**batch).loss.backward()  # -log-likelihood: its square is the same
                for n, p in params.items():
                    if p.grad is not None:
                        fisher[n] += p.grad.detach().float() ** 2
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {n: f / max(len(rows), 1) for n, f in fisher.items()}


def ewc_penalty(params: dict[str, torch.Tensor], terms: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]],
                ewc_lambda: float) -> torch.Tensor:
    """``ewc_lambda / 2 * sum over (F, theta*) in terms of sum_i F_i (theta_i - theta*_i)^2``, over the
    parameters in ``params`` (the trainable ones)."""
    total: Any = 0.0
    for fisher, anchor in terms:
        for n, f in fisher.items():
            if n in params:
                total = total + (f * (params[n].float() - anchor[n]) ** 2).sum()
    return ewc_lambda / 2 * total


class EWC(StagePlugin):
    """Elastic Weight Consolidation on the trainable parameters (see the module documentation).

    Args:
        ewc_lambda: the penalty's weight ``lambda`` (0 turns it off).
        mode: ``"separate"`` (one term per finished stage, the paper's) or ``"online"`` (one
            accumulated term).
        decay_factor: ``"online"`` only: ``gamma`` in ``F <- gamma F + F_k``.
        fisher_rows: training rows of each stage used to estimate its Fisher (its first ones).
    """

    def __init__(self, ewc_lambda: float = 100.0, mode: str = "separate", decay_factor: float = 1.0,
                 fisher_rows: int = 64) -> None:
        self.ewc_lambda = float(require_number(ewc_lambda, "EWC(ewc_lambda=...)", low=0))
        self.mode = require_choice(mode, "EWC(mode=...)", ["separate", "online"])
        self.decay_factor = float(require_number(decay_factor, "EWC(decay_factor=...)", low=0))
        self.fisher_rows = require_int(fisher_rows, "EWC(fisher_rows=...)", minimum=1)
        self.terms: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (F, theta*) per term
        self._placed = False

    @property
    def state_key(self) -> str:
        return "ewc"

    def check(self, trainer: ContinualTrainer) -> None:
        from quantcl.errors import ConfigError

        if trainer.training == "lora" and trainer.adapter_mode == "merge":
            raise ConfigError("EWC anchors the trainable parameters at each stage's end, but adapter_mode='merge' "
                              "merges them into the base and starts new ones (LoRA from zero, OSF from a new SVD): "
                              "the penalty would pull the new adapter towards the old one's values; use "
                              "adapter_mode='continue' (or training='full')")

    def on_stage_begin(self, trainer: ContinualTrainer, stage: int, task: Task) -> None:
        self._placed = False

    def loss(self, trainer: ContinualTrainer, model: Any, inputs: dict[str, Any], outputs: Any, loss: Any) -> Any:
        if not self.terms or self.ewc_lambda == 0:
            return loss
        every = dict(trainer.model.named_parameters())
        if not self._placed:  # restored or computed before the Trainer placed the model
            self.terms = [({n: t.to(every[n].device) for n, t in f.items()},
                           {n: t.to(every[n].device) for n, t in a.items()}) for f, a in self.terms]
            self._placed = True
        # a parameter frozen since (O-LoRA freezes each finished task's adapter) cannot move: no term
        return loss + ewc_penalty({n: p for n, p in every.items() if p.requires_grad}, self.terms, self.ewc_lambda)

    def on_stage_end(self, trainer: ContinualTrainer, stage: int, task: Task, scores: dict[str, float]) -> None:
        from quantcl.tasks import make_collator, tokenize_for_training

        start = time.perf_counter()
        args = trainer.args.for_stage(stage - 1, task.name)
        data = task.training_rows(trainer.tokenizer)
        data = tokenize_for_training(data.select(range(min(self.fisher_rows, len(data)))), trainer.tokenizer,
                                     max_length=args.max_length)
        fisher = empirical_fisher(trainer.model, [dict(r) for r in data], make_collator(trainer.tokenizer))
        anchor = {n: p.detach().float().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        if self.mode == "online" and self.terms:
            old, _ = self.terms[0]
            fisher = {n: self.decay_factor * old[n].to(f.device) + f for n, f in fisher.items()}
            self.terms = [(fisher, anchor)]
        else:
            self.terms.append((fisher, anchor))
        self._placed = False
        trainer.log_stage(ewc_fisher_rows=len(data), ewc_fisher_mean=float(sum(float(f.sum()) for f in fisher.values())
                                                                          / max(sum(f.numel() for f in fisher.values()), 1)),
                          ewc_seconds=time.perf_counter() - start)

    def save_state(self, directory: Path) -> None:
        from safetensors.torch import save_file

        from quantcl._io import atomic_write_bytes

        tensors = {f"{k}.{kind}.{n}": t.detach().cpu().contiguous()
                   for k, (fisher, anchor) in enumerate(self.terms)
                   for kind, part in (("fisher", fisher), ("anchor", anchor)) for n, t in part.items()}
        tmp = Path(directory) / (STATE_FILE + ".tmp")
        # one metadata key: safetensors writes a metadata map in a per-process random order
        save_file(tensors, str(tmp), metadata={"quantcl.ewc": json.dumps({"mode": self.mode, "terms": len(self.terms)},
                                                                         sort_keys=True)})
        atomic_write_bytes(Path(directory) / STATE_FILE, tmp.read_bytes())
        tmp.unlink()

    def load_state(self, directory: Path) -> None:
        from safetensors import safe_open

        path = Path(directory) / STATE_FILE
        if not path.is_file():
            raise StateError(f"{path} is missing: the EWC state of the finished stage cannot be restored")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            n_terms = int(json.loads(meta["quantcl.ewc"])["terms"] if "quantcl.ewc" in meta else meta.get("terms", "0"))
            terms: list[tuple[dict[str, Any], dict[str, Any]]] = [({}, {}) for _ in range(n_terms)]
            for key in f.keys():
                k, kind, name = key.split(".", 2)
                terms[int(k)][0 if kind == "fisher" else 1][name] = f.get_tensor(key)
        self.terms, self._placed = terms, False
