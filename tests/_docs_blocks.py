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
                  "export", "cd", "jupyter", "apt-get", "OMP_NUM_THREADS=1", "git"}


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


RUNNER = r"""
import os, re, sys
page, start = sys.argv[1], 1
text = open(page).read()
fence = re.compile(FENCE, re.M | re.S)
ns = {"__name__": "__main__"}
for m in fence.finditer(text):
    if m["lang"] != "python" or m["reason"] is not None:
        continue
    line = text.count("\n", 0, m.start("body"))
    print(f"--- {os.path.basename(page)}:{line + 1}", flush=True)
    exec(compile("\n" * line + m["body"], page, "exec"), ns)
print("--- all blocks ran", flush=True)
""".replace("FENCE", repr(_FENCE.pattern))
