"""Padding waste in training: random batches vs batches grouped by length, same rows and steps.

Run: ``python benchmarks/padding.py [--steps 60] [--batch-size 16]``.

A continual stage with replay trains on a mix of tasks whose rows differ in length (here the
synthetic recipe's nlu, math and code rows together, as 10%+ replay mixes them). Both runs train
LoRA (r 8, all linear layers) on the shipped demo model through ``transformers.Trainer`` with
quantcl's tokenization and collator, once with the default random sampler and once with
transformers' ``train_sampling_strategy="group_by_length"`` (``LengthGroupedSampler``: random
mega-batches, sorted by length inside), which a quantcl stage takes as
``StageArgs(extra={"train_sampling_strategy": "group_by_length"})``. Prints the padded fraction
of the token positions, real (non-pad) tokens per second, and the ratios. Grouping changes which
rows share a batch (replay rows tend to be batched with rows of their own length), so it is an
option, not the default.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

from datasets import concatenate_datasets


class CountingCollator:
    """quantcl's collator, counting real and padded token positions."""

    def __init__(self, collate: Any) -> None:
        self.collate, self.real, self.padded = collate, 0, 0

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(rows)
        self.real += int(batch["attention_mask"].sum())
        self.padded += int(batch["attention_mask"].numel())
        return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from quantcl.models import demo_model_dir
    from quantcl.tasks import make_collator, tokenize_for_training
    from quantcl.recipes.synthetic import synthetic

    path = demo_model_dir(progress=False)
    tok = AutoTokenizer.from_pretrained(path)
    tasks = synthetic(seed=0, n_train=400, n_eval=8)
    data = concatenate_datasets([tokenize_for_training(t.training_rows(tok), tok, max_length=96) for t in tasks])
    print(f"{len(data)} rows; token lengths {min(len(x) for x in data['input_ids'])}-"
          f"{max(len(x) for x in data['input_ids'])}; {args.steps} steps of {args.batch_size}; "
          f"threads {torch.get_num_threads()}\n")
    results: dict[str, list[tuple[float, float]]] = {"random": [], "group_by_length": []}
    for _ in range(args.repeats):
        for strategy in results:
            model = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                                   LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
            collate = CountingCollator(make_collator(tok))
            with tempfile.TemporaryDirectory() as out:
                targs = TrainingArguments(output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                                          learning_rate=2e-3, report_to="none", save_strategy="no", disable_tqdm=True,
                                          use_cpu=True, seed=0, train_sampling_strategy=strategy, logging_steps=10**6)
                trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=collate,
                                  processing_class=tok)
                start = time.perf_counter()
                trainer.train()
                seconds = time.perf_counter() - start
            results[strategy].append((1 - collate.real / collate.padded, collate.real / seconds))
    print("| sampler | padded fraction of positions | real tokens/s (median) | vs random |")
    print("|---|---|---|---|")
    base = statistics.median(r for _, r in results["random"])
    for strategy, runs in results.items():
        waste = sum(w for w, _ in runs) / len(runs)
        rate = statistics.median(r for _, r in runs)
        print(f"| {strategy} | {waste:.1%} | {rate:.0f} [{min(r for _, r in runs):.0f}-{max(r for _, r in runs):.0f}] "
              f"| {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
