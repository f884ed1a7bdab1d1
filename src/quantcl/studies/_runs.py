"""What the studies share: one directory of sealed per-run records, checked settings, tiny models."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from quantcl._checks import require_int
from quantcl._io import atomic_write_json, read_json, seal, seal_ok, to_jsonable
from quantcl.errors import ConfigError, StateError, RunsFailedError
from quantcl.sweep import ERROR_FILE

__all__ = ["RECORD_FILE", "check_study_dir", "run_once", "run_arms", "check_model_size", "load_study",
           "save_study_records", "StudyRecords"]

RECORD_FILE = "study-record.json"


def check_study_dir(root: Path, settings: dict[str, Any], arms: list[Any]) -> None:
    """A study directory holds one set of settings (seeds aside: more can be added later), with the
    corpus it read; a rerun with other settings is refused rather than mixed in."""
    from quantcl.recipes import stdlib_metadata

    path = root / "study.json"
    mine = {**settings, "seeds": None, "corpus": stdlib_metadata()}
    if path.is_file():
        saved = read_json(path)
        if not seal_ok(saved) or saved.get("settings") != mine:
            raise StateError(f"{str(path)!r} holds other study settings (or was edited); use another output_dir")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, seal({"settings": mine, "variants": to_jsonable(arms)}))


def run_once(run_dir: Path, train: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The record of the run in ``run_dir``: read back (seal checked) if it finished, else
    ``train()``, which resumes what an interrupted invocation left in ``run_dir`` (its
    ``ContinualTrainer.fit(resume=True)``: finished stages are kept), with ``wall_seconds`` (of
    this invocation) and ``resumed`` added, sealed and saved."""
    record_path = run_dir / RECORD_FILE
    if record_path.is_file():
        record = read_json(record_path)
        if not seal_ok(record):
            raise StateError(f"{str(record_path)!r} was edited or truncated (its seal does not match)")
        return {k: v for k, v in record.items() if k != "sha256"}
    resumed = run_dir.exists()
    start = time.perf_counter()
    record = train()
    record["wall_seconds"] = time.perf_counter() - start
    record["resumed"] = resumed
    record = json.loads(json.dumps(to_jsonable(record)))  # as a resumed study reads it back
    atomic_write_json(record_path, seal(record))
    return record


def run_arms(root: Path, settings: dict[str, Any], arms: Sequence[Any], seeds: Sequence[int],
             folder: Callable[[Any], str], train: Callable[[Path, Any, int], dict[str, Any]], *,
             executor: Any = "sequential", max_workers: int = 2,
             ray_resources: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """Check the study directory, then the record of every seed x arm (``run_once`` in
    ``root/folder(arm)/seed-N``), seed by seed: a study stopped part-way has whole seeds (every arm)
    to report, and more seeds are added by running it again.

    ``executor`` is a sweep's (:func:`quantcl.sweep.run_jobs`): ``"sequential"`` trains in
    this process and stops at the first error; ``"process"``, ``"ray"`` or a
    ``concurrent.futures.Executor`` train the unfinished runs there (``train`` must then pickle,
    and the workers must see ``root``), each failure left in its run's ``error.json`` while the
    others go on, and raise :class:`~quantcl.errors.RunsFailedError` naming every failed run once
    all have ended. Runs share no files; with the same torch threads a run's record is the same on
    every executor (a thread pool of several workers shares torch's global random state: use
    processes).
    """
    from quantcl.sweep import Job, check_executor, run_jobs

    check_executor(executor, "executor", installed=True)
    max_workers = require_int(max_workers, "max_workers", minimum=1)
    root = Path(root).resolve()  # a worker may start in another directory
    runs = [(root / folder(arm) / f"seed-{seed}", arm, seed) for seed in seeds for arm in arms]
    twice = sorted({str(d.relative_to(root)) for d, _, _ in runs if sum(d == e for e, _, _ in runs) > 1})
    if twice:
        raise ConfigError(f"the study would run {', '.join(twice)} twice: give each seed and arm once")
    check_study_dir(root, settings, [asdict(a) if is_dataclass(a) and not isinstance(a, type) else a for a in arms])
    if executor != "sequential":
        jobs = [Job(f"{run_dir.parent.name}/{run_dir.name}", directory=str(run_dir),
                    call=functools.partial(run_once, run_dir, functools.partial(train, run_dir, arm, seed)))
                for run_dir, arm, seed in runs if not (run_dir / RECORD_FILE).is_file()]
        outcomes = run_jobs(jobs, executor, max_workers=max_workers, ray_resources=ray_resources) if jobs else {}
        failed = {name: o.get("error", "") for name, o in outcomes.items() if o.get("status") != "done"}
        if failed:
            listed = "; ".join(f"{name}: {error}" for name, error in failed.items())
            raise RunsFailedError(f"{len(failed)} of {len(jobs)} runs failed (each one's error.json has its "
                                  f"traceback; running the study again resumes them): {listed}")
        lost = [job.name for job in jobs if not (Path(job.directory) / RECORD_FILE).is_file()]
        if lost:  # a worker that wrote elsewhere: never train those runs again here unasked
            raise StateError(f"the executor reported {', '.join(lost)} done, but their records are not under "
                             f"{str(root)!r}: its workers must share this file system")
    records = [run_once(run_dir, functools.partial(train, run_dir, arm, seed)) for run_dir, arm, seed in runs]
    for run_dir, _, _ in runs:  # a failure an earlier invocation left, now finished
        (run_dir / ERROR_FILE).unlink(missing_ok=True)
    return records


def load_study(root: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(study, records)`` of a study directory (or a copy made by :func:`save_study_records`):
    its ``study.json`` (``settings`` and ``variants``) and every ``*/seed-N/study-record.json``,
    seals checked, in seed then folder order."""
    path = root / "study.json"
    if not path.is_file():
        raise StateError(f"{str(root)!r} holds no study.json: not a study directory")
    saved = read_json(path)
    if not seal_ok(saved):
        raise StateError(f"{str(path)!r} was edited or truncated (its seal does not match)")
    found = sorted(root.glob(f"*/seed-*/{RECORD_FILE}"), key=lambda p: (int(p.parent.name[5:]), p.parent.parent.name))
    records = []
    for record_path in found:
        record = read_json(record_path)
        if not seal_ok(record):
            raise StateError(f"{str(record_path)!r} was edited or truncated (its seal does not match)")
        records.append({k: v for k, v in record.items() if k != "sha256"})
    return {k: v for k, v in saved.items() if k != "sha256"}, records


_R = TypeVar("_R", bound="StudyRecords")


class StudyRecords:
    """A study's per-run records and settings: what each study's result class is built on.

    ``load`` reads a study directory (or a copy made by :func:`save_study_records`), each seal
    checked, in seed then :meth:`order` order.
    """

    def __init__(self, records: Sequence[dict[str, Any]], settings: dict[str, Any]) -> None:
        self.records, self.settings = list(records), dict(settings)
        #: the runs each seed has (the study directory's variants), when loaded from one
        self.n_variants: int | None = None

    @classmethod
    def load(cls: type[_R], directory: str | Path) -> _R:
        """The records of a study directory (or of a copy of its ``study.json`` and records)."""
        study, records = load_study(Path(directory))
        records.sort(key=lambda r: (r["seed"], cls.order(r)))
        result = cls(records, study["settings"])
        result.n_variants = len(study.get("variants") or []) or None
        return result

    def complete_seeds(self) -> list[int]:
        """The seeds with a record for every variant (every seed seen, when that count is not known)."""
        counts: dict[int, int] = {}
        for r in self.records:
            counts[int(r["seed"])] = counts.get(int(r["seed"]), 0) + 1
        return sorted(s for s, n in counts.items() if self.n_variants is None or n >= self.n_variants)

    @staticmethod
    def order(record: dict[str, Any]) -> Any:
        """The place of a record among those of its seed (default: its folder's, as found)."""
        return 0


def save_study_records(root: Path, target: Path) -> int:
    """Copy what a study's report is made from (``study.json`` and every finished run's sealed
    record: no weights) from ``root`` to ``target`` (removing the records of an earlier copy that
    ``root`` no longer has); returns the number of records copied."""
    import shutil

    records = sorted(root.glob(f"*/seed-*/{RECORD_FILE}"))
    if not (root / "study.json").is_file():
        raise StateError(f"{str(root)!r} holds no study.json: not a study directory")
    target.mkdir(parents=True, exist_ok=True)
    keep = {path.relative_to(root) for path in records}
    for stale in target.glob(f"*/seed-*/{RECORD_FILE}"):  # an earlier copy's runs that are gone now
        if stale.relative_to(target) not in keep:
            stale.unlink()
    shutil.copyfile(root / "study.json", target / "study.json")
    for path in records:
        dest = target / path.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    return len(records)


def check_model_size(hidden_size: int, num_layers: int, batch_size: int, chunk_chars: int) -> None:
    """The random Llama of a study: heads of 32 dimensions."""
    for name, value, low in (("batch_size", batch_size, 1), ("chunk_chars", chunk_chars, 32),
                             ("num_layers", num_layers, 1), ("hidden_size", hidden_size, 32)):
        require_int(value, name, minimum=low)
    if hidden_size % 32:
        raise ConfigError(f"hidden_size must be a multiple of 32 (heads of 32 dimensions), got {hidden_size}")


def build_model(run_dir: Path, hidden_size: int, num_layers: int, chunk_chars: int, seed: int) -> Path:
    """A random-init Llama (seeded) with the character tokenizer, saved under ``run_dir/init``."""
    from quantcl.tiny import build_tiny_model

    return build_tiny_model(run_dir / "init", hidden_size=hidden_size, num_layers=num_layers,
                            num_heads=max(1, hidden_size // 32), max_position_embeddings=chunk_chars + 8, seed=seed)
