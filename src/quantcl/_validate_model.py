"""Checking a model source and LoRA settings before any work, without loading weights.

:func:`check_model_source` is cheap (a ``stat``, a look in the Hugging Face cache) and runs in the
``ContinualTrainer`` constructor. :func:`model_config` reads the model's ``config.json`` and
:func:`empty_model` builds the model on the ``meta`` device (``accelerate.init_empty_weights``:
no memory, no weights read), so ``quantcl validate`` can match LoRA ``target_modules`` against
its module names.

Examples:
    >>> check_model_source("./no-such-model")
    Traceback (most recent call last):
    ...
    quantcl.errors.ConfigError: model path './no-such-model' does not exist (...)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quantcl._hub import hub_offline
from quantcl._checks import require_int, require_list_of, require_number
from quantcl.errors import ConfigError
from quantcl.models import DEMO_MODEL, DEMO_MODEL_ID, SMOLLM2_MODEL_ID, is_demo_model, smollm2_gguf
from quantcl.precision.gguf import is_gguf_source

__all__ = ["looks_local", "check_model_source", "check_lora_config", "model_config", "empty_model"]

def looks_local(source: str) -> bool:
    """A path rather than a Hub id (``org/name`` has one slash and no leading dot, slash or tilde)."""
    return (os.path.isabs(source) or source.startswith((".", "~")) or "\\" in source
            or source.count("/") > 1 or is_gguf_source(source))


def check_model_source(source: str, model_kwargs: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`ConfigError` unless ``source`` can name a model: an existing checkpoint directory
    (with ``config.json``) or ``.gguf`` file, or a Hub id (in the local cache, when offline).

    ``model_kwargs`` (``cache_dir``, ``revision``, ``subfolder``, ``local_files_only``) are those
    given to ``load_model``. A Hub id is not looked up online here (that is a download).

    Examples:
        >>> check_model_source("HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
    """
    if is_demo_model(source):
        return
    if source == SMOLLM2_MODEL_ID:
        smollm2_gguf()
        return
    kwargs = dict(model_kwargs or {})
    path = Path(source).expanduser()
    if path.is_dir():
        sub = kwargs.get("subfolder") or ""
        if not (path / sub / "config.json").is_file():
            raise ConfigError(f"model directory {str(path)!r} has no {sub + '/' if sub else ''}config.json: "
                              "it is not a Hugging Face checkpoint (save one with model.save_pretrained)")
        return
    if path.exists() and not is_gguf_source(source):
        raise ConfigError(f"model {source!r} is a file; give a checkpoint directory, a .gguf file or a Hub id")
    if path.exists():
        return
    if looks_local(source):
        resolved = str(path.resolve())
        where = f" (resolved: {resolved})" if resolved != source else ""
        raise ConfigError(f"model path {source!r} does not exist{where}; give a checkpoint directory, "
                          "a .gguf file or a Hub id (org/name)")
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError as err:
        raise ConfigError(f"model {source!r} is neither an existing local path nor a valid Hub id (org/name): "
                          f"{err}") from None
    if hub_offline(kwargs):
        sub = kwargs.get("subfolder") or ""
        found = try_to_load_from_cache(source, f"{sub}/config.json" if sub else "config.json",
                                       cache_dir=kwargs.get("cache_dir"), revision=kwargs.get("revision"))
        if not isinstance(found, str):
            raise ConfigError(f"model {source!r} is not a local path, and is not in the Hugging Face cache while "
                              "offline (HF_HUB_OFFLINE=1 or local_files_only); download it first "
                              f"(`hf download {source}`) or give a local directory")


def check_lora_config(lora: Any, what: str = "lora", *, rank_fields: bool = True) -> None:
    """Raise :class:`ConfigError` for a ``peft.LoraConfig`` that peft accepts but cannot use.

    peft takes ``r=0`` or ``lora_alpha="x"`` at construction and fails only when the model is
    wrapped, after it is loaded. ``rank_fields=False`` checks ``target_modules`` only (another
    peft config's, e.g. OSF's).

    Examples:
        >>> from peft import LoraConfig
        >>> check_lora_config(LoraConfig(r=0))
        Traceback (most recent call last):
        ...
        quantcl.errors.ConfigError: lora.r must be an int >= 1, got 0
    """
    if rank_fields:
        require_int(lora.r, f"{what}.r", minimum=1)
        require_number(lora.lora_alpha, f"{what}.lora_alpha", low=0, low_open=True)
        require_number(lora.lora_dropout, f"{what}.lora_dropout", low=0, high=1)
    targets = lora.target_modules
    if targets is not None and not isinstance(targets, str):
        require_list_of(sorted(targets, key=str) if isinstance(targets, (set, frozenset)) else targets,
                        f"{what}.target_modules", str,
                        items="module names (str), a regex string or 'all-linear'", nonempty=True)


def model_config(source: str, model_kwargs: Mapping[str, Any] | None = None) -> Any:
    """The model's ``PretrainedConfig`` (``config.json`` only), or ``None`` for a ``.gguf`` file.

    The demo model's config comes from its recipe, so it is checked without being built.
    """
    from transformers import AutoConfig, LlamaConfig

    if source == DEMO_MODEL_ID:

        return LlamaConfig(hidden_size=DEMO_MODEL["hidden_size"], num_hidden_layers=DEMO_MODEL["num_layers"],
                           num_attention_heads=DEMO_MODEL["num_heads"], vocab_size=128)
    if source == SMOLLM2_MODEL_ID or is_gguf_source(source):
        return None  # the architecture is known once the file is converted, at load
    kwargs = dict(model_kwargs or {})
    options = {k: kwargs[k] for k in ("revision", "cache_dir", "subfolder", "token") if k in kwargs}
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=kwargs.get("trust_remote_code") is True,
                                          local_files_only=hub_offline(kwargs), **options)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the config of model {source!r}: {str(err).splitlines()[0]}") from err


def empty_model(source: str, config: Any, *, trust_remote_code: bool = False) -> Any:
    """The causal LM of ``config`` on the ``meta`` device: module names and shapes, no memory."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    try:
        with init_empty_weights():
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as err:
        raise ConfigError(f"model {source!r} ({type(config).__name__}) is not a causal language model the "
                          f"installed transformers can build: {str(err).splitlines()[0]}") from err
