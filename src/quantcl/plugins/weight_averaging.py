"""WeightAveraging: LAWA or EMA of the trainable weights inside each continual stage, as a plug-in.

:mod:`quantcl.averaging` holds the averages themselves (``LAWA``, ``EMA``: callbacks for a plain
``transformers.Trainer``). This plug-in runs one of them in every stage of a ContinualTrainer and,
with ``apply=True`` (the default), replaces the trainable weights by the average when the stage's
training ends, so the stage is evaluated and saved with the averaged weights:

- ``method="lawa"`` (Kaddour 2022): the mean of the last ``window`` snapshots, one every
  ``every`` optimizer steps: ``theta = (1/k) sum_{j=1..k} theta_{t_j}``, ``k <= window``;
- ``method="ema"``: ``ema_n = decay * ema_{n-1} + (1 - decay) * theta_n``, updated every ``every``
  steps (``torch.optim.swa_utils.AveragedModel``).

With ``per_stage=True`` (the default) each stage averages only its own weights; with ``False``
the average carries over from stage to stage. A stage shorter than ``every`` steps has nothing to
average and keeps its last weights (its record says ``averaged: 0``). The average is saved in the
Trainer's checkpoints and with each stage (safetensors), so a run killed mid-stage resumes to
the same weights as an uninterrupted one.

Examples:
    >>> WeightAveraging("lawa", every=10, window=5).to_dict()["window"]
    5
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from transformers import TrainerCallback

from quantcl._checks import require_bool, require_choice, require_int, require_number
from quantcl._io import atomic_write_bytes, atomic_write_json, read_json
from quantcl.errors import ConfigError
from quantcl.plugins.base import StagePlugin, checkpoint_dir, load_checkpoint_state, save_checkpoint_state

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.tasks import Task
    from quantcl.trainer import ContinualTrainer

__all__ = ["WeightAveraging"]

META_FILE = "quantcl-weight-averaging.json"
TENSOR_FILE = "quantcl-weight-averaging.safetensors"


def _save(directory: Path, averager: Any) -> dict[str, Any]:
    from safetensors.torch import save

    tensors, meta = averager.state()
    atomic_write_bytes(directory / TENSOR_FILE, save({k: t.contiguous() for k, t in tensors.items()}))
    return meta


def _load(directory: Path, averager: Any, meta: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    averager.load_state(load_file(str(directory / TENSOR_FILE)), meta)


class WeightAveraging(StagePlugin):
    """LAWA or EMA of the trainable weights in every stage (see the module docstring).

    Args:
        method: ``"lawa"`` or ``"ema"``.
        every: optimizer steps between snapshots (LAWA) or updates (EMA).
        window: LAWA's number of snapshots averaged (LAWA only).
        decay: EMA's decay in (0, 1) (EMA only).
        apply: load the average into the model when each stage's training ends.
        per_stage: start a new average at each stage (``False``: carry it over).
    """

    def __init__(self, method: Literal["lawa", "ema"] = "lawa", *, every: int = 1, window: int | None = None,
                 decay: float | None = None, apply: bool = True, per_stage: bool = True) -> None:
        from quantcl.averaging import EMA, LAWA

        self.method = require_choice(method, "WeightAveraging(method=...)", ("lawa", "ema"))
        self.every = require_int(every, "WeightAveraging(every=...)", minimum=1)
        if (window is None) != (method == "ema") or (decay is None) != (method == "lawa"):
            raise ConfigError("WeightAveraging needs window=... with method='lawa' and decay=... with method='ema' "
                              f"(and not the other), got method={method!r}, window={window!r}, decay={decay!r}")
        self.window = None if window is None else require_int(window, "WeightAveraging(window=...)", minimum=1)
        self.decay = None if decay is None else require_number(decay, "WeightAveraging(decay=...)", low=0, high=1,
                                                               low_open=True)
        self.apply = require_bool(apply, "WeightAveraging(apply=...)")
        self.per_stage = require_bool(per_stage, "WeightAveraging(per_stage=...)")
        self.averager: Any = (EMA(self.decay, self.every) if self.decay is not None
                              else LAWA(self.every, require_int(window, "WeightAveraging(window=...)", minimum=1)))
        self._stage_updates = 0  # snapshots (LAWA) or updates (EMA) taken in the running stage
        self._stage_averaged = 0

    @property
    def state_key(self) -> str:
        return f"weight-averaging-{self.method}"

    def _count(self) -> int:
        return len(self.averager.snapshots) if self.method == "lawa" else self.averager.num_updates

    def on_stage_begin(self, trainer: ContinualTrainer, stage: int, task: Task) -> None:
        if self.per_stage:
            self.averager.reset()
        self._stage_updates = self._stage_averaged = 0

    def trainer_callbacks(self, trainer: ContinualTrainer, stage: int, task: Task) -> list[Any]:
        return [_InStage(self)]

    def on_stage_end(self, trainer: ContinualTrainer, stage: int, task: Task, scores: dict[str, float]) -> None:
        trainer.log_stage(weight_averaging={"method": self.method, "averaged": self._stage_averaged,
                                            "applied": self.apply and self._stage_averaged > 0})

    def save_state(self, directory: Path) -> None:
        atomic_write_json(directory / META_FILE, _save(directory, self.averager))

    def load_state(self, directory: Path) -> None:
        _load(directory, self.averager, read_json(directory / META_FILE))


class _InStage(TrainerCallback):
    """The plug-in's part inside a stage's ``transformers.Trainer``."""

    def __init__(self, plugin: WeightAveraging) -> None:
        self.plugin = plugin

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        meta = load_checkpoint_state(args, state, META_FILE)  # a stage resumed from its checkpoint
        if meta is not None:
            _load(checkpoint_dir(args, state), self.plugin.averager, meta)
            self.plugin._stage_updates = int(meta["stage_updates"])
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if kwargs.get("model") is not None and state.global_step % self.plugin.every == 0:
            self.plugin._stage_updates += 1
        self.plugin.averager.on_step_end(args, state, control, **kwargs)
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        checkpoint = checkpoint_dir(args, state)
        if state.is_world_process_zero and checkpoint.is_dir():
            meta = {**_save(checkpoint, self.plugin.averager), "stage_updates": self.plugin._stage_updates}
            save_checkpoint_state(args, state, META_FILE, meta)
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        from quantcl.averaging import load_trainable

        # only a stage that added to the average takes it (per_stage=False carries older ones along)
        count = self.plugin._count() if self.plugin._stage_updates > 0 else 0
        self.plugin._stage_averaged = count
        if self.plugin.apply and count > 0 and model is not None:
            load_trainable(model, self.plugin.averager.averaged_state_dict())
        return control
