"""Shared prefixes, the run's side: one run's finished row 0 or stage adopted by another run.

A sweep (:mod:`quantcl.sweep.share`) decides which of its points agree up to a stage; here is
what a run does about it:

- :func:`save_snapshot`: after row 0 (``completed=0``) or stage ``k``, the files a resume at that
  point reads (``state.json``, the evaluation records of rows ``0..k``, ``stages/stage-k``,
  ``logs/``) are copied to a folder, atomically.
- :func:`adopt_snapshot`: a fresh run directory takes a snapshot's files, writes its own
  ``run.json`` and re-seals the state; a plug-in whose settings differ (a replay buffer of another
  size) is left out and named in the state's ``rebuild`` list.
- :func:`rebuild_plugins`: in ``fit``, on the model loaded from stage 1, those plug-ins' stage-1
  hooks run again (``adapt_data``, then ``on_stage_end``) and their state is saved.

The run then resumes, and resuming after a stage gives the files of an uninterrupted run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantcl._io import atomic_replace_dir, atomic_write_json, digest_mismatch, read_json, seal_ok
from quantcl.errors import StateError
from quantcl.plugins.base import overrides_hook
from quantcl.rundir import STATE_VERSION, RunDirectory, plugin_state_dirs

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.trainer import ContinualTrainer

__all__ = ["save_snapshot", "copy_run", "adopt_snapshot", "load_plugin_states", "rebuild_plugins", "ADOPTING"]

ADOPTING = ".quantcl-adopting"  # present while a snapshot is copied in: a kill leaves it, and the copy starts again


def _snapshot_files(state: dict[str, Any]) -> list[str]:
    return sorted(k for k in state["files"] if k != "run.json")


def save_snapshot(trainer: ContinualTrainer, completed: int) -> None:
    """If the sweep asked ``trainer`` for a snapshot after ``completed`` stages (``_snapshot_after``)
    and it is not there yet, write it (see :func:`copy_run`)."""
    dest = trainer._snapshot_after.get(completed)
    if dest is not None and trainer.is_main_process and not Path(dest).exists():
        copy_run(trainer.run_dir.root, Path(dest))


def copy_run(run_root: Path, dest: Path) -> None:
    """Copy the run in ``run_root`` as its ``state.json`` now stands into ``dest`` (replaced atomically)."""
    state = read_json(run_root / "state.json")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for rel in [*_snapshot_files(state), "state.json", "run.json"]:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_root / rel, tmp / rel)
    if (run_root / "logs").is_dir():
        shutil.copytree(run_root / "logs", tmp / "logs")
    atomic_replace_dir(tmp, dest)


def read_snapshot(snapshot: Path) -> dict[str, Any]:
    """The snapshot's state, after checking its seal and every file it names.

    Raises:
        StateError: missing, edited or incomplete.
    """
    try:
        state = read_json(snapshot / "state.json")
    except (OSError, ValueError) as err:
        raise StateError(f"shared prefix {snapshot} is unreadable: {err}") from err
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or not seal_ok(state):
        raise StateError(f"shared prefix {snapshot}: its state.json is of another version or edited")
    mismatch = digest_mismatch(snapshot, {k: state["files"][k] for k in _snapshot_files(state)})
    if mismatch is not None:
        raise StateError(f"shared prefix {snapshot}: {mismatch[0]} is {mismatch[1]}")
    return state


def adopt_snapshot(snapshot: Path, run_dir: RunDirectory, config: dict[str, Any], rebuild: list[str]) -> int:
    """Make the fresh run directory ``run_dir`` hold ``snapshot``'s progress under ``config``.

    ``rebuild`` names plug-in state folders (``00-replay``) not to copy: the run rebuilds them
    (:func:`rebuild_plugins`). Returns the number of finished stages adopted.

    Raises:
        StateError: the snapshot does not check out, or ``run_dir`` already holds progress
            (nothing there is changed).
    """
    root = run_dir.root
    marker = root / ADOPTING
    if run_dir.state_path.exists() and not marker.exists():
        raise StateError(f"{root} already holds a run's state; a shared prefix is only copied into a fresh run")
    state = read_snapshot(snapshot)
    if marker.exists():  # an earlier copy was killed: what it left goes
        for name in ("stages", "evals", "logs", "checkpoints"):
            shutil.rmtree(root / name, ignore_errors=True)
        run_dir.state_path.unlink(missing_ok=True)
    elif any((root / name).exists() for name in ("stages", "evals")):
        raise StateError(f"{root} holds stages or evaluation records but no state; a shared prefix is not copied "
                         "over them (move them away to run the point)")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"from": str(snapshot)})
    completed = int(state["completed_stages"])
    skip = [f"stages/stage-{completed:03d}/plugins/{name}/" for name in rebuild]
    for rel in _snapshot_files(state):
        if not any(rel.startswith(s) for s in skip):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(snapshot / rel, root / rel)
    if (snapshot / "logs").is_dir():
        shutil.copytree(snapshot / "logs", root / "logs", dirs_exist_ok=True)
    atomic_write_json(run_dir.config_path, config)
    state = {k: v for k, v in state.items() if k not in ("sha256", "files")}
    if rebuild:
        state["rebuild"] = list(rebuild)
    run_dir.save(state)
    marker.unlink()
    return completed


def load_plugin_states(trainer: ContinualTrainer, state: dict[str, Any]) -> None:
    """Restore each plug-in's state saved with the newest finished stage, except those an adopted
    prefix left to rebuild (``state["rebuild"]``)."""
    completed = state["completed_stages"]
    if completed == 0:
        return
    rebuild = set(state.get("rebuild") or ())
    for plugin, folder, old in plugin_state_dirs(trainer.run_dir.stage_dir(completed), trainer.plugins,
                                                 trainer._watchers):
        if overrides_hook(plugin, "load_state") and folder.name not in rebuild:
            plugin.load_state(folder if folder.exists() or not old.exists() else old)


def rebuild_plugins(trainer: ContinualTrainer, state: dict[str, Any]) -> None:
    """Run stage 1's hooks again for the plug-ins named in ``state["rebuild"]`` on the loaded
    model, save their state into stage 1's folder and drop the list (the state is saved)."""
    names = state.pop("rebuild", None)
    if not names:
        return
    if state["completed_stages"] != 1:
        raise StateError(f"plug-in state {names} can only be rebuilt after stage 1, not after "
                         f"stage {state['completed_stages']}")
    task, record = trainer.tasks[0], state["stage_records"][0]
    scores = {t.name: float(state["matrix"][1][j]) for j, t in enumerate(trainer.tasks)}
    stage_dir = trainer.run_dir.stage_dir(1)
    trainer._record = record
    try:
        for plugin, folder, _ in plugin_state_dirs(stage_dir, trainer.plugins, trainer._watchers):
            if folder.name in names:
                plugin.adapt_data(trainer, 1, task, task.training_rows(trainer.tokenizer))
                plugin.on_stage_end(trainer, 1, task, scores)
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                plugin.save_state(folder)
    finally:
        trainer._record = None
    trainer.run_dir.save(state)
