"""One row of a run's evaluation: every task into the accuracy matrix, every probe into the probe matrix.

Under ``torchrun`` each process scores its share of a shardable evaluator's rows and all get the
merged result (:func:`quantcl.evaluators.evaluate_rows`), so ``on_evaluate`` sees the same one
everywhere. Probes are scored after the tasks and reach no plug-in hook (nothing trains on them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from quantcl._checks import require_list_of
from quantcl._runtime import datasets_progress_bars_off
from quantcl.errors import ConfigError, StateError
from quantcl.models import resolve_model_alias
from quantcl.results import ContinualResult
from quantcl.tasks.probe import check_probes

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.evaluators import EvalResult
    from quantcl.trainer import ContinualTrainer

__all__ = ["evaluate_row", "probe_matrix", "row_log", "probe_saved_rows"]


def probe_matrix(state: dict[str, Any], n_tasks: int, n_probes: int) -> np.ndarray:
    """The ``(T + 1, P)`` probe scores saved in ``state`` (``nan`` where not measured yet)."""
    out = np.full((n_tasks + 1, n_probes), np.nan)
    saved = state.get("probe_matrix")
    if saved:
        out[:] = np.array([[np.nan if v is None else v for v in row] for row in saved], dtype=float)
    return out


def _record(trainer: ContinualTrainer, row: int, name: str, result: EvalResult, state: dict[str, Any]) -> None:
    state["eval_details"].setdefault(str(row), {})[name] = dict(result.metrics, score=result.score)
    state.setdefault("items", {}).setdefault(str(row), {})[name] = result.item_columns()
    trainer.run_dir.write_eval(row, name, {"row": row, "task": name, "score": result.score,
                                           "metrics": result.metrics, "records": result.records})


def evaluate_row(trainer: ContinualTrainer, row: int, matrix: np.ndarray, state: dict[str, Any]) -> None:
    """Score every task (``matrix[row]``) and every probe (``state["probe_matrix"][row]``)."""
    common = {"batch_size": trainer.args.eval_batch_size, "progress": trainer.progress, "group": trainer._procs}
    for j, task in enumerate(trainer.tasks):
        result = task.evaluate(trainer.model, trainer.tokenizer, **common)
        matrix[row, j] = result.score
        _record(trainer, row, task.name, result, state)
        for plugin in trainer.plugins:
            plugin.on_evaluate(trainer, row, task, result)
    if not trainer.probes:
        return
    probes = probe_matrix(state, len(trainer.tasks), len(trainer.probes))
    for k, probe in enumerate(trainer.probes):
        result = probe.evaluate(trainer.model, trainer.tokenizer, **common)
        probes[row, k] = result.score
        _record(trainer, row, probe.name, result, state)
    state["probe_matrix"] = probes.tolist()


def row_log(trainer: ContinualTrainer, row: int, matrix: np.ndarray, state: dict[str, Any]) -> dict[str, float]:
    """What the ``report_to`` integrations get after stage ``row``: ``continual/<task>`` and
    ``continual/probe/<probe>`` scores and ``continual/stage``."""
    values = {f"continual/{t.name}": float(matrix[row, j]) for j, t in enumerate(trainer.tasks)}
    if trainer.probes:
        probes = probe_matrix(state, len(trainer.tasks), len(trainer.probes))
        values |= {f"continual/probe/{p.name}": float(probes[row, k]) for k, p in enumerate(trainer.probes)}
    return values | {"continual/stage": float(row)}


def probe_saved_rows(trainer: ContinualTrainer, probes: Any, rows: Any = None) -> ContinualResult:
    """Score ``probes`` on the models a run saved (see :meth:`ContinualTrainer.probe_saved`); the
    run directory is only read."""
    probes = check_probes(probes, trainer.tasks.names)
    if not probes:
        raise ConfigError("probe_saved needs at least one Probe")
    state = trainer.run_dir.load(trainer.config(), True, trainer.tasks.names)
    if state is None:
        raise StateError(f"{trainer.output_dir} holds no run of this configuration to probe")
    completed = int(state["completed_stages"])
    saved = sorted({0, completed})  # a run keeps only its newest stage's model
    wanted = saved if rows is None else require_list_of(rows, "probe_saved(rows=...)", int, items="matrix rows")
    missing = [r for r in wanted if r not in saved]
    if missing:
        raise ConfigError(f"probe_saved(rows={list(wanted)}): rows {missing} have no saved model; this run keeps "
                          f"rows {saved} (the untouched model and its newest stage); to probe every row, give "
                          "probes= to the run")
    n = len(trainer.tasks)
    P = np.full((n + 1, len(probes)), np.nan)
    trainer.model_source = resolve_model_alias(trainer.model_source, progress=trainer.progress)
    with datasets_progress_bars_off():
        for row in wanted:
            trainer._load_model(row, state["stage_records"])
            for k, probe in enumerate(probes):
                P[row, k] = probe.evaluate(trainer.model, trainer.tokenizer, batch_size=trainer.args.eval_batch_size,
                                           progress=trainer.progress, group=trainer._procs).score
    matrix = [[np.nan if v is None else v for v in r] for r in state["matrix"]]
    return ContinualResult(np.array(matrix, dtype=float), trainer.tasks.names, state["stage_records"],
                           state["eval_details"], trainer.config(), state.get("items", {}), P,
                           [p.name for p in probes])
