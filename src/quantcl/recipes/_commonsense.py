"""The 8 commonsense sets in the LLM-Adapters/LoRI instruction format, and their options.

Each row becomes ``{"instruction", "input", "output", "answer"}`` where the instruction ends
with ``"Answer format: answer1/answer2/..."`` and the output is ``"the correct answer is
answer1"``. :data:`CONVERTERS` turn rows of the original Hub datasets into that format;
:func:`to_multiple_choice` adds the ``choices``/``answer`` columns MultipleChoice scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from datasets import Dataset

from quantcl.errors import ConfigError

__all__ = ["CONVERTERS", "to_multiple_choice", "ANSWER_PREFIX"]

#: every NLU output starts with this; the options are scored as its continuation
ANSWER_PREFIX = "the correct answer is "


def _row(instruction: str, marker: str, options: Sequence[str], gold: int, sep: str = " ") -> dict[str, str]:
    """An LLM-Adapters row: ``instruction\\n\\nMarker1: a Marker2: b\\n\\nAnswer format: marker1/marker2``."""
    listed = sep.join(f"{marker}{i + 1}: {o}" for i, o in enumerate(options))
    keys = [f"{marker.lower()}{i + 1}" for i in range(len(options))]
    return {
        "instruction": f"{instruction}\n\n{listed}\n\nAnswer format: {'/'.join(keys)}",
        "input": "",
        "output": ANSWER_PREFIX + keys[gold],
        "answer": keys[gold],
    }


def _boolq(r: dict[str, Any]) -> dict[str, str]:
    gold = "true" if r["answer"] else "false"
    question = r["question"].rstrip("?")
    return {
        "instruction": f"Please answer the following question with true or false, question: {question}?"
        "\n\nAnswer format: true/false",
        "input": "",
        "output": ANSWER_PREFIX + gold,
        "answer": gold,
    }


def _piqa(r: dict[str, Any]) -> dict[str, str]:
    return _row(f"Please choose the correct solution to the question: {r['goal']}", "Solution",
                [r["sol1"], r["sol2"]], int(r["label"]), sep="\n\n")


def _siqa(r: dict[str, Any]) -> dict[str, str]:
    return _row(f"Please choose the correct answer to the question: {r['context']} {r['question']}",
                "Answer", [r["answerA"], r["answerB"], r["answerC"]], int(r["label"]) - 1)


def _arc_like(stem_key: str) -> Callable[[dict[str, Any]], dict[str, str]]:
    def convert(r: dict[str, Any]) -> dict[str, str]:
        labels = list(r["choices"]["label"])
        return _row(f"Please choose the correct answer to the question: {r[stem_key]}", "Answer",
                    list(r["choices"]["text"]), labels.index(r["answerKey"]))

    return convert


def _hellaswag(r: dict[str, Any]) -> dict[str, str]:
    return _row(
        f"Please choose the correct ending to complete the given sentence: {r['activity_label']}: {r['ctx']}",
        "Ending", list(r["endings"]), int(r["label"]),
    )


def _winogrande(r: dict[str, Any]) -> dict[str, str]:
    return _row(
        "Please choose the correct answer to fill in the blank to complete the given sentence: "
        f"{r['sentence']}", "Option", [r["option1"], r["option2"]], int(r["answer"]) - 1,
    )


#: set name -> converter of one original Hub row into the LLM-Adapters format
CONVERTERS: dict[str, Callable[[dict[str, Any]], dict[str, str]]] = {
    "boolq": _boolq,
    "piqa": _piqa,
    "social_i_qa": _siqa,
    "ARC-Challenge": _arc_like("question"),
    "ARC-Easy": _arc_like("question"),
    "openbookqa": _arc_like("question_stem"),
    "hellaswag": _hellaswag,
    "winogrande": _winogrande,
}


def _options(instruction: str) -> list[str]:
    _, sep, fmt = instruction.rpartition("Answer format:")
    if not sep:
        return []
    return [o.strip().rstrip(".") for o in fmt.strip().split("/") if o.strip()]


def _choices_batch(batch: dict[str, list], indices: list[int], *, subset: str) -> dict[str, list]:
    out: dict[str, list] = {k: [] for k in ("subset", "instruction", "input", "output", "label", "choices", "answer")}
    inputs = batch.get("input") or [""] * len(indices)
    outputs = batch.get("output") or [None] * len(indices)
    for i, idx in enumerate(indices):
        instruction, gold = batch["instruction"][i], str(batch["answer"][i]).strip()
        options = _options(instruction)
        lowered = [o.lower() for o in options]
        if gold.lower() not in lowered:
            raise ConfigError(
                f"lessismore: {subset} row {idx}: answer {gold!r} is not one of the options "
                f"{options} of its 'Answer format:' line"
            )
        out["subset"].append(subset)
        out["instruction"].append(instruction)
        out["input"].append(inputs[i] or "")
        out["output"].append(outputs[i] or ANSWER_PREFIX + gold)
        out["label"].append(gold)
        out["choices"].append([ANSWER_PREFIX + o for o in options])
        out["answer"].append(lowered.index(gold.lower()))
    return out


def to_multiple_choice(dataset: Dataset, subset: str) -> Dataset:
    """LLM-Adapters rows -> columns ``subset, instruction, input, output, label, choices, answer``.

    ``label`` is the gold option as text (``"answer2"``); ``choices`` are the continuations
    ``"the correct answer is <option>"``; ``answer`` is the gold index into ``choices``.
    """
    missing = [c for c in ("instruction", "answer") if c not in dataset.column_names]
    if missing:
        raise ConfigError(
            f"lessismore: the {subset} eval data lacks column(s) {missing}; expected the "
            f"LLM-Adapters format (instruction, input, output, answer), got {dataset.column_names}"
        )
    return dataset.map(
        _choices_batch, batched=True, with_indices=True, fn_kwargs={"subset": subset},
        remove_columns=dataset.column_names, desc=f"Options of {subset}",
    )
