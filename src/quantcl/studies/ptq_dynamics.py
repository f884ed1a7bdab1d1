"""Training dynamics and PTQ robustness (Catalan-Tatjer et al., 2025, arXiv 2510.06213), offline.

:func:`ptq_dynamics_study` pre-trains a small random-init Llama on the Python standard library's
source (:func:`quantcl.recipes.python_stdlib`) with a WSD schedule (warm-up, constant peak,
cooldown over the last ``cooldown_fraction`` of the steps) at several peak learning rates, with
and without LAWA (the mean of the last ``lawa_window`` snapshots taken every ``lawa_every``
steps), over seeds, and probes the PTQ gap (:class:`~quantcl.PTQProbe`) every ``probe_every``
steps: the raw trajectory always, the LAWA average too in the averaged arms. The summary is the
table the paper's main figures summarize: the relative gap just before the cooldown and at the
end, per peak learning rate, with and without averaging, mean ± std over seeds.

:func:`ptq_continual_study` runs the probe along a continual LoRA sequence (the synthetic recipe
by default) at each precision the adapters are trained on, and reports the gap after every stage:
the part no paper has measured.

Both resume like :func:`~quantcl.studies.transition_study` (sealed per-run records).

Examples:
    >>> result = ptq_dynamics_study("runs/ptq", seeds=(0, 1, 2), steps=400)  # doctest: +SKIP
    >>> print(result.to_markdown())  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from quantcl._checks import require_choice, require_int, require_list_of, require_number
from quantcl.errors import ConfigError
from quantcl.plugins import StageCallback
from quantcl.studies._ptq_report import PTQContinualResult, PTQDynamicsResult
from quantcl.studies._runs import build_model, check_model_size, run_arms

__all__ = ["PTQArm", "ptq_dynamics_study", "ptq_continual_study"]


@dataclass(frozen=True)
class PTQArm:
    """One arm: a peak learning rate, with (``"lawa"``) or without (``"none"``) averaging, or a soup
    of cooldowns (``"soup"``, WSD only: the cooldown run from the cooldown start on several data
    orders, their weights averaged; see :mod:`quantcl.studies._ptq_soup`), under a WSD schedule
    (``"wsd"``) or its constant-learning-rate control (``"constant"``: the same warm-up, no
    cooldown), for ``steps`` optimizer steps (``None``: the study's).

    Examples:
        >>> PTQArm(1e-3).name, PTQArm(1e-3, "lawa", "constant", 1600).name
        ('lr0.001-none', 'lr0.001-lawa-constant-1600steps')
    """

    peak_lr: float
    averaging: str = "none"
    schedule: str = "wsd"
    steps: int | None = None

    @property
    def name(self) -> str:
        constant = "-constant" if self.schedule == "constant" else ""
        length = f"-{self.steps}steps" if self.steps is not None else ""
        return f"lr{self.peak_lr:g}-{self.averaging}{constant}{length}"


class _AveragedProbe(StageCallback):
    """Probe the LAWA average (taken by ``lawa``, which runs before this callback) every ``every``
    steps; the records go into the stage record (``lawa_probe``), so a resumed run keeps them."""

    def __init__(self, lawa: Any, probe: Any, tokenizer: Any, every: int) -> None:
        self.lawa, self.probe, self.tokenizer, self.every = lawa, probe, tokenizer, every
        self.records: list[dict[str, Any]] = []
        self.callback = _AverageEvery(self)

    def trainer_callbacks(self, trainer: Any, stage: int, task: Any) -> list[Any]:
        return [self.callback]

    def on_stage_end(self, trainer: Any, stage: int, task: Any, scores: dict[str, float]) -> None:
        trainer.log_stage(lawa_probe=self.records)


class _AverageEvery(TrainerCallback):
    def __init__(self, owner: _AveragedProbe) -> None:
        self.owner = owner

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        o = self.owner
        if model is not None and state.global_step % o.every == 0 and o.lawa.snapshots:
            averaged = o.lawa.apply(model)
            o.records.extend(o.probe.measure_now(averaged, o.tokenizer, int(state.global_step)))
            del averaged
        return control


class _EndProbe(StageCallback):
    """``methods`` measured on the trained model at optimizer step ``before`` and at the stage's end
    (records into the stage record, ``end_probe``, so a resumed run keeps them)."""

    def __init__(self, methods: list[str], texts: list[str], calibration: list[str], before: int,
                 max_length: int) -> None:
        self.methods, self.texts, self.calibration, self.before, self.max_length = (
            methods, texts, calibration, before, max_length)
        self.records: list[dict[str, Any]] = []
        self.callback = _MeasureAt(self)
        self._trainer: Any = None

    def trainer_callbacks(self, trainer: Any, stage: int, task: Any) -> list[Any]:
        self._trainer = trainer
        return [self.callback]

    def measure(self, model: Any, step: int) -> None:
        from quantcl.precision.ptq import measure

        rows = measure(model, self._trainer.tokenizer, self.texts, self.methods, max_length=self.max_length,
                       batch_size=8, calibration=self.calibration)
        self.records = [r for r in self.records if r["step"] != step] + [{"step": step, **r} for r in rows]

    def on_stage_end(self, trainer: Any, stage: int, task: Any, scores: dict[str, float]) -> None:
        self.measure(trainer.model, trainer.steps_done)
        trainer.log_stage(end_probe=self.records)


class _MeasureAt(TrainerCallback):
    def __init__(self, owner: _EndProbe) -> None:
        self.owner = owner

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        if model is not None and state.global_step == self.owner.before:
            self.owner.measure(model, int(state.global_step))
        return control


def ptq_dynamics_study(
    output_dir: str | os.PathLike[str],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    peak_lrs: Sequence[float] = (1e-3, 3e-3, 1e-2),
    averaging: Sequence[str] = ("none", "lawa"),
    schedules: Sequence[str] = ("wsd",),
    run_lengths: Sequence[int] | None = None,
    arms: Sequence[PTQArm] | None = None,
    steps: int = 400,
    warmup_fraction: float = 0.05,
    cooldown_fraction: float = 0.2,
    decay_type: str = "linear",
    probe_every: int = 25,
    soup_ingredients: int = 3,
    end_methods: Sequence[str] = (),
    methods: Sequence[str] = ("rtn3", "rtn4", "rtn8", "int8", "nf4"),
    lawa_every: int = 10,
    lawa_window: int = 5,
    n_texts: int = 32,
    hidden_size: int = 128,
    num_layers: int = 4,
    batch_size: int = 8,
    chunk_chars: int = 256,
    model: str | None = None,
    progress: bool = False,
    executor: Any = "sequential",
    max_workers: int = 2,
    ray_resources: Mapping[str, float] | None = None,
) -> PTQDynamicsResult:
    """Run (or resume) the pre-training study under ``output_dir``; see the module docstring.

    ``schedules``: ``"wsd"`` and/or ``"constant"`` (the control: the same warm-up, a constant
    learning rate to the end; its "cooldown" is the same span of steps, without a decay).
    ``run_lengths``: optimizer steps of each arm (``None``: ``steps`` only); the cooldown is the
    last ``cooldown_fraction`` of each. ``arms``: an explicit list of :class:`PTQArm` instead of
    the product of ``peak_lrs`` x ``averaging`` x ``schedules`` x ``run_lengths``.
    ``soup_ingredients``: the cooldowns a ``"soup"`` arm averages (ingredient 0 on the WSD arm's
    own data order). ``end_methods``: PTQ methods too costly to probe every ``probe_every`` steps
    (GPTQ: ``"gptq3-g32"``, which needs gptqmodel), measured in the arms without averaging only at
    the last probe step before the cooldown and at the end, calibrated on ``n_texts`` training
    chunks (records ``end_probe``; the report's before/after columns and contrasts read them like
    the others, except the equal-loss ones, which need a trajectory). ``model``: ``None`` pre-trains a random-init Llama per seed (``hidden_size``, ``num_layers``,
    a character tokenizer); a pretrained model (a local checkpoint directory, a ``.gguf`` file,
    ``"quantcl:smollm2"``) is pre-trained further instead, from the same weights at every seed (the
    seed sets the data order), with its own tokenizer (``hidden_size`` / ``num_layers`` unused).
    ``executor``, ``max_workers``, ``ray_resources``: where the runs train, as in
    :class:`~quantcl.sweep.Sweep` (``"process"``: ``max_workers`` runs side by side; ``"ray"``, e.g.
    ``ray_resources={"num_gpus": 0.25}`` for four runs per GPU); with the same torch threads a
    run's record is the same on every executor.
    """
    from quantcl.precision.ptq import parse_method

    seeds = [require_int(s, "seeds[i]", minimum=0) for s in require_list_of(seeds, "seeds", int, items="ints",
                                                                            nonempty=True)]
    steps = require_int(steps, "steps", minimum=20)
    lengths: list[int | None] = [None] if run_lengths is None else [
        require_int(n, "run_lengths[i]", minimum=20) for n in require_list_of(run_lengths, "run_lengths", int,
                                                                               items="ints", nonempty=True)]
    if arms is not None:
        given = require_list_of(arms, "arms", PTQArm, items="PTQArm", nonempty=True)
        lengths = [None, *sorted({require_int(a.steps, "arms[i].steps", minimum=20) for a in given
                                  if a.steps is not None})]
        arms = [PTQArm(a.peak_lr, a.averaging, a.schedule, None if a.steps == steps else a.steps) for a in given]
    else:
        arms = [PTQArm(lr, a, sched, None if n == steps else n) for n in lengths
                for lr in require_list_of(peak_lrs, "peak_lrs", (int, float), items="numbers", nonempty=True)
                for a in require_list_of(averaging, "averaging", str, items="'none' / 'lawa'", nonempty=True)
                for sched in require_list_of(schedules, "schedules", str, items="'wsd' / 'constant'", nonempty=True)]
    for arm in arms:
        require_number(arm.peak_lr, "peak_lrs[i]", low=0, low_open=True)
        require_choice(arm.averaging, "averaging[i]", ("none", "lawa", "soup"))
        require_choice(arm.schedule, "schedules[i]", ("wsd", "constant"))
        if arm.averaging == "soup" and arm.schedule != "wsd":
            raise ConfigError(f"arm {arm.name}: a soup averages cooldowns, so it needs schedule='wsd'")
    if len({a.name for a in arms}) != len(arms):
        raise ConfigError(f"the arms must be distinct, got {[a.name for a in arms]}")
    require_number(warmup_fraction, "warmup_fraction", low=0, high=0.5)
    if not 0 < require_number(cooldown_fraction, "cooldown_fraction", low=0, high=1) < 1:
        raise ConfigError(f"cooldown_fraction must be in (0, 1), got {cooldown_fraction}")
    require_choice(decay_type, "decay_type", ("linear", "cosine", "1-sqrt"))
    every = require_int(probe_every, "probe_every", minimum=1)
    names = [parse_method(m).name for m in require_list_of(methods, "methods", str, items="PTQ methods", nonempty=True)]
    costly = [parse_method(m).name for m in require_list_of(end_methods, "end_methods", str, items="PTQ methods")]
    if set(costly) & set(names):
        raise ConfigError(f"end_methods {sorted(set(costly) & set(names))} are already probed every probe_every steps")
    for method in costly:
        if parse_method(method).kind == "gptq":
            from quantcl.precision.ptq import require_gptqmodel

            require_gptqmodel(method)  # before any run: gptqmodel present, and a torch it runs on
    require_int(lawa_every, "lawa_every", minimum=1)
    require_int(lawa_window, "lawa_window", minimum=1)
    require_int(n_texts, "n_texts", minimum=1)
    check_model_size(hidden_size, num_layers, batch_size, chunk_chars)
    source = None if model is None else _checkpoint_dir(model)
    cooldown_start = _cooldown_start(steps, cooldown_fraction)
    for n in [steps] + [n for n in lengths if n is not None]:
        if _cooldown_start(n, cooldown_fraction) < every:
            raise ConfigError(f"no probe before the cooldown of a {n}-step run (it starts at step "
                              f"{_cooldown_start(n, cooldown_fraction)}, probe_every={every})")
    settings = {"seeds": seeds, "steps": steps, "warmup_fraction": warmup_fraction, "cooldown_fraction": cooldown_fraction,
                "cooldown_start": cooldown_start, "decay_type": decay_type, "probe_every": every, "methods": names,
                "lawa_every": lawa_every, "lawa_window": lawa_window, "n_texts": n_texts, "hidden_size": hidden_size,
                "num_layers": num_layers, "batch_size": batch_size, "chunk_chars": chunk_chars}
    if model is not None:  # only then, so a random-init study's directory reads as before
        settings.update(model=model, hidden_size=None, num_layers=None)
    if any(a.averaging == "soup" for a in arms):
        settings["soup_ingredients"] = require_int(soup_ingredients, "soup_ingredients", minimum=2)
    if costly:
        settings["end_methods"] = costly
    records = run_arms(Path(output_dir), settings, arms, seeds, _arm_name,
                       functools.partial(_pretrain, s=settings, source=source, progress=progress),
                       executor=executor, max_workers=max_workers, ray_resources=ray_resources)
    return PTQDynamicsResult(records, settings)


def _cooldown_start(steps: int, cooldown_fraction: float) -> int:
    return steps - round(cooldown_fraction * steps)


def _checkpoint_dir(model: str) -> str:
    """The local checkpoint directory of ``model`` (a ``quantcl:`` alias or a ``.gguf`` file converted
    once), refused before any run when it is neither a directory nor a GGUF file."""
    from quantcl.models import resolve_model_alias
    from quantcl.precision.gguf import gguf_to_checkpoint, is_gguf_source

    if not isinstance(model, str) or not model:
        raise ConfigError(f"ptq_dynamics_study(model=...) must be a non-empty string, got {model!r}")
    path = resolve_model_alias(model, progress=False)
    if is_gguf_source(path):
        return str(gguf_to_checkpoint(path))
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"ptq_dynamics_study(model=...) must be a local checkpoint directory, a .gguf file or "
                          f"'quantcl:smollm2' / 'quantcl:demo', got {model!r} (no config.json there)")
    return path


def _joined(rows: Any) -> list[str]:
    """The texts of a task split's rows: prompt and target joined."""
    return [p + t for p, t in zip(rows["prompt"], rows["target"])]


def _pretrain(run_dir: Path, arm: PTQArm, seed: int, s: dict[str, Any], source: str | None,
              progress: bool) -> dict[str, Any]:
    from transformers import AutoTokenizer

    import quantcl as qcl
    from quantcl.averaging import LAWA

    steps = arm.steps or s["steps"]
    model_dir = source or build_model(run_dir, s["hidden_size"], s["num_layers"], s["chunk_chars"], seed)
    tasks = qcl.recipes.python_stdlib(n_train=steps * s["batch_size"], n_eval=s["n_texts"],
                                      chunk_chars=s["chunk_chars"], seed=seed)
    texts = _joined(tasks[0].eval)
    # GPTQ (end_methods) calibrates on training text, not the held-out sample
    calibration = _joined(tasks[0].train.select(range(s["n_texts"]))) if s.get("end_methods") else None
    probe = qcl.PTQProbe(s["methods"], every=s["probe_every"], texts=texts, max_length=s["chunk_chars"] + 8)
    callbacks: list[Any] = []
    averaged = None
    if arm.averaging == "lawa":
        lawa = LAWA(every=s["lawa_every"], window=s["lawa_window"])
        averaged = _AveragedProbe(lawa, qcl.PTQProbe(s["methods"], texts=texts, max_length=s["chunk_chars"] + 8),
                                  AutoTokenizer.from_pretrained(model_dir), s["probe_every"])
        callbacks = [lawa, averaged]
    schedule: dict[str, Any] = {"lr_scheduler_type": "constant_with_warmup"}
    if arm.schedule == "wsd":
        schedule = {"lr_scheduler_type": "warmup_stable_decay", "cooldown_fraction": s["cooldown_fraction"],
                    "lr_scheduler_kwargs": {"decay_type": s["decay_type"]}}
    args = qcl.StageArgs(max_steps=steps, learning_rate=arm.peak_lr, warmup_steps=s["warmup_fraction"],
                         per_device_train_batch_size=s["batch_size"], **schedule, max_length=s["chunk_chars"] + 8,
                         logging_steps=max(1, steps // 10), eval_batch_size=32, extra={"report_to": "none"})
    head = {"arm": arm.name, **asdict(arm), "steps": steps, "seed": seed,
            "cooldown_start": _cooldown_start(steps, s["cooldown_fraction"])}
    if arm.averaging == "soup":
        from quantcl.studies._ptq_soup import train_soup_arm

        return {**head, **train_soup_arm(run_dir, {**s, "cooldown_start": head["cooldown_start"]}, seed,
                                         Path(model_dir), tasks, texts, calibration, args)}
    ends = None
    if calibration is not None and arm.averaging == "none":
        ends = _EndProbe(s["end_methods"], texts, calibration,
                         (head["cooldown_start"] // s["probe_every"]) * s["probe_every"], s["chunk_chars"] + 8)
        callbacks = [*callbacks, ends]
    trainer = qcl.ContinualTrainer(
        model=str(model_dir), precision="fp32", tasks=tasks, training="full", seed=seed, progress=progress,
        output_dir=run_dir / "run", plugins=[probe], callbacks=callbacks, args=args)
    result = trainer.fit(resume=True)  # an arm cut off by an earlier invocation goes on
    stage = result.stage_records[0]
    return {**head, "final_loss": result.eval_details["1"]["stdlib"]["loss"], "train_loss": stage["train_loss"],
            "probe": stage["ptq_probe"], "lawa_probe": stage["lawa_probe"] if averaged is not None else None,
            **({"end_probe": stage["end_probe"]} if ends is not None else {})}


def ptq_continual_study(
    output_dir: str | os.PathLike[str],
    *,
    model: str = "quantcl:demo",
    precisions: Sequence[str] = ("fp32", "int8", "nf4"),
    seeds: Sequence[int] = (0, 1, 2),
    methods: Sequence[str] = ("rtn3", "rtn4", "rtn8", "int8", "nf4"),
    tasks: str = "synthetic",
    n_train: int = 400,
    n_eval: int = 40,
    max_steps: int = 250,
    learning_rate: float = 2e-3,
    n_texts: int = 48,
    progress: bool = False,
    executor: Any = "sequential",
    max_workers: int = 2,
    ray_resources: Mapping[str, float] | None = None,
) -> PTQContinualResult:
    """The probe along a continual LoRA sequence, per precision the adapters are trained on.

    Each (precision, seed) is a :class:`~quantcl.ContinualTrainer` run of the recipe ``tasks``
    (``"synthetic"``: NLU -> Math -> Code) with LoRA at that precision (compute in fp32) and a
    :class:`~quantcl.PTQProbe` at every stage end, on the tasks' evaluation rows; an int8/nf4 base
    is dequantized into the float copy before PTQ (see :func:`quantcl.precision.ptq.quantize`).
    ``executor`` / ``max_workers`` / ``ray_resources``: as in :func:`ptq_dynamics_study`.
    """
    from quantcl.precision import PrecisionPolicy
    from quantcl.precision.ptq import parse_method

    policies = [PrecisionPolicy(p) for p in require_list_of(precisions, "precisions", str, items="presets", nonempty=True)]
    seeds = [require_int(s, "seeds[i]", minimum=0) for s in require_list_of(seeds, "seeds", int, items="ints",
                                                                            nonempty=True)]
    names = [parse_method(m).name for m in require_list_of(methods, "methods", str, items="PTQ methods", nonempty=True)]
    require_choice(tasks, "tasks", ("synthetic",))
    settings = {"model": model, "seeds": seeds, "methods": names, "tasks": tasks, "n_train": require_int(n_train, "n_train", minimum=1),
                "n_eval": require_int(n_eval, "n_eval", minimum=1), "max_steps": require_int(max_steps, "max_steps", minimum=1),
                "learning_rate": require_number(learning_rate, "learning_rate", low=0, low_open=True),
                "n_texts": require_int(n_texts, "n_texts", minimum=1)}
    source = model
    if model == "quantcl:demo":
        from quantcl.models import demo_model_dir

        source = str(demo_model_dir(progress=progress))
    records = run_arms(Path(output_dir), settings, policies, seeds, _arm_name,
                       functools.partial(_continual_run, s=settings, source=source, progress=progress),
                       executor=executor, max_workers=max_workers, ray_resources=ray_resources)
    return PTQContinualResult(records, settings)


def _arm_name(arm: Any) -> str:
    return str(arm.name)


def _continual_run(run_dir: Path, policy: Any, seed: int, s: dict[str, Any], source: str,
                   progress: bool) -> dict[str, Any]:
    import quantcl as qcl
    from quantcl.precision import PrecisionPolicy

    probe = qcl.PTQProbe(s["methods"], n_texts=s["n_texts"])
    sequence = qcl.recipes.synthetic(seed=seed, n_train=s["n_train"], n_eval=s["n_eval"])
    fp32 = PrecisionPolicy(policy.name, compute_dtype="fp32") if policy.kind != "float" else policy
    result = qcl.ContinualTrainer(
        source, fp32, sequence, output_dir=run_dir / "run", seed=seed, plugins=[probe], progress=progress,
        args=qcl.StageArgs(learning_rate=s["learning_rate"], max_steps=s["max_steps"], per_device_train_batch_size=8,
                           lr_scheduler_type="constant", max_length=96, eval_batch_size=40,
                           extra={"report_to": "none"})).fit(resume=True)
    return {"precision": policy.name, "seed": seed, "tasks": result.task_names,
            "accuracy_matrix": result.accuracy_matrix.tolist(),
            "probe": [r for stage in result.stage_records for r in stage["ptq_probe"]]}
