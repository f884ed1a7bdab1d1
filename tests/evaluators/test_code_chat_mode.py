"""CodeExecution(mode="chat"): the program is the code of the reply's first fenced block (or the
whole reply), run with the tests in the sandbox; the prompt is prose and not part of it."""

from __future__ import annotations

import re

import pytest
from datasets import Dataset

from quantcl.errors import ConfigError
from quantcl.evaluators import CodeExecution
from quantcl.evaluators.code import _CLOSED_FENCE, DEFAULT_CODE_STOP, code_prelude, extract_code

ROWS = Dataset.from_list([{
    "prompt": "Write a Python function `solve(x)` that doubles x.",
    "test": "def check(candidate):\n    assert candidate(3) == 6 and candidate(-1) == -2\n",
    "entry_point": "solve",
}])
FENCED = "Sure! Here it is:\n```python\ndef solve(x):\n    return 2 * x\n```\nIt multiplies by two.\n```python\nraise SystemExit(1)\n```"


def test_the_first_fenced_block_is_the_program():
    chat = CodeExecution(allow_code_execution=True, mode="chat")
    assert chat.program("prose", FENCED, "T", "solve") == "def solve(x):\n    return 2 * x\nT\n\ncheck(solve)\n"
    result = chat.evaluate_completions(ROWS, [FENCED])
    assert result.score == 1.0 and result.records[0]["statuses"] == ["passed"]
    # the same reply as a HumanEval continuation of the prose prompt is not a program
    assert CodeExecution(allow_code_execution=True).evaluate_completions(ROWS, [FENCED]).score == 0.0


@pytest.mark.parametrize("reply, passed", [
    ("def solve(x):\n    return x + x", True),                      # no fence: the whole reply
    ("```python\ndef solve(x):\n    return x + x", True),          # a block cut off by max_new_tokens
    ("```\ndef solve(x):\n    return x * 3\n```", False),          # runs, fails its test
    ("The answer is 2x.", False),                                  # prose only
])
def test_replies_without_a_closed_block(reply, passed):
    result = CodeExecution(allow_code_execution=True, mode="chat").evaluate_completions(ROWS, [reply])
    assert result.records[0]["correct"] is passed


def test_chat_mode_stops_at_a_closed_block_not_at_top_level_code():
    assert CodeExecution(mode="chat").stop == ()
    assert CodeExecution().stop == DEFAULT_CODE_STOP
    assert CodeExecution(mode="chat", stop=["\nEND"]).stop == ("\nEND",)
    assert re.search(_CLOSED_FENCE, FENCED).group(0).endswith("return 2 * x\n```")
    assert re.search(_CLOSED_FENCE, "```python\ndef solve(x):\n") is None
    assert extract_code("no code here") == "no code here"


def test_bad_mode_or_stop_is_refused():
    with pytest.raises(ConfigError, match="mode"):
        CodeExecution(mode="instruct")
    with pytest.raises(ConfigError, match="stop"):
        CodeExecution(stop="\n```")


@pytest.mark.parametrize("reply", [
    '```python title="solve.py"\ndef solve(x):\n    return 2 * x\n```\nThat is all.',
    "```py3.11\ndef solve(x):\n    return 2 * x\n```",
    "Use ```solve``` like this:\n```python\ndef solve(x):\n    return 2 * x\n```",
])
def test_the_stop_rule_and_the_extractor_agree_on_what_a_block_is(reply):
    closed = re.search(_CLOSED_FENCE, reply)
    assert closed is not None and extract_code(reply) == "def solve(x):\n    return 2 * x"
    assert extract_code(reply[:closed.end()]) == extract_code(reply)  # generation stopped there: same program


HE_PROMPT = '''from typing import List
import math


def helper(xs: List[int]) -> int:
    # the problem's own helper, with a comment
    return sum(xs)


THRESHOLD = 2


def solve(xs: List[int]) -> bool:
    """True when the helper's sum exceeds THRESHOLD."""
'''


def test_code_prelude_is_the_prompts_code_without_the_stub():
    prelude = code_prelude(HE_PROMPT, "solve")
    assert prelude == HE_PROMPT[:HE_PROMPT.index("def solve")].strip()  # the prompt's own text, comments too
    assert "# the problem's own helper" in prelude and prelude.endswith("THRESHOLD = 2")
    decorated = '@cache\ndef f():\n    """x"""\n\n\n@staticmethod\ndef g():\n    pass\n'
    assert code_prelude(decorated, "f") == "@staticmethod\ndef g():\n    pass"
    with pytest.raises(ConfigError, match="not valid Python"):
        code_prelude("def f(:\n", "f")


def test_a_prelude_column_runs_the_problems_imports_and_helpers_before_the_reply():
    reply = "```python\ndef solve(xs: List[int]) -> bool:\n    return helper(xs) > THRESHOLD\n```"
    test = "def check(candidate):\n    assert candidate([1, 2]) and not candidate([1])\n"
    rows = Dataset.from_list([{"prompt": "chat text", "test": test, "entry_point": "solve",
                               "prelude": code_prelude(HE_PROMPT, "solve")}])
    alone = CodeExecution(allow_code_execution=True, mode="chat").evaluate_completions(rows, [reply])
    assert alone.score == 0.0 and alone.records[0]["errors"][0].startswith("NameError")
    with_prelude = CodeExecution(allow_code_execution=True, mode="chat", prelude_column="prelude")
    assert with_prelude.evaluate_completions(rows, [reply]).score == 1.0
    with pytest.raises(ConfigError, match="missing|prelude"):
        with_prelude.evaluate_completions(ROWS, [reply])  # the column is required
    with pytest.raises(ConfigError, match="mode='chat'"):
        CodeExecution(prelude_column="prelude")
