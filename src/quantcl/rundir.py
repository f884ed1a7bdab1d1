"""The run directory: where a continual run's state lives, and how a killed run is picked up.

::

    output_dir/
      run.json              the run's configuration (checked again on resume)
      state.json            accuracy-matrix rows and stage records so far
      stages/stage-001/     adapter (safetensors), merged base (merge mode), plugins/<name>/ state
      checkpoints/stage-002/checkpoint-N   Trainer checkpoints inside a stage (save_steps)
      evals/row-001-math.json               per-example evaluation records
      logs/stage-002/       what ``report_to`` loggers wrote (e.g. TensorBoard's runs/)
      result.json           the ContinualResult, once the run is finished
      .quantcl.lock         held by the process running it (see quantcl._lock)

Every file is written atomically; a stage directory appears complete or not at all.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from quantcl._lock import hold_directory
from quantcl._io import (file_safe_name, remove_write_leftovers, atomic_replace_dir, atomic_write_json, digest_mismatch, read_json, seal, seal_ok,
                         sha256_file, tree_digests)
from quantcl._moved import current_layout
from quantcl.components import without_default_arguments
from quantcl._runtime import checkpoint_is_complete
from quantcl.errors import ConfigError, StateError

__all__ = ["RunDirectory", "STATE_VERSION"]

# 2: plug-in state under stages/stage-NNN/plugins/ (quantcl 0.1 wrote 1); 3: sealed, with file digests
STATE_VERSION = 3
# configuration keys that may differ on resume: they do not change what is computed
RESUME_IGNORES = frozenset({"versions", "callbacks"})
# model_kwargs that say where the weights go, not what is computed: under torchrun each process
# passes its own GPU ({"": local_rank}), and a resumed run may land on other devices
PLACEMENT_KWARGS = frozenset({"device_map", "max_memory"})


def _resume_view(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as resume compares it: without the placement keys of ``model_kwargs``, with
    class paths saved before a module moved read as their new paths, and without component
    arguments at their defaults (one a later release added changes nothing)."""
    config = without_default_arguments(current_layout(config))
    kwargs = config.get("model_kwargs")
    if not isinstance(kwargs, dict):
        return config
    return {**config, "model_kwargs": {k: v for k, v in kwargs.items() if k not in PLACEMENT_KWARGS}}


def plugin_state_dir(stage_dir: Path, index: int, state_key: str) -> Path:
    """Where the ``index``-th plug-in saves its state in a stage's folder."""
    return stage_dir / "plugins" / f"{index:02d}-{state_key}"


def plugin_state_dirs(stage_dir: Path, plugins: Sequence[Any], watchers: Sequence[Any]) -> list[tuple[Any, Path, Path]]:
    """``(plug-in, its state folder, the folder runs saved before quantcl 0.2 used)`` for each of ``plugins``.

    Folders are numbered among the plug-ins a resume compares first and the watch-only
    ``watchers`` after them, so that adding or removing a watcher on resume (allowed: it does not
    change the run) moves no other plug-in's state. Earlier versions numbered them in ``plugins``
    order, which differs only when a watcher came before a plug-in with state.
    """
    def watching(p: Any) -> bool:
        return any(p is w for w in watchers)

    ordered = [p for p in plugins if not watching(p)] + [p for p in plugins if watching(p)]
    old = {id(p): i for i, p in enumerate(plugins)}
    return [(p, plugin_state_dir(stage_dir, i, p.state_key), plugin_state_dir(stage_dir, old[id(p)], p.state_key))
            for i, p in enumerate(ordered)]


class RunDirectory:
    """Paths and state files of one run under ``root``; only the main process writes.

    Examples:
        >>> rd = RunDirectory("runs/x")
        >>> rd.stage_dir(2).name
        'stage-002'
    """

    def __init__(self, root: str | Path, *, writer: bool = True) -> None:
        self.root = Path(root)
        self.writer = writer

    @contextlib.contextmanager
    def hold(self, procs: Any = None) -> Iterator[None]:
        """Hold the directory while this run uses it (see :func:`quantcl._lock.hold_directory`):
        a second process on it is refused at once. Only the writing process takes the lock; under
        ``torchrun`` (``procs``, a :class:`quantcl._runtime.Processes`) every rank learns whether
        it got it, so all of them stop when it did not."""
        with contextlib.ExitStack() as stack:
            refused = None
            if self.writer:
                try:
                    stack.enter_context(hold_directory(self.root, "run"))
                except StateError as err:
                    refused = str(err)
            if procs is not None and procs.world_size > 1:
                refused = next((r for r in procs.all_gather(refused) if r), None)
            if refused:
                raise StateError(refused)
            yield

    # ------------------------------------------------------------------ paths
    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    @property
    def config_path(self) -> Path:
        return self.root / "run.json"

    def stage_dir(self, stage: int) -> Path:
        return self.root / "stages" / f"stage-{stage:03d}"

    def checkpoint_dir(self, stage: int) -> Path:
        return self.root / "checkpoints" / f"stage-{stage:03d}"

    def eval_path(self, row: int, task: str) -> Path:
        return self.root / "evals" / f"row-{row:03d}-{file_safe_name(task)}.json"

    # ------------------------------------------------------------------ state
    def new_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "completed_stages": 0, "matrix": None,
                "stage_records": [], "eval_details": {}, "items": {}, "files": {}}

    def load(self, config: dict[str, Any], resume: bool, task_names: Sequence[str]) -> dict[str, Any] | None:
        """The saved state to continue from, or ``None`` for a new run; refuses a mismatch.

        Everything is checked before anything is removed: the state's seal and shape, and the
        sha256 of every file it depends on (``run.json``, the newest stage's directory, the
        evaluation records). A run that never finished a stage may be resumed with another
        configuration: it starts again (nothing it saved can be used with the new one).

        Raises:
            ConfigError: the directory holds a run and ``resume`` is False, or the saved
                configuration differs from ``config`` (``versions`` excepted) after a stage.
            StateError: a state file is missing, unreadable, edited, of another version, or
                names a file that is missing or changed; the message names the file.
        """
        if not self.state_path.exists():
            stages = sorted(p.name for p in (self.root / "stages").glob("stage-*"))
            if stages:
                raise StateError(f"{self.state_path} is missing, but {self.root / 'stages'} holds {stages}: "
                                 "the run's progress cannot be known without it; nothing was removed")
            if self.config_path.exists() and not resume:
                raise ConfigError(f"{self.root} already holds a run; pass resume=True to continue it "
                                  "or choose another output_dir")
            return None  # a run that never saved its state starts again (see start())
        if not resume:
            raise ConfigError(f"{self.root} already holds a run; pass resume=True to continue it "
                              "or choose another output_dir")
        state = self._read_state(len(task_names))
        self._check_files(state)
        saved, config = _resume_view(read_json(self.config_path)), _resume_view(config)
        differing = sorted(k for k in set(config) | set(saved)
                           if k not in RESUME_IGNORES and saved.get(k) != config.get(k))
        if differing and state["completed_stages"] == 0:
            return None  # nothing finished under the old configuration: start again with the new one
        if differing:
            raise ConfigError(f"cannot resume {self.root}: the configuration differs in {differing}; "
                              "resume with the same arguments or choose another output_dir")
        return state

    def finished_problem(self, result: dict[str, Any]) -> str | None:
        """Why this directory is not the finished run its ``result.json`` (read as ``result``)
        says it is, or ``None``: the state's seal and version, every file digest it keeps (a
        missing final stage, an edited ``run.json``), all stages complete, the same accuracy and
        probe matrices.

        A copy of the results alone (``run.json`` and ``result.json``, no ``state.json`` and no
        stages, as shipped for reports) has nothing more to check and passes.
        """
        if not self.state_path.exists():
            stages = sorted(p.name for p in (self.root / "stages").glob("stage-*"))
            return f"{self.state_path.name} is missing but stages {stages} are there" if stages else None
        try:
            n_tasks = len(result["task_names"])
            state = self._read_state(n_tasks)
            self._check_files(state)
        except (StateError, KeyError, TypeError) as err:
            return str(err).split("; ")[0]
        if state["completed_stages"] != n_tasks:
            return f"{self.state_path.name} records {state['completed_stages']} of {n_tasks} stages as complete"
        if state["matrix"] != result.get("accuracy_matrix"):
            return f"result.json's accuracy matrix differs from {self.state_path.name}'s"
        if state.get("probe_matrix") != result.get("probe_matrix"):
            return f"result.json's probe matrix differs from {self.state_path.name}'s"
        return None

    def _read_state(self, n_tasks: int) -> dict[str, Any]:
        path = self.state_path
        try:
            state = read_json(path)
        except (OSError, ValueError) as err:
            raise StateError(f"cannot read {path} (truncated or damaged?): {err}") from err
        got = state.get("version") if isinstance(state, dict) else type(state).__name__
        if got != STATE_VERSION:
            hints = {1: " (written by quantcl 0.1: finish it with that version, or start a new run)",
                     2: " (written by a development version of quantcl: start a new run)"}
            hint = hints.get(got, "") if isinstance(got, int) else ""
            raise StateError(f"{path} has version {got!r}, expected {STATE_VERSION}{hint}")
        if not seal_ok(state):
            raise StateError(f"{path} was edited or is damaged: its sha256 seal does not match its content; "
                             "restore it from a backup or start a new run (nothing was removed)")
        problem = _state_problem(state, n_tasks)
        if problem:
            raise StateError(f"{path}: {problem}")
        return state

    def _check_files(self, state: dict[str, Any]) -> None:
        completed = state["completed_stages"]
        self.check_completed(completed)
        mismatch = digest_mismatch(self.root, state["files"])
        if mismatch is not None and mismatch[1] == "missing":
            raise StateError(f"{mismatch[0]} is missing; the saved state depends on it (nothing was removed)")
        if mismatch is not None:
            raise StateError(f"{mismatch[0]} changed since the run wrote it (sha256 mismatch): truncated, edited or "
                             "replaced; restore it or start a new run (nothing was removed)")
        if completed > 0:
            stage = self.stage_dir(completed)
            # a plug-in folder the state says is to be rebuilt (an adopted shared prefix) may hold
            # what a killed rebuild wrote: the rebuild empties and rewrites it (quantcl._prefix)
            rebuilt = tuple(f"{(stage / 'plugins' / name).relative_to(self.root).as_posix()}/"
                            for name in state.get("rebuild") or ())
            extra = sorted(k for k in tree_digests(stage, relative_to=self.root)
                           if k not in state["files"] and not k.startswith(rebuilt))
            if extra:
                raise StateError(f"{self.root / extra[0]} was not written by this run (files in {stage} not "
                                 f"in its state: {extra}); remove it to resume")

    def start(self, config: dict[str, Any]) -> None:
        """Create the directory of a new run and write its configuration.

        What a run that never finished a stage left (its row-0 records, checkpoints of its first
        stage) is removed first, state last, so a crash in between leaves a state that still
        checks out or none.
        """
        if not self.writer:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        if self.config_path.exists():  # only in a directory a run made: never a user's own folders
            for name in ("stages", "checkpoints"):
                shutil.rmtree(self.root / name, ignore_errors=True)
            self.state_path.unlink(missing_ok=True)
            for name in ("evals", "logs"):
                shutil.rmtree(self.root / name, ignore_errors=True)
        atomic_write_json(self.config_path, config)

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` sealed, with the sha256 of every file it depends on (checked by :meth:`load`)."""
        if not self.writer:
            return
        completed = state["completed_stages"]
        files = {self.config_path.name: sha256_file(self.config_path)}
        for row in range(completed + 1):
            for path in sorted((self.root / "evals").glob(f"row-{row:03d}-*.json")):
                files[path.relative_to(self.root).as_posix()] = sha256_file(path)
        if completed > 0:
            files.update(tree_digests(self.stage_dir(completed), relative_to=self.root))
        state["files"] = files
        atomic_write_json(self.state_path, seal(state))

    def write_eval(self, row: int, task: str, payload: dict[str, Any]) -> None:
        if self.writer:
            atomic_write_json(self.eval_path(row, task), payload)

    # ------------------------------------------------------------------ stages
    def begin_stage_save(self, stage: int) -> Path:
        """A fresh temporary folder to write stage ``stage`` into (see :meth:`commit_stage`)."""
        tmp = self._tmp(stage)
        if self.writer:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        return tmp

    def commit_stage(self, stage: int) -> None:
        """Move the fully written temporary folder into place as the stage's directory."""
        if self.writer:
            atomic_replace_dir(self._tmp(stage), self.stage_dir(stage))

    def _tmp(self, stage: int) -> Path:
        final = self.stage_dir(stage)
        return final.with_name(final.name + ".tmp")

    def finish_stage(self, stage: int) -> None:
        """After the state recorded ``stage``: keep its logs, drop its checkpoints and the older stage."""
        if not self.writer:
            return
        self.keep_logs(stage)
        shutil.rmtree(self.checkpoint_dir(stage), ignore_errors=True)
        if stage > 1:  # keep only the newest stage's adapter and plug-in state
            shutil.rmtree(self.stage_dir(stage - 1), ignore_errors=True)

    def check_completed(self, completed: int) -> None:
        """Raise :class:`StateError` unless the newest completed stage's directory is there.

        Runs before anything is removed, so an edited or damaged state loses nothing.
        """
        if completed > 0 and not self.stage_dir(completed).is_dir():
            found = sorted(p.name for p in (self.root / "stages").glob("stage-*"))
            raise StateError(f"{self.state_path} says {completed} stage(s) are complete, but "
                             f"{self.stage_dir(completed)} is missing (found: {found}); nothing was removed")

    def remove_leftovers(self, completed: int) -> None:
        """Delete what a crash left behind: temporary files of an atomic write, and after a crash
        between saving the state and cleaning up, the older stage and the finished checkpoints."""
        if not self.writer:
            return
        for folder in (self.root, self.root / "evals"):
            remove_write_leftovers(folder)
        if completed == 0:
            return
        keep = self.stage_dir(completed).name
        for path in (self.root / "stages").glob("stage-*"):
            if path.name != keep:
                shutil.rmtree(path, ignore_errors=True)
        self.keep_logs(completed)
        shutil.rmtree(self.checkpoint_dir(completed), ignore_errors=True)

    def keep_logs(self, stage: int) -> None:
        """Move what loggers wrote into the stage's Trainer output_dir (``report_to="tensorboard"``
        writes ``runs/``) to ``logs/stage-NNN/`` before the checkpoints are removed."""
        root = self.checkpoint_dir(stage)
        if not root.is_dir():
            return
        logs = self.root / "logs" / root.name
        for path in root.iterdir():
            if not re.fullmatch(r"checkpoint-\d+", path.name):
                logs.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), str(logs / path.name))

    def last_checkpoint(self, stage: int) -> str | None:
        """The newest ``checkpoint-N`` of ``stage`` whose files match its ledger (see
        :func:`quantcl._runtime.checkpoint_ledger`); newer ones that do not (a kill mid-save, a
        truncated ``optimizer.pt``) are removed, and the stage resumes from the one before."""
        root = self.checkpoint_dir(stage)
        if not root.is_dir():
            return None
        found = sorted(((int(m.group(1)), path) for path in root.iterdir()
                        if (m := re.fullmatch(r"checkpoint-(\d+)", path.name))), reverse=True)
        for _step, path in found:
            if checkpoint_is_complete(path):
                return str(path)
            if self.writer:
                shutil.rmtree(path, ignore_errors=True)
        return None


def _state_problem(state: dict[str, Any], n_tasks: int) -> str | None:
    """What is wrong with the shape of a (sealed) state, or None."""
    kinds = {"completed_stages": int, "matrix": list, "stage_records": list, "eval_details": dict, "files": dict}
    for key, kind in kinds.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            return f"{key!r} must be a JSON {kind.__name__}, got {state.get(key)!r:.60}"
    completed, matrix = state["completed_stages"], state["matrix"]
    if not 0 <= completed <= n_tasks:
        return f"completed_stages must be in 0..{n_tasks} for {n_tasks} tasks, got {completed}"
    if len(matrix) != n_tasks + 1 or any(not isinstance(r, list) or len(r) != n_tasks for r in matrix):
        return f"the accuracy matrix must have {n_tasks + 1} rows of {n_tasks} scores"
    for i, row in enumerate(matrix):
        for value in row:
            measured = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
            if (i <= completed and not measured) or (i > completed and value is not None):
                return f"accuracy matrix row {i} holds {value!r}; rows 0..{completed} hold scores in [0, 1], later rows null"
    records = state["stage_records"]
    if [r.get("stage") if isinstance(r, dict) else r for r in records] != list(range(1, completed + 1)):
        return f"stage_records must be one record per finished stage (1..{completed})"
    return None

