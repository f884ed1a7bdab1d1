"""Real text found offline on every machine: the Python standard library's own source.

:func:`python_stdlib` makes a language-modelling task of it (continued pre-training, QAT),
:func:`python_stdlib_cloze` a held-out downstream task: pick the true next line of a source file
among four. The text is the ``.py`` files directly in ``sysconfig.get_paths()["stdlib"]`` (code,
comments and docstrings: about 4.7 MB on CPython 3.11), so it depends on the Python version;
:func:`stdlib_metadata` gives the version and a digest of the files used.

Files, not chunks, are split into train and held-out (a file is held out when the sha256 of its
name falls in the lowest ``heldout_fraction``), so no held-out text was seen in training, and the
split does not change with ``seed`` or the sizes asked for.

Examples:
    >>> tasks = python_stdlib(n_train=100, n_eval=10)  # doctest: +SKIP
    >>> tasks[0].train[0]["target"][:20]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import platform
import random
import sysconfig
from pathlib import Path
from typing import Any

from datasets import Dataset

from quantcl._checks import require_int, require_number
from quantcl.errors import ConfigError
from quantcl.evaluators import MultipleChoice, Perplexity
from quantcl.tasks.task import Task, TaskSequence

__all__ = ["python_stdlib", "python_stdlib_cloze", "stdlib_files", "stdlib_metadata"]


def stdlib_files(root: str | Path | None = None, heldout_fraction: float = 0.1) -> tuple[list[Path], list[Path]]:
    """``(train files, held-out files)``: the ``.py`` files directly in ``root`` (default: this
    Python's standard library), sorted by name, split by a hash of the name."""
    if require_number(heldout_fraction, "heldout_fraction", low=0.0, high=1.0, low_open=True) == 1.0:
        raise ConfigError("heldout_fraction must be below 1 (some files must be left to train on)")
    folder = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in folder.glob("*.py") if p.is_file())
    held = [p for p in files if int(hashlib.sha256(p.name.encode()).hexdigest()[:8], 16) / 2**32 < heldout_fraction]
    train = [p for p in files if p not in held]
    if not train or not held:
        raise ConfigError(f"python_stdlib: {str(folder)!r} has {len(files)} .py file(s); need files for both the "
                          f"train and the held-out split (heldout_fraction={heldout_fraction})")
    return train, held


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def _chunks(files: list[Path], n: int, chunk_chars: int, prompt_chars: int, rng: random.Random,
            what: str) -> Dataset:
    pieces = [text[i:i + chunk_chars] for text in map(_read, files)
              for i in range(0, len(text) - chunk_chars + 1, chunk_chars)]
    pieces = [p for p in pieces if p.strip()]
    if n > len(pieces):
        raise ConfigError(f"python_stdlib: {what} asks for {n} chunks of {chunk_chars} characters; "
                          f"the {what} files hold {len(pieces)}")
    picked = rng.sample(pieces, n)
    return Dataset.from_dict({"prompt": [p[:prompt_chars] for p in picked],
                              "target": [p[prompt_chars:] for p in picked]})


def python_stdlib(
    n_train: int = 2000,
    n_eval: int = 200,
    *,
    chunk_chars: int = 256,
    prompt_chars: int = 16,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    root: str | None = None,
) -> TaskSequence:
    """One language-modelling task, ``stdlib``: chunks of standard-library source.

    Each row is a ``chunk_chars``-character window of a file (windows do not overlap);
    ``prompt`` holds its first ``prompt_chars`` characters, ``target`` the rest, so training
    learns the target and :class:`~quantcl.evaluators.Perplexity` scores it. Training chunks come
    from the train files, evaluation chunks from the held-out files, both sampled by ``seed``.

    Args:
        n_train: chunks in the training split.
        n_eval: chunks in the evaluation split.
        chunk_chars: window size.
        prompt_chars: the window's part used as context.
        heldout_fraction: the share of files held out (see the module docstring).
        seed: which chunks are sampled.
        root: a folder of ``.py`` files to use instead of the standard library.
    """
    n_train = require_int(n_train, "python_stdlib(n_train=...)", minimum=1)
    n_eval = require_int(n_eval, "python_stdlib(n_eval=...)", minimum=1)
    chunk_chars = require_int(chunk_chars, "python_stdlib(chunk_chars=...)", minimum=2)
    prompt_chars = require_int(prompt_chars, "python_stdlib(prompt_chars=...)", minimum=1)
    if prompt_chars >= chunk_chars:
        raise ConfigError(f"python_stdlib(prompt_chars={prompt_chars}) must be smaller than chunk_chars={chunk_chars}")
    seed = require_int(seed, "python_stdlib(seed=...)", minimum=0)
    train_files, held = stdlib_files(root, heldout_fraction)
    rng = random.Random(f"stdlib:{seed}")
    task = Task("stdlib", _chunks(train_files, n_train, chunk_chars, prompt_chars, rng, "train"),
                _chunks(held, n_eval, chunk_chars, prompt_chars, rng, "held-out"), Perplexity())
    return TaskSequence([task])


def _cloze_rows(files: list[Path], n: int, rng: random.Random, context_chars: int) -> Dataset:
    items: list[tuple[str, str]] = []  # (context, true line)
    lines_pool: list[str] = []
    for text in map(_read, files):
        lines = text.split("\n")
        offset = 0
        for line in lines:
            if len(line.strip()) >= 20 and offset >= context_chars:
                items.append((text[offset - context_chars:offset], line))
                lines_pool.append(line)
            offset += len(line) + 1
    if n > len(items):
        raise ConfigError(f"python_stdlib_cloze: asks for {n} items; the files hold {len(items)} usable lines")
    rows: dict[str, list[Any]] = {"prompt": [], "target": [], "choices": [], "answer": []}
    for context, line in rng.sample(items, n):
        options = {line}
        while len(options) < 4:
            options.add(rng.choice(lines_pool))
        ordered = sorted(options)
        rng.shuffle(ordered)
        rows["prompt"].append(context)
        rows["target"].append(line)
        rows["choices"].append(ordered)
        rows["answer"].append(ordered.index(line))
    return Dataset.from_dict(rows)


def python_stdlib_cloze(
    n_train: int = 200,
    n_eval: int = 200,
    *,
    context_chars: int = 200,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    root: str | None = None,
) -> TaskSequence:
    """A downstream task, ``stdlib-cloze``: the true next line of a file among four.

    The prompt is the ``context_chars`` characters before a line of at least 20 non-blank
    characters; the choices are that line and three other such lines of the same split, scored
    by log-likelihood (:class:`~quantcl.evaluators.MultipleChoice`, chance = 0.25). Evaluation
    items come from the held-out files of :func:`python_stdlib` (same ``heldout_fraction``),
    training items from its train files.
    """
    n_train = require_int(n_train, "python_stdlib_cloze(n_train=...)", minimum=1)
    n_eval = require_int(n_eval, "python_stdlib_cloze(n_eval=...)", minimum=1)
    context_chars = require_int(context_chars, "python_stdlib_cloze(context_chars=...)", minimum=1)
    seed = require_int(seed, "python_stdlib_cloze(seed=...)", minimum=0)
    train_files, held = stdlib_files(root, heldout_fraction)
    rng = random.Random(f"stdlib-cloze:{seed}")
    task = Task("stdlib-cloze", _cloze_rows(train_files, n_train, rng, context_chars),
                _cloze_rows(held, n_eval, rng, context_chars), MultipleChoice())
    return TaskSequence([task])


def stdlib_metadata(root: str | None = None, heldout_fraction: float = 0.1) -> dict[str, Any]:
    """Where the text comes from: the Python version, the number of files per split and a digest
    of their names and contents (record it with results: another Python has other files)."""
    train, held = stdlib_files(root, heldout_fraction)
    return {"source": "python standard library", "python": platform.python_version(),
            "train_files": len(train), "heldout_files": len(held), "files_sha256": _digest(train + held)}
