"""Prompt/target templates: parsing, rendering a row, chat templates, batched formatting.

Kept apart from :mod:`quantcl.tasks.task` so that ``Dataset.map`` hashes a small module-level
function and its arguments (templates, tokenizer) for its cache fingerprint, never a ``Task``
with its datasets inside.
"""

from __future__ import annotations

import re
import string
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Union

from quantcl.errors import ConfigError

__all__ = ["Template", "template_columns", "describe_template", "render", "format_batch"]

#: A prompt/target format: ``str.format`` text over the row's columns, or a function row -> str.
Template = Union[str, Callable[[dict[str, Any]], str]]


def template_columns(task: str, field: str, template: Template) -> tuple[str, ...]:
    """The columns a string template reads (``()`` for a callable); checks its syntax."""
    if callable(template):
        return ()
    if not isinstance(template, str):
        raise ConfigError(
            f"task {task!r}: {field} must be a str.format template or a callable row -> str, "
            f"got {type(template).__name__}"
        )
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ConfigError(f"task {task!r}: {field} template {template!r} is malformed: {exc}") from exc
    columns: list[str] = []
    for f in fields:
        base = re.split(r"[.\[]", f, maxsplit=1)[0]
        if not base or base.isdigit():
            raise ConfigError(
                f"task {task!r}: {field} template {template!r} has a positional field "
                f"'{{{f}}}'; name a column instead, e.g. '{{question}}'"
            )
        if base not in columns:
            columns.append(base)
    return tuple(columns)


def describe_template(template: Template) -> str:
    """The template text, or ``module.qualname`` of a callable (for ``to_dict``)."""
    if isinstance(template, str):
        return template
    target = template if hasattr(template, "__qualname__") else type(template)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"


def render(task: str, field: str, template: Template, row: Mapping[str, Any]) -> str:
    """Render one row; a missing column or a non-str result is a :class:`ConfigError`."""
    try:
        out = template(dict(row)) if callable(template) else template.format_map(row)
    except KeyError as exc:
        raise ConfigError(
            f"task {task!r}: {field} template needs column {exc.args[0]!r}; "
            f"the row has {sorted(row)}"
        ) from exc
    if not isinstance(out, str):
        raise ConfigError(f"task {task!r}: {field} template returned {type(out).__name__}, expected str")
    return out


def apply_chat(prompt: str, tokenizer: Any, system: str | None) -> str:
    """``prompt`` as the user turn of ``tokenizer``'s chat template, ready for the reply."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def has_chat_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def format_batch(
    batch: dict[str, list],
    *,
    task: str,
    prompt: Template,
    target: Template,
    chat: bool,
    system: str | None,
    tokenizer: Any,
) -> dict[str, list[str]]:
    """``Dataset.map(batched=True)`` body: rendered ``prompt`` and ``target`` for every row."""
    keys = list(batch)
    n = len(batch[keys[0]]) if keys else 0
    rows = [{k: batch[k][i] for k in keys} for i in range(n)]
    prompts = [render(task, "prompt", prompt, r) for r in rows]
    if chat and has_chat_template(tokenizer):
        prompts = [apply_chat(p, tokenizer, system) for p in prompts]
    elif chat and tokenizer is not None:
        warnings.warn(
            f"task {task!r} has chat=True but the tokenizer has no chat template; "
            "using the plain prompt",
            stacklevel=2,
        )
    return {"prompt": prompts, "target": [render(task, "target", target, r) for r in rows]}
