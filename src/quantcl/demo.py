"""``quantcl demo``: the synthetic NLU -> Math -> Code sequence at three precisions, with and
without replay, on a tiny model the library builds and pretrains itself (offline, cached).

The demo model is a 4-layer, 128-wide Llama with a character tokenizer, pretrained for about a minute
on :func:`quantcl.recipes.pretraining_corpus`. It ships inside the package (``quantcl/demo_model``,
2.7 MB of safetensors with a sha256 manifest, made by ``scripts/build_demo_model.py``), so every
machine starts from the same weights; variants (``demo_model_dir(steps=...)``) are built and
cached under ``~/.cache/quantcl`` (``QUANTCL_CACHE`` overrides). Each run then fine-tunes LoRA
adapters through the three tasks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from quantcl._io import atomic_write_bytes, atomic_write_json
from quantcl._plot import plot_grid, require_extra
from quantcl.errors import ConfigError
from quantcl.results import ContinualResult, compare_markdown

if TYPE_CHECKING:  # pragma: no cover
    from quantcl.stage_args import StageArgs

__all__ = ["DEMO_MODEL", "SHIPPED_DEMO_MODEL", "build_demo_model", "cache_dir", "default_precisions",
           "demo_model_dir", "demo_model_is_cached", "demo_stage_args", "run_demo"]

# Sizes and pretraining schedule of the demo model; part of its cache key.
DEMO_MODEL: dict[str, Any] = {
    "hidden_size": 128,
    "num_layers": 4,
    "num_heads": 4,
    "steps": 2000,
    "batch_size": 16,
    "learning_rate": 3e-3,
    "seed": 0,
    "format": 2,  # bump when the architecture or the pretraining corpus changes
}


# The pretrained demo model as shipped in the package (built by scripts/build_demo_model.py).
SHIPPED_DEMO_MODEL = Path(__file__).parent / "demo_model"
MANIFEST = "quantcl-demo.json"


def cache_dir() -> Path:
    """``$QUANTCL_CACHE``, else ``$XDG_CACHE_HOME/quantcl``, else ``~/.cache/quantcl``."""
    if os.environ.get("QUANTCL_CACHE"):
        return Path(os.environ["QUANTCL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "quantcl"


def demo_model_is_cached(*, root: str | Path | None = None, **overrides: Any) -> bool:
    """Whether :func:`demo_model_dir` would return at once (shipped, or built and cached)."""
    return (_use_shipped(root, overrides) is not None) or _is_built(_demo_model_path(root, overrides))


def _use_shipped(root: str | Path | None, overrides: dict[str, Any]) -> Path | None:
    """The shipped model's directory when it is what was asked for (the default spec, no root)."""
    if root is not None or any(DEMO_MODEL.get(k) != v for k, v in overrides.items()):
        return None
    manifest = SHIPPED_DEMO_MODEL / MANIFEST
    if not manifest.is_file():
        return None
    data = json.loads(manifest.read_text())
    return SHIPPED_DEMO_MODEL if data.get("spec") == DEMO_MODEL else None


def _check_shipped(path: Path) -> None:
    from quantcl._io import sha256_file

    files = json.loads((path / MANIFEST).read_text())["files"]
    for name, digest in files.items():
        if not (path / name).is_file() or sha256_file(path / name) != digest:
            raise ConfigError(f"the shipped demo model's {name} is missing or does not match its sha256 in "
                              f"{path / MANIFEST}; reinstall quantcl")


def _spec(overrides: dict[str, Any]) -> dict[str, Any]:
    """:data:`DEMO_MODEL` with ``overrides``, refusing keys it does not have."""
    unknown = sorted(set(overrides) - set(DEMO_MODEL))
    if unknown:
        raise ConfigError(f"unknown demo model option(s) {unknown}; valid: {sorted(DEMO_MODEL)}")
    return {**DEMO_MODEL, **overrides}


def _demo_model_path(root: str | Path | None, overrides: dict[str, Any]) -> Path:
    spec = _spec(overrides)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return Path(root or cache_dir()) / f"demo-model-{key}"


def _is_built(path: Path) -> bool:
    return (path / "config.json").exists() and (path / MANIFEST).exists()


def demo_model_dir(*, root: str | Path | None = None, progress: bool = True, **overrides: Any) -> Path:
    """The directory of the pretrained demo model: the shipped one, or a variant built once.

    Args:
        root: cache directory (default: :func:`cache_dir`); given, the model is built there
            even for the default spec.
        progress: show the pretraining progress bar.
        overrides: change fields of :data:`DEMO_MODEL` (e.g. ``steps=200`` for tests); any
            change builds (once) and caches that variant.
    """
    shipped = _use_shipped(root, overrides)
    if shipped is not None:
        _check_shipped(shipped)
        return shipped
    final = _demo_model_path(root, overrides)
    if _is_built(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        build_demo_model(tmp, progress=progress, **overrides)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first
            if not _is_built(final):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_demo_model(path: str | Path, *, progress: bool = True, **overrides: Any) -> Path:
    """Pretrain the demo model (:data:`DEMO_MODEL`, with ``overrides``) into ``path`` and write
    its manifest (the spec, each file's sha256, and the torch/transformers versions and CPU that
    made it: a CPU's matmul rounding changes the weights, not what they have learned).

    Examples:
        >>> build_demo_model("/tmp/demo-model", steps=200)  # doctest: +SKIP
    """
    import platform

    import torch
    import transformers

    from quantcl._io import sha256_file

    spec = _spec(overrides)
    path = Path(path)
    _pretrain(path, spec, progress=progress)
    files = {p.name: sha256_file(p) for p in sorted(path.iterdir()) if p.is_file() and p.name != MANIFEST}
    atomic_write_json(path / MANIFEST, {
        "spec": spec, "files": files,
        "built_with": {"torch": torch.__version__, "transformers": transformers.__version__,
                       "cpu": _cpu_name() or platform.machine(), "threads": torch.get_num_threads()},
    })
    return path


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _pretrain(path: Path, spec: dict[str, Any], *, progress: bool) -> None:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    from quantcl.tasks.recipes.synthetic import pretraining_corpus
    from quantcl.tiny import build_tiny_model

    build_tiny_model(path, hidden_size=spec["hidden_size"], num_layers=spec["num_layers"],
                     num_heads=spec["num_heads"], seed=spec["seed"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    n = spec["steps"] * spec["batch_size"]
    texts = [t + tokenizer.eos_token for t in pretraining_corpus(n, seed=spec["seed"])]
    data = Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"]
    )
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, max_steps=spec["steps"], per_device_train_batch_size=spec["batch_size"],
            learning_rate=spec["learning_rate"], lr_scheduler_type="cosine", warmup_steps=0.1,
            weight_decay=0.0, logging_steps=max(1, spec["steps"] // 10), save_strategy="no",
            report_to="none", use_cpu=not torch.cuda.is_available(), seed=spec["seed"],
            disable_tqdm=not progress,
        )
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        Trainer(model=model, args=args, train_dataset=data, data_collator=collator).train()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


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
    shipped = _use_shipped(None, model_spec)
    model_dir = model if model is not None else str(shipped or _demo_model_path(None, model_spec))
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


def default_precisions() -> tuple[str, str, str]:
    """``("bf16", "int8", "nf4")`` where bf16 is native, else ``("fp32", "int8", "nf4")``.

    bf16 is native on CUDA GPUs that support it and on CPUs with AVX512-BF16 or AMX; elsewhere
    it is emulated and a bf16 run would take ~10x longer than the fp32 one it stands in for.
    """
    import torch

    from quantcl.precision._device import cpu_has_native_bf16

    if torch.cuda.is_available():
        native = torch.cuda.is_bf16_supported()
    else:
        native = cpu_has_native_bf16()
    return ("bf16" if native else "fp32", "int8", "nf4")


def _demo_policy(policy: Any, compute_dtype: str) -> Any:
    if policy.kind == "float":
        return policy
    if compute_dtype == "auto":
        import torch

        from quantcl.precision._device import cpu_has_native_bf16

        if torch.cuda.is_available():
            return policy
        # emulated bf16 is ~10x slower than fp32; native bf16 ~1.2x faster (demo model, nf4/int8)
        compute_dtype = "bf16" if cpu_has_native_bf16() else "fp32"
    return dataclasses.replace(policy, compute_dtype=compute_dtype)
