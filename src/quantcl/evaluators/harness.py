"""lm-evaluation-harness tasks scored on the run's in-memory model: :class:`LMEvalHarness`.

The model the run already holds (LoRA on a bf16, int8, nf4 or ternary base) goes to lm-eval's
``HFLM`` as an object: no copy, no reload, no second process. lm-eval's ``simple_evaluate`` seeds
Python's, NumPy's and torch's *global* generators (unless its seed arguments are ``None``, and
then it still draws from ``random``); this evaluator gives it fixed seeds, so a task that samples
answers the same whatever state the run left, and restores all three generators afterwards, with
the model's train/eval mode and the tokenizer's padding, so a run with lm-eval probes trains
exactly like one without. The batch size goes to ``HFLM`` itself,
not to ``simple_evaluate`` (which would be slow on an in-memory model: lm-evaluation-harness#3207).

The evaluator reads no rows of a task: lm-eval's task definitions bring their own data. Use it as a
probe (:class:`quantcl.Probe`), evaluated at every row of the accuracy matrix and never trained on.

Examples:
    >>> harness = LMEvalHarness(tasks=["arc_easy"], limit=100)
    >>> harness.to_dict()["tasks"]
    ['arc_easy']
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from quantcl._checks import did_you_mean, require_bool, require_int
from quantcl.errors import ConfigError, UnknownNameError
from quantcl.evaluators.base import EvalResult, Evaluator, register_evaluator

__all__ = ["LMEvalHarness", "HEADLINE_METRICS"]

#: the metric that scores a task when ``metric`` is not given: the first one lm-eval reports
HEADLINE_METRICS = ("acc", "exact_match", "acc_norm", "mc2", "f1", "em")


def _lm_eval() -> Any:
    from quantcl._plot import require_extra

    return require_extra("lm_eval", "lmeval")


@functools.lru_cache(maxsize=8)
def _task_manager(include_path: str | None, defaults: bool) -> Any:
    # indexing lm-eval's own tasks reads ~15k YAML files (seconds): once per process and folder
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=defaults)


def _manager_for(tasks: Sequence[str], include_path: str | None) -> Any:
    """The smallest task index that knows every task: ``include_path`` alone when it has them all."""
    if include_path is not None:
        local = _task_manager(include_path, False)
        if all(t in local.all_tasks for t in tasks):
            return local
    return _task_manager(include_path, True)


@contextlib.contextmanager
def _untouched(model: Any, tokenizer: Any) -> Iterator[None]:
    """Restore the global random generators, the model's mode and the tokenizer's padding after
    lm-eval ran (HFLM calls ``model.eval()`` and may set a pad token)."""
    import numpy as np
    import torch

    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None)
    was_training = bool(getattr(model, "training", False))
    logger = logging.getLogger("lm_eval")  # it warns on every in-memory model, as designed here
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    padding = {k: getattr(tokenizer, k, None) for k in ("pad_token", "padding_side", "truncation_side")}
    try:
        with torch.no_grad():
            yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])
        model.train(was_training)
        logger.setLevel(level)
        for key, value in padding.items():
            if getattr(tokenizer, key, None) != value:
                setattr(tokenizer, key, value)


@contextlib.contextmanager
def _local_rank_zero() -> Iterator[None]:
    """lm-eval returns results only where ``LOCAL_RANK`` is 0 (its tensor-parallel convention);
    under torchrun each process holds the whole in-memory model and scores every document."""
    saved = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("LOCAL_RANK", None)
        else:
            os.environ["LOCAL_RANK"] = saved


@register_evaluator("lm_eval")
class LMEvalHarness(Evaluator):
    """lm-evaluation-harness tasks on the in-memory model, as a quantcl evaluator.

    Args:
        tasks: lm-eval task or group names (``["arc_easy", "hellaswag"]``), looked up in lm-eval's
            own tasks and in ``include_path``.
        include_path: a folder of task YAML files of your own (offline data:
            ``dataset_path: json`` with ``dataset_kwargs: {data_files: ...}``).
        num_fewshot: few-shot examples per prompt (``None``: each task's default).
        limit: the first ``limit`` documents of each task (an int), or that share of them (a float
            in (0, 1)).
        batch_size: requests per forward pass, given to ``HFLM``.
        metric: the metric that scores a task (``"acc"``, ``"exact_match,strict-match"``...); by
            default the first of :data:`HEADLINE_METRICS` the task reports. It must lie in [0, 1].
        fewshot_seed: seeds lm-eval's own few-shot sampler (no global generator).
        apply_chat_template: render prompts with the tokenizer's chat template.
        max_length: the longest input in tokens (default: the model's).
        log_samples: keep lm-eval's per-sample log in the records.

    The score is the mean over ``tasks`` of each one's metric; :attr:`EvalResult.metrics` holds
    ``"<task>/<metric>"`` for every metric lm-eval reported; one record per scored document (and
    filter) with ``id`` (``"<task>/<doc_id>"``), ``task``, ``prompt``, ``target``, ``prediction``,
    ``correct`` and, with ``log_samples``, lm-eval's ``doc`` and hashes.

    Under ``torchrun`` every process scores every document (lm-eval shards only a model it loads
    itself), so each holds the same result.

    Examples:
        >>> LMEvalHarness(tasks=["quantcl_stdlib_cloze"], include_path="probes/", limit=50)  # doctest: +SKIP
    """

    required_columns: tuple[str, ...] = ()
    self_contained: ClassVar[bool] = True

    def __init__(
        self,
        tasks: Sequence[str],
        include_path: str | None = None,
        num_fewshot: int | None = None,
        limit: int | float | None = None,
        batch_size: int = 8,
        metric: str | None = None,
        fewshot_seed: int = 1234,
        apply_chat_template: bool = False,
        max_length: int | None = None,
        log_samples: bool = True,
    ) -> None:
        if isinstance(tasks, str) or not isinstance(tasks, Sequence) or not tasks \
                or not all(isinstance(t, str) and t for t in tasks):
            raise ConfigError(f"LMEvalHarness(tasks=...) must be a non-empty list of lm-eval task names, got {tasks!r}")
        if len(set(tasks)) != len(tasks):
            raise ConfigError(f"LMEvalHarness(tasks=...) names a task twice: {list(tasks)}")
        if include_path is not None and not isinstance(include_path, (str, os.PathLike)):
            raise ConfigError(f"LMEvalHarness(include_path=...) must be a folder path or None, got {include_path!r}")
        if num_fewshot is not None:
            require_int(num_fewshot, "LMEvalHarness(num_fewshot=...)", minimum=0)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float))
                                  or (isinstance(limit, int) and limit < 1)
                                  or (isinstance(limit, float) and not 0 < limit < 1)):
            raise ConfigError(f"LMEvalHarness(limit=...) must be an int >= 1 (documents per task), a float in "
                              f"(0, 1) (a share of them) or None, got {limit!r}")
        require_int(batch_size, "LMEvalHarness(batch_size=...)", minimum=1)
        if metric is not None and (not isinstance(metric, str) or not metric):
            raise ConfigError(f"LMEvalHarness(metric=...) must be a metric name such as 'acc', got {metric!r}")
        require_int(fewshot_seed, "LMEvalHarness(fewshot_seed=...)", minimum=0)
        if max_length is not None:
            require_int(max_length, "LMEvalHarness(max_length=...)", minimum=1)
        self.tasks = list(tasks)
        self.include_path = None if include_path is None else str(include_path)
        self.num_fewshot, self.limit, self.batch_size, self.metric = num_fewshot, limit, batch_size, metric
        self.fewshot_seed, self.max_length = fewshot_seed, max_length
        self.apply_chat_template = require_bool(apply_chat_template, "LMEvalHarness(apply_chat_template=...)")
        self.log_samples = require_bool(log_samples, "LMEvalHarness(log_samples=...)")

    # ------------------------------------------------------------------ checks
    def check_ready(self) -> None:
        """Raise before any training: lm-eval is missing, ``include_path`` is not a folder, or a task
        is unknown (the error says where it looked)."""
        lm_eval = _lm_eval()
        if self.include_path is not None and not Path(self.include_path).is_dir():
            raise ConfigError(f"LMEvalHarness(include_path=...): {self.include_path!r} is not a folder "
                              "(a folder of lm-eval task YAML files)")
        manager = _manager_for(self.tasks, self.include_path)
        tags = [t for t in self.tasks if t in manager.all_tags]
        if tags:  # a tag has no metric of its own: its score could not be read after the evaluation
            raise ConfigError(f"LMEvalHarness: {tags} name lm-eval tags, which report no score of their own; name "
                              "their tasks, or a group that aggregates them")
        unknown = [t for t in self.tasks if t not in manager.all_tasks]
        if unknown:
            where = [f"lm-eval {getattr(lm_eval, '__version__', '')}'s own tasks "
                     f"({Path(lm_eval.__file__).parent / 'tasks'})".replace("  ", " ")]
            if self.include_path is not None:
                where.append(f"include_path {self.include_path!r}")
            raise UnknownNameError(f"LMEvalHarness: unknown lm-eval task(s) {unknown}"
                                   f"{did_you_mean(unknown[0], manager.all_tasks)}; looked in "
                                   f"{' and '.join(where)}")

    # ------------------------------------------------------------------ scoring
    def evaluate(
        self, model: Any, tokenizer: Any, dataset: Any = None, *, batch_size: int | None = None,
        progress: bool = True,
    ) -> EvalResult:
        """Score ``model`` on :attr:`tasks` (``dataset`` is not read: the tasks bring their data).

        ``batch_size`` (the run's ``eval_batch_size``) wins over the constructor's.
        """
        lm_eval = _lm_eval()
        from lm_eval.models.huggingface import HFLM

        manager = _manager_for(self.tasks, self.include_path)
        with _untouched(model, tokenizer), _local_rank_zero():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size or self.batch_size,
                      max_length=self.max_length)
            out = lm_eval.simple_evaluate(
                model=lm, tasks=list(self.tasks), num_fewshot=self.num_fewshot, limit=self.limit,
                task_manager=manager, log_samples=True, bootstrap_iters=0,
                # fixed: a sampling task answers alike whatever state the run left; restored after
                random_seed=0, numpy_random_seed=1234, torch_random_seed=1234,
                fewshot_random_seed=self.fewshot_seed, apply_chat_template=self.apply_chat_template,
            )
        return self._result(out)

    def _result(self, out: dict[str, Any]) -> EvalResult:
        results: dict[str, dict[str, Any]] = out["results"]
        metrics: dict[str, float] = {}
        for task, values in results.items():
            for key, value in values.items():
                if "," in key and "stderr" not in key and isinstance(value, (int, float)) \
                        and not isinstance(value, bool) and math.isfinite(value):
                    metrics[f"{task}/{key.replace(',none', '')}"] = float(value)
        headline = {t: self._headline(t, results.get(t, {})) for t in self.tasks}
        scores = [float(results[t][k]) for t, k in headline.items()]
        records: list[dict[str, Any]] = []
        for leaf, samples in sorted(out.get("samples", {}).items()):
            head = self._headline(leaf, results[leaf]) if leaf in results else None
            records += [self._record(leaf, s, head) for s in samples
                        if head is None or s.get("filter", "none") == head.split(",", 1)[1]]
        score = sum(scores) / len(scores)
        return EvalResult(score, metrics, records, len(records))

    def _headline(self, task: str, values: dict[str, Any]) -> str:
        """The ``"<metric>,<filter>"`` key that scores ``task``."""
        keys = [k for k in values if "," in k and "stderr" not in k]
        wanted = [self.metric] if self.metric is not None else list(HEADLINE_METRICS)
        for name in wanted:
            match = [k for k in keys if k == name or k.split(",", 1)[0] == name]
            if match:
                value = values[match[0]]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                    raise ConfigError(f"LMEvalHarness: {task!r} reports {match[0]} = {value!r}, not a score in "
                                      f"[0, 1]; pick another with metric=... (reported: {sorted(keys)})")
                return match[0]
        raise ConfigError(f"LMEvalHarness: {task!r} reports none of {wanted} (reported: {sorted(keys)}); "
                          "name the metric that scores it with metric=...")

    def _record(self, task: str, sample: dict[str, Any], key: str | None) -> dict[str, Any]:
        metric = key.split(",", 1)[0] if key else None
        args = sample.get("arguments") or [[""]]
        first = args[0] if isinstance(args, (list, tuple)) and args else [""]
        prompt = first[0] if isinstance(first, (list, tuple)) and first else str(first)
        responses = sample.get("filtered_resps")
        if isinstance(responses, list) and responses and all(isinstance(r, (list, tuple)) for r in responses):
            # multiple choice: one (log-likelihood, is-greedy) pair per option; acc_norm divides by
            # the option's length in characters, as lm-eval's does
            lls = [float(r[0]) for r in responses]
            scores = lls
            if metric == "acc_norm" and len(args) == len(lls):
                scores = [ll / max(len(str(a[1])), 1) for ll, a in zip(lls, args)]
            prediction: Any = max(range(len(scores)), key=scores.__getitem__)
            extra: dict[str, Any] = {"loglikelihoods": lls}
        else:
            prediction = responses[0] if isinstance(responses, list) and len(responses) == 1 else responses
            extra = {}
        value = sample.get(metric) if metric else None
        record: dict[str, Any] = {
            "id": f"{task}/{sample.get('doc_id')}", "task": task, "prompt": prompt,
            "target": sample.get("target"), "prediction": prediction,
            "correct": None if value is None else bool(float(value) > 0), **extra,
        }
        if metric is not None and value is not None:
            record[metric] = float(value)
        if self.log_samples:
            record.update({k: sample[k] for k in ("doc", "filter", "doc_hash", "prompt_hash", "target_hash")
                           if k in sample})
        return record
