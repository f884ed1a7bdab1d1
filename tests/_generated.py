"""A page's generated block equals what its study script makes of the shipped results."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from quantcl.studies import pages


def assert_block(page: Path, name: str, made: str, regenerate: str) -> None:
    """Fail with a diff (committed page -> script's output) and the command that rewrites the
    block when the ``name`` block of ``page`` is not ``made``."""
    committed = pages.block(page, name)
    if committed == made.strip():
        return
    diff = "\n".join(difflib.unified_diff(committed.splitlines(), made.strip().splitlines(),
                                         f"{page.name} ({name} block, committed)", "the script's report", lineterm=""))
    pytest.fail(f"the {name!r} block of {page} is not what the script makes of the shipped results; "
                f"rewrite it with `{regenerate}`\n{diff}")
