"""PrecisionPolicy: which precision a base model is loaded at, and how LoRA is put on top.

Presets: ``fp32``, ``bf16``, ``fp16`` (plain float weights) and ``int8`` (LLM.int8,
``bitsandbytes.nn.Linear8bitLt``), ``nf4`` / ``fp4`` (``bitsandbytes.nn.Linear4bit``), all
through ``transformers.BitsAndBytesConfig`` on every device bitsandbytes supports (CUDA and CPU
included), and ``ternary`` (BitNet b1.58 absmean weights, fake-quantized in the compute dtype:
see :mod:`quantcl.precision.ternary`). A policy is a small frozen value that round-trips through JSON.

Training: a plain ``transformers.Trainer`` (``TrainingArguments(use_cpu=True,
report_to="none")``) trains the ``PeftModel`` returned by :meth:`PrecisionPolicy.attach_lora`
on CPU for every preset; ``tests/precision`` checks it for ``bf16`` and ``nf4`` and a manual loop
for every preset. No preset needs extra ``TrainingArguments`` flags
(:meth:`PrecisionPolicy.training_arguments` returns ``{}``): the base weights are frozen in the
preset's dtype and the LoRA weights are fp32, so no ``fp16=True``/``bf16=True`` amp is required.

Examples:
    >>> from peft import LoraConfig
    >>> policy = PrecisionPolicy("nf4")
    >>> model, tok = policy.load_model("HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
    >>> model = policy.attach_lora(model, LoraConfig(r=8, target_modules="all-linear"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantcl._checks import require_bool, require_list_of, require_mapping, require_number
from quantcl._hub import reaching_hub
from quantcl.errors import ConfigError, StateError, UnknownNameError
from quantcl.precision import bnb as _bnb
from quantcl.precision._device import (FP16OnCPUWarning, SlowOnCPUWarning, bytes_by_module_class, check_policy_device,
                                       ensure_pad_token)
from quantcl.precision.per_module import assign_for, convert_modules
from quantcl.precision.lora import (check_target_modules, load_extra_adapters, prepare_base_for_lora,
                                   quiet_peft_alias_warning)
from quantcl.precision.gguf import gguf_to_checkpoint, is_gguf_source

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["PrecisionPolicy", "SlowOnCPUWarning", "FP16OnCPUWarning", "PRESETS"]


@dataclass(frozen=True)
class _Preset:
    kind: str  # "float" | "bnb" | "ternary"
    compute_dtype: str  # default dtype of non-quantized weights / compute
    bits: float
    quant_type: str | None = None  # bnb 4-bit quant type


PRESETS: dict[str, _Preset] = {
    "fp32": _Preset("float", "fp32", 32),
    "bf16": _Preset("float", "bf16", 16),
    "fp16": _Preset("float", "fp16", 16),
    "int8": _Preset("bnb", "bf16", 8),
    "nf4": _Preset("bnb", "bf16", 4, "nf4"),
    "fp4": _Preset("bnb", "bf16", 4, "fp4"),
    "ternary": _Preset("ternary", "bf16", 1.58),  # log2(3) bits of information per weight
}
_DTYPE_NAMES = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32",
    "bf16": "bf16", "bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16",
}
_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_TOKENIZER_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "subfolder")


def _dtype_name(value: Any) -> str:
    text = str(value).removeprefix("torch.").lower()
    if text not in _DTYPE_NAMES:
        raise ConfigError(f"unknown compute_dtype {value!r}; valid: fp32, bf16, fp16")
    return _DTYPE_NAMES[text]


@dataclass(frozen=True)
class PrecisionPolicy:
    """The weight precision of a base model, and the LoRA preparation that goes with it.

    Args:
        name: a preset: ``fp32``, ``bf16``, ``fp16``, ``int8``, ``nf4``, ``fp4`` or ``ternary``.
        compute_dtype: dtype of non-quantized weights and of 4-bit compute (``fp32``, ``bf16``,
            ``fp16``), and the storage dtype of ``ternary`` weights; default: the preset's own
            (``bf16`` for the quantized presets). A float preset only accepts its own dtype.
        double_quant: 4-bit only: quantize the quantization constants too (QLoRA's trick).
        skip_modules: modules kept in full (compute) precision by the 4/8-bit and ternary presets.
        int8_threshold: ``int8`` only: the LLM.int8 outlier threshold (``llm_int8_threshold``).
        noise_like: float presets only: perturb the base the way this bitsandbytes preset
            (``int8``, ``nf4``, ``fp4``) would, computed without its kernels (a matched-noise
            control; see :mod:`quantcl.precision.noise` for the formulas).
        noise: with ``noise_like``: ``"rounded"`` (the exact round trip), ``"fixed"`` (Gaussian
            noise of the same per-row / per-block spread, drawn once) or ``"per_step"`` (drawn
            again before every optimizer step).
        noise_seed: seeds the ``fixed`` and ``per_step`` draws (with the module name, and the
            stage and step).
        per_module: float presets only: ``{module-name pattern: preset}`` putting the matched
            linear layers at ``int8``/``nf4``/``fp4`` (see :mod:`quantcl.precision.per_module`).

    Examples:
        >>> p = PrecisionPolicy("nf4", double_quant=False)
        >>> p.is_quantized, p.compute_dtype
        (True, 'bf16')
        >>> PrecisionPolicy.from_dict(p.to_dict()) == p
        True
    """

    name: str
    compute_dtype: str | None = None
    double_quant: bool = True
    skip_modules: tuple[str, ...] = ("lm_head",)
    int8_threshold: float = 6.0
    noise_like: str | None = None
    noise: str | None = None
    noise_seed: int = 0
    per_module: Any = ()  # Mapping[str, str] given; kept as sorted (pattern, preset) pairs

    def __post_init__(self) -> None:
        name = str(self.name).lower()
        if name not in PRESETS:
            raise UnknownNameError(f"unknown precision {self.name!r}; valid: {', '.join(PRESETS)}")
        preset = PRESETS[name]
        dtype = preset.compute_dtype if self.compute_dtype is None else _dtype_name(self.compute_dtype)
        if preset.kind == "float" and dtype != preset.compute_dtype:
            raise ConfigError(
                f"precision {name!r} computes in {preset.compute_dtype}; got compute_dtype={dtype!r} "
                f"(choose the {dtype!r} preset instead)"
            )
        skip = require_list_of(self.skip_modules, "PrecisionPolicy(skip_modules=...)", str, items="module names (str)")
        threshold = require_number(self.int8_threshold, "PrecisionPolicy(int8_threshold=...)", low=0, low_open=True)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "compute_dtype", dtype)
        object.__setattr__(self, "double_quant", require_bool(self.double_quant, "PrecisionPolicy(double_quant=...)"))
        object.__setattr__(self, "skip_modules", tuple(skip))
        object.__setattr__(self, "int8_threshold", threshold)
        if self.noise_like is not None or self.noise is not None or self.noise_seed != 0:
            from quantcl.precision.noise import check_noise

            for key, value in check_noise(self, preset.kind).items():
                object.__setattr__(self, key, value)
        if self.per_module:
            from quantcl.precision.per_module import check_per_module

            object.__setattr__(self, "per_module", check_per_module(self.per_module, name, preset.kind))
            if self.noise_like is not None:
                raise ConfigError("PrecisionPolicy: per_module and noise_like do not combine; use one of them")


    def __repr__(self) -> str:  # the matched-noise and per-module fields only where set
        return f"PrecisionPolicy({', '.join(f'{k}={getattr(self, k)!r}' for k in self.to_dict())})"

    # ------------------------------------------------------------------ description
    @staticmethod
    def presets() -> list[str]:
        """The preset names, in order of decreasing precision."""
        return list(PRESETS)

    @property
    def is_quantized(self) -> bool:
        """True for the bitsandbytes presets (``int8``, ``nf4``, ``fp4``)."""
        return PRESETS[self.name].kind == "bnb"

    @property
    def kind(self) -> str:
        """``"float"``, ``"bnb"`` (int8, nf4, fp4) or ``"ternary"``."""
        return PRESETS[self.name].kind

    @property
    def bits(self) -> float:
        """Bits per weight of the quantized (or float) linear layers (1.58 for ``ternary``)."""
        return PRESETS[self.name].bits

    @property
    def torch_dtype(self) -> torch.dtype:
        """The ``torch.dtype`` of non-quantized weights and compute."""
        import torch

        return getattr(torch, _TORCH_DTYPES[self.compute_dtype or "fp32"])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; ``PrecisionPolicy.from_dict(p.to_dict()) == p``."""
        data = dataclasses.asdict(self)
        data["skip_modules"] = list(self.skip_modules)
        data["per_module"] = dict(self.per_module)
        # options left unset are not written, as before they existed: older runs resume
        return {k: v for k, v in data.items() if not (k.startswith("noise") and self.noise_like is None)
                and not (k == "per_module" and not v)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrecisionPolicy:
        """Build from :meth:`to_dict` output (or a config mapping with a ``name`` key)."""
        data = require_mapping(data, "PrecisionPolicy.from_dict", hint=(
            f"; for a preset name use PrecisionPolicy({data!r})" if isinstance(data, str) else ""))
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"unknown PrecisionPolicy option(s) {unknown}; valid: {fields}")
        if "name" not in data:
            raise ConfigError(f"a PrecisionPolicy dict needs 'name' (one of {', '.join(PRESETS)})")
        return cls(**data)

    def training_arguments(self) -> dict[str, Any]:
        """``TrainingArguments`` flags this precision needs (none today; see the module doc)."""
        return {}

    def bnb_config(self) -> Any:
        """The ``transformers.BitsAndBytesConfig`` of a quantized preset, ``None`` for floats."""
        if not self.is_quantized:
            return None
        preset = PRESETS[self.name]
        return _bnb.make_bnb_config(
            int(preset.bits),  # 8 or 4: only the bitsandbytes presets get here
            quant_type=preset.quant_type or "nf4",
            compute_dtype=self.torch_dtype,
            double_quant=self.double_quant,
            skip_modules=self.skip_modules,
            int8_threshold=self.int8_threshold,
        )

    # ------------------------------------------------------------------ loading
    def check_device(self, device_map: Any = None) -> None:
        """Fail (or warn) early about this precision on the device(s) ``device_map`` targets.

        Raises:
            UnsupportedDeviceError: a 4/8-bit preset on a device bitsandbytes does not support.

        Warns:
            FP16OnCPUWarning: ``fp16`` compute on CPU.
            SlowOnCPUWarning: ``bf16`` compute on a CPU without native bf16 (no AVX512-BF16/AMX).
        """
        check_policy_device(self, device_map)

    def load_model(
        self, source: str | os.PathLike[str], **kwargs: Any
    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """Load a causal LM and its tokenizer at this precision.

        Args:
            source: a Hub id, a local checkpoint directory, or a local ``.gguf`` file (converted
                once to a cached fp32 checkpoint, see :mod:`quantcl.precision.gguf`).
            **kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` (``device_map``,
                ``revision``, ``trust_remote_code`` (default ``False``) ...). ``dtype`` and
                ``quantization_config`` come from the policy.

        Returns:
            ``(model, tokenizer)``; the tokenizer always has a pad token (``unk`` or ``eos``
            reused when it had none, so the embeddings are not resized).

        Examples:
            >>> model, tok = PrecisionPolicy("int8").load_model("path/to/model")  # doctest: +SKIP
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        for key in ("dtype", "torch_dtype"):
            if key in kwargs and kwargs[key] not in (None, "auto") and _dtype_name(kwargs[key]) != self.compute_dtype:
                raise ConfigError(
                    f"{key}={kwargs[key]!r} conflicts with precision {self.name!r} "
                    f"(compute_dtype={self.compute_dtype!r}); set compute_dtype on the policy instead"
                )
            kwargs.pop(key, None)
        if "quantization_config" in kwargs:
            raise ConfigError("quantization_config comes from the policy; pass PrecisionPolicy options instead")
        self.check_device(kwargs.get("device_map"))
        path = os.fspath(source)
        if is_gguf_source(path):
            path = str(gguf_to_checkpoint(path))
        trust = require_bool(kwargs.pop("trust_remote_code", False), "trust_remote_code")
        tok_kwargs = {k: kwargs[k] for k in _TOKENIZER_KWARGS if k in kwargs}
        assignment = assign_for(self, path, trust, tok_kwargs) if self.per_module else {}
        if self.is_quantized:
            kwargs["quantization_config"] = self.bnb_config()
            if self.bits == 8:
                _bnb.log_int8_cast_once()
        with reaching_hub("model", path, local="give a local checkpoint directory (or a .gguf file) as the model, "
                                                "e.g. one saved with `hf download` elsewhere"):
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust, **tok_kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=self.torch_dtype, trust_remote_code=trust, **kwargs
            )
        ensure_pad_token(model, tokenizer)
        _bnb.disable_cpu_inference_repack(model)  # models are often evaluated before LoRA
        if self.kind == "ternary":
            from quantcl.precision.ternary import ternarize_

            ternarize_(model, self.skip_modules)
        if self.noise_like is not None:
            from quantcl.precision.noise import apply_noise

            apply_noise(model, self)
        if assignment:
            convert_modules(model, assignment, self)
        return model, tokenizer

    def trainer_callbacks(self, model: Any, stage: int) -> list[Any]:
        """``TrainerCallback`` objects a stage's Trainer needs at this precision: the ``per_step``
        noise draws (see :mod:`quantcl.precision.noise`), else none."""
        if self.noise != "per_step":
            return []
        from quantcl.precision.noise import PerStepNoise

        return [PerStepNoise(model, self.noise_seed, stage)]

    # ------------------------------------------------------------------ LoRA
    def attach_lora(self, model: PreTrainedModel, lora_config: PeftConfig) -> PeftModel:
        """Freeze the base, prepare it for k-bit training, and wrap it with new LoRA adapters.

        The order: check the targets exist, freeze every base weight, apply the 4-bit CPU fix,
        enable input gradients (so gradient checkpointing works), then ``get_peft_model``.

        Raises:
            ConfigError: a target module is not in the model (the message lists candidates),
                or the model was not loaded at this policy's (quantized) precision.
            StateError: the model already carries peft adapters.

        Examples:
            >>> from peft import LoraConfig
            >>> lora = policy.attach_lora(model, LoraConfig(r=8, target_modules=["q_proj"]))  # doctest: +SKIP
        """
        from peft import get_peft_model

        self._check_base(model)
        check_target_modules(model, getattr(lora_config, "target_modules", None))
        prepare_base_for_lora(model)
        with quiet_peft_alias_warning():
            return get_peft_model(model, lora_config)

    def load_adapter(
        self, model: PreTrainedModel, adapter_dir: str | os.PathLike[str], *, is_trainable: bool = True
    ) -> PeftModel:
        """Load a saved peft adapter onto a base loaded by this policy (same preparation as
        :meth:`attach_lora`), e.g. to resume training.

        Raises:
            StateError: ``adapter_dir`` holds no ``adapter_config.json``, or the model already
                carries adapters.

        Examples:
            >>> model = policy.load_adapter(base, "runs/x/stage-1/adapter")  # doctest: +SKIP
        """
        from peft import PeftModel

        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise StateError(f"no peft adapter in {str(adapter_dir)!r} (adapter_config.json is missing)")
        self._check_base(model)
        prepare_base_for_lora(model)
        with quiet_peft_alias_warning():
            peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)
        load_extra_adapters(peft_model, adapter_dir)  # per-task adapters (O-LoRA) in sub-folders
        return peft_model

    def _check_base(self, model: Any) -> None:
        from peft import PeftModel

        if isinstance(model, PeftModel):
            raise StateError("the model already carries peft adapters; pass the base model")
        if self.is_quantized:
            qtypes = _bnb.quantized_linear_types()
            if not any(isinstance(m, qtypes) for m in model.modules()):
                raise ConfigError(
                    f"precision {self.name!r} expects a model with bitsandbytes layers; "
                    "load it with this policy's load_model"
                )

    # ------------------------------------------------------------------ memory
    def memory_footprint(self, model: torch.nn.Module) -> int:
        """Bytes of the model's parameters and buffers (LoRA weights included, if any).

        Counted like ``PreTrainedModel.get_memory_footprint()``: quantized weights at their
        stored size (int8 / packed uint8); bitsandbytes' per-block scales kept outside the
        parameters (``SCB``, ``quant_state``) are not counted, as there.
        """
        return sum(self.memory_breakdown(model).values())

    def memory_breakdown(self, model: torch.nn.Module) -> dict[str, int]:
        """Bytes of parameters and buffers per owning module class (e.g. ``Linear4bit``),
        largest first; shared (tied) tensors are counted once."""
        return bytes_by_module_class(model)
