"""A probe set that works offline: the Python standard library's next-line cloze, for lm-eval or quantcl.

:func:`stdlib_cloze_probe` builds the held-out items of :func:`~quantcl.recipes.python_stdlib_cloze`
(the true next line of a source file among four; files never used for training by any quantcl
recipe) as a :class:`~quantcl.Probe`: scored by lm-evaluation-harness from a task YAML over a
local JSONL file (``harness=True``), or by quantcl's own :class:`~quantcl.evaluators.MultipleChoice`
on the same items (``harness=False``, the fast path). Both give the same log-likelihoods.

:func:`write_lm_eval_task` is the general tool: any rows to an lm-eval task folder (a YAML file
with ``dataset_path: json`` and ``data_files``) that ``LMEvalHarness(include_path=...)`` reads.

Examples:
    >>> probe = stdlib_cloze_probe(n=100)  # doctest: +SKIP
    >>> trainer = qcl.ContinualTrainer(..., probes=[probe])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from quantcl._checks import require_int, require_str
from quantcl._io import atomic_write_bytes, cache_dir
from quantcl.errors import ConfigError
from quantcl.evaluators import LMEvalHarness
from quantcl.recipes.stdlib import python_stdlib_cloze
from quantcl.tasks.probe import Probe

__all__ = ["stdlib_cloze_probe", "write_lm_eval_task", "STDLIB_CLOZE_TASK"]

#: the lm-eval task name of the shipped probe
STDLIB_CLOZE_TASK = "quantcl_stdlib_cloze"


def write_lm_eval_task(
    folder: str | os.PathLike[str],
    task: str,
    rows: Iterable[Mapping[str, Any]],
    *,
    output_type: str = "multiple_choice",
    doc_to_text: str = "context",
    doc_to_choice: str | None = "choices",
    doc_to_target: str = "label",
    target_delimiter: str = " ",
    metric: str | Sequence[str] = "acc",
    generation_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``rows`` as ``<task>.jsonl`` and an lm-eval task ``<task>.yaml`` reading it, into ``folder``.

    ``doc_to_text`` / ``doc_to_choice`` / ``doc_to_target`` are lm-eval's fields: a column name or
    a Jinja template. ``output_type`` is ``"multiple_choice"`` (scored by log-likelihood) or
    ``"generate_until"`` (then ``doc_to_choice=None``, and ``metric`` is usually
    ``"exact_match"``); ``metric`` may list several (``["acc", "acc_norm"]``). Files are written atomically; the folder is returned (``include_path``).

    Examples:
        >>> import tempfile
        >>> folder = write_lm_eval_task(tempfile.mkdtemp(), "tiny_mc",
        ...     [{"context": "2 + 2 =", "choices": [" 4", " 5"], "label": 0}])
        >>> sorted(p.name for p in folder.iterdir())
        ['tiny_mc.jsonl', 'tiny_mc.yaml']
    """
    import yaml

    require_str(task, "write_lm_eval_task(task=...)")
    if output_type not in ("multiple_choice", "generate_until", "loglikelihood"):
        raise ConfigError(f"write_lm_eval_task(output_type={output_type!r}): valid: 'multiple_choice', "
                          "'generate_until', 'loglikelihood'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(dict(r), ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    if not data:
        raise ConfigError(f"write_lm_eval_task: no rows for task {task!r}")
    atomic_write_bytes(folder / f"{task}.jsonl", data.encode("utf-8"))
    config: dict[str, Any] = {
        "task": task, "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str((folder / f"{task}.jsonl").resolve())}},
        "test_split": "test", "output_type": output_type, "doc_to_text": doc_to_text,
        "doc_to_target": doc_to_target, "target_delimiter": target_delimiter,
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                        for m in ([metric] if isinstance(metric, str) else metric)],
    }
    if doc_to_choice is not None:
        config["doc_to_choice"] = doc_to_choice
    if generation_kwargs is not None:
        config["generation_kwargs"] = dict(generation_kwargs)
    atomic_write_bytes(folder / f"{task}.yaml", yaml.safe_dump(config, sort_keys=False).encode("utf-8"))
    return folder


def stdlib_cloze_probe(
    n: int = 200,
    *,
    harness: bool = True,
    name: str = "stdlib-cloze",
    context_chars: int = 200,
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 8,
    folder: str | os.PathLike[str] | None = None,
) -> Probe:
    """The shipped offline probe: ``n`` next-line cloze items from held-out standard-library files.

    Args:
        n: items (each four options, chance = 0.25).
        harness: score with lm-evaluation-harness (:class:`~quantcl.evaluators.LMEvalHarness`, task
            ``quantcl_stdlib_cloze``; needs ``quantcl[lmeval]``) or, ``False``, with quantcl's
            ``MultipleChoice`` (same items, same log-likelihoods, faster).
        name: the probe's name (its column in ``result.probe_matrix``).
        context_chars: characters of source before each line (as in :func:`~quantcl.recipes.python_stdlib_cloze`).
        seed: which items are drawn (as there).
        limit: with ``harness``, lm-eval's ``limit`` (the first ``limit`` items).
        batch_size: with ``harness``, requests per forward pass.
        folder: where the lm-eval task is written (default: ``$QUANTCL_CACHE/probes/<digest>``; the
            digest covers the items, so a folder is never rewritten with other items).
    """
    n = require_int(n, "stdlib_cloze_probe(n=...)", minimum=1)
    task = python_stdlib_cloze(n_train=1, n_eval=n, context_chars=context_chars, seed=seed)[0]
    if not harness:
        return Probe.from_task(task, name)
    rows = [{"context": r["prompt"], "choices": list(r["choices"]), "label": int(r["answer"])} for r in task.eval]
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:12]
    target = Path(folder) if folder is not None else cache_dir() / "probes" / f"stdlib-cloze-{digest}"
    # the context ends where the line starts: the option continues it with no delimiter
    write_lm_eval_task(target, STDLIB_CLOZE_TASK, rows, target_delimiter="")
    return Probe(name, LMEvalHarness(tasks=[STDLIB_CLOZE_TASK], include_path=str(target), limit=limit,
                                     batch_size=batch_size))
