"""The 16-bit -> 1.58-bit transition study (Nielsen et al., 2025, arXiv 2502.11895), offline.

A small random-init Llama-architecture model is pre-trained on the Python standard library's
source (:func:`quantcl.recipes.python_stdlib`: real text on every machine) under each variant:

- ``float``: float training only (fp32 on CPU; the paper's 16-bit baseline);
- ``ternary``: 1.58-bit QAT from scratch (BitLinear at strength 1 from step 0);
- ``switch@F/optimizer/phase-in``: float until a fraction ``F`` of the steps, then ternary QAT,
  with the optimizer state kept or reset, and with a ``step`` switch or a phase-in of lambda.

Each variant runs for every seed (the seed sets the model's initialisation, the data order and
the sampled text) as a one-stage :class:`~quantcl.ContinualTrainer` run with
``training="full"``; a :class:`~quantcl.studies.HeldOutLoss` watch-only plug-in records the held-out loss
curve (every ``eval_every`` steps and after every step in the window after the switch). What is
reported per run: final held-out loss and perplexity, the loss spike at the switch (peak held-out
loss in the ``spike_window`` steps after the switch minus the loss just before it), the
downstream score on the held-out cloze task (:func:`quantcl.recipes.python_stdlib_cloze`), wall
time. :class:`~quantcl.studies.TransitionStudyResult` aggregates them over seeds (mean, std,
Student-t 95% interval), as Markdown and CSV, and plots the curves with the switch marked.

Runs are resumable: a finished run leaves ``study-record.json`` (sealed) in its directory and is
skipped next time; an unfinished run goes on from its last finished stage
(``ContinualTrainer.fit(resume=True)``; the held-out curve is kept in the stage records).

Examples:
    >>> result = transition_study("runs/transition", seeds=(0, 1, 2), steps=300)  # doctest: +SKIP
    >>> print(result.to_markdown())  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from quantcl._checks import require_bool, require_choice, require_int, require_list_of, require_number
from quantcl.errors import ConfigError
from quantcl.studies._curves import HeldOutLoss, loss_spike
from quantcl.studies._runs import RECORD_FILE, build_model, check_model_size, run_arms
from quantcl.studies._transition_report import TransitionStudyResult

__all__ = ["TransitionVariant", "transition_variants", "transition_study", "RECORD_FILE"]


@dataclass(frozen=True)
class TransitionVariant:
    """One arm of the study: ``switch_fraction`` ``None`` trains float only, ``0.0`` ternary
    from scratch, else float then ternary from that fraction of the steps.

    ``optimizer`` keeps or resets the optimizer state at the switch; ``rewarm`` re-warms the
    learning rate over the study's ``rewarm_steps`` after it (with either optimizer choice, so the
    re-warm is an arm of its own rather than part of the reset); ``learning_rate`` is this arm's
    peak learning rate (``None``: the study's), so that each precision can get its own grid.

    Examples:
        >>> TransitionVariant(0.5, "reset", "step", rewarm=True, learning_rate=1e-3).name
        'switch@0.5/reset+rewarm/step lr=0.001'
        >>> TransitionVariant(0.5, "reset", "step", rewarm=True, learning_rate=1e-3).arm
        'switch@0.5/reset+rewarm/step'
    """

    switch_fraction: float | None
    optimizer: str = "keep"
    phase_in: str = "step"
    rewarm: bool = False
    learning_rate: float | None = None

    @property
    def arm(self) -> str:
        """The name without the learning rate: what is compared across learning rates."""
        if self.switch_fraction is None:
            return "float"
        if self.switch_fraction == 0.0:
            return "ternary"
        rewarm = "+rewarm" if self.rewarm else ""
        return f"switch@{self.switch_fraction:g}/{self.optimizer}{rewarm}/{self.phase_in}"

    @property
    def name(self) -> str:
        return self.arm if self.learning_rate is None else f"{self.arm} lr={self.learning_rate:g}"


def transition_variants(switch_fractions: Sequence[float] = (0.2, 0.5, 0.8),
                        optimizers: Sequence[str] = ("keep", "reset"),
                        phase_ins: Sequence[str] = ("step", "linear"), *,
                        rewarms: Sequence[bool] = (False,),
                        learning_rates: Sequence[float] | None = None,
                        baselines: bool = True) -> list[TransitionVariant]:
    """The float and from-scratch baselines (unless ``baselines=False``), then every switch x
    optimizer x re-warm x phase-in, each at every one of ``learning_rates`` (``None``: the
    study's one learning rate).

    Examples:
        >>> [v.name for v in transition_variants((0.5,), ("keep",), ("step", "tanh"))]
        ['float', 'ternary', 'switch@0.5/keep/step', 'switch@0.5/keep/tanh']
        >>> [v.name for v in transition_variants((0.5,), ("reset",), ("step",), rewarms=(False, True),
        ...                                      learning_rates=(1e-3,), baselines=False)]
        ['switch@0.5/reset/step lr=0.001', 'switch@0.5/reset+rewarm/step lr=0.001']
    """
    for f in switch_fractions:
        if require_number(f, "switch_fractions[i]", low=0.0, high=1.0, low_open=True) == 1.0:
            raise ConfigError("switch_fractions must be in (0, 1): a switch at 1.0 is after the end of training")
    for o in optimizers:
        require_choice(o, "optimizers[i]", ("keep", "reset"))
    for p in phase_ins:
        require_choice(p, "phase_ins[i]", ("step", "linear", "tanh"))
    for r in rewarms:
        require_bool(r, "rewarms[i]")
    lrs: list[float | None] = [None] if learning_rates is None else [
        float(require_number(lr, "learning_rates[i]", low=0, low_open=True)) for lr in learning_rates]
    if not lrs:
        raise ConfigError("learning_rates must hold at least one learning rate (or be None: the study's)")
    arms = [TransitionVariant(None), TransitionVariant(0.0)] if baselines else []
    arms += [TransitionVariant(float(f), o, p, r) for f in switch_fractions for o in optimizers for r in rewarms
             for p in phase_ins]
    return [replace(a, learning_rate=lr) for lr in lrs for a in arms]


def transition_study(
    output_dir: str | os.PathLike[str],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    variants: Sequence[TransitionVariant] | None = None,
    steps: int = 300,
    phase_in_steps: int | None = None,
    rewarm_steps: int | None = None,
    spike_window: int | None = None,
    eval_every: int = 10,
    learning_rate: float = 3e-3,
    batch_size: int = 8,
    chunk_chars: int = 256,
    n_eval: int = 64,
    n_cloze: int = 200,
    hidden_size: int = 128,
    num_layers: int = 4,
    activation_bits: int | None = 8,
    progress: bool = False,
    executor: Any = "sequential",
    max_workers: int = 2,
    ray_resources: Mapping[str, float] | None = None,
) -> TransitionStudyResult:
    """Run (or resume) the study under ``output_dir``; see the module docstring.

    Args:
        output_dir: the study's directory (one sub-directory per variant and seed).
        seeds: at least one seed; report over >= 3.
        variants: the arms (default :func:`transition_variants`).
        steps: optimizer steps per run (cosine schedule, 5% warm-up).
        phase_in_steps: ``K`` of the phase-in arms (default ``steps // 10``).
        rewarm_steps: the learning-rate re-warm of the arms with ``rewarm`` (default ``steps // 20``).
        spike_window: steps after the switch over which the spike is measured (default ``K``).
        eval_every: held-out loss every this many steps (and every step in the spike window).
        learning_rate: the Trainer's peak learning rate, for the arms without their own.
        batch_size: the Trainer's.
        chunk_chars: characters per training and held-out chunk.
        n_eval: held-out chunks in the loss.
        n_cloze: held-out cloze items.
        hidden_size: the random Llama model's width.
        num_layers: the random Llama model's layers.
        activation_bits: BitLinear's activation quantization (``None``: weights only).
        progress: progress bars.
        executor: where the runs train, as in :class:`~quantcl.sweep.Sweep`: ``"sequential"``
            (this process), ``"process"`` (``max_workers`` runs side by side), ``"ray"`` (each run
            a Ray task with ``ray_resources``, e.g. ``{"num_gpus": 0.25}``) or your own
            ``concurrent.futures.Executor``. With the same torch threads a run's record is the
            same on every executor.
        max_workers: the ``"process"`` runs at once.
        ray_resources: each Ray task's ``num_cpus`` / ``num_gpus`` (default one CPU).
    """
    seeds = [require_int(s, "seeds[i]", minimum=0) for s in require_list_of(seeds, "seeds", int, items="ints")]
    if not seeds:
        raise ConfigError("transition_study needs at least one seed")
    steps = require_int(steps, "steps", minimum=10)
    k = require_int(phase_in_steps if phase_in_steps is not None else max(1, steps // 10), "phase_in_steps", minimum=1)
    rewarm = require_int(rewarm_steps if rewarm_steps is not None else max(1, steps // 20), "rewarm_steps", minimum=0)
    window = require_int(spike_window if spike_window is not None else k, "spike_window", minimum=1)
    arms = list(variants) if variants is not None else transition_variants()
    _check_inputs(arms, learning_rate, batch_size, chunk_chars, n_eval, n_cloze, hidden_size, num_layers,
                  activation_bits)
    if rewarm == 0 and any(a.rewarm for a in arms):
        raise ConfigError("an arm with rewarm=True needs rewarm_steps >= 1 (0 would run it without a re-warm)")
    # design 2: the re-warm became its own arm (a "reset" arm of design 1 also re-warmed), so a
    # study directory of design 1 is refused rather than read back under the new names
    settings = {"design": 2, "seeds": seeds, "steps": steps, "phase_in_steps": k, "rewarm_steps": rewarm, "spike_window": window,
                "eval_every": require_int(eval_every, "eval_every", minimum=1), "learning_rate": learning_rate,
                "batch_size": batch_size, "chunk_chars": chunk_chars, "n_eval": n_eval, "n_cloze": n_cloze,
                "hidden_size": hidden_size, "num_layers": num_layers, "activation_bits": activation_bits}
    records = run_arms(Path(output_dir), settings, arms, seeds, _folder,
                       functools.partial(_train_one, s=settings, progress=progress),
                       executor=executor, max_workers=max_workers, ray_resources=ray_resources)
    return TransitionStudyResult(records, settings)


def _check_inputs(arms: list[TransitionVariant], learning_rate: float, batch_size: int, chunk_chars: int,
                  n_eval: int, n_cloze: int, hidden_size: int, num_layers: int, activation_bits: int | None) -> None:
    """Every setting checked before anything is written or trained."""
    from quantcl.precision.bitlinear import check_options

    if not arms or not all(isinstance(a, TransitionVariant) for a in arms):
        raise ConfigError(f"variants must be a non-empty list of TransitionVariant, got {arms!r}")
    transition_variants([a.switch_fraction for a in arms if a.switch_fraction], [a.optimizer for a in arms],
                        [a.phase_in for a in arms], rewarms=[a.rewarm for a in arms],
                        learning_rates=[a.learning_rate for a in arms if a.learning_rate is not None] or None)
    if len({a.name for a in arms}) != len(arms):
        raise ConfigError("variants must be distinct")
    require_number(learning_rate, "learning_rate", low=0, low_open=True)
    require_int(n_eval, "n_eval", minimum=1)
    require_int(n_cloze, "n_cloze", minimum=1)
    check_model_size(hidden_size, num_layers, batch_size, chunk_chars)
    check_options("absmean", activation_bits, False)


def _folder(arm: TransitionVariant) -> str:
    return arm.name.replace("/", "-").replace("@", "-at-").replace("+", "-plus-").replace(" lr=", "-lr-")


def _train_one(run_dir: Path, arm: TransitionVariant, seed: int, s: dict[str, Any], progress: bool) -> dict[str, Any]:
    import math

    from transformers import AutoTokenizer

    import quantcl as qcl

    steps, k = s["steps"], s["phase_in_steps"]
    model_dir = build_model(run_dir, s["hidden_size"], s["num_layers"], s["chunk_chars"], seed)
    n_train = steps * s["batch_size"]
    tasks = qcl.recipes.python_stdlib(n_train=n_train, n_eval=s["n_eval"], chunk_chars=s["chunk_chars"], seed=seed)
    switch: int | None = None
    plugins: list[Any] = []
    if arm.switch_fraction is not None:
        switch = math.floor(arm.switch_fraction * steps)
        plugins = [qcl.PrecisionSchedule(
            "fp32", switch_step=switch, phase_in=arm.phase_in, phase_in_steps=k if arm.phase_in != "step" else 0,
            optimizer=arm.optimizer, rewarm_steps=s["rewarm_steps"] if arm.rewarm else 0,
            activation_bits=s["activation_bits"])]
    lr = s["learning_rate"] if arm.learning_rate is None else arm.learning_rate
    extra = list(range(switch, switch + s["spike_window"] + 1)) if switch else []
    curve = HeldOutLoss(tasks[0], AutoTokenizer.from_pretrained(model_dir), every=s["eval_every"], extra_steps=extra)
    trainer = qcl.ContinualTrainer(
        model=str(model_dir), precision="fp32", tasks=tasks, training="full", seed=seed, progress=progress,
        output_dir=run_dir / "run", plugins=plugins,
        args=qcl.StageArgs(max_steps=steps, learning_rate=lr, warmup_steps=0.05,
                           lr_scheduler_type="cosine", per_device_train_batch_size=s["batch_size"],
                           max_length=s["chunk_chars"] + 8, logging_steps=max(1, steps // 10),
                           eval_batch_size=32, extra={"report_to": "none"}), callbacks=[curve])
    result = trainer.fit(resume=True)  # an arm cut off by an earlier invocation goes on
    cloze = qcl.recipes.python_stdlib_cloze(n_train=1, n_eval=s["n_cloze"], seed=seed)[0]
    downstream = cloze.evaluate(trainer.model, trainer.tokenizer, batch_size=32, progress=False)
    final = result.eval_details["1"]["stdlib"]
    points = [(int(step), float(loss)) for stage in result.stage_records for step, loss in stage.get("held_out_loss", [])]
    return {"variant": arm.name, "arm": arm.arm, **asdict(arm), "learning_rate": lr, "seed": seed, "switch_step": switch,
            "final_loss": final["loss"], "final_perplexity": final["perplexity"],
            "spike": loss_spike(points, switch, s["spike_window"]) if switch else None,
            "cloze_acc": downstream.score, "train_loss": result.stage_records[0]["train_loss"],
            "curve": points, "strength": result.stage_records[0].get("precision_schedule", {}).get("strength")}
