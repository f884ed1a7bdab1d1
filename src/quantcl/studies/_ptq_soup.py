"""The model-soup arm of the PTQ-dynamics study (arXiv 2510.06213, its weight-averaging interventions).

A soup arm trains one WSD run up to its cooldown start (the trunk, probed like every arm), keeps
that ``transformers`` checkpoint (weights, optimizer, learning-rate schedule, RNG), and runs the
cooldown from it ``ingredients`` times, each on another data order (``data_seed``); ingredient 0
keeps the trunk's own order, so it is the WSD arm's run. The soup is the uniform mean of the
ingredients' final weights (:func:`quantcl.averaging.soup`). Recorded: the trunk's probes, the PTQ
gap of every ingredient and of the soup on the held-out sample, each with its float loss.

Everything is a plain ``transformers.Trainer`` built from the same pieces as a
:class:`~quantcl.ContinualTrainer` stage (its ``TrainingArguments``, tokenization, collator), so
the trunk and ingredient 0 train as the WSD arm does. A cut-off arm resumes: a finished trunk and
finished ingredients are kept (their checkpoint, their final weights and their records).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from quantcl._io import atomic_write_json, read_json

__all__ = ["train_soup_arm"]

INGREDIENT_SEED = 1000  # ingredient i > 0 draws its cooldown's data order with data_seed = 1000 * (seed + 1) + i


def train_soup_arm(run_dir: Path, s: dict[str, Any], seed: int, model_dir: Path, tasks: Any, texts: list[str],
                   stage_args: Any) -> dict[str, Any]:
    """The record of one soup arm (see the module docstring): the study's settings ``s`` (with
    this arm's ``cooldown_start``), ``stage_args`` the WSD arm's :class:`~quantcl.StageArgs`,
    ``texts`` the held-out sample; ``final_loss`` is the soup's loss on the task's evaluation rows,
    as the other arms'."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantcl.averaging import load_trainable, soup, trainable_state_dict
    from quantcl.precision.ptq import measure

    steps, start = stage_args.max_steps, s["cooldown_start"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trunk_probe = _trunk(run_dir / "trunk", model_dir, tokenizer, tasks, texts, seed, s, stage_args)
    checkpoint = run_dir / "trunk" / f"checkpoint-{start}"
    ingredients, weights = [], []
    for i in range(s["soup_ingredients"]):
        data_seed = None if i == 0 else INGREDIENT_SEED * (seed + 1) + i
        record, final = _ingredient(run_dir / f"ingredient-{i}", checkpoint, model_dir, tokenizer, tasks, texts,
                                    seed, data_seed, s, stage_args)
        ingredients.append(record)
        weights.append(final)
    def load(folder: Path) -> Any:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)

    model = load(weights[0])
    load_trainable(model, soup([trainable_state_dict(load(w)) for w in weights]))
    soup_rows = measure(model, tokenizer, texts, s["methods"], max_length=s["chunk_chars"] + 8, batch_size=8)
    final_step = [{"step": steps, "stage": 1, "learning_rate": 0.0, **row} for row in soup_rows]
    final_loss = tasks[0].evaluate(model, tokenizer, batch_size=32, progress=False).metrics["loss"]
    return {"probe": trunk_probe + final_step, "final_loss": float(final_loss), "ingredients": ingredients,
            "train_loss": None, "lawa_probe": None}


def _build(model: Any, tokenizer: Any, tasks: Any, args: Any, callbacks: list[Any]) -> Any:
    from transformers import Trainer

    from quantcl._runtime import no_final_checkpoint
    from quantcl.tasks import make_collator, tokenize_for_training

    data = tokenize_for_training(tasks[0].training_rows(tokenizer), tokenizer, max_length=args.max_length)
    return Trainer(model=model, args=args.training_arguments_, train_dataset=data,
                   data_collator=make_collator(tokenizer), processing_class=tokenizer,
                   callbacks=[*callbacks, no_final_checkpoint()])


def _trunk(out: Path, model_dir: Path, tokenizer: Any, tasks: Any, texts: list[str], seed: int, s: dict[str, Any],
           stage_args: Any) -> list[dict[str, Any]]:
    """Train the WSD run to its cooldown start, saving the checkpoint there; its probe records."""
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback

    import quantcl as qcl

    start, done = s["cooldown_start"], out / "trunk.json"
    if done.is_file() and (out / f"checkpoint-{start}").is_dir():
        return list(read_json(done)["probe"])
    shutil.rmtree(out, ignore_errors=True)

    class StopAtCooldown(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step >= start:
                control.should_save = control.should_training_stop = True
            return control

    probe = qcl.PTQProbe(s["methods"], every=s["probe_every"], texts=texts, max_length=s["chunk_chars"] + 8,
                         at_stage_end=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = _build(model, tokenizer, tasks, _Args(stage_args, out, seed, None, save=False),
                     [probe.callback, StopAtCooldown()])
    trainer.train()
    records = [{**r, "stage": 1} for r in probe.records]
    atomic_write_json(done, {"probe": records})
    return records


def _ingredient(out: Path, checkpoint: Path, model_dir: Path, tokenizer: Any, tasks: Any, texts: list[str],
                seed: int, data_seed: int | None, s: dict[str, Any], stage_args: Any) -> tuple[dict[str, Any], Path]:
    """The cooldown from ``checkpoint`` on the data order of ``data_seed`` (``None``: the trunk's);
    ``(record, folder of its final weights)``."""
    import torch
    from transformers import AutoModelForCausalLM

    from quantcl.precision.ptq import measure

    final, done = out / "final", out / "ingredient.json"
    if done.is_file() and (final / "config.json").is_file():
        return dict(read_json(done)), final
    shutil.rmtree(out, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)  # the checkpoint's weights replace these
    trainer = _build(model, tokenizer, tasks, _Args(stage_args, out, seed, data_seed, save=False), [])
    trainer.train(resume_from_checkpoint=str(checkpoint))
    rows = measure(trainer.model, tokenizer, texts, s["methods"], max_length=s["chunk_chars"] + 8, batch_size=8)
    trainer.model.save_pretrained(final)
    record = {"data_seed": data_seed, "ce_fp": float(rows[0]["ce_fp"]),
              "gaps": {r["method"]: float(r["relative_gap"]) for r in rows}}
    atomic_write_json(done, record)
    return record, final


class _Args:
    """A WSD arm's StageArgs as one plain Trainer's arguments: the ContinualTrainer's stage 1
    (``seed + 1``), writing checkpoints under ``out``, the data order of ``data_seed`` if given."""

    def __init__(self, stage_args: Any, out: Path, seed: int, data_seed: int | None, save: bool) -> None:
        from quantcl.precision import PrecisionPolicy

        extra: dict[str, Any] = {"save_strategy": "steps" if save else "no", "disable_tqdm": True}
        if data_seed is not None:
            extra["data_seed"] = data_seed
        self.max_length = stage_args.max_length
        self.training_arguments_ = stage_args.training_arguments(
            str(out), seed=seed + 1, **PrecisionPolicy("fp32").training_arguments(), **extra)
