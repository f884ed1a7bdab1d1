"""Overhead of ContinualTrainer over a hand-written transformers.Trainer + peft stage.

Both train the same LoRA adapter on the same tokenized data and model for the same steps, in
the same process, alternating repeats. Evaluation is timed separately (it is the same evaluator
code in both cases). Target: ContinualTrainer's stage (data preparation + training + saving)
within 5% of the hand-written one (tokenization + training), with and without a plug-in that
defines every hook (the loss hook wraps ``Trainer.compute_loss``).

    python benchmarks/trainer_overhead.py [--steps 60] [--repeats 3] [--model DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

import quantcl as qcl
from quantcl.tasks import make_collator, tokenize_for_training
from quantcl.tiny import build_tiny_model


def lora() -> LoraConfig:
    return LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0)


def by_hand(model_dir: str, task, steps: int, batch: int, out: str) -> float:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = get_peft_model(model, lora())
    start = time.perf_counter()
    data = tokenize_for_training(task.training_rows(tok), tok, max_length=96)
    args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=batch,
                             learning_rate=1e-3, save_strategy="no", report_to="none",
                             use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=1,
                             remove_unused_columns=False, logging_steps=10)
    Trainer(model=model, args=args, train_dataset=data, data_collator=make_collator(tok),
            processing_class=tok).train()
    return time.perf_counter() - start


class EveryHook(qcl.StagePlugin):
    """Defines every hook and changes nothing: the cost of the plug-in machinery itself."""

    def on_stage_begin(self, trainer, stage, task):
        pass

    def adapt_data(self, trainer, stage, task, dataset):
        return dataset

    def configure_trainer(self, trainer, stage, task, spec):
        pass

    def loss(self, trainer, model, inputs, outputs, loss):
        return loss

    def on_evaluate(self, trainer, row, task, result):
        pass

    def on_stage_end(self, trainer, stage, task, scores):
        pass


def through_quantcl(model_dir: str, tasks, steps: int, batch: int, out: str,
                    plugins=()) -> tuple[float, float]:
    trainer = qcl.ContinualTrainer(
        model=model_dir, precision="fp32", tasks=tasks, lora=lora(), output_dir=out, seed=0,
        args=qcl.StageArgs(learning_rate=1e-3, max_steps=steps, per_device_train_batch_size=batch,
                           max_length=96), plugins=plugins, progress=False)
    record = trainer.fit().stage_records[0]
    stage = record["prepare_seconds"] + record["train_seconds"] + record["save_seconds"]
    return stage, record["eval_seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default=None, help="model directory (default: a tiny Llama)")
    ns = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = ns.model or str(build_tiny_model(Path(tmp) / "m", hidden_size=256, num_layers=4))
        tasks = qcl.recipes.synthetic(seed=0, n_train=ns.steps * ns.batch, n_eval=20, tasks=("nlu",))
        hand, ours, hooked, evals = [], [], [], []
        for i in range(ns.repeats):
            hand.append(by_hand(model_dir, tasks[0], ns.steps, ns.batch, f"{tmp}/h{i}"))
            stage, ev = through_quantcl(model_dir, tasks, ns.steps, ns.batch, f"{tmp}/q{i}")
            ours.append(stage)
            evals.append(ev)
            hooked.append(through_quantcl(model_dir, tasks, ns.steps, ns.batch, f"{tmp}/p{i}",
                                          plugins=[EveryHook()])[0])
    h, q, k = statistics.median(hand), statistics.median(ours), statistics.median(hooked)
    print(f"{ns.steps} LoRA steps, batch {ns.batch}, median of {ns.repeats} (seconds)\n")
    print("| path | stage s | per step ms | ratio |")
    print("|---|---|---|---|")
    print(f"| transformers.Trainer + peft by hand | {h:.2f} | {1000 * h / ns.steps:.1f} | 1.000 |")
    print(f"| ContinualTrainer stage (prepare+train+save) | {q:.2f} | {1000 * q / ns.steps:.1f} | {q / h:.3f} |")
    print(f"| the same with a plug-in on every hook | {k:.2f} | {1000 * k / ns.steps:.1f} | {k / h:.3f} |")
    print(f"\noverhead: {100 * (q / h - 1):+.1f}% (target < 5%); "
          f"evaluation of the task, timed separately: {statistics.median(evals):.2f} s")


if __name__ == "__main__":
    main()
