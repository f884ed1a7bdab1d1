"""How a ContinualTrainer's model is loaded, made trainable and saved with each stage.

Two training modes share one engine (each stage is a ``transformers.Trainer`` run):

- ``"lora"`` (the default): the base is loaded at the policy's precision and frozen; LoRA
  adapters are trained and saved (``stage-i/adapter``), or merged into a float base after each
  stage (``adapter_mode="merge"``, ``stage-i/merged``).
- ``"full"``: every weight is trained (continued pre-training, full fine-tuning, ternary QAT)
  and the whole model is saved (``stage-i/model``). Float presets train their weights in their
  own dtype (pick ``fp32`` for fp32 master weights; ``StageArgs(extra={"bf16": True})`` adds
  mixed precision). ``ternary`` trains fp32 latent weights through
  :class:`~quantcl.precision.BitLinear` at strength 1 (QAT from the loaded weights); a
  :class:`~quantcl.PrecisionSchedule` trains its ``start`` preset and switches to ternary QAT.
  The bitsandbytes presets cannot be trained this way (their weights are not parameters an
  optimizer can update): refused.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from quantcl.errors import ConfigError
from quantcl.precision import PrecisionPolicy

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.plugins.precision_schedule import PrecisionSchedule

__all__ = ["ModelSetup", "resolve_training", "run_length", "TRAINING_MODES"]

Training = Literal["lora", "full"]
TRAINING_MODES = ("lora", "full")


def resolve_training(policy: PrecisionPolicy, schedule: PrecisionSchedule | None, training: Any,
                     lora_given: bool, adapter_mode: str) -> Training:
    """The training mode, checked against the precision (errors before any work)."""
    from quantcl._checks import require_choice

    if training is None:
        training = "full" if schedule is not None else "lora"
    training = require_choice(training, "training", TRAINING_MODES)
    option = ("noise_like" if policy.noise_like is not None else
              "per_module" if any(p in ("int8", "nf4", "fp4") for _, p in policy.per_module) else None)
    if option is not None and (training == "full" or adapter_mode == "merge"):
        raise ConfigError(f"precision {option}={getattr(policy, option)!r} makes a frozen base for LoRA: it needs "
                          f"training='lora' and adapter_mode='continue', got training={training!r}, "
                          f"adapter_mode={adapter_mode!r}")
    if training == "lora":
        if schedule is not None:
            raise ConfigError("a PrecisionSchedule trains every weight (quantization-aware training): "
                              "use training='full' (or leave training unset)")
        return "lora"
    if policy.is_quantized:
        raise ConfigError(f"training='full' cannot train the {policy.name} preset: bitsandbytes 8/4-bit weights are "
                          "not trainable parameters; use a float preset (fp32, bf16, fp16), 'ternary' (QAT), "
                          "a PrecisionSchedule, or training='lora'")
    if lora_given:
        raise ConfigError("lora= configures LoRA adapters, which training='full' does not use; drop it "
                          "or use training='lora'")
    if adapter_mode != "continue":
        raise ConfigError(f"adapter_mode={adapter_mode!r} applies to training='lora' (full training has no adapter)")
    return "full"


def run_length(schedule: PrecisionSchedule | None, args: Any, task_names: list[str]) -> int | None:
    """The run's optimizer steps when every stage has ``max_steps`` (else ``None``); a
    PrecisionSchedule whose switch is after the end, or that cannot be placed, fails here."""
    steps = [args.for_stage(i, name).max_steps for i, name in enumerate(task_names)]
    total = sum(steps) if all(n > 0 for n in steps) else None
    if schedule is not None:
        if total is None and schedule.switch_fraction is not None and len(steps) > 1:
            raise ConfigError("PrecisionSchedule(switch_fraction=...) over several stages needs the run's length: "
                              "set StageArgs.max_steps (every stage), or use switch_step / switch_stage")
        schedule.check_length(total if total is not None else 2**62, len(steps))
    return total


class ModelSetup:
    """Load / save the model of a ContinualTrainer for its training mode (see the module doc)."""

    def __init__(self, policy: PrecisionPolicy, schedule: PrecisionSchedule | None, training: Training,
                 lora: Any, adapter_mode: str, model_kwargs: dict[str, Any], seed: int) -> None:
        self.policy, self.schedule, self.training = policy, schedule, training
        self.lora, self.adapter_mode, self.model_kwargs, self.seed = lora, adapter_mode, model_kwargs, seed

    @property
    def saved_name(self) -> str:
        """The folder of a stage directory holding the trained weights."""
        if self.training == "full":
            return "model"
        return "merged" if self.adapter_mode == "merge" else "adapter"

    def load(self, source: str, stage_dir: Path | None, completed: int) -> tuple[Any, Any]:
        """``(model, tokenizer)`` ready to train, from ``source`` or a finished stage's directory."""
        if self.training == "full":
            return self._load_full(str(stage_dir / "model") if stage_dir is not None else source)
        import torch

        adapter = None
        if stage_dir is not None:
            if self.adapter_mode == "merge":
                source = str(stage_dir / "merged")
            else:
                adapter = stage_dir / "adapter"
        model, tokenizer = self.policy.load_model(source, **self.model_kwargs)
        if adapter is not None:
            return self.policy.load_adapter(model, adapter, is_trainable=True), tokenizer
        torch.manual_seed(self.seed + completed)  # the same LoRA init on every resume
        return self.policy.attach_lora(model, copy.deepcopy(self.lora)), tokenizer

    def _load_full(self, source: str) -> tuple[Any, Any]:
        from quantcl.precision.bitlinear import to_bitlinear

        if self.schedule is not None:
            model, tokenizer = self.schedule.policy.load_model(source, **self.model_kwargs)
            self.schedule.prepare(model)
        elif self.policy.kind == "ternary":  # QAT: fp32 latent weights, ternary in the forward pass
            model, tokenizer = PrecisionPolicy("fp32").load_model(source, **self.model_kwargs)
            to_bitlinear(model, self.policy.skip_modules, strength=1.0)
        else:
            model, tokenizer = self.policy.load_model(source, **self.model_kwargs)
        model.requires_grad_(True)
        return model, tokenizer

    def resume_schedule(self, model: Any, stage_records: list[dict[str, Any]], total_steps: int | None) -> None:
        """Bring the PrecisionSchedule to where the finished stages left it: their step offsets
        (a ``switch_stage`` already passed is resolved again) and the last step's lambda on the model."""
        from quantcl.precision.bitlinear import set_strength

        schedule = self.schedule
        assert schedule is not None
        schedule.reset()
        offset = 0
        for stage, record in enumerate(stage_records, start=1):
            schedule.begin_stage(stage, offset, total_steps)
            offset += int(record.get("steps", 0))
        if offset > 0:
            set_strength(model, schedule.strength_at(offset - 1))

    def check_schedule_finished(self, steps_done: int) -> None:
        """Warn when a run ends with its PrecisionSchedule's switch not reached, or its phase-in
        not finished (a run of unknown length cannot be checked before it starts)."""
        import warnings

        schedule = self.schedule
        if schedule is None or steps_done == 0:
            return
        last = schedule.strength_at(steps_done - 1)
        if last < 1.0:
            what = "never switched to ternary" if last == 0.0 else f"ended mid phase-in (lambda = {last:.3g})"
            warnings.warn(f"the PrecisionSchedule {what} in this run's {steps_done} optimizer steps "
                          f"(switch step: {schedule.resolved_switch_step()})", UserWarning, stacklevel=3)

    def save(self, model: Any, tokenizer: Any, tmp: Path, stage: int, main: bool) -> Any:
        """Write the stage's weights under ``tmp`` (main process only); returns the model to go on with."""
        if self.training == "full":
            if main:
                model.save_pretrained(tmp / "model")
                tokenizer.save_pretrained(tmp / "model")
                _write_bitlinear_note(model, tmp / "model")
            return model
        if self.adapter_mode == "merge":
            import torch

            merged = model.merge_and_unload()
            if main:
                merged.save_pretrained(tmp / "merged")
                tokenizer.save_pretrained(tmp / "merged")
            torch.manual_seed(self.seed + stage)  # matches load() on resume
            return self.policy.attach_lora(merged, copy.deepcopy(self.lora))
        if main:
            from quantcl.precision.lora import save_adapter

            save_adapter(model, tmp / "adapter")
        return model


def _write_bitlinear_note(model: Any, directory: Path) -> None:
    """Next to a saved model with BitLinear layers, say which they are and at what strength: the
    checkpoint holds the latent weights and loads into the plain architecture (as float)."""
    from quantcl._io import atomic_write_json
    from quantcl.precision.bitlinear import BitLinear

    layers = {name: {**m.options(), "strength": m.strength} for name, m in model.named_modules()
              if isinstance(m, BitLinear)}
    if layers:
        atomic_write_json(directory / "quantcl-bitlinear.json", {
            "note": "the weights are BitLinear latent weights; quantcl.precision.to_bitlinear + set_strength "
                    "rebuilds the quantized model", "layers": layers})
