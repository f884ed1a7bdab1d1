"""TransitionStudyResult: the transition study's runs aggregated over seeds, as tables and a plot."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["TransitionStudyResult", "METRICS"]

#: (record key, column label, lower is better)
METRICS = (("final_loss", "final loss", True), ("final_perplexity", "perplexity", True),
           ("spike", "spike", True), ("cloze_acc", "cloze acc", False), ("wall_seconds", "wall s", True))


class TransitionStudyResult:
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

    def __init__(self, records: Sequence[dict[str, Any]], settings: dict[str, Any]) -> None:
        self.records, self.settings = list(records), dict(settings)

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
        """Held-out loss curves (mean over seeds), one panel per switch point, switch marked."""
        from quantcl._plot import save_figure, require_extra

        require_extra("matplotlib", "plot")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        runs = {r["variant"]: r for r in self.records}
        fractions = sorted({r["switch_fraction"] for r in self.records if r.get("switch_fraction")})
        fig = Figure(figsize=(5 * max(1, len(fractions)), 4), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, max(1, len(fractions)), squeeze=False, sharey=True)
        for ax, fraction in zip(axes[0], fractions or [None]):
            for name in self.variants:
                arm = runs[name]
                if arm.get("switch_fraction") not in (None, 0.0, fraction):
                    continue
                curve = self.mean_curve(name)
                steps, losses = ([s for s, _ in curve], [v for _, v in curve])
                style = "-" if arm.get("switch_fraction") == fraction else ":"
                ax.plot(steps, losses, style, label=name, linewidth=1.2)
            switch = next((r["switch_step"] for r in self.records if r.get("switch_fraction") == fraction), None)
            if switch:
                ax.axvline(switch, color="grey", linestyle="--", linewidth=0.8)
            ax.set_title(f"switch at {fraction:g} of the steps" if fraction else "baselines")
            ax.set_xlabel("optimizer steps")
            ax.legend(fontsize=6)
        axes[0][0].set_ylabel("held-out loss (nats/token)")
        return save_figure(fig, path)


def _cell(stats: dict[str, Any] | None, key: str) -> str:
    if stats is None or stats["n"] == 0:
        return "—"
    digits = 1 if key in ("final_perplexity", "wall_seconds") else 3
    mean, std = stats["mean"], stats["std"]
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f} [{stats['t_low']:.{digits}f}, {stats['t_high']:.{digits}f}]"
