"""TransitionStudyResult: the transition study's runs aggregated over seeds, as tables and a plot."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantcl.studies._runs import StudyRecords
from quantcl.studies.contrasts import Contrast, ContrastResult, contrasts_markdown, paired_contrasts

__all__ = ["TransitionStudyResult", "METRICS", "transition_contrasts"]

#: (record key, column label, lower is better)
METRICS = (("final_loss", "final loss", True), ("final_perplexity", "perplexity", True),
           ("spike", "spike", True), ("cloze_acc", "cloze acc", False), ("wall_seconds", "wall s", True))


class TransitionStudyResult(StudyRecords):
    """The per-run records of :func:`~quantcl.studies.transition_study` and their summary.

    ``records``: one dict per (variant, seed): ``final_loss``, ``final_perplexity``, ``spike``
    (``None`` without a switch), ``cloze_acc``, ``wall_seconds``, ``curve`` ((steps, loss) pairs).

    Examples:
        >>> r = TransitionStudyResult([{"variant": "float", "seed": 0, "final_loss": 2.0,
        ...     "final_perplexity": 7.39, "spike": None, "cloze_acc": 0.5, "wall_seconds": 1.0,
        ...     "switch_step": None, "curve": []}], {"steps": 10})
        >>> r.summary()[0]["final_loss"]["mean"]
        2.0
    """

    @staticmethod
    def order(record: dict[str, Any]) -> Any:
        """Among a seed's records: by arm as the design lists them, then by learning rate."""
        return _arm_order(record)

    @property
    def seeds(self) -> list[int]:
        """The seeds of which every variant has a record (what the contrasts use)."""
        found = [{r["seed"] for r in self.records if r["variant"] == v} for v in self.variants]
        return sorted(set.intersection(*found)) if found else []

    def best_learning_rates(self, metric: str = "final_loss") -> dict[str, float]:
        """Per arm, the learning rate with the lowest mean ``metric`` over :attr:`seeds` (a rate
        with a missing or non-finite value at any of them counts as the worst; a tie goes to the
        smaller rate).

        The selection uses the same seeds and outcome as the contrasts, which biases each arm's
        final loss down a little (most for an arm whose rates are close); :meth:`labelled_contrasts_markdown`
        shows the contrasts at every fixed rate too, as the check on it."""
        seeds = self.seeds
        values: dict[str, dict[float, list[float]]] = {}
        for r in self.records:
            if r["seed"] in seeds:
                value = r.get(metric)
                values.setdefault(_arm(r), {}).setdefault(self._lr(r), []).append(
                    float(value) if value is not None and math.isfinite(float(value)) else math.inf)
        means = {arm: {lr: (sum(v) / len(v) if len(v) == len(seeds) else math.inf) for lr, v in by.items()}
                 for arm, by in values.items()}
        return {arm: min(by, key=lambda lr: (by[lr], lr)) for arm, by in means.items()}

    def _lr(self, record: dict[str, Any]) -> float:
        return float(record.get("learning_rate", self.settings.get("learning_rate", math.nan)))

    def at_best_learning_rate(self) -> list[dict[str, Any]]:
        """The records of :attr:`seeds` at each arm's :meth:`best_learning_rates`."""
        best = self.best_learning_rates()
        return [{**r, "arm": _arm(r)} for r in self.records if r["seed"] in self.seeds and self._lr(r) == best.get(_arm(r))]

    def at_learning_rate(self, learning_rate: float) -> list[dict[str, Any]]:
        """The records of :attr:`seeds` at ``learning_rate`` (every arm at that one rate)."""
        return [{**r, "arm": _arm(r)} for r in self.records if r["seed"] in self.seeds and self._lr(r) == learning_rate]

    def labelled_contrasts(self, contrasts: Sequence[Contrast] | None = None, adjustment: str = "holm",
                           learning_rate: float | None = None) -> list[ContrastResult]:
        """The paired per-seed contrasts (default :func:`transition_contrasts` of the arms run),
        each arm at its best learning rate (or every arm at ``learning_rate``), adjusted as one
        family and labelled (:mod:`quantcl.studies.contrasts`)."""
        records = self.at_best_learning_rate() if learning_rate is None else self.at_learning_rate(learning_rate)
        family = list(contrasts) if contrasts is not None else transition_contrasts({r["arm"] for r in records})
        return paired_contrasts(records, family, adjustment=adjustment)

    def labelled_contrasts_markdown(self, adjustment: str = "holm") -> str:
        """:meth:`labelled_contrasts` as Markdown: each arm at its best rate, then, as the check
        on that selection, the same family with every arm at each fixed rate."""
        best = self.best_learning_rates()
        lrs = ", ".join(f"{arm} {lr:g}" for arm, lr in best.items())
        text = (f"Each arm at its best peak learning rate (lowest mean final loss over seeds {self.seeds}): "
                f"{lrs}.\n\n" + contrasts_markdown(self.labelled_contrasts(adjustment=adjustment)))
        rates = sorted({self._lr(r) for r in self.records})
        if len(rates) > 1:
            for lr in rates:
                text += (f"\nEvery arm at peak learning rate {lr:g}:\n\n"
                         + contrasts_markdown(self.labelled_contrasts(adjustment=adjustment, learning_rate=lr)))
        return text

    @property
    def variants(self) -> list[str]:
        """Variant names, in run order."""
        return list(dict.fromkeys(r["variant"] for r in self.records))

    def summary(self) -> list[dict[str, Any]]:
        """Per variant: ``n`` seeds and, per metric, ``quantcl.sweep.stats.describe`` output."""
        from quantcl.sweep.stats import describe

        rows = []
        for name in self.variants:
            runs = [r for r in self.records if r["variant"] == name]
            row: dict[str, Any] = {"variant": name, "n": len(runs)}
            for key, _, _ in METRICS:
                values = [float(r[key]) for r in runs if r.get(key) is not None]
                row[key] = describe(values, n_resamples=999) if values else None
            rows.append(row)
        return rows

    def to_markdown(self) -> str:
        """The summary as a Markdown table: mean ± std [95% t-interval] over seeds."""
        header = "| variant | seeds | " + " | ".join(label for _, label, _ in METRICS) + " |"
        lines = [header, "|---|---:|" + "---:|" * len(METRICS)]
        for row in self.summary():
            cells = [_cell(row[key], key) for key, _, _ in METRICS]
            lines.append(f"| {row['variant']} | {row['n']} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | Path) -> Path:
        """The summary as CSV: per metric its mean, std, t_low, t_high (one row per variant)."""
        path = Path(path)
        fields = ["variant", "n"] + [f"{key}_{stat}" for key, _, _ in METRICS for stat in ("mean", "std", "t_low", "t_high")]
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            for row in self.summary():
                out: dict[str, Any] = {"variant": row["variant"], "n": row["n"]}
                for key, _, _ in METRICS:
                    for stat in ("mean", "std", "t_low", "t_high"):
                        out[f"{key}_{stat}"] = "" if row[key] is None else row[key][stat]
                writer.writerow(out)
        return path

    def mean_curve(self, variant: str) -> list[tuple[int, float]]:
        """The held-out loss curve of ``variant``, averaged over seeds at the steps all share."""
        curves = [dict(r["curve"]) for r in self.records if r["variant"] == variant]
        shared = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        return [(s, sum(c[s] for c in curves) / len(curves)) for s in shared]

    def plot(self, path: str | Path) -> Path:
        """Held-out loss curves (mean over seeds), one panel per switch point, switch marked; with
        several learning rates, each arm at its :meth:`best_learning_rates` only."""
        from quantcl._plot import save_figure, require_extra

        require_extra("matplotlib", "plot")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        several = len({r.get("learning_rate") for r in self.records}) > 1
        shown = self.at_best_learning_rate() if several else self.records
        runs = {r["variant"]: r for r in shown}
        fractions = sorted({r["switch_fraction"] for r in shown if r.get("switch_fraction")})
        fig = Figure(figsize=(5 * max(1, len(fractions)), 4), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, max(1, len(fractions)), squeeze=False, sharey=True)
        for ax, fraction in zip(axes[0], fractions or [None]):
            for name in runs:
                arm = runs[name]
                if arm.get("switch_fraction") not in (None, 0.0, fraction):
                    continue
                curve = self.mean_curve(name)
                steps, losses = ([s for s, _ in curve], [v for _, v in curve])
                style = "-" if arm.get("switch_fraction") == fraction else ":"
                ax.plot(steps, losses, style, label=name, linewidth=1.2)
            switch = next((r["switch_step"] for r in shown if r.get("switch_fraction") == fraction), None)
            if switch:
                ax.axvline(switch, color="grey", linestyle="--", linewidth=0.8)
            ax.set_title(f"switch at {fraction:g} of the steps" if fraction else "baselines")
            ax.set_xlabel("optimizer steps")
            ax.legend(fontsize=6)
        axes[0][0].set_ylabel("held-out loss (nats/token)")
        return save_figure(fig, path)


def _arm_order(r: dict[str, Any]) -> tuple[Any, ...]:
    """float, ternary, then the switches by point, optimizer, re-warm and phase-in; then the rate."""
    fraction = r.get("switch_fraction")
    phase = ("step", "linear", "tanh").index(r["phase_in"]) if r.get("phase_in") in ("step", "linear", "tanh") else 3
    return (-1.0 if fraction is None else float(fraction), r.get("optimizer") != "keep", bool(r.get("rewarm")), phase,
            float(r.get("learning_rate") or 0.0))


def _arm(record: dict[str, Any]) -> str:
    return str(record.get("arm", record["variant"]))


def transition_contrasts(arms: set[str] | Sequence[str]) -> list[Contrast]:
    """The transition study's family of contrasts, fixed before its runs, for the arms present.

    From the paper's claims (arXiv 2502.11895): 16-bit beats 1.58-bit from scratch; a switch from
    16 to 1.58 bit ends below 1.58 from scratch (at each switch point, the plain switch: kept
    optimizer, no phase-in); a phase-in of the quantization strength shrinks the loss spike at
    each switch point; keeping the optimizer state shrinks it (at 50%, without re-warm); and
    two contrasts with no claimed direction: the re-warm's effect on the spike after a reset,
    and whether the phase-in changes the final loss at 50% ("further training makes up for it").

    Examples:
        >>> [c.claim for c in transition_contrasts(["float", "ternary", "switch@0.5/keep/step"])]
        ['16-bit ends below 1.58-bit from scratch', '16 -> 1.58 at 0.5 ends below 1.58 from scratch']
    """
    have = set(arms)
    fractions = sorted({float(a.split("@")[1].split("/")[0]) for a in have if a.startswith("switch@")})
    wanted = [Contrast("16-bit ends below 1.58-bit from scratch", "ternary", "float", "final_loss")]
    for f in fractions:
        wanted.append(Contrast(f"16 -> 1.58 at {f:g} ends below 1.58 from scratch", "ternary",
                               f"switch@{f:g}/keep/step", "final_loss"))
    for f in fractions:
        wanted.append(Contrast(f"phase-in shrinks the spike at {f:g}", f"switch@{f:g}/keep/step",
                               f"switch@{f:g}/keep/linear", "spike"))
    wanted += [
        Contrast("keeping the optimizer shrinks the spike", "switch@0.5/reset/step", "switch@0.5/keep/step", "spike"),
        Contrast("re-warm after a reset changes the spike", "switch@0.5/reset+rewarm/step", "switch@0.5/reset/step",
                 "spike", direction=0),
        Contrast("re-warm with the optimizer kept changes the spike", "switch@0.5/keep+rewarm/step",
                 "switch@0.5/keep/step", "spike", direction=0),
        Contrast("phase-in changes the final loss at 0.5", "switch@0.5/keep/step", "switch@0.5/keep/linear",
                 "final_loss", direction=0)]
    return [c for c in wanted if c.a in have and c.b in have]


def _cell(stats: dict[str, Any] | None, key: str) -> str:
    if stats is None or stats["n"] == 0:
        return "—"
    digits = 1 if key in ("final_perplexity", "wall_seconds") else 3
    mean, std = stats["mean"], stats["std"]
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f} [{stats['t_low']:.{digits}f}, {stats['t_high']:.{digits}f}]"
