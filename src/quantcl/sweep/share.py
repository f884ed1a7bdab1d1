"""Shared prefixes: a sweep point starts from another point's finished stage where their configs agree.

In a precision x replay x seed grid, stage 1 of the points that differ only in the replay
setting is the same training (replay starts at stage 2), and row 0 of the accuracy matrix (the
untouched model) is the same evaluation for every point of one model and precision. A sweep
with ``share=True`` (the default; ``quantcl sweep --no-share`` turns it off) runs such work once:
the first point (the donor) saves a snapshot of its run directory after that row or stage, and
each later point that agrees up to there copies it and resumes from it
(:mod:`quantcl._prefix`). The files a shared point ends with are those of the same point run
alone, measured timings aside (tested file by file, and under SIGKILL and resume).

What two points must agree on, from their full run configs (``ContinualTrainer.config()``):

- **stage k shared** (the first ``k`` stages and rows ``0..k``): the same model, precision,
  tasks, LoRA, plug-ins, seed, and training arguments of stages ``1..k`` (a per-task override of a
  later stage differs). With a plug-in whose ``shares_prefixes`` is ``False`` (a
  ``PrecisionSchedule`` counts steps over the whole run) every stage's arguments must agree.
- **replay settings that differ** (fraction, capacity, strategy; the buffer's ``seed`` must
  agree, as it orders every stage's data): stage 1 only. The buffer's stage-1 selection differs,
  so the adopting point selects its own from the model loaded from stage 1 (the same model).
- **row 0 only**: the same model, precision, tasks, LoRA settings and evaluation batch size,
  any seed or training arguments, when the evaluators are quantcl's own (their sampling is seeded
  by the evaluator, not the run), LoRA starts at zero (peft's default init: the untouched model's
  outputs), and no plug-in has an ``on_evaluate`` hook (it would not see the adopted row 0).

Nothing else is shared: another seed, learning rate of stage 1 or precision starts from scratch.
A donor that finished before the snapshot was asked for has none; its adopters then run alone.
Snapshots live in ``output_dir/shared/<donor>/after-NNN/`` until every point adopting them is done;
``output_dir/shared/adopted/<point>.json`` logs what each point started from (its wall time is
shorter than a run alone's).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Share", "fingerprint", "shared_prefix", "plan_sharing", "snapshot_dir", "adopted_record", "SHARED_DIR"]

SHARED_DIR = "shared"
# replay-buffer settings that change only what the buffer keeps, not stage 1's data order
_REPLAY_KEPT_ONLY = ("fraction", "capacity", "rounding", "strategy", "strategy_name")


@dataclass(frozen=True)
class Share:
    """What a point takes from an earlier one: ``stages`` finished stages (``0``: row 0 only) of
    point ``donor``; ``rebuild``: its replay buffer selects its own stage-1 rows."""

    donor: str
    stages: int
    rebuild: bool = False


def _stage_args(trainer: Any) -> list[dict[str, Any]]:
    out = []
    for i, task in enumerate(trainer.tasks):
        data = trainer.args.for_stage(i, task.name).to_dict()
        data.pop("overrides", None)
        out.append(data)
    return out


def fingerprint(trainer: Any) -> dict[str, Any]:
    """What :func:`shared_prefix` compares of a built (not fitted) ``ContinualTrainer``."""
    config = dict(trainer.config())
    config.pop("versions", None)
    lora = config.get("lora") or {}
    zero_init = trainer.training == "full" or lora.get("init_lora_weights", True) is True
    evaluators = all(type(t.evaluator).__module__.startswith("quantcl.")
                     for t in [*trainer.tasks, *getattr(trainer, "probes", ())])
    from quantcl.plugins.base import overrides_hook

    watched = any(overrides_hook(p, "on_evaluate") for p in trainer.plugins)
    replay = config.get("replay")
    return {
        "base": {k: v for k, v in config.items() if k not in ("seed", "replay", "args")},
        "seed": config.get("seed"),
        "replay": replay,
        "stages": _stage_args(trainer),
        "eval_batch_size": trainer.args.eval_batch_size,
        "whole_run": not all(p.shares_prefixes for p in trainer.plugins),
        "row0_any_seed": zero_init and evaluators and not watched,
        "row0": evaluators and not watched,
    }


def shared_prefix(donor: Mapping[str, Any], point: Mapping[str, Any]) -> tuple[int, bool] | None:
    """``(finished stages, rebuild the replay buffer)`` that ``point`` can take from ``donor``
    (two :func:`fingerprint` results): ``(0, False)`` is row 0 only, ``None`` nothing."""
    if donor["base"] != point["base"]:
        return None
    row0 = (donor["row0"] and point["row0"] and donor["eval_batch_size"] == point["eval_batch_size"]
            and (donor["seed"] == point["seed"] or (donor["row0_any_seed"] and point["row0_any_seed"])))
    fallback = (0, False) if row0 else None
    if donor["seed"] != point["seed"]:
        return fallback
    stages = 0
    for a, b in zip(donor["stages"], point["stages"]):
        if a != b:
            break
        stages += 1
    if donor["whole_run"] and stages < len(point["stages"]):
        stages = 0  # a plug-in acts over the whole sequence (a PrecisionSchedule counts its steps)
    rebuild = False
    if donor["replay"] != point["replay"]:
        a, b = donor["replay"], point["replay"]
        same_order = (isinstance(a, Mapping) and isinstance(b, Mapping)
                      and {k: v for k, v in a.items() if k not in _REPLAY_KEPT_ONLY}
                      == {k: v for k, v in b.items() if k not in _REPLAY_KEPT_ONLY})
        stages, rebuild = (min(stages, 1), True) if same_order else (0, False)
    if stages == 0:
        return fallback
    return stages, rebuild


def plan_sharing(fingerprints: Mapping[str, Mapping[str, Any]],
                 unavailable: AbstractSet[str] = frozenset()) -> dict[str, Share]:
    """For each point (in run order, the mapping's), the earlier point it takes the most from;
    points in ``unavailable`` (finished before a snapshot could be asked of them) give nothing.
    Points that take nothing are absent."""
    plan: dict[str, Share] = {}
    earlier: list[str] = []
    for name, fp in fingerprints.items():
        best: Share | None = None
        for donor in earlier:
            if donor in unavailable:
                continue
            got = shared_prefix(fingerprints[donor], fp)
            if got is not None and (best is None or got[0] > best.stages):
                best = Share(donor, got[0], got[1])
        if best is not None:
            plan[name] = best
        earlier.append(name)
    return plan


def snapshot_dir(output_dir: Path, share: Share) -> Path:
    """Where ``share.donor`` saves its snapshot after ``share.stages`` stages."""
    return Path(output_dir) / SHARED_DIR / share.donor / f"after-{share.stages:03d}"


def adopted_record(output_dir: Path, name: str) -> Path:
    """Where the sweep logs what point ``name`` started from (``{"from", "stages", "rebuilt"}``)."""
    return Path(output_dir) / SHARED_DIR / "adopted" / f"{name}.json"


def waves(plan: Mapping[str, Share], names: list[str]) -> list[list[str]]:
    """``names`` grouped so that every point runs after the point it takes from (for executors
    that run points at once); order is kept inside a wave."""
    depth: dict[str, int] = {}

    def of(name: str) -> int:
        if name not in depth:
            share = plan.get(name)
            depth[name] = 0 if share is None else of(share.donor) + 1
        return depth[name]

    out: dict[int, list[str]] = {}
    for name in names:
        out.setdefault(of(name), []).append(name)
    return [out[d] for d in sorted(out)]


def prune(output_dir: Path, plan: Mapping[str, Share], done: set[str]) -> None:
    """Remove the snapshots every adopting point of which is done."""
    needed = {snapshot_dir(output_dir, s) for name, s in plan.items() if name not in done}
    root = Path(output_dir) / SHARED_DIR
    if not root.is_dir():
        return
    for folder in root.glob("*/after-*"):
        if folder not in needed:
            shutil.rmtree(folder, ignore_errors=True)
    for folder in root.iterdir():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    if not any(root.iterdir()):
        root.rmdir()


def savings(plan: Mapping[str, Share], n_stages: int, todo: list[str]) -> str:
    """A line for the dry run: the stages and row-0 evaluations that sharing saves among ``todo``."""
    shared = [plan[n] for n in todo if n in plan]
    stages = sum(s.stages for s in shared)
    total = len(todo) * n_stages
    return (f"shared prefixes: {len(shared)} of {len(todo)} runs to do start from another point's work: "
            f"{stages} of {total} stage trainings and {len(shared)} row-0 evaluations"
            + (f" (and {stages} more evaluation rows) saved" if stages else " saved"))
