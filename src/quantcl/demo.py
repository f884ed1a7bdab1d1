"""``quantcl demo``: the synthetic NLU -> Math -> Code sequence at 16 and 4 bits, with and
without replay, on the demo model that ships in the package (:mod:`quantcl.models`, offline).
Each run fine-tunes LoRA adapters through the three tasks.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from quantcl._io import atomic_write_bytes, atomic_write_json
from quantcl._moved import forward_moved_names
from quantcl._plot import plot_grid, require_extra
from quantcl.errors import ConfigError
from quantcl.models import demo_model_location
from quantcl.results import ContinualResult, compare_markdown

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.stage_args import StageArgs

__all__ = ["default_precisions", "demo_stage_args", "run_demo"]

# moved to quantcl.models (the model aliases); here for one release, with a DeprecationWarning
__getattr__ = forward_moved_names(__name__, dict.fromkeys(
    ("DEMO_MODEL", "SHIPPED_DEMO_MODEL", "build_demo_model", "cache_dir", "demo_model_dir", "demo_model_is_cached"),
    "quantcl.models"))


def demo_stage_args(*, quick: bool = False) -> StageArgs:
    """The per-stage training arguments the demo uses (fewer steps with ``quick``)."""
    from quantcl.stage_args import StageArgs

    return StageArgs(
        learning_rate=2e-3, max_steps=40 if quick else 250, per_device_train_batch_size=8,
        lr_scheduler_type="constant", max_length=96, eval_batch_size=40, logging_steps=50,
        # the multiple-choice task is learned in fewer steps than the generative ones
        overrides={"nlu": {"max_steps": 20 if quick else 120}},
    )


def run_demo(
    output_dir: str | Path = "quantcl-demo",
    *,
    model: str | None = None,
    precisions: Sequence[str] | None = None,
    compute_dtype: str = "auto",
    replay_fractions: Sequence[float] = (0.0, 0.1),
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    workers: int | None = None,
    out: TextIO = sys.stdout,
) -> dict[str, ContinualResult]:
    """Run the demo grid and write ``summary.json``, ``summary.md`` and ``demo.png``.

    Args:
        output_dir: where runs and summaries go (each run in ``<precision>-replay<f>/``).
        model: a Hub id, directory or .gguf to use instead of the built-in demo model.
        precisions: precision presets to compare (default: :func:`default_precisions`).
        compute_dtype: compute dtype of the quantized presets; ``"auto"`` picks bf16 on a GPU
            and on a CPU with native bf16 (AVX512-BF16 or AMX), else fp32 (emulated bf16 is
            ~10x slower than fp32).
        replay_fractions: replay fractions to compare (0 = no replay).
        seed: seeds data, LoRA init and replay.
        quick: a smaller, faster configuration (for smoke tests).
        progress: show progress bars.
        workers: processes running runs side by side (default: 1 on a GPU, else one per CPU
            core up to the number of runs; each gets ``cores // workers`` torch threads).
            A run's numbers depend on its thread count, so compare runs made with the same.

    Returns:
        ``{run name: ContinualResult}``.

    Examples:
        >>> results = run_demo("quantcl-demo", quick=True, progress=False)  # doctest: +SKIP
        >>> results["nf4-replay0.1"].metrics["forgetting"]                   # doctest: +SKIP
    """
    from quantcl._demo_runs import DemoProgress, DemoRun, Workers, plan_workers, run_grid
    from quantcl.precision import PrecisionPolicy
    from quantcl.replay import ReplayBuffer

    require_extra("matplotlib", "plot")  # the PNG is written last: fail now, not after training
    if precisions is None:
        precisions = default_precisions()
    # unknown names fail here, before any work
    policies = [_demo_policy(PrecisionPolicy(p), compute_dtype) for p in precisions]
    for f in replay_fractions:
        ReplayBuffer(fraction=f)
    output_dir = Path(output_dir)
    started = time.perf_counter()
    model_spec: dict[str, Any] = {"steps": 400} if quick else {}
    model_dir = model if model is not None else str(demo_model_location(**model_spec))
    runs = [
        DemoRun(name=f"{policy.name}-replay{fraction:g}", model_dir=model_dir, policy=policy, fraction=fraction,
                seed=seed, quick=quick, stage_args=demo_stage_args(quick=quick),
                output_dir=str(output_dir / f"{policy.name}-replay{fraction:g}"))
        for policy in policies
        for fraction in replay_fractions
    ]
    n_workers, threads = plan_workers(workers, len(runs))
    pool = Workers(n_workers, threads) if n_workers > 1 else None
    finished = False
    try:
        for run in runs:  # runs left in output_dir must be continuable: check now
            try:
                run.trainer([]).check_resume(resume=True)
            except ConfigError as err:
                raise ConfigError(f"{err} (demo run {run.name!r}; pass another --output-dir)") from err
        if model is None:
            print("Preparing the demo model (built and pretrained once, then cached)...", file=out)
            from quantcl.models import demo_model_dir  # not at the top: it would hide the old name's warning

            demo_model_dir(progress=progress, **model_spec)
        if pool is not None:
            print(f"{len(runs)} runs on {n_workers} worker processes with {threads} torch thread(s) each "
                  f"(--workers 1 runs them one by one in this process)", file=out, flush=True)
        bars = DemoProgress(sum(run.steps for run in runs), enabled=progress)

        def report(run: DemoRun, result: ContinualResult) -> None:
            bars.write(f"\n=== {run.name} ===\n{result.to_markdown()}", out)
            result.plot(Path(run.output_dir) / "result.png")

        results = run_grid(runs, workers=pool, progress=bars, on_done=report)
        finished = True
    finally:
        if pool is not None:
            pool.close(kill=not finished)
    summary = compare_markdown(results)
    print("\n=== summary ===", file=out)
    print(summary, file=out)
    atomic_write_bytes(output_dir / "summary.md", (summary + "\n").encode())
    atomic_write_json(output_dir / "summary.json", {
        "seconds": time.perf_counter() - started,
        "workers": n_workers,
        "threads_per_worker": threads,
        "runs": {name: r.to_dict() for name, r in results.items()},
    })
    plot_grid(results, output_dir / "demo.png")
    print(f"\nWrote {output_dir / 'summary.json'} and {output_dir / 'demo.png'} "
          f"in {time.perf_counter() - started:.0f} s", file=out)
    return results


def default_precisions() -> tuple[str, str]:
    """``("bf16", "nf4")`` where bf16 is native, else ``("fp32", "nf4")``: 16 bits against 4.

    bf16 is native on CUDA GPUs that support it and on CPUs with AVX512-BF16 or AMX; elsewhere
    it is emulated and a bf16 run would take ~10x longer than the fp32 one it stands in for.
    int8 is left to ``--precisions bf16,int8,nf4``: its two runs add half again to the demo's
    time on a 2-core CPU (three rounds of two runs instead of two).
    """
    import torch

    from quantcl.precision import cpu_has_native_bf16

    if torch.cuda.is_available():
        native = torch.cuda.is_bf16_supported()
    else:
        native = cpu_has_native_bf16()
    return ("bf16" if native else "fp32", "nf4")


def _demo_policy(policy: Any, compute_dtype: str) -> Any:
    if policy.kind == "float":
        return policy
    if compute_dtype == "auto":
        import torch

        from quantcl.precision import cpu_has_native_bf16

        if torch.cuda.is_available():
            return policy
        # emulated bf16 is ~10x slower than fp32; native bf16 ~1.2x faster (demo model, nf4/int8)
        compute_dtype = "bf16" if cpu_has_native_bf16() else "fp32"
    return dataclasses.replace(policy, compute_dtype=compute_dtype)
