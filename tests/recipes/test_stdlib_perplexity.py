"""The Perplexity evaluator and the Python-standard-library recipes (real offline text)."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from quantcl import ConfigError
from quantcl.evaluators import Perplexity, ShardResult
from quantcl.recipes import python_stdlib, python_stdlib_cloze, stdlib_metadata
from quantcl.evaluators.base import Shard
from quantcl.recipes.stdlib import stdlib_files


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_perplexity_is_the_token_weighted_cross_entropy_of_the_targets(lm):
    model, tok = lm
    rows = Dataset.from_dict({"prompt": ["def f", "import o", "x"], "target": ["(x):\n    return x", "s", " = 1 + 2"]})
    result = Perplexity(batch_size=2).evaluate(model, tok, rows, progress=False)
    total, count = 0.0, 0
    for prompt, target in zip(rows["prompt"], rows["target"]):  # one forward per row, by hand
        p, full = tok(prompt)["input_ids"], tok(prompt + target)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), -1)
        for pos in range(len(p), len(full)):
            total -= float(logp[pos - 1, full[pos]])
            count += 1
    assert result.n == 3 and [r["tokens"] for r in result.records] == [len(t) for t in rows["target"]]
    assert result.metrics["loss"] == pytest.approx(total / count, rel=1e-5)
    assert result.metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert result.score == pytest.approx(math.exp(-total / count), rel=1e-5)
    assert result.metrics["bits_per_token"] == pytest.approx(total / count / math.log(2), rel=1e-5)


def test_perplexity_shards_merge_to_the_whole(lm):
    model, tok = lm
    rows = Dataset.from_dict({"prompt": [f"row {i}" for i in range(7)], "target": [" x" * (i + 1) for i in range(7)]})
    ev = Perplexity(batch_size=2)
    whole = ev.evaluate(model, tok, rows, progress=False)
    parts: list[ShardResult] = [ev.evaluate_shard(model, tok, rows, Shard(i, 3), progress=False) for i in range(3)]
    merged = ev.merge(parts[::-1])
    assert merged.metrics == whole.metrics and merged.score == whole.score and ev.shardable


def test_perplexity_bad_input(lm):
    model, tok = lm
    with pytest.raises(ConfigError, match="non-empty prompt"):
        Perplexity().evaluate(model, tok, Dataset.from_dict({"prompt": [""], "target": ["abc"]}), progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        Perplexity(batch_size=0)


def test_stdlib_split_is_by_file_and_deterministic():
    train, held = stdlib_files()
    assert train and held and not set(train) & set(held) and len(held) < len(train)
    a = python_stdlib(n_train=50, n_eval=20, chunk_chars=64, prompt_chars=8, seed=3)[0]
    b = python_stdlib(n_train=50, n_eval=20, chunk_chars=64, prompt_chars=8, seed=3)[0]
    assert a.train.to_dict() == b.train.to_dict() and a.eval.to_dict() == b.eval.to_dict()
    assert all(len(p) == 8 and len(t) == 56 for p, t in zip(a.train["prompt"], a.train["target"]))
    held_text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in held)
    train_text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in train)
    chunks = [p + t for p, t in zip(a.eval["prompt"], a.eval["target"])]
    assert all(c in held_text for c in chunks)
    assert all((p + t) in train_text for p, t in zip(a.train["prompt"], a.train["target"]))
    other = python_stdlib(n_train=50, n_eval=20, chunk_chars=64, prompt_chars=8, seed=4)[0]
    assert other.train.to_dict() != a.train.to_dict()
    meta = stdlib_metadata()
    assert meta["train_files"] == len(train) and meta["heldout_files"] == len(held) and len(meta["files_sha256"]) == 16


def test_stdlib_cloze_items():
    task = python_stdlib_cloze(n_train=5, n_eval=30, context_chars=100, seed=1)[0]
    rows = task.eval.to_list()
    assert len(rows) == 30
    for row in rows:
        assert len(row["choices"]) == 4 == len(set(row["choices"]))
        assert row["choices"][row["answer"]] == row["target"] and len(row["target"].strip()) >= 20
        assert len(row["prompt"]) == 100
    assert len({r["answer"] for r in rows}) > 1  # the answer's position varies


@pytest.mark.parametrize(("call", "match"), [
    (lambda: python_stdlib(n_train=0), r"n_train=...\) must be an int >= 1"),
    (lambda: python_stdlib(chunk_chars=16, prompt_chars=16), "must be smaller than chunk_chars"),
    (lambda: python_stdlib(n_train=10**9), "the train files hold"),
    (lambda: python_stdlib(heldout_fraction=1.0), "heldout_fraction must be below 1"),
    (lambda: python_stdlib(root="/nonexistent-dir"), "need files for both the train and the held-out split"),
    (lambda: python_stdlib_cloze(n_eval=10**9), "usable lines"),
])
def test_stdlib_bad_inputs(call, match):
    with pytest.raises(ConfigError, match=match):
        call()
