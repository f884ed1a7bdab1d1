"""Check ternary QAT on a CUDA GPU: a PrecisionSchedule run through a plain transformers.Trainer,
then the 2-bit packed export, on the GPU (needs torch, transformers, safetensors; no datasets).

    python benchmarks/qat_cuda_check.py                 # exits 1 if a check fails
    python benchmarks/qat_cuda_check.py --device cpu    # the same code on the CPU

Checks: lambda per step follows the schedule; every loss is finite; Adam's step count restarts
at the switch with optimizer="reset"; the packed model's logits equal the fake-quantized ones
(and after save_packed/load_packed). Prints step time before and after the switch.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from typing import Any

import torch
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

import quantcl as qcl
from quantcl.precision import load_packed, pack_bitlinear, save_packed
from quantcl.tiny import build_tiny_model


class Watch(TrainerCallback):
    def __init__(self) -> None:
        self.adam_steps: dict[int, int] = {}
        self.times: dict[int, float] = {}
        self._t = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._t = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                    **kw: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times[state.global_step] = time.perf_counter() - self._t
        inner = getattr(optimizer, "optimizer", optimizer)
        param = next(p for p in model.parameters() if p.requires_grad)
        self.adam_steps[state.global_step] = int(inner.state[param]["step"])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    use_cpu = args.device == "cpu"
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(f"{tmp}/model", hidden_size=256, num_layers=4)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        switch = args.steps // 2
        schedule = qcl.PrecisionSchedule(switch_step=switch, phase_in="linear", phase_in_steps=8, optimizer="reset",
                                         rewarm_steps=4)
        schedule.prepare(model)
        g = torch.Generator().manual_seed(0)
        rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(5, 90, (args.steps * 4, 128), generator=g)]
        targs = TrainingArguments(f"{tmp}/out", max_steps=args.steps, per_device_train_batch_size=4, learning_rate=1e-3,
                                  logging_steps=1, report_to="none", save_strategy="no", use_cpu=use_cpu,
                                  disable_tqdm=True)
        watch = Watch()
        trainer = Trainer(model=model, args=targs, train_dataset=rows, callbacks=[schedule, watch])
        schedule.attach(trainer)
        trainer.train()
        device = next(model.parameters()).device
        expected = [schedule.strength_at(t) for t in range(args.steps)]
        if [lam for _, lam in schedule.history] != expected:
            failures.append("lambda per step")
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        if len(losses) != args.steps or not all(math.isfinite(x) for x in losses):
            failures.append(f"losses {losses}")
        if watch.adam_steps.get(switch + 1) != 1 or watch.adam_steps.get(switch) != switch:
            failures.append(f"adam steps around the switch {watch.adam_steps}")
        model.eval()
        ids = torch.randint(5, 90, (2, 64), device=device)
        with torch.no_grad():
            fake = model(ids).logits
            pack_bitlinear(model)
            packed = model(ids).logits
        if not torch.equal(fake, packed):
            failures.append(f"packed logits differ by {(fake - packed).abs().max().item()}")
        save_packed(model, f"{tmp}/packed")
        reloaded = load_packed(f"{tmp}/packed").to(device)
        with torch.no_grad():
            if not torch.equal(reloaded(ids).logits, fake):
                failures.append("reloaded packed logits differ")
        before = sorted(watch.times[s] for s in range(2, switch))
        after = sorted(watch.times[s] for s in range(switch + 9, args.steps + 1))
        print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}); "
              f"median step {before[len(before) // 2] * 1e3:.1f} ms at lambda 0, "
              f"{after[len(after) // 2] * 1e3:.1f} ms at lambda 1; final loss {losses[-1]:.3f}")
    print("FAILED: " + "; ".join(failures) if failures else "all QAT checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
