"""What a probe costs: one probe row against one training stage, and lm-eval against quantcl's own scoring.

    pip install "quantcl[bench]"       # lm-eval
    python benchmarks/probe_cost.py                          # SmolLM2-135M-Instruct, bf16, 100 items
    python benchmarks/probe_cost.py --model quantcl:demo --precision fp32 --steps 10

In one process: a one-stage ``ContinualTrainer`` run (the first task of the offline stdlib
sequence, ``--steps`` optimizer steps of 4 rows, LoRA r=8 on all linear layers: the "Less is more"
SmolLM2 setting) with two probes of the same ``--items`` held-out standard-library cloze items
(:func:`quantcl.recipes.stdlib_cloze_probe`): one scored by lm-evaluation-harness on the in-memory
model (``LMEvalHarness``), one by quantcl's ``MultipleChoice``. After the run, both probes are timed
again on the trained model (median of ``--repeats``, order alternating, min-max in brackets).

Prints: the stage's training seconds, each probe's seconds and its share of the stage, the ratio
lm-eval / quantcl, and whether the two agree (score, and item by item the chosen option; the
largest log-likelihood difference, which in bf16 reflects lm-eval's bf16 log-softmax).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from peft import LoraConfig

import quantcl as qcl
from quantcl.recipes import stdlib_cloze_probe, stdlib_sequence


def _timed(fn):  # noqa: ANN001, ANN202
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="quantcl:smollm2")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    harness = stdlib_cloze_probe(args.items, name="cloze-lm-eval", batch_size=args.batch_size)
    native = stdlib_cloze_probe(args.items, harness=False, name="cloze-quantcl")
    tasks = stdlib_sequence(n_eval=10, seed=0, tasks=("nlu",))  # its evaluation is not what is timed here
    with tempfile.TemporaryDirectory() as out:
        trainer = qcl.ContinualTrainer(
            args.model, args.precision, tasks, output_dir=out, progress=False, probes=[harness, native],
            lora=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.05),
            args=qcl.StageArgs(max_steps=args.steps, per_device_train_batch_size=4, learning_rate=2e-4,
                               eval_batch_size=args.batch_size))
        result = trainer.fit()
        stage = result.stage_records[0]["train_seconds"]
        model, tok = trainer.model, trainer.tokenizer
        times: dict[str, list[float]] = {"lm-eval": [], "quantcl": []}
        results = {}
        for i in range(args.repeats):
            order = [("lm-eval", harness), ("quantcl", native)]
            for name, probe in order if i % 2 == 0 else order[::-1]:
                seconds, results[name] = _timed(lambda p=probe: p.evaluate(model, tok, batch_size=args.batch_size,
                                                                            progress=False))
                times[name].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    ours, theirs = results["quantcl"], results["lm-eval"]
    same_choice = sum(a["prediction_index"] == b["prediction"] for a, b in zip(ours.records, theirs.records))
    diff = max(abs(x - y) for a, b in zip(ours.records, theirs.records)
               for x, y in zip(a["loglikelihoods"], b["loglikelihoods"]))
    print(f"model {args.model} at {args.precision}, {torch.get_num_threads()} threads; {args.items} items x 4 "
          f"options, batch {args.batch_size}")
    print(f"training stage ({args.steps} steps x 4 rows): {stage:.1f} s")
    for name in ("lm-eval", "quantcl"):
        print(f"probe row, {name:8s}: {med[name]:6.2f} s [{min(times[name]):.2f}-{max(times[name]):.2f}]  "
              f"= {med[name] / stage:.1%} of the stage")
    print(f"lm-eval / quantcl time: {med['lm-eval'] / med['quantcl']:.2f}x")
    print(f"scores: lm-eval {theirs.score:.3f}, quantcl {ours.score:.3f}; same option chosen on "
          f"{same_choice}/{len(ours.records)} items; largest log-likelihood difference {diff:.2e}")
    print(f"probe matrix during the run (rows: before, after stage 1): {result.probe_matrix.round(3).tolist()}")


if __name__ == "__main__":
    main()
