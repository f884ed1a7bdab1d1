"""Fixtures of the plug-in tests."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

from quantcl import PrecisionPolicy


@pytest.fixture
def lora_model(tiny_model_dir):
    """``(model, tokenizer)``: the tiny model with LoRA on ``q_proj``, B drawn away from zero so that
    the gradients of A and B are both non-zero."""
    model, tok = PrecisionPolicy("fp32").load_model(tiny_model_dir)
    torch.manual_seed(0)
    model = PrecisionPolicy("fp32").attach_lora(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                                                                  lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model, tok
