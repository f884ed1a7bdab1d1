"""The model-soup arm of the PTQ-dynamics study (arXiv 2510.06213, its weight-averaging interventions).

A soup arm trains one WSD run up to its cooldown start (the trunk, probed like every arm), keeps
that ``transformers`` checkpoint (weights, optimizer, learning-rate schedule, RNG), and runs the
cooldown from it ``ingredients`` times, each on the rows the trunk has not trained on (the same
rows for every ingredient) in another order; ingredient 0 keeps the trunk's own order, so it is the
WSD arm's run. The order is explicit: the trunk's sampler order is read once, and each ingredient
reads its rows sequentially (the trunk's seen rows first, skipped on resume, then its own
permutation of the unseen ones). The soup is the uniform mean of the
ingredients' final weights (:func:`quantcl.averaging.soup`). Recorded: the trunk's probes, the PTQ
gap of every ingredient and of the soup on the held-out sample, each with its float loss.

Everything is a plain ``transformers.Trainer`` built from the same pieces as a
:class:`~quantcl.ContinualTrainer` stage (its ``TrainingArguments``, tokenization, collator), so
the trunk and ingredient 0 train as the WSD arm does. A cut-off arm resumes: a finished trunk and
finished ingredients are kept (their checkpoint, their final weights and their records).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

from quantcl._io import atomic_write_json, read_json

__all__ = ["train_soup_arm"]

INGREDIENT_SEED = 1000  # ingredient i > 0 orders its cooldown rows with random.Random(1000 * (seed + 1) + i)


def train_soup_arm(run_dir: Path, s: dict[str, Any], seed: int, model_dir: Path, tasks: Any, texts: list[str],
                   calibration: list[str] | None, stage_args: Any) -> dict[str, Any]:
    """The record of one soup arm (see the module docstring): the study's settings ``s`` (with
    this arm's ``cooldown_start``), ``stage_args`` the WSD arm's :class:`~quantcl.StageArgs`,
    ``texts`` the held-out sample, ``calibration`` GPTQ's texts (with ``end_methods``); ``final_loss`` is the soup's loss on the task's evaluation rows,
    as the other arms'."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantcl.averaging import load_trainable, soup, trainable_state_dict
    from quantcl.precision.ptq import measure

    steps, start = stage_args.max_steps, s["cooldown_start"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    methods = [*s["methods"], *s.get("end_methods", [])]  # the ingredients and the soup: GPTQ included
    trunk_probe, order = _trunk(run_dir / "trunk", model_dir, tokenizer, tasks, texts, seed, s, stage_args)
    checkpoint = run_dir / "trunk" / f"checkpoint-{start}"
    seen = start * stage_args.per_device_train_batch_size * stage_args.gradient_accumulation_steps
    ingredients, weights = [], []
    for i in range(s["soup_ingredients"]):
        order_seed = None if i == 0 else INGREDIENT_SEED * (seed + 1) + i
        unseen = list(order[seen:])
        if order_seed is not None:
            random.Random(order_seed).shuffle(unseen)
        record, final = _ingredient(run_dir / f"ingredient-{i}", checkpoint, model_dir, tokenizer, tasks, texts,
                                    seed, order_seed, [*order[:seen], *unseen],
                                    {**s, "methods": methods, "calibration": calibration}, stage_args)
        ingredients.append(record)
        weights.append(final)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where they trained (StageArgs' use_cpu)

    def load(folder: Path) -> Any:
        loaded: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        return loaded.to(device)

    model = load(weights[0])
    load_trainable(model, soup([trainable_state_dict(load(w)) for w in weights]))
    soup_rows = measure(model, tokenizer, texts, methods, max_length=s["chunk_chars"] + 8, batch_size=8,
                        calibration=calibration)
    final_step = [{"step": steps, "stage": 1, "learning_rate": 0.0, **row} for row in soup_rows]
    final_loss = tasks[0].evaluate(model, tokenizer, batch_size=32, progress=False).metrics["loss"]
    return {"probe": trunk_probe + final_step, "final_loss": float(final_loss), "ingredients": ingredients,
            "train_loss": None, "lawa_probe": None}


def _build(model: Any, tokenizer: Any, tasks: Any, args: Any, callbacks: list[Any],
           order: list[int] | None = None) -> Any:
    """The stage's plain ``transformers.Trainer``; with ``order``, it reads the training rows in
    that order (a sequential sampler) instead of shuffling them."""
    from transformers import Trainer

    from quantcl._runtime import no_final_checkpoint
    from quantcl.tasks import make_collator, tokenize_for_training

    data = tokenize_for_training(tasks[0].training_rows(tokenizer), tokenizer, max_length=args.max_length)
    cls = Trainer
    if order is not None:
        data = data.select(order)

        class InOrder(Trainer):
            def _get_train_sampler(self, train_dataset: Any = None) -> Any:
                from torch.utils.data import SequentialSampler

                rows: Any = train_dataset if train_dataset is not None else self.train_dataset
                return SequentialSampler(rows)

        cls = InOrder
    return cls(model=model, args=args.training_arguments_, train_dataset=data, data_collator=make_collator(tokenizer),
               processing_class=tokenizer, callbacks=[*callbacks, no_final_checkpoint()])


def _row_order(trainer: Any) -> list[int]:
    """The order in which ``trainer`` reads its training rows in the first epoch: that of a fresh
    dataloader of its own (accelerate's seeded sampler, as ``train`` builds it), read once."""
    return [int(i) for batch in trainer.get_train_dataloader().batch_sampler for i in batch]


def _trunk(out: Path, model_dir: Path, tokenizer: Any, tasks: Any, texts: list[str], seed: int, s: dict[str, Any],
           stage_args: Any) -> tuple[list[dict[str, Any]], list[int]]:
    """Train the WSD run to its cooldown start, saving the checkpoint there; ``(its probe records,
    the order it reads the training rows in)``."""
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback

    import quantcl as qcl

    start, done = s["cooldown_start"], out / "trunk.json"
    if done.is_file() and (out / f"checkpoint-{start}").is_dir():
        saved = read_json(done)
        return list(saved["probe"]), [int(i) for i in saved["order"]]
    shutil.rmtree(out, ignore_errors=True)

    class StopAtCooldown(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step >= start:
                control.should_save = control.should_training_stop = True
            return control

    probe = qcl.PTQProbe(s["methods"], every=s["probe_every"], texts=texts, max_length=s["chunk_chars"] + 8,
                         at_stage_end=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = _build(model, tokenizer, tasks, _Args(stage_args, out, seed), [probe.callback, StopAtCooldown()])
    order = _row_order(trainer)
    trainer.train()
    records = [{**r, "stage": 1} for r in probe.records]
    atomic_write_json(done, {"probe": records, "order": order})
    return records, order


def _ingredient(out: Path, checkpoint: Path, model_dir: Path, tokenizer: Any, tasks: Any, texts: list[str],
                seed: int, order_seed: int | None, order: list[int], s: dict[str, Any],
                stage_args: Any) -> tuple[dict[str, Any], Path]:
    """The cooldown from ``checkpoint``, reading the training rows in ``order`` (the rows before the
    checkpoint's step are skipped on resume); ``(record, folder of its final weights)``."""
    import torch
    from transformers import AutoModelForCausalLM

    from quantcl.precision.ptq import measure

    final, done = out / "final", out / "ingredient.json"
    if done.is_file() and (final / "config.json").is_file():
        return dict(read_json(done)), final
    shutil.rmtree(out, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)  # the checkpoint's weights replace these
    trainer = _build(model, tokenizer, tasks, _Args(stage_args, out, seed), [], order=order)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    rows = measure(trainer.model, tokenizer, texts, s["methods"], max_length=s["chunk_chars"] + 8, batch_size=8,
                   calibration=s["calibration"])
    trainer.model.save_pretrained(final)
    record = {"order_seed": order_seed, "ce_fp": float(rows[0]["ce_fp"]),
              "gaps": {r["method"]: float(r["relative_gap"]) for r in rows}}
    atomic_write_json(done, record)
    return record, final


class _Args:
    """A WSD arm's StageArgs as one plain Trainer's arguments: the ContinualTrainer's stage 1
    (``seed + 1``), writing under ``out``, no checkpoints but the one the trunk asks for."""

    def __init__(self, stage_args: Any, out: Path, seed: int) -> None:
        from quantcl.precision import PrecisionPolicy

        self.max_length = stage_args.max_length
        self.training_arguments_ = stage_args.training_arguments(
            str(out), seed=seed + 1, **PrecisionPolicy("fp32").training_arguments(), save_strategy="no",
            disable_tqdm=True)
