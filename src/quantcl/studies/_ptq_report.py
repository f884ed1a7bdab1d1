"""Results of the PTQ-robustness studies: gaps before/after the cooldown, and after every stage."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantcl.studies._runs import StudyRecords
from quantcl.studies.contrasts import Contrast, ContrastResult, contrasts_markdown, paired_contrasts

__all__ = ["PTQDynamicsResult", "PTQContinualResult", "ptq_contrasts", "EQUAL_LOSS", "INGREDIENTS"]

#: the metric of a contrast read at a loss both arms reach (:meth:`PTQDynamicsResult.equal_loss_values`)
EQUAL_LOSS = "gap_at_equal_loss"


def _stats(values: list[float]) -> dict[str, Any]:
    from quantcl.sweep.stats import describe

    return describe(values, n_resamples=999)


def _fmt(stats: dict[str, Any] | None, digits: int = 4, signed: bool = True) -> str:
    if stats is None or not stats["n"]:
        return "—"
    sign = "+" if signed else ""
    if math.isnan(stats["std"]):
        return f"{stats['mean']:{sign}.{digits}f}"
    return f"{stats['mean']:{sign}.{digits}f} ± {stats['std']:.{digits}f}"


#: what :meth:`PTQDynamicsResult.run_values` appends to a soup arm's name for the mean of its ingredients
INGREDIENTS = "/ingredients"


class PTQDynamicsResult(StudyRecords):
    """Per-run records of :func:`~quantcl.studies.ptq_dynamics_study` and their summary.

    The gap of a LAWA arm is the LAWA average's; of a soup arm, the trunk's before the cooldown and
    the soup's at the end (its ingredients' mean is the pseudo-arm ``<arm>/ingredients``); the
    others', the trained model's.
    """

    def run_values(self, method: str | None = None) -> list[dict[str, Any]]:
        """Per run: the arm, the seed and, for ``method`` (default: the first), ``gap_before`` and
        ``gap_after`` the cooldown, ``cooldown_change`` (after - before), ``ce_before`` /
        ``ce_after`` (the float model's held-out loss there) and the final loss."""
        method = method or self.settings["methods"][0]
        out = []
        for rec in self.records:
            before, after = self._points(rec, method)
            row: dict[str, Any] = {"arm": rec["arm"], "seed": rec["seed"], "final_loss": rec.get("final_loss")}
            for when, point in (("before", before), ("after", after)):
                row[f"gap_{when}"] = None if point is None else float(point["relative_gap"])
                row[f"ce_{when}"] = None if point is None else float(point["ce_fp"])
            row["cooldown_change"] = (None if row["gap_before"] is None or row["gap_after"] is None
                                      else row["gap_after"] - row["gap_before"])
            out.append(row)
            if rec.get("ingredients") and all(method in i["gaps"] for i in rec["ingredients"]):
                out.append(_ingredients_row(row, rec["ingredients"], method))
        return out

    def labelled_contrasts(self, method: str | None = None, contrasts: Sequence[Contrast] | None = None,
                           adjustment: str = "holm", stable_only: bool = True) -> list[ContrastResult]:
        """The paired per-seed contrasts of ``method``'s gap (default :func:`ptq_contrasts` of the
        arms run, at the peak LRs of :meth:`stable_peak_lrs` unless ``stable_only=False``), adjusted
        as one family and labelled (:mod:`quantcl.studies.contrasts`); a contrast of
        ``gap_at_equal_loss`` is read by :meth:`equal_loss_values` for its own pair."""
        values = self.run_values(method)
        if contrasts is not None:
            family = list(contrasts)
        else:
            family = ptq_contrasts(self.records, (self.stable_peak_lrs() if stable_only else None) or None)
            if method in self.settings.get("end_methods", []):  # two points: no loss trajectory to read
                family = [c for c in family if c.metric != EQUAL_LOSS]
            # only pairs measured with this method (GPTQ: not in LAWA arms; no ingredients' rows for some)
            family = [c for c in family if c.metric == EQUAL_LOSS
                      or {c.a, c.b} <= {r["arm"] for r in values if r.get(c.metric) is not None}]

        def own(c: Contrast) -> list[dict[str, Any]] | None:
            return self.equal_loss_values(c.a, c.b, method) if c.metric == EQUAL_LOSS else None

        return paired_contrasts(values, family, adjustment=adjustment, records_for=own)

    def labelled_contrasts_markdown(self, method: str | None = None, stable_only: bool = True) -> str:
        """:meth:`labelled_contrasts` as a Markdown table."""
        return contrasts_markdown(self.labelled_contrasts(method, stable_only=stable_only), digits=4)

    @staticmethod
    def probes(record: dict[str, Any]) -> list[dict[str, Any]]:
        """The probe records that count for this run (LAWA's for an averaged arm), with those of the
        methods measured only before the cooldown and at the end (``end_probe``)."""
        own = record["lawa_probe"] if record.get("averaging") == "lawa" else record["probe"]
        return [*own, *(record.get("end_probe") or [])]

    @property
    def all_methods(self) -> list[str]:
        """The methods probed along training, then those measured only before the cooldown and at the end."""
        return [*self.settings["methods"], *self.settings.get("end_methods", [])]

    def _points(self, record: dict[str, Any], method: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        rows = sorted((r for r in self.probes(record) if r["method"] == method), key=lambda r: r["step"])
        before = [r for r in rows if r["step"] <= record["cooldown_start"]]
        return (before[-1] if before else None), (rows[-1] if rows else None)

    def summary(self) -> list[dict[str, Any]]:
        """Per arm and method: ``gap_before`` / ``gap_after`` the cooldown, ``ce_before`` / ``ce_after``."""
        out = []
        for arm in dict.fromkeys(r["arm"] for r in self.records):
            runs = [r for r in self.records if r["arm"] == arm]
            for method in self.all_methods:
                points = [self._points(r, method) for r in runs]
                row: dict[str, Any] = {"arm": arm, "peak_lr": runs[0]["peak_lr"], "averaging": runs[0]["averaging"],
                                       "schedule": runs[0].get("schedule", "wsd"),
                                       "steps": runs[0].get("steps") or self.settings.get("steps"),
                                       "method": method, "n": len(runs)}
                for when, i in (("before", 0), ("after", 1)):
                    found = [p for p in (pair[i] for pair in points) if p is not None]
                    row[f"gap_{when}"] = _stats([float(p["relative_gap"]) for p in found]) if found else None
                    row[f"ce_{when}"] = _stats([float(p["ce_fp"]) for p in found]) if found else None
                out.append(row)
                soups = [r.get("ingredients") or [] for r in runs]
                if all(soups) and all(method in i["gaps"] for ingredients in soups for i in ingredients):
                    # a soup arm: the mean of each seed's ingredients, at the end
                    means = [_ingredients_row({"gap_before": None}, r["ingredients"], method) for r in runs]
                    out.append({**row, "arm": arm + INGREDIENTS, "averaging": "soup ingredients (mean)",
                                "gap_after": _stats([m["gap_after"] for m in means]),
                                "ce_after": _stats([m["ce_after"] for m in means])})
        return out

    def to_markdown(self) -> str:
        """Relative gap before and after the cooldown, mean ± std over seeds, per arm and method."""
        lines = ["| peak lr | schedule | steps | averaging | method | seeds | gap before cooldown | "
                 "gap after cooldown | CE before | CE after |", "|---:|---|---:|---|---|---:|---:|---:|---:|---:|"]
        for row in self.summary():
            lines.append(f"| {row['peak_lr']:g} | {row['schedule']} | {row['steps']} | {row['averaging']} | "
                         f"{row['method']} | {row['n']} | "
                         f"{_fmt(row['gap_before'])} | {_fmt(row['gap_after'])} | "
                         f"{_fmt(row['ce_before'], 3, False)} | {_fmt(row['ce_after'], 3, False)} |")
        return "\n".join(lines) + "\n"

    def contrasts(self, method: str | None = None) -> list[dict[str, Any]]:
        """Deprecated: unadjusted paired differences; use :meth:`labelled_contrasts` (the family
        fixed before the runs, adjusted for multiplicity and labelled)."""
        import warnings

        warnings.warn("PTQDynamicsResult.contrasts() is deprecated (unadjusted intervals); use "
                      "labelled_contrasts()", DeprecationWarning, stacklevel=2)
        method = method or self.settings["methods"][0]
        values = {(r["arm"], r["seed"]): r for r in self.run_values(method)}
        arms = {r["arm"]: (r["peak_lr"], r["averaging"]) for r in self.records}

        def paired(a: str, b: str, key_a: str, key_b: str) -> dict[str, Any]:
            diffs = [values[(a, s)][key_a] - values[(b, s)][key_b] for (arm, s) in values
                     if arm == a and (b, s) in values
                     and values[(a, s)][key_a] is not None and values[(b, s)][key_b] is not None]
            return _stats(diffs)

        out = [{"contrast": f"cooldown (after - before), lr {lr:g} {avg}", **paired(arm, arm, "gap_after", "gap_before")}
               for arm, (lr, avg) in arms.items()]
        by = {(lr, avg): arm for arm, (lr, avg) in arms.items()}
        lrs = sorted({lr for lr, _ in arms.values()})
        out += [{"contrast": f"LAWA - none after cooldown, lr {lr:g}",
                 **paired(by[(lr, "lawa")], by[(lr, "none")], "gap_after", "gap_after")}
                for lr in lrs if (lr, "lawa") in by and (lr, "none") in by]
        out += [{"contrast": f"lr {lr:g} - lr {lrs[0]:g} after cooldown, {avg}",
                 **paired(by[(lr, avg)], by[(lrs[0], avg)], "gap_after", "gap_after")}
                for avg in dict.fromkeys(a for _, a in arms.values()) for lr in lrs[1:]
                if (lr, avg) in by and (lrs[0], avg) in by]
        return out

    def contrasts_markdown(self, method: str | None = None) -> str:
        """Deprecated: :meth:`contrasts` as a Markdown table; use :meth:`labelled_contrasts_markdown`."""
        rows = self.contrasts(method)
        lines = [f"| contrast ({method or self.settings['methods'][0]} relative gap) | seeds | mean | 95% t-interval |",
                 "|---|---:|---:|---|"]
        for row in rows:
            lines.append(f"| {row['contrast']} | {row['n']} | {row['mean']:+.4f} | "
                         f"[{row['t_low']:+.4f}, {row['t_high']:+.4f}] |")
        return "\n".join(lines) + "\n"

    def equal_loss_values(self, a: str, b: str, method: str | None = None) -> list[dict[str, Any]]:
        """The gap of ``method`` in arms ``a`` and ``b`` read at a loss both reach, per seed.

        For each seed the level is the higher of the two runs' final held-out losses (the float
        model's, at the last probe); each run's gap is read where its loss first falls to that
        level, linearly interpolated in the loss between the two probes around it. So a WSD run
        is compared with its constant-LR control (or a higher peak LR with a lower one) at the
        same loss, not only at the same step: what the schedule does apart from how far it
        trained. Rows: ``arm``, ``seed``, ``gap_at_equal_loss``, ``equal_loss_ce``, ``equal_loss_step``
        (fractional where interpolated).

        Examples:
            >>> curve = lambda ces, gaps: [{"method": "rtn3", "step": 10 * (i + 1), "ce_fp": c, "relative_gap": g}
            ...                            for i, (c, g) in enumerate(zip(ces, gaps))]
            >>> recs = [{"arm": "wsd", "seed": 0, "probe": curve([3.0, 2.0, 1.0], [0.01, 0.02, 0.05])},
            ...         {"arm": "const", "seed": 0, "probe": curve([3.0, 2.5, 1.5], [0.01, 0.01, 0.03])}]
            >>> [(r["arm"], round(r["gap_at_equal_loss"], 3), r["equal_loss_step"])
            ...  for r in PTQDynamicsResult(recs, {"methods": ["rtn3"]}).equal_loss_values("wsd", "const")]
            [('wsd', 0.035, 25.0), ('const', 0.03, 30.0)]
        """
        method = method or self.settings["methods"][0]
        curves: dict[tuple[str, int], list[tuple[int, float, float]]] = {}
        for rec in self.records:
            if rec["arm"] in (a, b):
                curves[(rec["arm"], rec["seed"])] = sorted(
                    (int(r["step"]), float(r["ce_fp"]), float(r["relative_gap"]))
                    for r in self.probes(rec) if r["method"] == method)
        out = []
        for seed in sorted({s for (arm, s) in curves if arm == a} & {s for (arm, s) in curves if arm == b}):
            pair = [curves[(a, seed)], curves[(b, seed)]]
            if not all(pair):
                continue
            level = max(c[-1][1] for c in pair)
            for arm, curve in zip((a, b), pair):
                step, gap = _first_at(curve, level)
                out.append({"arm": arm, "seed": seed, "gap_at_equal_loss": gap, "equal_loss_ce": level,
                            "equal_loss_step": step})
        return out

    def mean_final_losses(self) -> dict[float, float]:
        """Per peak learning rate, the mean final held-out loss of its WSD runs without averaging at
        the study's run length (non-finite losses left out): what :meth:`stable_peak_lrs` reads."""
        final: dict[float, list[float]] = {}
        for rec in self.records:
            if (rec["averaging"] == "none" and rec.get("schedule", "wsd") == "wsd"
                    and (rec.get("steps") or self.settings.get("steps")) == self.settings.get("steps")
                    and rec.get("final_loss") is not None and math.isfinite(rec["final_loss"])):
                final.setdefault(float(rec["peak_lr"]), []).append(float(rec["final_loss"]))
        return {lr: sum(v) / len(v) for lr, v in sorted(final.items())}

    def stable_peak_lrs(self, tolerance: float = 0.05) -> list[float]:
        """The peak learning rates inside the stable range, by the rule the PTQ page states: the
        rates up to the highest whose mean final held-out loss (WSD, no averaging, the study's run
        length) is within ``tolerance`` (relative) of the best rate's. A rate above it ends
        clearly less trained in this budget, so its gap would compare a less-trained model."""
        means = self.mean_final_losses()
        if not means:
            return []
        best = min(means.values())
        edge = max(lr for lr, loss in means.items() if loss <= best * (1 + tolerance))
        return sorted(lr for lr in means if lr <= edge)

    def to_csv(self, path: str | Path) -> Path:
        """The summary as CSV (mean and std of each quantity)."""
        path = Path(path)
        keys = ("gap_before", "gap_after", "ce_before", "ce_after")
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["peak_lr", "schedule", "steps", "averaging", "method", "n"]
                            + [f"{k}_{s}" for k in keys for s in ("mean", "std")])
            for row in self.summary():
                writer.writerow([row["peak_lr"], row["schedule"], row["steps"], row["averaging"], row["method"], row["n"]]
                                + [("" if row[k] is None else row[k][s]) for k in keys for s in ("mean", "std")])
        return path

    def plot(self, path: str | Path, method: str | None = None) -> Path:
        """The gap of ``method`` (default: the first) against step, mean over seeds, one line per arm."""
        from quantcl._plot import save_figure, require_extra

        require_extra("matplotlib", "plot")
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        method = method or self.settings["methods"][0]
        fig = Figure(figsize=(8, 4), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        colors = colormaps["tab20"]  # 14 arms: tab10's colours would repeat
        styles = {"constant": "--", "lawa": ":", "soup": "-."}  # by schedule / averaging; a colour per arm
        for i, arm in enumerate(dict.fromkeys(r["arm"] for r in self.records)):
            runs = [rec for rec in self.records if rec["arm"] == arm]
            curves = [{r["step"]: r["relative_gap"] for r in self.probes(rec) if r["method"] == method} for rec in runs]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            kind = runs[0].get("averaging") if runs[0].get("averaging") != "none" else runs[0].get("schedule")
            ax.plot(steps, [sum(c[s] for c in curves) / len(curves) for s in steps], marker="o", markersize=2,
                    label=arm, linestyle=styles.get(str(kind), "-"), color=colors(i % 20))
        for start in sorted({int(r.get("cooldown_start", self.settings["cooldown_start"])) for r in self.records}):
            ax.axvline(start, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlabel("optimizer step (thin grey lines: a cooldown starts)")
        ax.set_ylabel(f"relative CE gap, {method}")
        ax.legend(fontsize=7)
        return save_figure(fig, Path(path))


def _ingredients_row(soup_row: dict[str, Any], ingredients: list[dict[str, Any]], method: str) -> dict[str, Any]:
    """The pseudo-arm ``<soup arm>/ingredients`` of one seed: the mean of its ingredients' final gap
    and loss, from the same trunk (the same gap before the cooldown)."""
    gap = sum(float(i["gaps"][method]) for i in ingredients) / len(ingredients)
    ce = sum(float(i["ce_fp"]) for i in ingredients) / len(ingredients)
    before = soup_row["gap_before"]
    return {**soup_row, "arm": f"{soup_row.get('arm')}{INGREDIENTS}", "final_loss": None, "gap_after": gap,
            "ce_after": ce, "cooldown_change": None if before is None else gap - before}


def _first_at(curve: list[tuple[int, float, float]], level: float) -> tuple[float, float]:
    """``(step, gap)`` where the loss of ``curve`` (``(step, ce, gap)`` rows) first falls to ``level``."""
    for i, (step, ce, gap) in enumerate(curve):
        if ce <= level:
            if i == 0 or curve[i - 1][1] == ce:
                return float(step), gap
            s0, c0, g0 = curve[i - 1]
            t = (c0 - level) / (c0 - ce)
            return s0 + t * (step - s0), g0 + t * (gap - g0)
    return float(curve[-1][0]), curve[-1][2]


def ptq_contrasts(records: Sequence[dict[str, Any]], peak_lrs: Sequence[float] | None = None) -> list[Contrast]:
    """The PTQ study's family of contrasts, fixed before its runs, for the arms in ``records``
    (only those at ``peak_lrs``, when given: the stable range, :meth:`PTQDynamicsResult.stable_peak_lrs`).

    From the paper's claims (arXiv 2510.06213): the gap grows when the learning rate decays
    (each WSD arm's change over the cooldown minus that of its constant-learning-rate control
    over the same steps: the decay's own effect, paired by seed; and, apart from how far each
    trained, the WSD arm's gap minus its control's read at a loss both reach); LAWA shrinks the gap
    after the cooldown (per peak LR); a higher peak LR ends with a smaller gap (each higher LR
    against the lowest, WSD without averaging; at the end and at equal loss); a soup of cooldowns
    ends with a smaller gap than its ingredients (their mean, per seed); and, with no direction
    claimed, whether the cooldown's gap growth changes with the run length (the longest against
    the shortest, per peak LR).

    Examples:
        >>> recs = [{"arm": a, "peak_lr": 1e-3, "averaging": "none", "schedule": s, "steps": 400}
        ...         for a, s in (("lr0.001-none", "wsd"), ("lr0.001-none-constant", "constant"))]
        >>> [c.claim for c in ptq_contrasts(recs)]  # doctest: +NORMALIZE_WHITESPACE
        ['the gap grows in the cooldown beyond the constant-LR control, lr 0.001',
         'at equal loss the WSD run has the larger gap, lr 0.001']
    """
    keep = None if peak_lrs is None else {float(lr) for lr in peak_lrs}
    arms: dict[tuple[float, str, str, int], str] = {}
    for r in records:
        if keep is None or float(r["peak_lr"]) in keep:
            arms[(float(r["peak_lr"]), r["averaging"], r.get("schedule", "wsd"), int(r.get("steps") or 0))] = r["arm"]
    lrs = sorted({k[0] for k in arms})
    lengths = sorted({k[3] for k in arms})
    shortest = lengths[0] if lengths else 0
    out = []
    for (lr, avg, sched, n), arm in arms.items():
        control = arms.get((lr, avg, "constant", n))
        if sched == "wsd" and avg == "none" and control:
            length = f", {n} steps" if len(lengths) > 1 else ""
            out.append(Contrast(f"the gap grows in the cooldown beyond the constant-LR control, lr {lr:g}{length}",
                                arm, control, "cooldown_change"))
            out.append(Contrast(f"at equal loss the WSD run has the larger gap, lr {lr:g}{length}", arm, control,
                                EQUAL_LOSS))
    for lr in lrs:
        lawa, none = arms.get((lr, "lawa", "wsd", shortest)), arms.get((lr, "none", "wsd", shortest))
        if lawa and none:
            out.append(Contrast(f"LAWA shrinks the gap after the cooldown, lr {lr:g}", lawa, none, "gap_after", -1))
        soup = arms.get((lr, "soup", "wsd", shortest))
        if soup:
            out.append(Contrast(f"a soup of cooldowns has a smaller gap than its ingredients, lr {lr:g}", soup,
                                soup + INGREDIENTS, "gap_after", -1))
    low = arms.get((lrs[0], "none", "wsd", shortest)) if lrs else None
    for lr in lrs[1:]:
        high = arms.get((lr, "none", "wsd", shortest))
        if high and low:
            out.append(Contrast(f"a higher peak LR ends with a smaller gap, lr {lr:g} vs {lrs[0]:g}", high, low,
                                "gap_after", -1))
            out.append(Contrast(f"a higher peak LR has a smaller gap at equal loss, lr {lr:g} vs {lrs[0]:g}", high,
                                low, EQUAL_LOSS, -1))
    for lr in lrs:
        long, short = arms.get((lr, "none", "wsd", lengths[-1])), arms.get((lr, "none", "wsd", shortest))
        if len(lengths) > 1 and long and short:
            out.append(Contrast(f"the cooldown's gap growth changes with the run length, lr {lr:g}", long, short,
                                "cooldown_change", direction=0))
    return out


class PTQContinualResult(StudyRecords):
    """Per-run records of :func:`~quantcl.studies.ptq_continual_study`: the gap after each stage."""

    def summary(self) -> list[dict[str, Any]]:
        """Per precision and stage: the mean ± std gap of each method, and the stage's task."""
        out = []
        for precision in dict.fromkeys(r["precision"] for r in self.records):
            runs = [r for r in self.records if r["precision"] == precision]
            for stage, task in enumerate(runs[0]["tasks"], start=1):
                row: dict[str, Any] = {"precision": precision, "stage": stage, "task": task, "n": len(runs)}
                for method in self.settings["methods"]:
                    gaps = [float(p["relative_gap"]) for r in runs for p in r["probe"]
                            if p["stage"] == stage and p["method"] == method]
                    row[method] = _stats(gaps) if gaps else None
                out.append(row)
        return out

    def to_markdown(self) -> str:
        """One row per (precision, stage): the relative gap after the stage per method."""
        methods = self.settings["methods"]
        lines = ["| adapters trained at | after stage | seeds | " + " | ".join(methods) + " |",
                 "|---|---|---:|" + "---:|" * len(methods)]
        for row in self.summary():
            lines.append(f"| {row['precision']} | {row['stage']} ({row['task']}) | {row['n']} | "
                         + " | ".join(_fmt(row[m]) for m in methods) + " |")
        return "\n".join(lines) + "\n"
