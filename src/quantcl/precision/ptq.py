"""Post-training quantization (PTQ) of a *copy* of a model, and the loss gap it causes.

:func:`quantize` returns a quantized copy (the model passed in is never modified); a peft LoRA
model is first merged into a float copy. :func:`measure` reports the validation cross-entropy
of the float model and of each method's quantized copy on the same tokens (and, optionally, the
accuracy drop under an evaluator). Method strings (:func:`parse_method`):

- ``rtn{bits}``: round-to-nearest fake quantization per output channel, bits in 2, 3, 4, 8;
  ``rtn{bits}-g{group}``: per group of ``group`` inputs; a ``-asym`` suffix: asymmetric
  (default symmetric). Formulas in :mod:`quantcl.precision._rtn`.
- ``int8``: bitsandbytes LLM.int8 (``bnb.nn.Linear8bitLt``, outlier threshold 6.0);
  ``nf4`` / ``fp4``: ``bnb.nn.Linear4bit`` (blocksize 64, double quantization, compute in the
  model's dtype), with the 4-bit CPU repack fix applied.
- ``gptq{bits}[-g{group}]``: GPTQ (group 128 by default) run by the ``gptqmodel`` package on a
  saved float copy, with calibration texts (``quantize(..., calibration=, tokenizer=)``,
  ``measure(..., calibration=)``); without gptqmodel, a ConfigError names it.

Every ``nn.Linear`` outside ``skip_modules`` (default ``("lm_head",)``) is quantized; embeddings
and norms are untouched.

Examples:
    >>> from quantcl.precision import ptq
    >>> q_model = ptq.quantize(model, "rtn4-g32")  # doctest: +SKIP
    >>> ptq.measure(model, tok, ["some text", "more text"], ["rtn8", "rtn4", "nf4"])  # doctest: +SKIP
    [{'method': 'rtn8', 'ce_fp': 2.31, 'ce_q': 2.31, 'relative_gap': 0.0004, ...}, ...]
"""

from quantcl.precision._gptq import require_gptqmodel
from quantcl.precision._ptq_measure import measure
from quantcl.precision._ptq_quantize import VALID_FORMS, PTQMethod, parse_method, quantize

__all__ = ["PTQMethod", "parse_method", "quantize", "measure", "require_gptqmodel", "VALID_FORMS"]
