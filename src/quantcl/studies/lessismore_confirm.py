"""The confirmatory "Less is more" study: endpoints fixed before the runs, item-level intervals.

The first SmolLM2 study (3 seeds, 40 rows, 24 comparisons; :mod:`quantcl.studies.lessismore_check`)
could not answer the paper's questions: its forgetting was mild, most of its NLU drop was
answer-format drift, and its intervals covered training seeds only. This module analyses the
study designed to answer them (``examples/lessismore_confirmatory.yaml``), with its endpoints
stated here, in code, before any of its runs:

* **primary**: NLU *knowledge* retention after Math, per run the log-likelihood accuracy over the
  four listed options after Math divided by the same after NLU (the items'
  ``correct_loglikelihood``; :class:`~quantcl.evaluators.MultipleChoice` ``mode="both"``);
* **secondary** (labelled so, never the headline): Math accuracy after Math.

Each endpoint has its family of comparisons, adjusted together (Holm by default): every
quantized precision against the 16-bit one at each replay dose (the paper: quantized models
forget less, learn later tasks better) and each dose against no replay at each precision (the
paper: a little replay lifts retention; for the secondary endpoint any change, two-sided).
Intervals and p-values come from :func:`quantcl.sweep.stats.crossed_bootstrap` over seeds and
evaluation items (a replay comparison shares each seed's first stage: seeds are paired); the
detectable difference is ``(z(0.975) + z(0.8))`` times the bootstrap standard error.

Examples:
    >>> [e.name for e in ENDPOINTS]
    ['NLU knowledge retention after Math', 'Math accuracy after Math']
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from quantcl.studies.lessismore_check import FLOAT_PRESETS, Finding, _adjusted_verdict, _preset
from quantcl.sweep.grid import value_label
from quantcl.sweep.stats import adjust, crossed_bootstrap

__all__ = ["Endpoint", "ENDPOINTS", "DESCRIPTIVE", "confirmatory_findings", "confirmatory_table", "replay_dose",
           "endpoint_arrays"]

# (z_{1 - alpha/2} + z_{power}) at alpha 0.05, power 0.8: a difference this many standard errors
# from 0 is found with 80% probability by a two-sided test at 0.05
_DETECTABLE_SE = 2.8015852


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """An outcome of each run computed from item-level records.

    Attributes:
        name: what it is, as the report prints it.
        role: ``"primary"``, ``"secondary"`` or ``"descriptive"`` (no test).
        task: the task scored.
        key: the item outcome (``correct``, ``correct_loglikelihood``, ``well_formed``).
        row: the accuracy-matrix row (stage) measured.
        baseline_row: for a retention, the row it is relative to (per seed: mean at ``row`` /
            mean at ``baseline_row``); ``None`` for a plain accuracy.
        claim_precision: the paper's claim for quantized - 16-bit (``""``: not compared).
        claim_replay: the paper's claim for replay - none (two-sided when ``replay_two_sided``).
    """

    name: str
    role: str
    task: str
    key: str
    row: int
    baseline_row: int | None = None
    claim_precision: str = ""
    claim_replay: str = ""
    replay_two_sided: bool = False
    invert: bool = False  # the share of items *without* the outcome (invalid = not well-formed)
    among: str | None = None  # the outcome's mean among the items where this one holds (accuracy among valid)

    def statistic(self, x: np.ndarray) -> float:
        """The cell's value: the mean over seeds of each seed's value (``x``: seeds x items [x 2])."""
        if self.invert:
            x = 1.0 - x
        if self.among is not None:  # x[..., 0]: the condition, x[..., 1]: the outcome
            with np.errstate(divide="ignore", invalid="ignore"):
                per_seed = np.nansum(x[..., 0] * x[..., 1], axis=1) / np.nansum(x[..., 0], axis=1)
            return float(np.nanmean(per_seed)) if np.isfinite(per_seed).any() else math.nan
        if self.baseline_row is None:
            return float(np.nanmean(np.nanmean(x, axis=1)))
        before, after = np.nanmean(x[..., 0], axis=1), np.nanmean(x[..., 1], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(before > 0, after / before, np.nan)
        return float(np.nanmean(ratios)) if np.isfinite(ratios).any() else math.nan


ENDPOINTS = (
    Endpoint("NLU knowledge retention after Math", "primary", "nlu", "correct_loglikelihood", 2, 1,
             claim_precision="quantized models forget less", claim_replay="a little replay lifts retention"),
    Endpoint("Math accuracy after Math", "secondary", "math", "correct", 2,
             claim_precision="quantized models learn later tasks better",
             claim_replay="replay changes the new task's accuracy", replay_two_sided=True),
)

DESCRIPTIVE = (
    Endpoint("NLU log-likelihood accuracy after NLU", "descriptive", "nlu", "correct_loglikelihood", 1),
    Endpoint("NLU log-likelihood accuracy after Math", "descriptive", "nlu", "correct_loglikelihood", 2),
    Endpoint("NLU generated-answer accuracy after NLU", "descriptive", "nlu", "correct", 1),
    Endpoint("NLU generated-answer accuracy after Math", "descriptive", "nlu", "correct", 2),
    Endpoint("NLU generated-answer retention after Math", "descriptive", "nlu", "correct", 2, 1),
    Endpoint("NLU invalid answers after Math", "descriptive", "nlu", "well_formed", 2, invert=True),
    Endpoint("NLU generated-answer accuracy among valid answers after Math", "descriptive", "nlu", "correct", 2,
             among="well_formed"),
)


def endpoint_arrays(result: Any, endpoint: Endpoint, cell: dict[str, Any]) -> tuple[list[Any], np.ndarray]:
    """``(seeds, outcomes)`` of a cell of ``result`` (a :class:`~quantcl.sweep.SweepResult`):
    seeds x items, or seeds x items x 2 (baseline row, row) for a retention."""
    seeds, ids, after = result.item_outcomes(cell, endpoint.row, endpoint.task, endpoint.key)
    if endpoint.among is not None:
        _, _, condition = result.item_outcomes(cell, endpoint.row, endpoint.task, endpoint.among)
        return seeds, np.stack([condition, after], axis=-1)
    if endpoint.baseline_row is None:
        return seeds, after
    seeds_b, ids_b, before = result.item_outcomes(cell, endpoint.baseline_row, endpoint.task, endpoint.key)
    if seeds_b != seeds or ids_b != ids:
        raise ValueError(f"cell {cell}: rows {endpoint.baseline_row} and {endpoint.row} of {endpoint.task!r} "
                         "were scored on other seeds or items")
    return seeds, np.stack([before, after], axis=-1)


def _cells(result: Any) -> tuple[str | None, list[str], list[float]]:
    precisions = [value_label(p) for p in result.grid.get("precision", [])]
    reference = next((p for p in precisions if _preset(p) in FLOAT_PRESETS), None)
    quantized = [p for p in precisions if p != reference]
    return reference, quantized, sorted(float(f) for f in result.grid.get("replay.fraction", [0.0]))


def _cell(precision: str, fraction: float) -> dict[str, Any]:
    return {"precision": precision, "replay.fraction": fraction}


def _compare(result: Any, endpoint: Endpoint, claim: str, comparison: str, a: dict[str, Any], b: dict[str, Any],
             paired: bool, two_sided: bool, n_resamples: int, seed: int) -> Finding:
    seeds_a, x = endpoint_arrays(result, endpoint, a)
    seeds_b, y = endpoint_arrays(result, endpoint, b)
    if paired:  # the seeds both cells have, in the same order
        both = [s for s in seeds_a if s in seeds_b]
        x, y = x[[seeds_a.index(s) for s in both]], y[[seeds_b.index(s) for s in both]]
    boot = crossed_bootstrap([x, y], lambda u, v: endpoint.statistic(u) - endpoint.statistic(v),
                             paired_seeds=paired, n_resamples=n_resamples, seed=seed)
    return Finding(claim, comparison, boot["estimate"], boot["low"], boot["high"], (len(x), len(y)),
                   "cannot tell", two_sided=two_sided, paired=paired, p_value=boot["p_value"],
                   detectable=_DETECTABLE_SE * boot["se"])


def confirmatory_findings(result: Any, *, endpoints: Sequence[Endpoint] = ENDPOINTS, adjustment: str = "holm",
                          n_resamples: int = 4000, seed: int = 0) -> list[Finding]:
    """The planned comparisons of every tested endpoint on ``result`` (a precision x
    ``replay.fraction`` x seed :class:`~quantcl.sweep.SweepResult` whose runs kept item records).

    Each endpoint's comparisons form one family, adjusted together by ``adjustment`` (``"holm"``
    or ``"bh"``); a finding's ``comparison`` starts with the endpoint's role. The reference is
    the grid's 16-bit preset; every other precision is compared with it.
    """
    reference, quantized, fractions = _cells(result)
    findings: list[Finding] = []
    for endpoint in (e for e in endpoints if e.role != "descriptive"):
        family: list[Finding] = []
        for q in quantized if endpoint.claim_precision else []:
            for f in fractions:
                if reference is None:
                    break
                family.append(_compare(result, endpoint, endpoint.claim_precision,
                                       f"{endpoint.role}: {endpoint.name}: {q} - {reference}, replay {f:g}",
                                       _cell(q, f), _cell(reference, f), False, False, n_resamples, seed))
        for dose in (f for f in fractions if f > 0 and endpoint.claim_replay):
            for p in ([reference] if reference else []) + quantized:
                family.append(_compare(result, endpoint, endpoint.claim_replay,
                                       f"{endpoint.role}: {endpoint.name}: replay {dose:g} - 0, {p} (paired)",
                                       _cell(p, dose), _cell(p, 0.0), True, endpoint.replay_two_sided,
                                       n_resamples, seed))
        adjusted = adjust([f.p_value for f in family], method=adjustment)
        family = [dataclasses.replace(f, p_adjusted=p, family=len(family), adjustment=adjustment)
                  for f, p in zip(family, adjusted)]
        findings += [dataclasses.replace(f, verdict=_adjusted_verdict(f)) for f in family]
    return findings


def confirmatory_table(result: Any, endpoints: Sequence[Endpoint] = (*ENDPOINTS, *DESCRIPTIVE), *, digits: int = 3,
               n_resamples: int = 2000, seed: int = 0) -> str:
    """A Markdown table: one row per endpoint, one column per cell, ``mean [low, high]`` with the
    crossed seed x item bootstrap interval (``-``: not measured)."""
    reference, quantized, fractions = _cells(result)
    cells = [_cell(p, f) for p in ([reference] if reference else []) + quantized for f in fractions]
    header = ["endpoint", *(f"{c['precision']}, replay {c['replay.fraction']:g}" for c in cells)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for endpoint in endpoints:
        row = [f"{endpoint.name}" + (f" (*{endpoint.role}*)" if endpoint.role != "descriptive" else "")]
        for cell in cells:
            try:
                _, x = endpoint_arrays(result, endpoint, cell)
            except (KeyError, ValueError):
                row.append("-")
                continue
            boot = crossed_bootstrap([x], endpoint.statistic, n_resamples=n_resamples, seed=seed)
            row.append(f"{boot['estimate']:.{digits}f} [{boot['low']:.{digits}f}, {boot['high']:.{digits}f}]"
                       if math.isfinite(boot["estimate"]) else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def replay_dose(result: Any, stage: int = 2) -> list[dict[str, Any]]:
    """The replay dose of each replay fraction three ways, from the runs' stage records: the
    fraction of the old task's rows, their share of stage ``stage``'s mix, and the replay rows
    expected among the rows trained on (steps x batch x share; the exact draw is not recorded)."""
    out = []
    for fraction in _cells(result)[2]:
        names = [n for n, p in result.points.items() if n in result.runs
                 and float(p.get("replay.fraction", 0.0)) == fraction]
        if not names:
            continue
        run = result.runs[names[0]]
        record = run.stage_records[stage - 1]
        replayed, new = int(record.get("n_replay_rows", 0)), int(record.get("n_train_rows", 0))
        batch = run.config.get("args", {}).get("per_device_train_batch_size", 1)
        share = replayed / (replayed + new) if replayed + new else math.nan
        out.append({"fraction": fraction, "replay_rows": replayed, "new_rows": new, "share": share,
                    "steps": int(record.get("steps", 0)), "expected_trained": int(record.get("steps", 0)) * batch * share})
    return out
