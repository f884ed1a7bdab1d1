"""Benchmark of quantcl.evaluators.MultipleChoice: log-likelihood scoring vs the LoRI paper's
generate-then-regex scoring, on the same items and model.

Run: ``python benchmarks/evaluation.py [--model DIR_OR_HUB_ID] [--max-new-tokens 512]``.
Without ``--model`` a tiny Llama from :mod:`quantcl.tiny` is built and, with ``--train-steps``
(default 300, about half a minute on a CPU), taught the answer format on other items, so that
its generations can be read at all. Items are synthetic, in the LLM-Adapters/LoRI answer
format ("... Answer format: answer1/answer2/answer3" -> "the correct answer is answer2").
Prints a markdown table: seconds, items/s, accuracy, unreadable answers, speed ratio, and how
often the two methods pick the same option.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from datasets import Dataset

from quantcl.evaluators import MultipleChoice


def lori_items(n: int, seed: int = 0) -> Dataset:
    """``n`` items: which of three 4-letter words starts with a given letter (distinct first
    letters, so exactly one option is right and the answer needs the question and the options)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        firsts = rng.sample("abcdefgh", 3)
        options = [f + "".join(rng.choice("abcdefgh") for _ in range(3)) for f in firsts]
        gold = rng.randrange(3)
        listing = "\n".join(f"answer{i + 1}: {o}" for i, o in enumerate(options))
        prompt = (f"Please choose the correct answer to the question: which word starts with "
                  f"'{firsts[gold]}'?\n{listing}\n\nAnswer format: answer1/answer2/answer3\n\n### Response:\n")
        rows.append({"prompt": prompt, "choices": [f"the correct answer is answer{i + 1}" for i in range(3)],
                     "answer": gold})
    return Dataset.from_list(rows)


def load(model_id: str | None, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_id is None:
        from quantcl.tiny import build_tiny_model

        path = build_tiny_model(tempfile.mkdtemp() + "/tiny", hidden_size=64, num_layers=2,
                                max_position_embeddings=1024)
        model_id = str(path)
    model = AutoModelForCausalLM.from_pretrained(model_id).to(device)
    return model, AutoTokenizer.from_pretrained(model_id), model_id


def teach_format(model, tok, steps: int, device: str) -> None:
    """A few hundred plain AdamW steps on prompt + gold answer + EOS (other items than scored)."""
    import torch

    train = lori_items(256, seed=1)
    texts = [r["prompt"] + r["choices"][r["answer"]] + tok.eos_token for r in train]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    rng = random.Random(0)
    for _ in range(steps):
        batch = tok(rng.sample(texts, 16), return_tensors="pt", padding=True).to(device)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model dir or hub id (default: a tiny random Llama)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="generation budget (the paper: 512)")
    parser.add_argument("--items", type=int, default=36)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-steps", type=int, default=300, help="format training of the tiny model")
    args = parser.parse_args()

    model, tok, name = load(args.model, args.device)
    if args.model is None and args.train_steps > 0:
        teach_format(model, tok, args.train_steps, args.device)
        name += f" (tiny, {args.train_steps} format-training steps)"
    items = lori_items(args.items)
    loglik = MultipleChoice(batch_size=3 * args.batch_size)
    generate = MultipleChoice(mode="generate", max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    loglik.evaluate(model, tok, items.select(range(2)), progress=False)  # warm-up
    timed = {}
    for label, ev in (("log-likelihood (MultipleChoice)", loglik),
                      (f"generate {args.max_new_tokens} + regex (LoRI)", generate)):
        start = time.perf_counter()
        result = ev.evaluate(model, tok, items, progress=False)
        timed[label] = (time.perf_counter() - start, result)
    (t_ll, r_ll), (_, r_gen) = timed.values()
    same = sum(a["prediction_index"] == b["prediction_index"] for a, b in zip(r_ll.records, r_gen.records))

    print(f"model: {name} | items: {len(items)} | device: {args.device} | batch: {args.batch_size}\n")
    print("| method | seconds | items/s | acc | unreadable answers | time vs log-likelihood |")
    print("|---|---|---|---|---|---|")
    for label, (seconds, result) in timed.items():
        invalid = f"{result.metrics['invalid']:.0%}" if "invalid" in result.metrics else "-"
        print(f"| {label} | {seconds:.2f} | {len(items) / seconds:.1f} | {result.score:.3f} | {invalid} "
              f"| {seconds / t_ll:.1f}x |")
    readable = [(a, b) for a, b in zip(r_ll.records, r_gen.records) if b["prediction_index"] is not None]
    same_readable = sum(a["prediction_index"] == b["prediction_index"] for a, b in readable)
    print(f"\nagreement (same option picked): {same}/{len(items)} = {same / len(items):.0%}; "
          f"where the generation was readable: {same_readable}/{len(readable)}")


if __name__ == "__main__":
    main()
