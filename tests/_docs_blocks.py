"""The code blocks of the Markdown docs, for tests/test_docs_snippets.py.

A page's ```python blocks run in order in one namespace (a page reads as one session), in a fresh
process whose working directory is a temporary folder. A block may be skipped only with a reason
on the line before it, ``<!-- docs-test: skip (needs a CUDA GPU) -->``; the test lists every skip.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_FENCE = re.compile(
    r"^(?:<!-- docs-test: skip \((?P<reason>[^)]*)\) -->\n)?"
    r"```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$",
    re.M | re.S,
)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # line of the block's first code line in the page (1-based)
    lang: str
    body: str
    skip: str | None  # the reason, when the page skips it

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    out = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start("body")) + 1
        out.append(Block(page, line, m["lang"], m["body"], m["reason"]))
    return out


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "api" not in p.relative_to(DOCS).parts)


# Commands a ```bash block may hold. `quantcl` lines are parsed by the CLI's own parser (an unknown
# option fails); a `python path.py` names a file of the repository; installs are not run.
_ALLOWED_HEADS = {"pip", "python", "python3", ".", "source", "mkdocs", "quantcl", "torchrun", "accelerate",
                  "export", "cd", "jupyter", "apt-get", "OMP_NUM_THREADS=1", "git", "bash"}


def shell_commands(body: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped, split at && and ;."""
    joined = re.sub(r"\\\n", " ", body)
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in words + ["&&"]:
            if word in {"&&", ";", "||"}:
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(word)
    return commands


# Blocks run in the real __main__ module's namespace, as in a notebook or `python -i`: a class a
# block defines is importable as `__main__.Name` (what a component saves and rebuilds from).
RUNNER = r"""
import sys as _sys
from pathlib import Path as _Path
_sys.path.insert(0, TESTS)
from _docs_blocks import blocks as _blocks
for _b in _blocks(_Path(_sys.argv[1])):
    if _b.lang == "python" and _b.skip is None:
        print(f"--- {_b.where}", flush=True)
        exec(compile("\n" * (_b.line - 1) + _b.body, str(_b.page), "exec"), _sys.modules["__main__"].__dict__)
print("--- all blocks ran", flush=True)
""".replace("TESTS", repr(str(Path(__file__).resolve().parent)))
