"""GradientSimilarity: what training does to the LoRA weights, measured without changing it.

Three measurements for the mechanism behind "Less is more" (issue 27), into each stage's record:

- ``grad_cos_first_task``: every ``every`` optimizer steps, the cosine between the gradient of the
  step's training batch and the gradient of a fixed held-out sample of the first task (its first
  ``held_out_rows`` evaluation rows, prompt and answer as in training), both over the trainable
  (LoRA) parameters: ``cos = <g_batch, g_ref> / (|g_batch| |g_ref|)``. ``g_batch`` is the
  gradient the optimizer is about to use (read in ``on_pre_optimizer_step``; clipping only scales
  it, leaving the cosine as it is); ``g_ref`` costs one extra forward and backward pass over the sample, after which
  the batch gradient is put back. Negative values mean the step moves against the first task.
- ``grad_cos_replay_new``: in a stage that mixes replayed rows into its data, every
  ``replay_every`` optimizer steps, ``[step, cos, n_replay, n_new]``: the cosine between the
  gradient of the step's replayed rows and that of its new task's rows, both of the *same* batch
  (every micro-batch of the step), each the gradient of the mean loss over its own target tokens:
  ``cos = <g_replay, g_new> / (|g_replay| |g_new|)``. The rows are told apart by the replay
  buffer's ``source_task`` column, carried to the batch as a ``quantcl_replay`` flag that a
  forward pre-hook takes off before the model sees it. It costs one extra forward and backward
  pass over the step's rows (split in two); a step whose batch holds only one kind of row is
  skipped. Negative values mean the new task's rows pull against the replayed ones.
- ``lora_update_norm`` and ``lora_delta_norm``: at the stage's end, ``|theta_end - theta_begin|``
  over the trainable parameters, and ``sqrt(sum over layers |scale (B A)_end - scale (B A)_begin|_F^2)``,
  the change of the weight LoRA adds to the base.
- ``sharpness``: at the stage's end, the mean rise of the held-out loss of the stage's own task
  under ``sharpness_draws`` random perturbations of the trainable parameters of norm
  ``sharpness_radius * |theta|``: ``mean_k L(theta + r u_k / |u_k|) - L(theta)``,
  ``u_k ~ N(0, I)`` seeded by ``seed`` and the stage.

Every extra pass runs under a forked torch RNG and restores the parameters and gradients, so a run
with this plug-in trains exactly as one without it (tested: the same adapter bytes). Mid-stage
checkpoints keep the cosines measured so far; a resumed stage records the same list.

Examples:
    >>> probe = GradientSimilarity(every=10, held_out_rows=16)
    >>> probe.to_dict()["every"]
    10
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from quantcl._checks import require_int, require_number
from quantcl.plugins.base import (
    REPLAY_FLAG,
    StageCallback,
    TrainerSpec,
    load_checkpoint_state,
    save_checkpoint_state,
)
from quantcl.replay.mixing import SOURCE

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from quantcl.tasks import Task
    from quantcl.trainer import ContinualTrainer

__all__ = ["GradientSimilarity", "held_and_reference_gradients", "replay_new_gradients"]

CHECKPOINT_FILE = "quantcl-gradient-similarity.json"


def _batch(task: Task, tokenizer: Any, rows: int, max_length: int) -> dict[str, torch.Tensor]:
    from quantcl.tasks import make_collator, tokenize_for_training

    data = task.eval_rows(tokenizer).select_columns(["prompt", "target"])
    data = data.select(range(min(rows, len(data))))
    tokenized = tokenize_for_training(data, tokenizer, max_length=max_length)
    return make_collator(tokenizer)([dict(r) for r in tokenized])


def _rng_devices(model: Any) -> list[Any]:
    """The devices whose RNG a measurement forks: the model's CUDA device (dropout there draws from
    it), none on CPU."""
    device = next((p.device for p in model.parameters()), None)
    return [device] if getattr(device, "type", "cpu") == "cuda" else []


def _loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    device = next(p.device for p in model.parameters())
    return model(**{k: v.to(device) for k, v in batch.items()}).loss


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    import torch

    return torch.cat([t.detach().float().flatten() for t in tensors])


def _lora_deltas(model: Any) -> dict[str, torch.Tensor]:
    """``scale * B @ A`` of every LoRA layer's active adapter, in fp32."""
    out = {}
    for name, module in model.named_modules():
        a, b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if a is None or b is None or not hasattr(a, "keys"):
            continue
        for key in a.keys():
            scale = module.scaling[key]
            out[f"{name}.{key}"] = (b[key].weight.detach().float() @ a[key].weight.detach().float()) * scale
    return out


class GradientSimilarity(StageCallback):
    """Gradient cosines against the first task, LoRA update norms and a sharpness probe per stage.

    Args:
        every: optimizer steps between gradient cosines against the first task (the first at step 1).
        replay_every: optimizer steps between replay-vs-new cosines in stages with replay (the
            first at step 1; 0: none).
        held_out_rows: evaluation rows of the first task (for the cosine) and of each stage's task
            (for sharpness) used as the fixed samples.
        sharpness_draws: random directions averaged by the sharpness probe (0: no probe).
        sharpness_radius: perturbation norm as a fraction of the trainable parameters' norm.
        max_length: tokens per held-out row.
        seed: seeds the sharpness directions (with the stage).

    See the module documentation for the formulas and the cost.
    """

    def __init__(self, every: int = 10, held_out_rows: int = 16, sharpness_draws: int = 4,
                 sharpness_radius: float = 0.05, max_length: int = 256, seed: int = 0, replay_every: int = 1) -> None:
        self.every = require_int(every, "GradientSimilarity(every=...)", minimum=1)
        self.replay_every = require_int(replay_every, "GradientSimilarity(replay_every=...)", minimum=0)
        self.held_out_rows = require_int(held_out_rows, "GradientSimilarity(held_out_rows=...)", minimum=1)
        self.sharpness_draws = require_int(sharpness_draws, "GradientSimilarity(sharpness_draws=...)", minimum=0)
        self.sharpness_radius = float(require_number(sharpness_radius, "GradientSimilarity(sharpness_radius=...)",
                                                     low=0, low_open=True))
        self.max_length = require_int(max_length, "GradientSimilarity(max_length=...)", minimum=8)
        self.seed = require_int(seed, "GradientSimilarity(seed=...)", minimum=0)
        self.cosines: list[list[float]] = []
        self.replay_cosines: list[list[float]] = []
        self._flags: list[bool] | None = None  # per training row of the stage: replayed?
        self._micro: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []  # this step's tagged micro-batches
        self._reference: dict[str, torch.Tensor] | None = None
        self._begin: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None

    # ------------------------------------------------------------------ stage hooks
    def on_stage_begin(self, trainer: ContinualTrainer, stage: int, task: Task) -> None:
        self.cosines, self.replay_cosines, self._flags, self._micro = [], [], None, []
        self._reference = _batch(trainer.tasks[0], trainer.tokenizer, self.held_out_rows, self.max_length)
        model = trainer.model
        self._begin = (_flat([p for p in model.parameters() if p.requires_grad]), _lora_deltas(model))

    def adapt_data(self, trainer: ContinualTrainer, stage: int, task: Task, dataset: Any) -> Any:
        """Note which rows were replayed (the replay plug-in's ``source_task``); the data is unchanged."""
        if self.replay_every and SOURCE in dataset.column_names:
            flags = [source != task.name for source in dataset[SOURCE]]
            self._flags = flags if any(flags) and not all(flags) else None
        return dataset

    def configure_trainer(self, trainer: ContinualTrainer, stage: int, task: Task, spec: TrainerSpec) -> None:
        """Carry the replay flags into the batches (a column and a collator around the stage's)."""
        data = spec.kwargs.get("train_dataset")
        if self._flags is None or data is None:
            return
        if len(data) != len(self._flags):  # a later plug-in changed the rows: no flags to trust
            warnings.warn(f"GradientSimilarity: stage {stage}'s training data changed after replay was mixed in "
                          f"({len(self._flags)} -> {len(data)} rows); no replay-vs-new cosines this stage", stacklevel=2)
            self._flags = None
            return
        spec.kwargs["train_dataset"] = data.add_column(REPLAY_FLAG, self._flags)
        spec.kwargs["data_collator"] = _FlaggedCollator(spec.kwargs["data_collator"])

    def trainer_callbacks(self, trainer: ContinualTrainer, stage: int, task: Task) -> list[Any]:
        return [_Cosines(self)]

    def on_stage_end(self, trainer: ContinualTrainer, stage: int, task: Task, scores: dict[str, float]) -> None:
        model = trainer.model
        params = [p for p in model.parameters() if p.requires_grad]
        record: dict[str, Any] = {"grad_cos_first_task": [list(c) for c in self.cosines]}
        if self._flags is not None:
            record["grad_cos_replay_new"] = [list(c) for c in self.replay_cosines]
        if self._begin is not None:
            start, deltas = self._begin
            record["lora_update_norm"] = float((_flat(params) - start).norm())
            end = _lora_deltas(model)
            record["lora_delta_norm"] = math.sqrt(sum(float((end[k] - deltas[k]).norm() ** 2) for k in end
                                                      if k in deltas))
        if self.sharpness_draws:
            batch = _batch(task, trainer.tokenizer, self.held_out_rows, self.max_length)
            record["sharpness"] = self.sharpness(model, batch, stage)
        trainer.log_stage(**record)
        self._begin = self._reference = None
        self._flags, self._micro = None, []

    # ------------------------------------------------------------------ measurements
    def sharpness(self, model: Any, batch: dict[str, torch.Tensor], stage: int) -> float:
        """``mean_k L(theta + r u_k / |u_k|) - L(theta)`` on ``batch`` (see the module doc)."""
        import torch

        params = [p for p in model.parameters() if p.requires_grad]
        saved = [p.detach().clone() for p in params]
        radius = self.sharpness_radius * float(_flat(params).norm())
        generator = torch.Generator().manual_seed(self.seed * 100_003 + stage)
        was_training = model.training
        model.eval()
        rises = []
        try:
            with torch.random.fork_rng(devices=_rng_devices(model)), torch.no_grad():
                base = float(_loss(model, batch))
                for _ in range(self.sharpness_draws):
                    noise = [torch.randn(p.shape, generator=generator) for p in params]
                    scale = radius / float(torch.cat([n.flatten() for n in noise]).norm())
                    for p, n, s in zip(params, noise, saved):
                        p.copy_(s + (n * scale).to(p.dtype))
                    rises.append(float(_loss(model, batch)) - base)
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
            model.train(was_training)
        return sum(rises) / len(rises)

    def cosine(self, model: Any) -> float:
        """The cosine between the gradients now held by the trainable parameters and the
        gradient of the first task's held-out sample; the held gradients are left as they were."""
        assert self._reference is not None
        g_batch, g_ref = held_and_reference_gradients(model, self._reference)
        denominator = float(g_batch.norm() * g_ref.norm())
        return float(g_batch @ g_ref) / denominator if denominator > 0 else 0.0


def _target_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The tokens a causal LM's loss averages over: labels after the one-token shift, not -100."""
    return int((batch["labels"][:, 1:] != -100).sum())


def replay_new_gradients(model: Any, micro: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]
                         ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """``(g_replay, g_new, n_replay, n_new)`` over the trainable parameters, flat, fp32: the
    gradient of the mean loss over the target tokens of the replayed rows of ``micro`` (the
    step's micro-batches with their per-row replay flags), the same of the new rows, and the row
    counts. One forward and backward pass per micro-batch and kind, under a forked torch RNG; the
    gradients the parameters held are put back."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    held = [None if p.grad is None else p.grad.detach().clone() for p in params]
    out, counts = [], []
    try:
        for want in (True, False):
            parts = [{k: v[flags == want] for k, v in batch.items()} for flags, batch in micro]
            parts = [b for b in parts if b["labels"].shape[0] and _target_tokens(b)]
            total = sum(_target_tokens(b) for b in parts)
            counts.append(sum(int(b["labels"].shape[0]) for b in parts))
            for p in params:
                p.grad = None
            with torch.random.fork_rng(devices=_rng_devices(model)), torch.enable_grad():
                for b in parts:  # the token-weighted mean over all of the step's rows of this kind
                    (model(**b).loss * (_target_tokens(b) / total)).backward()
            out.append(torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).float().flatten()
                                  for p in params]))
    finally:
        for p, g in zip(params, held):
            p.grad = g
    return out[0], out[1], counts[0], counts[1]


def held_and_reference_gradients(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g_held, g_ref)`` over the trainable parameters, flat, fp32: the gradients they hold now, and
    the gradient of ``batch``'s loss (one forward and backward pass under a forked torch RNG); the
    held gradients are put back."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    held = [None if p.grad is None else p.grad.detach().clone() for p in params]
    g_held = torch.cat([(torch.zeros_like(p) if g is None else g).float().flatten() for p, g in zip(params, held)])
    try:
        for p in params:
            p.grad = None
        with torch.random.fork_rng(devices=_rng_devices(model)), torch.enable_grad():
            _loss(model, batch).backward()
        g_ref = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).float().flatten() for p in params])
    finally:
        for p, g in zip(params, held):
            p.grad = g
    return g_held, g_ref


@dataclass(frozen=True)
class _FlaggedCollator:
    """The stage's collator, plus each row's replay flag as a bool tensor (a module-level
    dataclass so DataLoader workers can pickle it)."""

    inner: Callable[[list[dict[str, Any]]], dict[str, Any]]

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if not any(REPLAY_FLAG in f for f in features):  # rows without flags (none of this stage's training rows)
            return self.inner(features)
        flags = [bool(f.get(REPLAY_FLAG, False)) for f in features]
        batch = self.inner([{k: v for k, v in f.items() if k != REPLAY_FLAG} for f in features])
        batch[REPLAY_FLAG] = torch.tensor(flags, dtype=torch.bool)
        return batch


class _Cosines(TrainerCallback):
    """The plug-in's part inside the ``transformers.Trainer``: cosines before chosen optimizer
    steps, kept across mid-stage checkpoints; the forward pre-hook that takes the replay flags
    off the training batches (and keeps the step's micro-batches for the replay-vs-new cosine)."""

    def __init__(self, probe: GradientSimilarity) -> None:
        self.probe = probe
        self._hook: Any = None

    def _take_flags(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        import torch

        flags = kwargs.pop(REPLAY_FLAG, None)
        # the training forward only: not a plug-in's teacher pass (no grad) or a second pass over
        # the same batch tensors (LwF's functional_call), which would count the rows twice
        if (flags is not None and module.training and torch.is_grad_enabled() and "labels" in kwargs
                and not any(batch["input_ids"] is kwargs.get("input_ids") for _, batch in self.probe._micro)):
            self.probe._micro.append((flags, {k: kwargs[k] for k in ("input_ids", "attention_mask", "labels")
                                              if k in kwargs}))
        return args, kwargs

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        saved = load_checkpoint_state(args, state, CHECKPOINT_FILE)
        if saved is not None:
            self.probe.cosines = [list(c) for c in saved.get("cosines", [])]
            self.probe.replay_cosines = [list(c) for c in saved.get("replay_cosines", [])]
        if self._hook is not None:
            self._hook.remove()
        self._hook = None
        if model is not None and self.probe._flags is not None:
            self._hook = model.register_forward_pre_hook(self._take_flags, with_kwargs=True)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        step = int(state.global_step) + 1  # the step about to be taken
        if model is not None and (step - 1) % self.probe.every == 0:
            self.probe.cosines.append([step, self.probe.cosine(model)])
        micro, self.probe._micro = self.probe._micro, []
        if model is not None and micro and (step - 1) % max(1, self.probe.replay_every) == 0:
            g_replay, g_new, n_replay, n_new = replay_new_gradients(model, micro)
            denominator = float(g_replay.norm() * g_new.norm())
            if n_replay and n_new and denominator > 0:
                self.probe.replay_cosines.append([step, float(g_replay @ g_new) / denominator, n_replay, n_new])

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        save_checkpoint_state(args, state, CHECKPOINT_FILE, {"cosines": self.probe.cosines,
                                                             "replay_cosines": self.probe.replay_cosines})
