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

Every file is written atomically; a stage directory appears complete or not at all.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from quantcl._io import atomic_replace_dir, atomic_write_json, read_json
from quantcl.errors import ConfigError, StateError

__all__ = ["RunDirectory", "STATE_VERSION"]

STATE_VERSION = 2  # 2: plug-in state under stages/stage-NNN/plugins/ (quantcl 0.1 wrote 1)
# configuration keys that may differ on resume: they do not change what is computed
RESUME_IGNORES = frozenset({"versions", "callbacks"})


class RunDirectory:
    """Paths and state files of one run under ``root``; only the main process writes.

    Example:
        >>> rd = RunDirectory("runs/x")
        >>> rd.stage_dir(2).name
        'stage-002'
    """

    def __init__(self, root: str | Path, *, writer: bool = True) -> None:
        self.root = Path(root)
        self.writer = writer

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
        return self.root / "evals" / f"row-{row:03d}-{_safe(task)}.json"

    # ------------------------------------------------------------------ state
    def new_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "completed_stages": 0, "matrix": None,
                "stage_records": [], "eval_details": {}}

    def load(self, config: dict[str, Any], resume: bool) -> dict[str, Any] | None:
        """The saved state to continue from, or ``None`` for a new run; refuses a mismatch.

        Raises:
            ConfigError: the directory holds a run and ``resume`` is False, or the saved
                configuration differs from ``config`` (``versions`` excepted).
            StateError: the state files are unreadable, of another version, or name a finished
                stage whose directory is missing (checked before anything is removed).
        """
        if not self.state_path.exists():
            if self.config_path.exists() and not resume:
                raise ConfigError(f"{self.root} already holds a run; pass resume=True to continue it "
                                  "or choose another output_dir")
            return None
        if not resume:
            raise ConfigError(f"{self.root} already holds a run; pass resume=True to continue it "
                              "or choose another output_dir")
        try:
            state = read_json(self.state_path)
            saved = read_json(self.config_path)
        except (OSError, ValueError) as err:
            raise StateError(f"cannot read the run state in {self.root}: {err}") from err
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            got = state.get("version") if isinstance(state, dict) else type(state).__name__
            hint = " (written by quantcl 0.1: finish it with that version, or start a new run)" if got == 1 else ""
            raise StateError(f"{self.state_path} has version {got!r}, expected {STATE_VERSION}{hint}")
        differing = sorted(k for k in set(config) | set(saved)
                           if k not in RESUME_IGNORES and saved.get(k) != config.get(k))
        if differing:
            raise ConfigError(f"cannot resume {self.root}: the configuration differs in {differing}; "
                              "resume with the same arguments or choose another output_dir")
        completed = state.get("completed_stages")
        if isinstance(completed, bool) or not isinstance(completed, int) or completed < 0:
            raise StateError(f"{self.state_path}: completed_stages must be an int >= 0, got {completed!r}")
        self.check_completed(completed)
        return state

    def start(self, config: dict[str, Any]) -> None:
        """Create the directory of a new run and write its configuration."""
        if self.writer:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.config_path, config)

    def save(self, state: dict[str, Any]) -> None:
        if self.writer:
            atomic_write_json(self.state_path, state)

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
        """Delete what a crash between saving the state and cleaning up left behind."""
        if not self.writer or completed == 0:
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
        """The newest complete ``checkpoint-N`` of ``stage`` (a half-written one is skipped)."""
        root = self.checkpoint_dir(stage)
        if not root.is_dir():
            return None
        found = []
        for path in root.iterdir():
            m = re.fullmatch(r"checkpoint-(\d+)", path.name)
            if m and _complete_checkpoint(path):
                found.append((int(m.group(1)), path))
        return str(max(found)[1]) if found else None


def _complete_checkpoint(path: Path) -> bool:
    # transformers writes trainer_state.json last, non-atomically: a kill can leave it torn.
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
