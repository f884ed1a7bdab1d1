"""HumanEval-style functional correctness: generate completions, run them with their tests in
the sandbox, report pass@k."""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from quantcl._checks import require_bool, require_choice, require_list_of
from quantcl.errors import ConfigError, UnsafeCodeError
from quantcl.evaluators._batching import generate_texts
from quantcl.evaluators._helpers import column, positive_int
from quantcl.evaluators.base import (
    EvalResult,
    Evaluator,
    Shard,
    ShardResult,
    inference_mode,
    ordered_records,
    register_evaluator,
)

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.sandbox import IsolationChoice

__all__ = ["CodeExecution", "pass_at_k", "extract_code", "code_prelude", "DEFAULT_CODE_STOP", "ALLOW_CODE_ENV",
           "CODE_MODES"]

# Codex paper (Chen et al. 2021): a function body ends where top-level code starts.
DEFAULT_CODE_STOP = ("\ndef", "\nclass", "\nif __name__", "\nprint", "\n#")
CODE_MODES = ("complete", "chat")
ALLOW_CODE_ENV = "QUANTCL_ALLOW_CODE_EXECUTION"
# One opening fence for both rules: ``` at the start of a line, any info string ("python", "py3.11",
# 'python title="x"'), then the code. A reply is done once its first block is closed.
_OPEN_FENCE = r"^[ \t]*```[^\n`]*\n"
_CLOSED_FENCE = rf"(?m){_OPEN_FENCE}[\s\S]*?\n[ \t]*```"
_FENCE = re.compile(rf"{_OPEN_FENCE}(.*?)(?:\n[ \t]*```|\Z)", re.S | re.M)


def extract_code(reply: str) -> str:
    r"""The program in a chat reply: the body of its first fenced block (```` ```python ... ``` ````,
    closed or cut off), else the whole reply.

    Examples:
        >>> extract_code("Here it is:\n```python\ndef f():\n    return 1\n```\nDone.")
        'def f():\n    return 1'
        >>> extract_code("def f():\n    return 1")
        'def f():\n    return 1'
    """
    found = _FENCE.search(reply)
    return found.group(1) if found else reply


def code_prelude(prompt: str, entry_point: str) -> str:
    r"""What a HumanEval-style ``prompt`` defines besides the function asked for: its imports,
    helper functions and constants, as source. A chat reply often writes only the function and
    uses the prompt's ``List`` or helper without defining it; with
    ``CodeExecution(mode="chat", prelude_column=...)`` this is run before the reply's code.

    Raises:
        ConfigError: the prompt is not valid Python (a stub whose body is its docstring is).

    Examples:
        >>> prompt = "from typing import List\n\n\ndef f(x: List[int]) -> int:\n    ...\n"
        >>> code_prelude(prompt, "f")
        'from typing import List'
    """
    try:
        tree = ast.parse(prompt)
    except SyntaxError as err:
        raise ConfigError(f"code_prelude: the prompt is not valid Python ({err.msg}, line {err.lineno})") from err
    lines = prompt.splitlines()
    for node in tree.body:  # the prompt's text without the stub's lines (decorators included)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point:
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines[first - 1:node.end_lineno] = [""] * ((node.end_lineno or first) - first + 1)
    return "\n".join(lines).strip()


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` passed (Chen et al. 2021).

    ``1 - C(n - c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)`` so that
    no huge binomial coefficient is formed.

    Examples:
        >>> round(pass_at_k(5, 2, 2), 4)
        0.7
    """
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)) or not 0 <= c <= n or k < 1:
        raise ConfigError(f"pass_at_k needs ints with 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ConfigError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def _opted_in(flag: bool) -> bool:
    return flag or os.environ.get(ALLOW_CODE_ENV, "").strip().lower() in ("1", "true", "yes")


@register_evaluator("CodeExecution")
class CodeExecution(Evaluator):
    """pass@k of generated code, each completion run with its tests in the sandbox.

    With ``mode="complete"`` (the HumanEval convention) the model continues the prompt's code and the
    program run is ``f"{prompt}{completion}\\n{test}\\n\\ncheck({entry_point})\\n"``. With
    ``mode="chat"`` (instruct models, prompts in a chat template) the completion is a reply that
    holds the whole program: the code of its first fenced block (:func:`extract_code`), or the
    whole reply when it has none, is run as ``f"{code}\\n{test}\\n\\ncheck({entry_point})\\n"``,
    after the row's ``prelude_column`` text when one is named (the imports and helpers of the
    original problem, :func:`code_prelude`); a reply stops generating once its first fenced
    block is closed.
    A program passes when it exits with status 0 within the limits. Running model-generated code is an explicit opt-in: pass
    ``allow_code_execution=True``, use the CLI flag ``--allow-code-execution`` or set the
    environment variable ``QUANTCL_ALLOW_CODE_EXECUTION=1``.

    Args:
        allow_code_execution: the opt-in; without it :meth:`evaluate` raises UnsafeCodeError.
        n_samples: completions per problem (greedy when 1, else sampled).
        k: the pass@k values reported; the first is the headline score.
        temperature: sampling temperature when ``n_samples > 1``.
        top_p: nucleus sampling when ``n_samples > 1``.
        max_new_tokens: generation budget per completion.
        stop: strings that end a completion; ``None``: :data:`DEFAULT_CODE_STOP` with
            ``mode="complete"``, none with ``mode="chat"`` (the reply ends at the end-of-turn token).
        timeout: wall-clock seconds per program.
        memory_mb: address-space limit per program.
        workers: sandboxes run at once.
        test_column: column with the test code (defining ``check(candidate)``).
        entry_point_column: column with the function name passed to ``check``.
        seed: seeds the sampling (each generation batch from ``seed`` and its number, so the
            samples are the same when the batches are shared out among processes).
        batch_size: prompts per ``generate`` call; ``evaluate(batch_size=...)`` overrides it.
        isolation: the sandbox's isolation: ``"auto"`` (bubblewrap where it works, else the
            built-in one), ``"bubblewrap"`` (refused up front where it does not work) or
            ``"builtin"``; each record's ``isolation`` lists what each program ran under.
        mode: ``"complete"`` (the completion continues the prompt's code) or ``"chat"`` (the
            completion is a reply holding the program; see above).
        prelude_column: ``mode="chat"`` only: a column of code run before each reply's code (the
            problem's imports and helpers); ``None``: the reply runs alone.

    Examples:
        >>> ev = CodeExecution(allow_code_execution=True, n_samples=5, k=(1, 5))
        >>> ev.evaluate(model, tokenizer, humaneval_rows).metrics  # doctest: +SKIP
        {'pass@1': 0.12, 'pass@5': 0.25}
    """

    required_columns: tuple[str, ...] = ("prompt", "test", "entry_point")
    unsafe = True

    def __init__(
        self,
        *,
        allow_code_execution: bool = False,
        n_samples: int = 1,
        k: Sequence[int] = (1,),
        temperature: float = 0.8,
        top_p: float = 0.95,
        max_new_tokens: int = 512,
        stop: Sequence[str] | None = None,
        timeout: float = 5.0,
        memory_mb: int = 512,
        workers: int = 2,
        test_column: str = "test",
        entry_point_column: str = "entry_point",
        seed: int = 0,
        batch_size: int = 8,
        isolation: IsolationChoice = "auto",
        mode: str = "complete",
        prelude_column: str | None = None,
    ) -> None:
        for name, value in (("n_samples", n_samples), ("max_new_tokens", max_new_tokens),
                            ("workers", workers), ("batch_size", batch_size)):
            positive_int("CodeExecution", name, value)
        k = tuple(k)
        if not k or any(isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= n_samples for x in k):
            raise ConfigError(f"CodeExecution(k={k!r}): each k must be an int in [1, n_samples={n_samples}]")
        if n_samples > 1 and not temperature > 0:
            raise ConfigError(f"CodeExecution: n_samples={n_samples} needs temperature > 0, got {temperature!r}")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigError(f"CodeExecution(timeout=...) must be > 0 seconds, got {timeout!r}")
        positive_int("CodeExecution", "memory_mb", memory_mb)
        self.required_columns = ("prompt", test_column, entry_point_column)
        allow = require_bool(allow_code_execution, "CodeExecution(allow_code_execution=...)")
        self.allow_code_execution, self.n_samples, self.k = allow, n_samples, k
        self.temperature, self.top_p, self.max_new_tokens = float(temperature), float(top_p), max_new_tokens
        self.mode = require_choice(mode, "CodeExecution(mode=...)", CODE_MODES)
        if prelude_column is not None:
            if not isinstance(prelude_column, str) or not prelude_column:
                raise ConfigError(f"CodeExecution(prelude_column=...) must be a column name, got {prelude_column!r}")
            if self.mode != "chat":
                raise ConfigError("CodeExecution(prelude_column=...) is for mode='chat'; with mode='complete' "
                                  "the prompt's own code already runs before the completion")
            self.required_columns = (*self.required_columns, prelude_column)
        self.prelude_column = prelude_column
        if stop is None:
            stop = DEFAULT_CODE_STOP if self.mode == "complete" else ()
        stop = require_list_of(stop, "CodeExecution(stop=...)", str, items="stop strings (str)")
        self.stop, self.timeout, self.memory_mb, self.workers = tuple(stop), float(timeout), memory_mb, workers
        self.test_column, self.entry_point_column = test_column, entry_point_column
        self.seed, self.batch_size = seed, batch_size
        if isolation not in ("auto", "bubblewrap", "builtin"):
            raise ConfigError(f"CodeExecution(isolation=...) must be 'auto', 'bubblewrap' or 'builtin', got {isolation!r}")
        self.isolation = isolation

    def check_ready(self) -> None:
        """Raise :class:`~quantcl.errors.UnsafeCodeError` unless running generated code was allowed."""
        if not _opted_in(self.allow_code_execution):
            raise UnsafeCodeError(
                "CodeExecution runs model-generated code (in quantcl's sandbox: separate process, "
                "time/memory/process limits, no network where the OS allows it). Opt in with "
                "CodeExecution(allow_code_execution=True), the CLI flag --allow-code-execution, or "
                f"the environment variable {ALLOW_CODE_ENV}=1."
            )
        if self.isolation == "bubblewrap":  # fail before generating anything, not at the first program
            from quantcl.sandbox import check_isolation

            check_isolation(self.isolation)

    def program(self, prompt: str, completion: str, test: str, entry_point: str, prelude: str = "") -> str:
        """The program run for one completion (see the class docstring for each ``mode``)."""
        code = f"{prompt}{completion}" if self.mode == "complete" else extract_code(completion)
        if prelude:
            code = f"{prelude}\n\n\n{code}"
        return f"{code}\n{test}\n\ncheck({entry_point})\n"

    def evaluate(
        self, model: Any, tokenizer: Any, dataset: Any, *, batch_size: int | None = None, progress: bool = True
    ) -> EvalResult:
        """Generate ``n_samples`` completions per problem, run them, report pass@k."""
        return self._evaluate_as_one_shard(model, tokenizer, dataset, batch_size=batch_size, progress=progress)

    def evaluate_shard(
        self, model: Any, tokenizer: Any, dataset: Any, shard: Shard, *, batch_size: int | None = None,
        progress: bool = True,
    ) -> ShardResult:
        """Generate for and run the problems of ``shard``'s generation batches (formed from all
        problems, each seeded by its number, as in one process)."""
        self.check_ready()
        self.check(dataset)
        positive_int("evaluate", "batch_size", batch_size, allow_none=True)
        sampled = self.n_samples > 1
        with inference_mode(model):
            completions = generate_texts(
                model, tokenizer, [str(p) for p in column(dataset, "prompt")],
                max_new_tokens=self.max_new_tokens, batch_size=batch_size or self.batch_size,
                stop=self.stop, stop_patterns=(_CLOSED_FENCE,) if self.mode == "chat" else (),
                num_return_sequences=self.n_samples,
                temperature=self.temperature if sampled else 0.0, top_p=self.top_p, seed=self.seed,
                progress=progress, desc="CodeExecution (generate)", shard=shard,
            )
        rows = tuple(completions)
        records = self._records(dataset, rows, list(completions.values()), progress)
        return ShardResult(rows, self._summarize(records))

    def merge(self, parts: Sequence[ShardResult]) -> EvalResult:
        """The whole dataset's result: pass@k is the mean of the records' pass@k, summed in row order."""
        return self._summarize(ordered_records(parts))

    def evaluate_completions(
        self, dataset: Any, completions: Sequence[str | Sequence[str]], *, progress: bool = False
    ) -> EvalResult:
        """Run given completions (one string, or a list of samples, per problem) and score them.

        Examples:
            >>> ev = CodeExecution(allow_code_execution=True)
            >>> ev.evaluate_completions(rows, ["    return a + b\\n"]).score  # doctest: +SKIP
            1.0
        """
        self.check_ready()
        self.check(dataset)
        samples = [[c] if isinstance(c, str) else list(c) for c in completions]
        if len(samples) != len(dataset):
            raise ConfigError(f"evaluate_completions: {len(samples)} completion entries for {len(dataset)} problems")
        if any(len(s) < max(self.k) for s in samples):
            raise ConfigError(f"evaluate_completions: pass@{max(self.k)} needs >= {max(self.k)} completions per problem")
        return self._summarize(self._records(dataset, tuple(range(len(dataset))), samples, progress))

    def _records(self, dataset: Any, rows: Sequence[int], samples: Sequence[Sequence[str]],
                 progress: bool) -> list[dict[str, Any]]:
        """Run the completions ``samples[i]`` of problem ``rows[i]``; one record per problem."""
        from quantcl.sandbox import run_many

        prompts = [str(p) for p in column(dataset, "prompt")]
        tests = column(dataset, self.test_column)
        entries = column(dataset, self.entry_point_column)
        preludes = column(dataset, self.prelude_column) if self.prelude_column else [""] * len(prompts)
        programs = [self.program(prompts[i], c, str(tests[i]), str(entries[i]), str(preludes[i] or ""))
                    for i, s in zip(rows, samples) for c in s]
        results = iter(run_many(programs, workers=self.workers, progress=progress,
                                timeout=self.timeout, memory_mb=self.memory_mb, isolation=self.isolation))
        records = []
        for i, s in zip(rows, samples):
            runs = [next(results) for _ in s]
            c = sum(r.passed for r in runs)
            errors = [r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "" for r in runs]
            records.append({
                "prompt": prompts[i], "prediction": s[0], "correct": runs[0].passed,
                "well_formed": self._well_formed(s[0], errors[0]), "completions": list(s),
                "statuses": [r.status for r in runs], "n_correct": c,
                **{f"pass@{k}": pass_at_k(len(s), c, k) for k in self.k},
                "isolation": [r.isolation_mode for r in runs],
                "errors": errors,
            })
        return records

    def _well_formed(self, completion: str, error: str) -> bool:
        """A reply that holds a program Python could parse: in chat mode a fenced block, and no
        ``SyntaxError`` (or its subclasses) in the sandbox's output; parsed there, never here."""
        if self.mode == "chat" and _FENCE.search(completion) is None:
            return False
        return not error.startswith(("SyntaxError", "IndentationError", "TabError"))

    def _summarize(self, records: list[dict[str, Any]]) -> EvalResult:
        n = len(records)
        if n == 0:
            return EvalResult(0.0, {}, [], 0)
        totals = {f"pass@{k}": 0.0 for k in self.k}
        for record in records:  # summed in row order, as floats add differently in another order
            for name in totals:
                totals[name] += record[name]
        metrics = {name: total / n for name, total in totals.items()}
        return EvalResult(metrics[f"pass@{self.k[0]}"], metrics, records, n)
