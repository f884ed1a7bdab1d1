"""The mechanism study (issue 27), fixed in code before its runs: why would nf4 forget less?

Arms (``examples/mechanism_study.yaml``; the confirmatory study's severe NLU -> Math setting,
replay 0, >= 6 seeds, :class:`~quantcl.GradientSimilarity` on): ``bf16``, ``nf4``, and bf16 with
``noise_like="nf4"`` under each of ``rounded``, ``fixed`` and ``per_step``
(:mod:`quantcl.precision.noise`).

Endpoints: those of the confirmatory study (:data:`quantcl.studies.lessismore_confirm.ENDPOINTS`;
primary: NLU knowledge retention after Math, from the log-likelihood item outcomes). For each, one
family of :data:`COMPARISONS`, Holm-adjusted, each difference with the crossed seed x item
bootstrap interval (:func:`quantcl.sweep.stats.crossed_bootstrap`) and the smallest difference it
detects. A verdict is ``"differs"`` (adjusted p < 0.05), ``"matches"`` (the 95% interval lies inside
``+-`` :data:`MARGIN`, an equivalence decision by interval inclusion) or ``"cannot tell"``.

:func:`reading` applies the issue's reading guide to the primary endpoint, and says nothing when
nf4 and bf16 do not differ (no effect to explain). :func:`gradient_rows` summarizes the gradient
measurements per arm (descriptive, seeds-only intervals).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from quantcl.studies.lessismore_check import Finding
from quantcl.studies.lessismore_confirm import ENDPOINTS, Endpoint, _compare
from quantcl.sweep.grid import same_value, value_label
from quantcl.sweep.stats import adjust, describe

__all__ = ["ARMS", "COMPARISONS", "MARGIN", "ENDPOINTS", "arm_cell", "mechanism_findings", "reading",
           "gradient_rows", "gradient_curves", "plot_gradients", "CURVES"]

#: the per-step measurements of :class:`~quantcl.GradientSimilarity` that :func:`plot_gradients` draws
CURVES = ("grad_cos_first_task", "grad_cos_replay_new")

ARMS: dict[str, Any] = {
    "bf16": "bf16",
    "nf4": "nf4",
    "rounded": {"name": "bf16", "noise_like": "nf4", "noise": "rounded"},
    "fixed": {"name": "bf16", "noise_like": "nf4", "noise": "fixed"},
    "per_step": {"name": "bf16", "noise_like": "nf4", "noise": "per_step"},
}
#: (arm, against): the effect to explain, then each control against nf4 and against bf16
COMPARISONS = (("nf4", "bf16"), ("rounded", "nf4"), ("fixed", "nf4"), ("per_step", "nf4"),
               ("rounded", "bf16"), ("fixed", "bf16"), ("per_step", "bf16"))
#: equivalence margin: an arm "matches" another when the interval of their difference is inside +-MARGIN
MARGIN = 0.05


def arm_cell(result: Any, arm: str) -> dict[str, Any]:
    """The cell of ``result`` (a sweep over ``precision``) that runs ``arm``."""
    for value in result.grid.get("precision", []):
        if same_value(value, ARMS[arm]):
            return {"precision": value}
    raise KeyError(f"arm {arm!r} is not in the sweep's precision axis")


def _verdict(f: Finding) -> str:
    if f.p_adjusted < 0.05:
        return "differs"
    if -MARGIN < f.low and f.high < MARGIN:
        return "matches"
    return "cannot tell"


def mechanism_findings(result: Any, *, endpoints: Sequence[Endpoint] = ENDPOINTS, n_resamples: int = 4000,
                       seed: int = 0) -> list[Finding]:
    """Every endpoint's :data:`COMPARISONS` on ``result``, Holm-adjusted per endpoint."""
    findings: list[Finding] = []
    for endpoint in endpoints:
        family = [_compare(result, endpoint, "the mechanism", f"{endpoint.role}: {endpoint.name}: {a} - {b}",
                           arm_cell(result, a), arm_cell(result, b), False, True, n_resamples, seed)
                  for a, b in COMPARISONS]
        adjusted = adjust([f.p_value for f in family], method="holm")
        family = [dataclasses.replace(f, p_adjusted=p, family=len(family), adjustment="holm")
                  for f, p in zip(family, adjusted)]
        findings += [dataclasses.replace(f, verdict=_verdict(f)) for f in family]
    return findings


def reading(findings: Sequence[Finding]) -> list[str]:
    """The reading guide of issue 27 applied to the primary endpoint's findings, sentence by sentence."""
    verdicts = {f.comparison.rsplit(": ", 1)[1]: f.verdict for f in findings if f.comparison.startswith("primary")}
    if verdicts.get("nf4 - bf16") != "differs":
        return ["nf4 and bf16 do not differ clearly in NLU knowledge retention: there is no effect for the controls "
                "to explain, and no control is read."]
    out = []
    matches = {arm for arm in ("rounded", "fixed", "per_step") if verdicts.get(f"{arm} - nf4") == "matches"}
    if "per_step" in matches and "fixed" not in matches:
        out.append("per_step matches nf4 and fixed does not: this supports regularization by noise during training.")
    if matches & {"rounded", "fixed"}:
        out.append(f"{' and '.join(sorted(matches & {'rounded', 'fixed'}))} matches nf4: this points to "
                   "'a different base' rather than noise during training.")
    if not matches:
        out.append("No control matches nf4 within the margin: the controls do not reproduce nf4's retention.")
    return out


def gradient_rows(result: Any, *, stage: int = 2) -> list[dict[str, Any]]:
    """Per arm: the mean over seeds (with a t interval) of stage ``stage``'s mean gradient cosine
    against the first task, its mean replay-vs-new cosine (when replay was on), its LoRA delta norm
    and its sharpness (records of
    :class:`~quantcl.GradientSimilarity`; arms or runs without them are left out)."""
    rows = []
    for arm in ARMS:
        try:
            cell = arm_cell(result, arm)
        except KeyError:
            continue
        values: dict[str, list[float]] = {"grad_cos_first_task": [], "grad_cos_replay_new": [], "lora_delta_norm": [],
                                          "sharpness": []}
        for name, run in result.runs.items():
            point = result.points.get(name, {})
            if not same_value(point.get("precision"), cell["precision"]) or len(run.stage_records) < stage:
                continue
            record = run.stage_records[stage - 1]
            if "grad_cos_first_task" not in record:
                continue
            values["grad_cos_first_task"].append(float(np.mean([c for _, c in record["grad_cos_first_task"]])))
            if record.get("grad_cos_replay_new"):
                values["grad_cos_replay_new"].append(float(np.mean([c[1] for c in record["grad_cos_replay_new"]])))
            values["lora_delta_norm"].append(float(record["lora_delta_norm"]))
            values["sharpness"].append(float(record["sharpness"]))
        if values["sharpness"]:
            rows.append({"arm": arm, "seeds": len(values["sharpness"]),
                         **{k: describe(v) for k, v in values.items() if v}})
    return rows


def gradient_curves(result: Any, *, stage: int = 2) -> dict[str, dict[str, list[tuple[int, float, int]]]]:
    """Per precision of ``result`` (a sweep over ``precision``; each labelled as the sweep labels
    it) and per measurement of :data:`CURVES` that its runs recorded in stage ``stage``:
    ``(step, mean over seeds, seeds)`` at every step measured."""
    out: dict[str, dict[str, list[tuple[int, float, int]]]] = {}
    for value in result.grid.get("precision", []):
        by_step: dict[str, dict[int, list[float]]] = {}
        for name, run in result.runs.items():
            if not same_value(result.points.get(name, {}).get("precision"), value) or len(run.stage_records) < stage:
                continue
            record = run.stage_records[stage - 1]
            for key in CURVES:
                for entry in record.get(key, []):
                    by_step.setdefault(key, {}).setdefault(int(entry[0]), []).append(float(entry[1]))
        if by_step:
            out[value_label(value)] = {key: [(step, float(np.mean(v)), len(v)) for step, v in sorted(steps.items())]
                                       for key, steps in by_step.items()}
    return out


def plot_gradients(result: Any, path: Any, *, stage: int = 2) -> Any:
    """:func:`gradient_curves` drawn: one panel per measurement, one line per precision (the mean
    over seeds against the optimizer step of stage ``stage``); returns the PNG's path."""
    from quantcl._plot import require_extra, save_figure
    from quantcl.errors import ConfigError

    require_extra("matplotlib", "plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = gradient_curves(result, stage=stage)
    keys = [k for k in CURVES if any(k in c for c in curves.values())]
    if not keys:
        raise ConfigError(f"plot_gradients: no run of the sweep recorded {' or '.join(CURVES)} in stage {stage} "
                          "(run it with the GradientSimilarity plug-in; the replay cosine needs replay)")
    titles = {"grad_cos_first_task": "cos(batch gradient, first task's held-out gradient)",
              "grad_cos_replay_new": "cos(replayed rows' gradient, new rows' gradient)"}
    fig = Figure(figsize=(5.5 * len(keys), 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        for label, measured in curves.items():
            if key in measured:
                ax.plot([s for s, _, _ in measured[key]], [v for _, v, _ in measured[key]], marker=".", label=label)
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_title(titles[key], fontsize=9)
        ax.set_xlabel(f"optimizer step of stage {stage}")
        ax.set_ylabel("cosine (mean over seeds)")
        ax.legend(fontsize=7)
    return save_figure(fig, path)
