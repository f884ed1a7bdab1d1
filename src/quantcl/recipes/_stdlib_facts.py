"""Real facts read off this Python's standard library, for :func:`~quantcl.recipes.stdlib_sequence`.

- :func:`module_facts`: ``(name, module)`` pairs: a public function or class and the one module
  (of :data:`FACT_MODULES`) that defines it, read with :mod:`inspect`.
- :func:`function_specs`: one-line functions of the standard library (``str`` methods, ``math``,
  builtins, ``statistics``, ``os.path``...) with the first sentence of their own docstring and test
  cases whose expected values come from calling the real function.

Both depend on the Python version; :func:`facts_digest` names what was found.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import importlib
import inspect
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["FACT_MODULES", "SAME_SOURCE", "FunctionSpec", "module_facts", "function_specs", "in_heldout", "facts_digest"]

#: the modules the NLU task asks about (common, with distinct public names)
FACT_MODULES: tuple[str, ...] = (
    "os", "math", "json", "re", "random", "itertools", "functools", "collections", "string", "shutil",
    "time", "statistics", "textwrap", "heapq", "bisect", "operator", "copy", "glob", "fnmatch", "csv",
    "base64", "hashlib", "struct", "zlib", "difflib", "calendar", "keyword", "linecache", "pprint", "shlex",
)


def in_heldout(key: str, fraction: float) -> bool:
    """Whether ``key`` falls in the held-out share: the sha256 of the key, not a seed, decides,
    so the split never changes with the sizes or the seed asked for."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32 < fraction


def module_facts(modules: Sequence[str] = FACT_MODULES) -> list[tuple[str, str]]:
    """``(name, module)`` for each public function or class defined in exactly one of ``modules``
    (re-exports such as ``os.path`` names under ``os`` are skipped), sorted by name."""
    owners: dict[str, set[str]] = {}
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name, obj in inspect.getmembers(module, callable):
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj)):
                continue
            home = getattr(obj, "__module__", None) or ""
            # the module itself or its C accelerator (_heapq for heapq); not another module's
            # (functools.RLock comes from _thread, os.stat from posix)
            if home.split(".")[0].lstrip("_") != module_name:
                continue
            owners.setdefault(name, set()).add(module_name)
    return sorted((name, next(iter(mods))) for name, mods in owners.items() if len(mods) == 1)


@dataclasses.dataclass(frozen=True)
class FunctionSpec:
    """A standard-library function as a coding exercise.

    Attributes:
        qualname: ``"math.floor"``, ``"str.upper"``, ``"builtins.abs"``...
        description: the first sentence of its docstring.
        params: the parameter names the exercise's ``solve`` takes.
        body: the reference one-line body (``"return math.floor(x)"``).
        imports: the import line the body needs (``""`` for none).
        cases: ``(args, expected)`` pairs, ``expected`` from calling the real function.
        group: the exercises that pass each other's tests (``str.isdigit`` and ``str.isdecimal``
            on these inputs) share a group, named by its first member; the train/held-out split
            is by group, so no held-out exercise is solved by a trained one.
    """

    qualname: str
    description: str
    params: tuple[str, ...]
    body: str
    imports: str
    cases: tuple[tuple[tuple[Any, ...], Any], ...]
    group: str = ""

    def solution(self) -> str:
        """The reference program: the import (if any) and ``def solve(...)``."""
        head = f"{self.imports}\n\n" if self.imports else ""
        return f"{head}def solve({', '.join(self.params)}):\n    {self.body}\n"


_STR_INPUTS = ("hello world", "Python 3.11", "  padded text  ", "MiXeD CaSe", "42", "snake_case_name",
               "tab\tseparated", "line one\nline two", "über", "x")
# negative, fractional and non-coprime inputs, so that floor and trunc, or gcd and x % y, differ
_FLOAT_INPUTS = (0.5, 2.0, 3.75, 10.0, 0.25, 7.5, -1.5, -2.25)
_INT_INPUTS = (0, 1, 5, 12, 100, 7, -3)
_PAIR_INPUTS = ((12, 8), (10, 4), (9, 6), (7, 3), (20, 15), (8, 12), (100, 7), (-6, 4))
_LIST_INPUTS = ([3, 1, 2], [5, 5, 2, 8], [1.5, 2.5, 4.0], [10, 2, 7, 7], [4, 9, 16, 1], [2, 2, 2, 3])
_PATH_INPUTS = ("/usr/lib/python3/os.py", "data/train.jsonl", "../notes.txt", "archive.tar.gz", "/tmp/", "a//b/./c")
_WORD_INPUTS = ("for", "hello", "lambda", "x1", "class", "data")

# (module, names or None for every public callable, how it is called, input pools to try in order)
_SOURCES: tuple[tuple[str, tuple[str, ...] | None, str, tuple[Sequence[Any], ...]], ...] = (
    ("str", None, "method", (_STR_INPUTS,)),
    ("math", None, "function", (_FLOAT_INPUTS, _PAIR_INPUTS, _INT_INPUTS)),
    ("builtins", ("abs", "len", "sorted", "sum", "max", "min", "bin", "hex", "oct", "round", "bool", "repr",
                  "ascii", "callable", "hash", "id", "chr", "ord", "str", "float", "int", "list", "tuple", "set",
                  "divmod", "pow"),
     "builtin", (_INT_INPUTS, _FLOAT_INPUTS, _PAIR_INPUTS, _LIST_INPUTS, _STR_INPUTS)),
    ("statistics", None, "function", (_LIST_INPUTS,)),
    ("posixpath", ("basename", "dirname", "splitext", "normpath", "isabs", "split", "splitdrive"), "function",
     (_PATH_INPUTS,)),
    ("string", ("capwords",), "function", (_STR_INPUTS,)),
    ("textwrap", ("dedent", "fill", "wrap", "shorten"), "function", (_STR_INPUTS,)),
    ("html", ("escape", "unescape"), "function", (_STR_INPUTS,)),
    ("shlex", ("quote", "split"), "function", (_STR_INPUTS,)),
    ("keyword", ("iskeyword", "issoftkeyword"), "function", (_WORD_INPUTS,)),
    ("calendar", ("isleap",), "function", ((1900, 2000, 2023, 2024, 2100),)),
    ("operator", ("neg", "pos", "not_", "truth", "inv", "add", "sub", "mul", "truediv", "floordiv", "mod",
                  "lshift", "rshift", "and_", "or_", "xor"), "function", (_INT_INPUTS, _PAIR_INPUTS)),
)
_UNSTABLE = {"builtins.id", "builtins.hash", "builtins.callable", "builtins.repr", "builtins.ascii", "builtins.str",
             "builtins.list", "builtins.tuple", "builtins.set", "builtins.float", "builtins.int", "builtins.bool"}


def _description(obj: Any) -> str | None:
    doc = inspect.getdoc(obj) or ""
    lines = doc.strip().split("\n\n")[0].split("\n")
    # builtins' docstrings may open with their signature ("log(x, [base=math.e])", "S.count(sub) -> int")
    while lines and re.match(r"^[\w.]+\(.*\)( -> .*)?$", lines[0].strip()):
        lines = lines[1:]
    text = " ".join(line.strip() for line in lines).strip()
    text = re.sub(r"^[\w.]+\([^)]*\)\s+", "", text)  # "log(x, [base]) Return ..." on one line
    if len(text.split()) < 3 or "->" in text or "<==>" in text or len(text) > 200:
        return None
    return text if text.endswith(".") else text + "."


def _param_names(fn: Callable[..., Any], arity: int, style: str) -> tuple[str, ...]:
    """The function's own parameter names where its signature has them (``math.atan2(y, x)``),
    ``s`` for the string of a ``str`` method, else ``x``/``y``."""
    if style == "method":
        return ("s",)
    try:
        names = [p.name for p in inspect.signature(fn).parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:arity]
    except (TypeError, ValueError):
        names = []
    return tuple(names) if len(names) == arity else ("x", "y")[:arity]


def _literal_ok(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (bool, int, str)) or value is None:
        return True
    if isinstance(value, (list, tuple)):
        return all(_literal_ok(v) for v in value)
    return False


def _cases(fn: Callable[..., Any], pool: Sequence[Any]) -> list[tuple[tuple[Any, ...], Any]] | None:
    cases = []
    for raw in pool:
        args = tuple(raw) if isinstance(raw, tuple) else (raw,)
        try:
            out = fn(*[list(a) if isinstance(a, list) else a for a in args])
        except Exception:  # noqa: BLE001 - an input outside the function's domain is skipped
            continue
        if not _literal_ok(out) or eval(repr(out)) != out:  # noqa: S307 - repr of a checked literal
            continue
        cases.append((args, out))
    if len(cases) < 4 or len({json.dumps(out) for _, out in cases}) < 2:
        return None  # too few inputs in its domain, or a constant function (tests could not tell)
    return cases


#: the comparison the code task's hidden tests run (in the sandbox, prepended to ``check``); it is
#: compiled here too, so the exercises are grouped and filtered by exactly the same rule.
#: ``math`` comes in as ``_math``: a solution that forgets its own ``import math`` fails.
SAME_SOURCE = '''import math as _math


def _same(got, want):
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return _math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12 if want == 0 else 0.0)
    if isinstance(want, (list, tuple)):
        return (isinstance(got, type(want)) and len(got) == len(want)
                and all(_same(g, w) for g, w in zip(got, want)))
    return got == want
'''
_compiled: dict[str, Any] = {}
exec(compile(SAME_SOURCE, "<quantcl stdlib_sequence tests>", "exec"), _compiled)  # noqa: S102 - our own constant
_same: Callable[[Any, Any], bool] = _compiled["_same"]


def _passes(fn: Callable[..., Any], cases: Sequence[tuple[tuple[Any, ...], Any]]) -> bool:
    try:
        return all(_same(fn(*[list(a) if isinstance(a, list) else a for a in args]), want) for args, want in cases)
    except Exception:  # noqa: BLE001 - a function that fails on an input does not pass
        return False


def function_specs() -> list[FunctionSpec]:
    """Every exercise found, sorted by ``qualname`` (see the module docstring). Exercises that
    returning the first argument would pass are dropped; the others are grouped by behaviour."""
    specs: dict[str, FunctionSpec] = {}
    calls: dict[str, Callable[..., Any]] = {}
    for module_name, names, style, pools in _SOURCES:
        module = builtins if module_name == "builtins" else (str if module_name == "str" else
                                                             importlib.import_module(module_name))
        public = names if names is not None else tuple(n for n in dir(module) if not n.startswith("_"))
        label = "os.path" if module_name == "posixpath" else module_name
        for name in public:
            fn = getattr(module, name, None)
            qualname = f"{label}.{name}"
            if not callable(fn) or qualname in _UNSTABLE or inspect.isclass(fn) and style != "builtin":
                continue
            home = getattr(fn, "__module__", None) or module_name
            if style == "function" and home.split(".")[0].lstrip("_") not in (module_name, "builtins"):
                continue  # a re-export (statistics.fsum is math.fsum)
            description = _description(fn)
            if description is None:
                continue
            for pool in pools:
                cases = _cases(fn, pool)
                if cases is not None:
                    break
            else:
                continue
            if _passes(lambda *args: args[0], cases):
                continue  # the identity passes (math.nextafter to 1e-9): the tests cannot tell
            params = _param_names(fn, len(cases[0][0]), style)
            call = ", ".join(params)
            if style == "method":
                body, imports = f"return s.{name}()", ""
            elif style == "builtin":
                body, imports = f"return {name}({call})", ""
            else:
                body, imports = f"return {label}.{name}({call})", f"import {label}"
            specs[qualname] = FunctionSpec(qualname, description, params, body, imports, tuple(cases))
            calls[qualname] = fn
    ordered = sorted(specs)
    group = {name: name for name in ordered}
    for i, a in enumerate(ordered):  # union of "b's function passes a's tests" (or a's passes b's)
        for b in ordered[i + 1:]:
            if _passes(calls[b], specs[a].cases) or _passes(calls[a], specs[b].cases):
                old, new = group[b], group[a]
                for name in ordered:
                    if group[name] == old:
                        group[name] = new
    return [dataclasses.replace(specs[k], group=min(n for n in ordered if group[n] == group[k])) for k in ordered]


def facts_digest(facts: Sequence[tuple[str, str]], specs: Sequence[FunctionSpec]) -> str:
    """A short digest of the facts and exercises found (another Python may find others)."""
    payload = json.dumps([list(facts), [(s.qualname, s.description, repr(s.cases)) for s in specs]])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
