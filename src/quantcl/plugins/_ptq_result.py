"""PTQProbeResult: the records of a PTQProbe as a table, a JSON file and a plot."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantcl._io import atomic_write_json, read_json, seal, seal_ok
from quantcl.errors import StateError

__all__ = ["PTQProbeResult"]


class PTQProbeResult:
    """Probe records (one per probe and method; see :class:`~quantcl.PTQProbe`).

    Examples:
        >>> r = PTQProbeResult([{"step": 10, "stage": None, "learning_rate": 1e-3, "method": "rtn4",
        ...                      "ce_fp": 2.0, "ce_q": 2.2, "relative_gap": 0.1, "absolute_gap": 0.2}])
        >>> r.methods, r.gap("rtn4")
        (['rtn4'], [(10, 0.1)])
    """

    def __init__(self, records: Sequence[dict[str, Any]]) -> None:
        self.records = [dict(r) for r in records]

    @classmethod
    def from_result(cls, result: Any) -> PTQProbeResult:
        """The probe records of every stage of a :class:`~quantcl.ContinualResult`."""
        return cls([r for record in result.stage_records for r in record.get("ptq_probe", [])])

    @property
    def methods(self) -> list[str]:
        """Methods, in the order first probed."""
        return list(dict.fromkeys(r["method"] for r in self.records))

    def gap(self, method: str, key: str = "relative_gap") -> list[tuple[int, float]]:
        """``(step, value)`` of ``method`` in step order."""
        return sorted((int(r["step"]), float(r[key])) for r in self.records if r["method"] == method)

    def stage_ends(self) -> list[tuple[int, int]]:
        """``(stage, its last probed step)`` for ContinualTrainer records: with ``at_stage_end``
        (the default) the step at which the stage ended, i.e. the boundary to the next one."""
        ends: dict[int, int] = {}
        for r in self.records:
            if r.get("stage") is not None:
                ends[r["stage"]] = max(ends.get(r["stage"], r["step"]), r["step"])
        return sorted(ends.items())

    def to_markdown(self) -> str:
        """One row per probe step: CE in full precision and the relative gap per method."""
        methods = self.methods
        steps = sorted({(r.get("stage"), int(r["step"])) for r in self.records}, key=lambda x: x[1])
        by = {(r.get("stage"), int(r["step"]), r["method"]): r for r in self.records}
        lines = ["| stage | step | lr | CE fp | " + " | ".join(f"gap {m}" for m in methods) + " |",
                 "|---:|---:|---:|---:|" + "---:|" * len(methods)]
        for stage, step in steps:
            first = next(by[(stage, step, m)] for m in methods if (stage, step, m) in by)
            lr = first.get("learning_rate")
            gaps = [f"{by[(stage, step, m)]['relative_gap']:+.4f}" if (stage, step, m) in by else "—" for m in methods]
            lines.append(f"| {'—' if stage is None else stage} | {step} | {'—' if lr is None else f'{lr:.2e}'} | "
                         f"{first['ce_fp']:.4f} | " + " | ".join(gaps) + " |")
        return "\n".join(lines) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the records as sealed JSON (atomic)."""
        path = Path(path)
        atomic_write_json(path, seal({"format": 1, "records": self.records}))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PTQProbeResult:
        """Read :meth:`save` output; refuses an edited or truncated file."""
        try:
            data = read_json(Path(path))
        except (OSError, ValueError) as err:
            raise StateError(f"cannot read PTQ probe records from {str(path)!r}: {err}") from None
        if not seal_ok(data) or not isinstance(data.get("records"), list):
            raise StateError(f"{str(path)!r} is not a PTQProbeResult file, or was edited (its seal does not match)")
        return cls(data["records"])

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Relative gap per method against step, learning rate on a second axis, stages marked."""
        from quantcl._plot import save_figure, require_extra

        require_extra("matplotlib", "plot")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 4), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for method in self.methods:
            points = self.gap(method)
            ax.plot([s for s, _ in points], [g for _, g in points], marker="o", markersize=3, label=method)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("relative CE gap  CE(W_q) / CE(W) - 1")
        lrs = sorted({(int(r["step"]), float(r["learning_rate"])) for r in self.records
                      if r.get("learning_rate") is not None and not math.isnan(float(r["learning_rate"]))})
        if lrs:
            twin = ax.twinx()
            twin.plot([s for s, _ in lrs], [lr for _, lr in lrs], color="grey", linestyle=":", label="learning rate")
            twin.set_ylabel("learning rate")
        for stage, end in self.stage_ends():
            ax.axvline(end, color="black", linewidth=0.6, linestyle="--")
            ax.annotate(f"end of stage {stage}", (end, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                        va="top", ha="right", rotation=90)
        ax.legend(fontsize=7, loc="upper left")
        return save_figure(fig, Path(path))
