"""GPTQ (through gptqmodel) next to round-to-nearest on a small trained model: the CE gap of each.

Run where gptqmodel is installed (it needs torch >= 2.14.1; see docs/ptq.md):
``python benchmarks/gptq_check.py``. A random Llama (hidden 256, 2 layers) is trained for 150
AdamW steps on the demo's pretraining corpus, then ``ptq.measure`` compares rtn4/gptq4 and
rtn3/gptq3 (group 32) on 64 held-out texts, GPTQ calibrated on 64 other texts.
"""

import os, tempfile, time
from transformers import AutoModelForCausalLM, AutoTokenizer
from quantcl.tiny import build_tiny_model
from quantcl.precision import ptq
from quantcl.recipes.synthetic import pretraining_corpus
import torch
d = build_tiny_model(tempfile.mkdtemp() + "/m", hidden_size=256, num_layers=2, num_heads=4)
model = AutoModelForCausalLM.from_pretrained(d); tok = AutoTokenizer.from_pretrained(d)
# make it a trained model: 150 AdamW steps on the demo's pretraining corpus
texts = list(pretraining_corpus(2400, seed=0))
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
for i in range(150):
    b = tok(texts[i * 16:(i + 1) * 16], return_tensors="pt", padding=True)
    model(**b, labels=b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)).loss.backward(); opt.step(); opt.zero_grad()
model.eval()
calib, held = texts[-128:-64], texts[-64:]
for r in ptq.measure(model, tok, held, ["rtn4-g32", "gptq4-g32", "rtn3-g32", "gptq3-g32"], calibration=calib):
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
