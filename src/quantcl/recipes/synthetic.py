"""Offline stand-ins for the paper's NLU -> Math -> Code sequence.

Three procedurally generated tasks, deterministic by seed, that exercise the same evaluators
as the real recipe:

========  =====================================  ===========================================
task      what the model must do                 evaluator
========  =====================================  ===========================================
``nlu``   pick the reversal of a word among      :class:`~quantcl.evaluators.MultipleChoice`
          three anagrams                         (log-likelihood, chance = 1/3)
``math``  add one to a two-digit number and      :class:`~quantcl.evaluators.NumericMatch`
          say "The final answer is: N"
``code``  complete a Python function that        :class:`~quantcl.evaluators.CodeExecution`
          repeats a string, checked by running   (sandboxed, pass@1)
          its test
========  =====================================  ===========================================

Each task's inputs are drawn from a space far larger than its training set (no answer can be
memorised), so a score is a measure of the rule learned. The three share one character
vocabulary and nearby formats, so fine-tuning on one disturbs the others: a small model
learns each in a minute on a CPU and forgets measurably when trained on the next one.

:func:`pretraining_corpus` yields the *domain* text (words reversed, numbers counted, strings
repeated) in other wordings than the tasks use; ``quantcl demo`` pretrains its tiny model on it,
so that the LoRA stages learn task formats on top of skills, as with a real pretrained LM.

Examples:
    >>> import quantcl as qcl
    >>> tasks = qcl.recipes.synthetic(seed=0, n_train=200, n_eval=20)  # doctest: +SKIP
    >>> tasks.names  # doctest: +SKIP
    ['nlu', 'math', 'code']
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from datasets import Dataset

from quantcl._checks import require_bool, require_int, require_list_of
from quantcl.errors import ConfigError
from quantcl.evaluators import CodeExecution, MultipleChoice, NumericMatch
from quantcl.tasks.task import Task, TaskSequence

__all__ = ["synthetic", "pretraining_corpus", "SYNTHETIC_TASKS"]

_LETTERS = "abcdefgh"
SYNTHETIC_TASKS = ("nlu", "math", "code")


def _word(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(_LETTERS) for _ in range(length))


def _nlu_row(rng: random.Random) -> dict:
    word = _word(rng, 4)
    answer = word[::-1]
    options = {answer}
    for _ in range(50):  # three distinct anagrams where the letters allow it
        letters = list(word)
        rng.shuffle(letters)
        options.add("".join(letters))
        if len(options) == 3:
            break
    shuffler = rng
    if len(options) < 3:
        # A word of one repeated letter has no other anagram. Its distractors (and their order)
        # come from a generator of their own, so every other row of every seed stays as it was.
        shuffler = random.Random(f"distractors:{word}")
        while len(options) < 3:
            options.add(_word(shuffler, 4))
    ordered = sorted(options)
    shuffler.shuffle(ordered)
    return {
        "prompt": f"Which is '{word}' backwards?\nAnswer:",
        "target": f" {answer}",
        "choices": [f" {o}" for o in ordered],
        "answer": ordered.index(answer),
    }


def _math_row(rng: random.Random) -> dict:
    n = rng.randint(10, 98)
    return {"prompt": f"What is {n} + 1?\n", "target": f"The final answer is: {n + 1}"}


def _code_row(rng: random.Random) -> dict:
    word = _word(rng, rng.randint(2, 4))
    times = rng.randint(2, 9)
    return {
        "prompt": f"def f():\n    \"\"\"Return '{word}' {times} times.\"\"\"\n",
        "target": f'    return "{word}" * {times}\n',
        "test": f'def check(candidate):\n    assert candidate() == "{word}" * {times}\n',
        "entry_point": "f",
    }


_GENERATORS: dict[str, Callable[[random.Random], dict]] = {
    "nlu": _nlu_row,
    "math": _math_row,
    "code": _code_row,
}


def _rows(name: str, n: int, seed: int) -> Dataset:
    # One stream per (task, split, seed): adding a task never changes another's data.
    rng = random.Random(f"{name}:{seed}")
    return Dataset.from_list([_GENERATORS[name](rng) for _ in range(n)])


def synthetic(
    seed: int = 0,
    *,
    n_train: int = 400,
    n_eval: int = 40,
    tasks: tuple[str, ...] = SYNTHETIC_TASKS,
    allow_code_execution: bool = True,
) -> TaskSequence:
    """Three offline tasks standing in for NLU, Math and Code (see the module docstring).

    Args:
        seed: seeds every task's data; eval data comes from a different stream than training.
        n_train: training rows per task.
        n_eval: evaluation rows per task.
        tasks: which tasks, in which order (any of ``"nlu"``, ``"math"``, ``"code"``).
        allow_code_execution: the ``code`` task runs model completions, each in the sandbox
            (separate process, time/memory/process limits). This built-in recipe opts in by
            default because its programs are one-line expressions the library itself defines;
            pass ``False`` to refuse, which makes validation fail for the ``code`` task.

    Returns:
        A validated :class:`~quantcl.TaskSequence`.
    """
    tasks = tuple(require_list_of(tasks, "synthetic(tasks=...)", str, items=f"task names from {list(SYNTHETIC_TASKS)}",
                                  nonempty=True))
    require_bool(allow_code_execution, "synthetic(allow_code_execution=...)")
    unknown = [t for t in tasks if t not in _GENERATORS]
    if unknown or not tasks:
        raise ConfigError(
            f"synthetic(tasks=...) got {list(tasks)!r}; choose from {list(SYNTHETIC_TASKS)}"
        )
    require_int(n_train, "synthetic(n_train=...)", minimum=1)
    require_int(n_eval, "synthetic(n_eval=...)", minimum=1)
    require_int(seed, "synthetic(seed=...)", minimum=0)
    evaluators = {
        "nlu": lambda: MultipleChoice(),
        "math": lambda: NumericMatch(answer_phrase="The final answer is:", max_new_tokens=32),
        "code": lambda: CodeExecution(
            allow_code_execution=allow_code_execution, max_new_tokens=40, timeout=5.0
        ),
    }
    return TaskSequence(
        [
            Task(
                name,
                train=_rows(name, n_train, seed),
                eval=_rows(name, n_eval, seed + 1_000_003),
                evaluator=evaluators[name](),
            )
            for name in tasks
        ]
    )


def pretraining_corpus(n: int, *, seed: int = 0) -> Iterator[str]:
    """Domain text for pretraining a tiny model before the synthetic tasks.

    The skills the tasks need (reversing a word, counting up, repeating a string) in other
    wordings than the tasks use, so that a pretrained model starts near chance on the tasks
    themselves.
    """
    rng = random.Random(f"pretrain:{seed}")
    for _ in range(n):
        word = _word(rng, rng.randint(2, 5))
        number = rng.randint(10, 98)
        times = rng.randint(2, 9)
        kind = rng.randrange(5)
        if kind == 0:
            yield f"{word} backwards is {word[::-1]}."
        elif kind == 1:
            yield f"after {number} comes {number + 1}."
        elif kind == 4:  # the same count, the answer further from the question
            yield f"{number} and one more make {number + 1}."
        elif kind == 2:
            yield f"'{word}' {times} times in python is \"{word}\" * {times}."
        else:
            yield f"{word} {word} {number} {number}"
