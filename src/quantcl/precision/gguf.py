"""GGUF loading: a ``.gguf`` file turned once into an ordinary, cached Hugging Face checkpoint.

transformers can read a GGUF (``from_pretrained(dir, gguf_file=name)``): it dequantizes the
weights to plain ``nn.Linear`` layers. But the model it returns still carries the GGUF
"quantization" marks, so it can neither ``save_pretrained`` nor train. quantcl therefore
converts the file once: load it in fp32, clear ``config.quantization_config``,
``hf_quantizer`` and ``is_quantized``, and save model + tokenizer as safetensors to a cache
directory. Every precision then loads from that directory like any other checkpoint (bf16, int8,
nf4 ... re-quantize the dequantized fp32 weights).

The cache lives under ``$QUANTCL_CACHE/gguf`` (default ``~/.cache/quantcl/gguf``), keyed by the
file's absolute path, size and modification time; entries are written to a temporary directory
and renamed into place, so an interrupted conversion never leaves a half-written entry.

Examples:
    >>> from quantcl.precision.gguf import gguf_to_checkpoint
    >>> ckpt_dir = gguf_to_checkpoint("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from quantcl._io import cache_dir
from quantcl.errors import ConfigError

__all__ = ["is_gguf_source", "gguf_cache_root", "gguf_to_checkpoint"]


def is_gguf_source(source: str | os.PathLike[str]) -> bool:
    """True when ``source`` names a ``.gguf`` file (it must then exist)."""
    return str(source).lower().endswith(".gguf")


def gguf_cache_root() -> Path:
    """The directory holding converted GGUF checkpoints."""
    return cache_dir() / "gguf"


def _cache_key(path: Path) -> str:
    st = path.stat()
    raw = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    return f"{path.stem}-{hashlib.sha256(raw).hexdigest()[:16]}"


def gguf_to_checkpoint(gguf_path: str | os.PathLike[str], *, cache_root: str | Path | None = None) -> Path:
    """Convert a ``.gguf`` file to a safetensors checkpoint directory (cached) and return it.

    Args:
        gguf_path: a local ``.gguf`` file (LLaMA, Qwen2, Mistral... any architecture
            transformers' GGUF loader supports).
        cache_root: where converted checkpoints go; default :func:`gguf_cache_root`.

    Raises:
        ConfigError: the file does not exist, or the ``gguf`` package is missing.
    """
    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"GGUF file not found: {str(path)!r}; pass an existing local .gguf file")
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as err:
        raise ConfigError("loading a .gguf file needs the `gguf` package: pip install gguf") from err
    root = Path(cache_root) if cache_root is not None else gguf_cache_root()
    final = root / _cache_key(path)
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
    try:
        _convert(path, tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another process converted the same file meanwhile
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert(path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # The dequantized model still says "quantized with gguf"; make it an ordinary model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # transformers reads these two plain attributes; setattr keeps type checkers from
    # treating them as nn.Module submodule assignments
    setattr(model, "hf_quantizer", None)  # noqa: B010
    setattr(model, "is_quantized", False)  # noqa: B010
    model.save_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer.save_pretrained(out_dir)
