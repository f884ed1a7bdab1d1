"""Shared fixtures: tiny random Llama models saved to temp dirs (the Hub is not reachable)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from quantcl.tiny import build_tiny_model  # noqa: E402


@pytest.fixture(autouse=True)
def _registrations_stay_in_their_test():
    """Strategies and evaluators a test registers are gone after it (the registries are restored)."""
    from quantcl.evaluators import base as evaluators
    from quantcl.replay import strategies

    saved = [(registry, dict(registry)) for registry in (strategies._REGISTRY, evaluators._REGISTRY)]
    yield
    for registry, before in saved:
        registry.clear()
        registry.update(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """hidden 64, 2 layers: fast; too small for bnb to quantize meaningfully."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden_size=64, num_layers=2)


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory):
    """hidden 256, 2 layers: large enough that int8/nf4/fp4 kernels are really exercised."""
    return build_tiny_model(
        tmp_path_factory.mktemp("small") / "model", hidden_size=256, num_layers=2, num_heads=4
    )


@pytest.fixture(scope="session")
def nopad_model_dir(tmp_path_factory):
    """A model whose tokenizer has no pad token, like many Llama checkpoints."""
    return build_tiny_model(
        tmp_path_factory.mktemp("nopad") / "model", hidden_size=64, num_layers=2, with_pad=False
    )
