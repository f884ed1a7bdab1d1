"""An offline NLU -> Math -> Code sequence for real (BPE, instruction-tuned) models.

The three tasks of "Less is more" (arXiv 2512.18934) in its spirit, built on this machine with no
download; facts and tests come from the Python standard library itself (real names, real
docstrings, values computed by calling the real functions):

========  ==============================================  ===============================================
task      what the model must do                          evaluator
========  ==============================================  ===============================================
``nlu``   name the standard-library module that defines   :class:`~quantcl.evaluators.MultipleChoice`
          a name (``bisect_left`` -> ``bisect``), one of   (``mode="generate"``: the reply's first word,
          the 4 listed in the question                    chance = 0.25 for a model that keeps the format)
``math``  solve a one-step word problem and say           :class:`~quantcl.evaluators.NumericMatch`
          "The final answer is: N"                        (the final number)
``code``  write ``solve(...)`` from a stdlib function's   :class:`~quantcl.evaluators.CodeExecution`
          docstring and one example; hidden tests          (``mode="chat"``, sandboxed, pass@1)
========  ==============================================  ===============================================

Held-out rows never overlap training: NLU facts are split by a hash of the name
(:func:`~quantcl.recipes._stdlib_facts.in_heldout`, the same split for every seed and
size), code functions by a hash of their behaviour group (functions that pass each other's tests,
such as ``str.isdigit`` and ``str.isdecimal``, fall on the same side), so evaluation asks about
names and functions never trained on; math problems are split by a hash of the question. ``seed`` picks the rows, the distractors and the examples. Prompts are
plain questions rendered as the user turn of the tokenizer's chat template (``chat=True``); targets
are the reply (a module name; the worked sum and "The final answer is: N"; a fenced code block).
The math problems are templated (no word-problem data ships offline), the other two tasks are real
facts. What exists depends on the Python version: :func:`stdlib_sequence_metadata` records it.

Examples:
    >>> tasks = stdlib_sequence(n_train=8, n_eval=4, allow_code_execution=True)
    >>> tasks.names
    ['nlu', 'math', 'code']
    >>> tasks[0].eval[0]["prompt"].startswith("Which Python standard-library module defines")
    True
"""

from __future__ import annotations

import hashlib
import importlib
import platform
import random
from typing import Any

from datasets import Dataset

from quantcl._checks import require_bool, require_choice, require_int, require_list_of, require_number
from quantcl.errors import ConfigError
from quantcl.evaluators import CodeExecution, MultipleChoice, NumericMatch
from quantcl.recipes._stdlib_facts import (
    FACT_MODULES,
    SAME_SOURCE,
    FunctionSpec,
    facts_digest,
    function_specs,
    in_heldout,
    module_facts,
)
from quantcl.tasks.task import Task, TaskSequence

__all__ = ["stdlib_sequence", "stdlib_sequence_metadata", "STDLIB_SEQUENCE_TASKS"]

STDLIB_SEQUENCE_TASKS = ("nlu", "math", "code")
NLU_SCORING = ("generate", "loglikelihood", "both")
NLU_ANSWER_PATTERN = r"^\W*(\w+)"  # the reply's first word ("`bisect`." -> bisect)
_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jon", "Kemal", "Lena")
_ITEMS = ("apples", "books", "coins", "pens", "stamps", "marbles", "cards", "shells", "cookies", "stickers")

_CODE_TEST = SAME_SOURCE + '''

def check(candidate):
    for args, want in {cases!r}:
        got = candidate(*args)
        assert _same(got, want), f"solve{{args!r}} returned {{got!r}}, expected {{want!r}}"
'''


def _nlu_rows(facts: list[tuple[str, str]], n: int, rng: random.Random, modules: tuple[str, ...],
              listed: bool) -> Dataset:
    rows = []
    namespaces = {m: vars(importlib.import_module(m)) for m in modules}
    for name, module in rng.sample(facts, min(n, len(facts))):
        # a distractor must not hold the name at all (statistics imports math's fsum)
        others = [m for m in modules if m != module and name not in namespaces[m]]
        if len(others) < 3:
            continue
        choices = [*rng.sample(others, 3), module]
        rng.shuffle(choices)
        question = f"Which Python standard-library module defines `{name}`?"
        if listed:
            question += f" Answer with one of: {', '.join(choices)}."
        rows.append({"id": name, "prompt": question, "target": module, "choices": choices,
                     "answer": choices.index(module)})
    return Dataset.from_list(rows)


def _math_problem(rng: random.Random) -> tuple[str, str, int]:
    a, b, c = rng.randint(2, 60), rng.randint(2, 40), rng.randint(2, 9)
    who, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        return f"{who} has {a} {item} and gets {b} more. How many {item} does {who} have now?", f"{a} + {b}", a + b
    if kind == 1:
        return f"{who} has {a + b} {item} and gives away {b}. How many {item} are left?", f"{a + b} - {b}", a
    if kind == 2:
        return f"{who} buys {c} bags with {b} {item} in each. How many {item} is that?", f"{c} * {b}", c * b
    return (f"{who} shares {b * c} {item} equally among {c} friends. How many {item} does each friend get?",
            f"{b * c} / {c}", b)


def _math_rows(n_train: int, n_eval: int, heldout_fraction: float, rng: random.Random) -> tuple[Dataset, Dataset]:
    train: list[dict[str, str]] = []
    held: list[dict[str, str]] = []
    seen: set[str] = set()
    for _ in range(100 * (n_train + n_eval)):
        if len(train) >= n_train and len(held) >= n_eval:
            break
        question, work, answer = _math_problem(rng)
        if question in seen:
            continue
        seen.add(question)
        split = held if in_heldout(question, heldout_fraction) else train
        if len(split) < (n_eval if split is held else n_train):
            split.append({"id": "math-" + hashlib.sha256(question.encode()).hexdigest()[:12], "prompt": question,
                          "target": f"{work} = {answer}. The final answer is: {answer}"})
    return Dataset.from_list(train), Dataset.from_list(held)


def _code_row(spec: FunctionSpec, example: int) -> dict[str, Any]:
    args, result = spec.cases[example]
    call = f"solve({', '.join(repr(a) for a in args)})"
    prompt = (f"Write a Python function `solve({', '.join(spec.params)})` that does what this says: "
              f"\"{spec.description}\" For example, `{call}` returns `{result!r}`.")
    return {"prompt": prompt, "target": f"```python\n{spec.solution()}```", "test": _CODE_TEST.format(cases=list(spec.cases)),
            "entry_point": "solve", "function": spec.qualname, "id": f"{spec.qualname}#{example}"}


def _code_rows(specs: list[FunctionSpec], n: int, rng: random.Random) -> Dataset:
    """Up to ``n`` rows: each function once (a random example), then again with other examples."""
    if not specs:
        return Dataset.from_list([])
    order = [(spec, rng.sample(range(len(spec.cases)), len(spec.cases))) for spec in specs]
    rng.shuffle(order)
    rows: list[dict[str, Any]] = []
    for round_ in range(max(len(s.cases) for s in specs)):
        for spec, examples in order:
            if len(rows) < n and round_ < len(examples):
                rows.append(_code_row(spec, examples[round_]))
    return Dataset.from_list(rows)


def stdlib_sequence(
    n_train: int = 400,
    n_eval: int = 60,
    *,
    seed: int = 0,
    heldout_fraction: float = 1 / 3,
    tasks: tuple[str, ...] = STDLIB_SEQUENCE_TASKS,
    allow_code_execution: bool = False,
    chat: bool = True,
    modules: tuple[str, ...] = FACT_MODULES,
    code_max_new_tokens: int = 96,
    nlu_scoring: str = "generate",
) -> TaskSequence:
    """The NLU -> Math -> Code sequence of the module docstring, for a real pretrained model.

    Args:
        n_train: training rows per task (the ``nlu`` task has as many as its train facts allow).
        n_eval: evaluation rows per task, at most (``code``: each held-out function once, then
            again with another example, up to ``n_eval``).
        seed: picks the rows, the multiple-choice distractors and the code examples.
        heldout_fraction: the share of facts, functions and problems held out for evaluation.
        tasks: which tasks, in which order (any of ``"nlu"``, ``"math"``, ``"code"``).
        allow_code_execution: the ``code`` task runs the model's programs in quantcl's sandbox;
            pass ``True`` to allow it (validation of a run with the ``code`` task fails without).
        chat: render prompts in the tokenizer's chat template (instruction-tuned models).
        modules: the modules the ``nlu`` task asks about (at least 4).
        code_max_new_tokens: the generation budget of a code reply.
        nlu_scoring: ``"generate"`` (the prompt lists the four modules and the reply must start
            with the right one: a model that drifts from the answer format loses the task, as
            the paper's generated NLU answers do) or ``"loglikelihood"`` (the options are not
            listed; the most likely of the four continuations is the answer, which a format
            drift hardly moves) or ``"both"`` (listed options; the reply is scored by generation
            for the matrix, and the same items by log-likelihood over the four listed options,
            as ``loglikelihood_acc`` with the invalid-answer rate and the accuracy among valid
            answers, :class:`~quantcl.evaluators.MultipleChoice` ``mode="both"``).

    Returns:
        A validated :class:`~quantcl.TaskSequence`.

    Examples:
        >>> tasks = stdlib_sequence(n_train=8, n_eval=4, tasks=("code",), allow_code_execution=True)
        >>> print(tasks[0].train[0]["target"])  # doctest: +ELLIPSIS
        ```python
        ...def solve(...
        ```
    """
    n_train = require_int(n_train, "stdlib_sequence(n_train=...)", minimum=1)
    n_eval = require_int(n_eval, "stdlib_sequence(n_eval=...)", minimum=1)
    seed = require_int(seed, "stdlib_sequence(seed=...)", minimum=0)
    fraction = require_number(heldout_fraction, "stdlib_sequence(heldout_fraction=...)", low=0.0, high=1.0,
                              low_open=True)
    if fraction == 1.0:
        raise ConfigError("stdlib_sequence(heldout_fraction=1.0) leaves nothing to train on: use a share below 1")
    names = tuple(require_list_of(tasks, "stdlib_sequence(tasks=...)", str,
                                  items=f"task names from {list(STDLIB_SEQUENCE_TASKS)}", nonempty=True))
    unknown = [t for t in names if t not in STDLIB_SEQUENCE_TASKS]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(f"stdlib_sequence(tasks=...) got {list(names)!r}; choose each of "
                          f"{list(STDLIB_SEQUENCE_TASKS)} at most once")
    allow = require_bool(allow_code_execution, "stdlib_sequence(allow_code_execution=...)")
    chat = require_bool(chat, "stdlib_sequence(chat=...)")
    modules = tuple(require_list_of(modules, "stdlib_sequence(modules=...)", str, items="module names (str)"))
    if len(set(modules)) < 4:
        raise ConfigError(f"stdlib_sequence(modules=...) needs at least 4 distinct modules (4 choices), got {list(modules)}")
    code_tokens = require_int(code_max_new_tokens, "stdlib_sequence(code_max_new_tokens=...)", minimum=1)
    nlu_scoring = require_choice(nlu_scoring, "stdlib_sequence(nlu_scoring=...)", NLU_SCORING)

    built: dict[str, Task] = {}
    if "nlu" in names:
        facts = module_facts(modules)
        rng = random.Random(f"stdlib-nlu:{seed}")
        listed = nlu_scoring != "loglikelihood"
        train = _nlu_rows([f for f in facts if not in_heldout(f[0], fraction)], n_train, rng, modules, listed)
        held = _nlu_rows([f for f in facts if in_heldout(f[0], fraction)], n_eval, rng, modules, listed)
        mode: Any = nlu_scoring
        scorer = (MultipleChoice(mode=mode, pattern=NLU_ANSWER_PATTERN, max_new_tokens=8) if listed
                  else MultipleChoice())
        built["nlu"] = Task("nlu", train, held, scorer, chat=chat)
    if "math" in names:
        train, held = _math_rows(n_train, n_eval, fraction, random.Random(f"stdlib-math:{seed}"))
        built["math"] = Task("math", train, held, NumericMatch(max_new_tokens=32), chat=chat)
    if "code" in names:
        specs = function_specs()
        rng = random.Random(f"stdlib-code:{seed}")
        train = _code_rows([s for s in specs if not in_heldout(s.group, fraction)], n_train, rng)
        held = _code_rows([s for s in specs if in_heldout(s.group, fraction)], n_eval, rng)
        evaluator = CodeExecution(allow_code_execution=allow, mode="chat", max_new_tokens=code_tokens, timeout=5.0)
        built["code"] = Task("code", train, held, evaluator, chat=chat)
    for task in built.values():
        if len(task.train) == 0 or len(task.eval) == 0:
            raise ConfigError(f"stdlib_sequence: task {task.name!r} has an empty split (heldout_fraction={fraction} "
                              f"on this Python leaves {len(task.train)} train / {len(task.eval)} eval rows)")
    return TaskSequence([built[name] for name in names])


def stdlib_sequence_metadata(modules: tuple[str, ...] = FACT_MODULES, heldout_fraction: float = 1 / 3) -> dict[str, Any]:
    """Where the facts come from: the Python version, how many facts and functions each split
    has, and a digest of them (record it with results; another Python finds others)."""
    facts, specs = module_facts(modules), function_specs()
    held_facts = sum(in_heldout(name, heldout_fraction) for name, _ in facts)
    held_specs = sum(in_heldout(s.group, heldout_fraction) for s in specs)
    return {"source": "python standard library", "python": platform.python_version(),
            "nlu_facts": {"train": len(facts) - held_facts, "heldout": held_facts},
            "code_functions": {"train": len(specs) - held_specs, "heldout": held_specs},
            "digest": facts_digest(facts, specs)}
