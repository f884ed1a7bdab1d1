"""The Markdown report and figure of a "Less is more" check (see :mod:`quantcl.studies.lessismore_check`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quantcl.results import ContinualResult
from quantcl.studies.lessismore_check import Finding, lessismore_findings, summarize
from quantcl.sweep.grid import value_label

__all__ = ["lessismore_report", "metrics_table", "mean_matrices", "plot_mean_matrices"]

_METRICS = (("average_accuracy", "avg acc"), ("bwt", "BWT"), ("forgetting", "forgetting"),
            ("retention", "retention"), ("plasticity", "plasticity"))


def _cells(result: Any) -> list[tuple[str, dict[str, Any], list[ContinualResult]]]:
    out = []
    for factors, names in result.cells():
        label = ", ".join(f"{k}={value_label(v)}" for k, v in factors.items())
        out.append((label, factors, [result.runs[n] for n in names]))
    return out


def mean_matrices(result: Any, merged: Any = None) -> dict[str, ContinualResult]:
    """One :class:`ContinualResult` per cell holding the accuracy matrix averaged over its seeds."""
    out: dict[str, ContinualResult] = {}
    groups = _cells(result)
    if merged is not None and merged.runs:
        groups.append(("merged adapter", {}, list(merged.runs.values())))
    for label, _factors, runs in groups:
        if runs:
            out[f"{label} (n={len(runs)})"] = ContinualResult(
                np.mean([r.accuracy_matrix for r in runs], axis=0), runs[0].task_names)
    return out


def plot_mean_matrices(result: Any, path: str | Path, merged: Any = None) -> Path:
    """Every cell's mean accuracy matrix as an annotated heatmap, saved to ``path``."""
    from quantcl._plot import plot_grid

    return plot_grid(mean_matrices(result, merged), path)


def _matrix_table(label: str, runs: list[ContinualResult]) -> list[str]:
    tasks = runs[0].task_names
    lines = [f"**{label}** (n={len(runs)})", "", "| after | " + " | ".join(tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    for i, row_label in enumerate(runs[0].row_labels):
        cells = [summarize([float(r.accuracy_matrix[i, j]) for r in runs]) for j in range(len(tasks))]
        lines.append(f"| {row_label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _groups(result: Any, merged: Any) -> list[tuple[str, list[ContinualResult]]]:
    groups = [(label, runs) for label, _f, runs in _cells(result) if runs]
    if merged is not None and merged.runs:
        groups.append(("merged adapter (16-bit, replay 0)", list(merged.runs.values())))
    return groups


def metrics_table(result: Any, merged: Any = None) -> str:
    """The Markdown table of each cell's final accuracies and summary metrics (mean ± 95% t-interval)."""
    groups = _groups(result, merged)
    return "\n".join(_metrics_table(groups)) if groups else "(no finished runs)"


def _metrics_table(groups: list[tuple[str, list[ContinualResult]]]) -> list[str]:
    tasks = groups[0][1][0].task_names
    header = ["cell", *(f"final {t}" for t in tasks), *(name for _, name in _METRICS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, runs in groups:
        cells = [summarize([float(r.accuracy_matrix[-1, j]) for r in runs]) for j in range(len(tasks))]
        cells += [summarize([float(r.metrics[key]) for r in runs]) for key, _ in _METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _paired_table(groups: list[tuple[str, list[ContinualResult]]]) -> list[str]:
    """Per cell and task: the score before training, right after the task's own stage, and at the
    end; the gain (own stage - before) and the drop (own stage - end), each a per-run difference
    with its 95% t-interval over seeds."""
    lines = ["| cell | task | before | after its stage | at the end | gain | drop |", "|---|---|---|---|---|---|---|"]
    for label, runs in groups:
        for j, task in enumerate(runs[0].task_names):
            before = [float(r.accuracy_matrix[0, j]) for r in runs]
            own = [float(r.accuracy_matrix[j + 1, j]) for r in runs]
            end = [float(r.accuracy_matrix[-1, j]) for r in runs]
            gain = [o - b for o, b in zip(own, before)]
            drop = [o - e for o, e in zip(own, end)] if j + 1 < len(runs[0].task_names) else None
            lines.append(f"| {label} | {task} | {summarize(before)} | {summarize(own)} | {summarize(end)} | "
                         f"{summarize(gain)} | {summarize(drop) if drop is not None else '-'} |")
    return lines


def _p(value: float) -> str:
    return "-" if np.isnan(value) else "<0.001" if value < 0.001 else f"{value:.3f}"


def _findings_table(findings: Sequence[Finding]) -> list[str]:
    method = {"holm": "Holm", "bh": "BH"}.get(findings[0].adjustment, findings[0].adjustment) if findings else ""
    lines = [f"| claim | comparison | difference [95% CI] | p | p ({method}) | detects | verdict |",
             "|---|---|---|---|---|---|---|"]
    for f in findings:
        interval = "" if np.isnan(f.low) else f" [{f.low:+.3f}, {f.high:+.3f}]"
        detects = "-" if np.isnan(f.detectable) else f"{f.detectable:.3f}"
        lines.append(f"| {f.claim} | {f.comparison} | {f.difference:+.3f}{interval} | {_p(f.p_value)} | "
                     f"{_p(f.p_adjusted)} | {detects} | **{f.verdict}** |")
    return lines


def _statement(findings: Sequence[Finding]) -> list[str]:
    lines = []
    for claim in dict.fromkeys(f.claim for f in findings):
        these = [f for f in findings if f.claim == claim]
        counts: dict[str, int] = {}
        for f in these:
            counts[f.verdict] = counts.get(f.verdict, 0) + 1
        tally = ", ".join(f"{v} {k}" for k, v in counts.items())
        lines.append(f"- *{claim}*: {len(these)} comparison(s): {tally}.")
    return lines


def lessismore_report(result: Any, merged: Any = None, *, settings: Mapping[str, Any] | None = None,
                      figure: str | None = None) -> str:
    """The Markdown report: settings, per-cell metrics (mean ± 95% t-interval over seeds), accuracy
    matrices, the findings with their verdicts, and a tally per claim."""
    findings = lessismore_findings(result, merged)
    groups = _groups(result, merged)
    if not groups:
        return "(no finished runs)\n"
    parts: list[str] = []
    if settings:
        parts += ["### Settings", "", *(f"- {k}: {v}" for k, v in settings.items()), ""]
    parts += ["### Metrics per cell", "",
              "Mean ± half-width of the 95% t-interval over seeds; final = accuracy after the last stage.", "",
              *_metrics_table(groups), ""]
    replay_free = [(label, runs) for label, factors, runs in _cells(result)
                   if runs and float(factors.get("replay.fraction", 0.0)) == 0.0]
    if merged is not None and merged.runs:
        replay_free.append(("merged adapter", list(merged.runs.values())))
    if replay_free:
        parts += ["### Learning and forgetting without replay", "",
                  "Gain: the score right after the task's own stage minus before any training; drop: that "
                  "score minus the score at the end (> 0: forgotten). Per-run differences, mean ± 95% "
                  "t-interval over seeds.", "", *_paired_table(replay_free), ""]
    if figure:
        parts += [f"![mean accuracy matrices]({figure})", ""]
    parts += ["### Accuracy matrices", "", "Row *before*: the model before any training; row *after t*: after "
              "the stage that trained task t. Mean ± 95% t-interval over seeds.", ""]
    for label, runs in groups:
        parts += _matrix_table(label, runs)
    holm = not findings or findings[0].adjustment == "holm"
    method, short = ("Holm's", "Holm") if holm else ("Benjamini-Hochberg's", "BH")
    parts += ["### Findings", "",
              "Each row: the difference of two cells' means over seeds, signed so that > 0 is what the paper "
              "claims, with its Welch 95% interval (*paired*: per-seed differences, where the two cells share "
              "each seed's first stage, and their t-interval) and the t-test's p-value. The "
              f"{len(findings)} comparisons are one family: *p ({short})* is "
              f"{method} adjusted p-value, and the verdict is decided by it at 0.05: *supports* (the "
              "paper's side of 0), *contradicts* (the other side), *cannot tell* (0.05 or above, or no "
              "test: fewer than 2 seeds, or every seed gave the same score in both cells). The interval is "
              "not adjusted: one that excludes 0 with *cannot tell* did not survive the correction. *detects*: "
              "the smallest true difference this comparison detects with 80% power (uncorrected), from the "
              "observed spread. The merged-adapter rows have no direction: *differs* or *no clear "
              "difference*.", "",
              *_findings_table(findings), "", *_statement(findings), ""]
    return "\n".join(parts)

