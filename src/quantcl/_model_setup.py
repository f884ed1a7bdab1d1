"""How a ContinualTrainer's model is loaded, made trainable and saved with each stage.

Two training modes share one engine (each stage is a ``transformers.Trainer`` run):

- ``"lora"`` (the default): the base is loaded at the policy's precision and frozen; LoRA
  adapters are trained and saved (``stage-i/adapter``), or merged into a float base after each
  stage (``adapter_mode="merge"``, ``stage-i/merged``). The adapter may be peft's OSF instead of
  LoRA (``quantcl._adapter_config``); a plug-in's ``adapter_config`` hook may change it per stage.
- ``"full"``: every weight is trained (continued pre-training, full fine-tuning, ternary QAT)
  and the whole model is saved (``stage-i/model``). Float presets train their weights in their
  own dtype (pick ``fp32`` for fp32 master weights; ``StageArgs(extra={"bf16": True})`` adds
  mixed precision). ``ternary`` trains fp32 latent weights through
  :class:`~quantcl.precision.BitLinear` at strength 1 (QAT from the loaded weights); the plug-in
  :class:`~quantcl.PrecisionSchedule` trains a float preset and switches it to ternary QAT.
  The bitsandbytes presets cannot be trained this way (their weights are not parameters an
  optimizer can update): refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from quantcl._adapter_config import attach_adapter
from quantcl.errors import ConfigError
from quantcl.plugins.base import StagePlugin
from quantcl.precision import PrecisionPolicy

__all__ = ["ModelSetup", "resolve_training", "run_length", "split_precision", "sort_extensions", "check_loss_positions", "TRAINING_MODES"]

Training = Literal["lora", "full"]
TRAINING_MODES = ("lora", "full")


def split_precision(precision: Any) -> tuple[Any, StagePlugin | None]:
    """``(precision, plug-in)``: a plug-in given as ``precision=`` (quantcl 0.1's
    ``precision=PrecisionSchedule(...)``) runs as a plug-in at the float preset its ``policy``
    names, with a DeprecationWarning; anything else is the precision, and no plug-in."""
    policy = getattr(precision, "policy", None)
    if not (isinstance(precision, StagePlugin) and isinstance(policy, PrecisionPolicy)):
        return precision, None
    name = type(precision).__name__
    warnings.warn(f"ContinualTrainer(precision={name}(...)) is deprecated: pass precision={policy.name!r} "
                  f"and plugins=[{getattr(precision, 'legacy_name', name.lower())}] (the {name} is a plug-in; put it last "
                  "among the plug-ins to resume a run started this way)", DeprecationWarning, stacklevel=3)
    return policy, precision


def sort_extensions(callbacks: Any, plugins: Any, legacy: StagePlugin | None) -> tuple[list[StagePlugin], list[Any]]:
    """``(plug-ins, transformers callbacks)`` from a ContinualTrainer's ``callbacks`` and ``plugins``
    (each a list of StagePlugin / TrainerCallback objects), checked; a plug-in given as the
    precision (:func:`split_precision`) runs last, so the others' state folders keep their numbers."""
    from transformers import TrainerCallback

    for name, value in (("callbacks", callbacks), ("plugins", plugins)):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{name} must be a list (possibly empty), got {value!r}")
    given = [*callbacks, *plugins]
    strays = [c for c in given if not isinstance(c, (StagePlugin, TrainerCallback))]
    if strays:
        raise ConfigError(f"callbacks/plugins must be StagePlugin or transformers.TrainerCallback objects, got {strays!r}")
    stage_plugins = [c for c in given if isinstance(c, StagePlugin)] + ([legacy] if legacy is not None else [])
    return stage_plugins, [c for c in given if isinstance(c, TrainerCallback)]


def resolve_training(policy: PrecisionPolicy, training: Any, lora_given: bool, adapter_mode: str,
                     plugins: Sequence[StagePlugin] = ()) -> Training:
    """The training mode, checked against the precision and what the plug-ins need (errors
    before any work); ``None`` is the mode a plug-in needs, else ``"lora"``."""
    from quantcl._checks import require_choice

    needs = {type(p).__name__: p.training_mode for p in plugins if p.training_mode is not None}
    if training is None:
        training = "full" if "full" in needs.values() else "lora"
    training = require_choice(training, "training", TRAINING_MODES)
    for name, mode in needs.items():
        if mode != training:
            what = "trains every weight" if mode == "full" else "trains LoRA adapters"
            raise ConfigError(f"a {name} {what}: use training={mode!r} (or leave training unset), got "
                              f"training={training!r}")
    option = ("noise_like" if policy.noise_like is not None else
              "per_module" if any(p in ("int8", "nf4", "fp4") for _, p in policy.per_module) else None)
    if option is not None and (training == "full" or adapter_mode == "merge"):
        raise ConfigError(f"precision {option}={getattr(policy, option)!r} makes a frozen base for LoRA: it needs "
                          f"training='lora' and adapter_mode='continue', got training={training!r}, "
                          f"adapter_mode={adapter_mode!r}")
    if training == "lora":
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


def check_loss_positions(args: Any, task_names: list[str], plugins: Sequence[StagePlugin]) -> None:
    """Refuse ``StageArgs(loss_positions="targets")`` with a plug-in whose ``loss`` hook gets the
    model's outputs (its logits would then be the kept positions only, flattened), and on a
    transformers that takes no boolean ``logits_to_keep`` mask."""
    from transformers import modeling_utils

    from quantcl.plugins.base import overrides_hook

    stages = [name for i, name in enumerate(task_names) if args.for_stage(i, name).loss_positions == "targets"]
    if not stages:
        return
    readers = [type(p).__name__ for p in plugins if overrides_hook(p, "loss")]
    if readers:
        raise ConfigError(f"StageArgs.loss_positions='targets' (stages {stages}) keeps the logits of the target "
                          f"positions only, but {readers} read the model's outputs in their loss hook; use "
                          "loss_positions='all' with them")
    accelerate = {k: v for i, name in enumerate(task_names)
                  for k, v in (args.for_stage(i, name).extra.get("accelerator_config") or {}).items()}
    if accelerate.get("split_batches") or accelerate.get("dispatch_batches"):
        raise ConfigError("StageArgs.loss_positions='targets' passes the batch's target tokens flattened "
                          "(shift_labels), which a batch split across devices (accelerator_config split_batches / "
                          "dispatch_batches) would misalign; use loss_positions='all' with them")
    import os

    import torch

    if torch.cuda.device_count() > 1 and "WORLD_SIZE" not in os.environ:
        raise ConfigError("StageArgs.loss_positions='targets' cannot run under torch.nn.DataParallel (several GPUs "
                          "in one process split the batch by rows); launch with torchrun, or use loss_positions='all'")
    if not hasattr(modeling_utils, "slice_logits_to_keep"):  # boolean masks came with it, in 5.24
        raise ConfigError("StageArgs.loss_positions='targets' needs transformers >= 5.24 (a boolean logits_to_keep)")


def run_length(args: Any, task_names: list[str]) -> int | None:
    """The run's optimizer steps when every stage has ``max_steps`` (else ``None``)."""
    steps = [args.for_stage(i, name).max_steps for i, name in enumerate(task_names)]
    return sum(steps) if all(n > 0 for n in steps) else None


class ModelSetup:
    """Load / save the model of a ContinualTrainer for its training mode (see the module doc)."""

    def __init__(self, policy: PrecisionPolicy, training: Training, adapter_config: Callable[[int], Any],
                 adapter_mode: str, model_kwargs: dict[str, Any], seed: int) -> None:
        self.policy, self.training, self.adapter_config = policy, training, adapter_config  # stage -> peft config
        self.adapter_mode, self.model_kwargs, self.seed = adapter_mode, model_kwargs, seed

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
        config = self.adapter_config(completed + 1)  # None after the last stage: the merged model is scored as is
        if config is None:
            return model, tokenizer
        torch.manual_seed(self.seed + completed)  # the same LoRA init on every resume
        return attach_adapter(self.policy, model, config), tokenizer

    def _load_full(self, source: str) -> tuple[Any, Any]:
        from quantcl.precision.bitlinear import to_bitlinear

        if self.policy.kind == "ternary":  # QAT: fp32 latent weights, ternary in the forward pass
            model, tokenizer = PrecisionPolicy("fp32").load_model(source, **self.model_kwargs)
            to_bitlinear(model, self.policy.skip_modules, strength=1.0)
        else:
            model, tokenizer = self.policy.load_model(source, **self.model_kwargs)
        model.requires_grad_(True)
        return model, tokenizer

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
            config = self.adapter_config(stage + 1)  # None after the last stage: nothing left to train
            if config is None:
                return merged
            torch.manual_seed(self.seed + stage)  # matches load() on resume
            return attach_adapter(self.policy, merged, config)
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
