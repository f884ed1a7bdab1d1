"""LMEvalHarness (issue 28): lm-evaluation-harness tasks scored on the in-memory model.

Peer checks against lm-eval's own ``simple_evaluate`` loading the same model from disk, the global
random state left untouched, quantcl's MultipleChoice on the same items, and the errors raised
before any work."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import lm_eval
from lm_eval.tasks import TaskManager

import quantcl as qcl
from quantcl import ConfigError, UnknownNameError
from quantcl.evaluators import LMEvalHarness, MultipleChoice
from quantcl.recipes import write_lm_eval_task

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]


def _mc_rows(n=12):
    rng = random.Random(0)
    rows = []
    for i in range(n):
        options = rng.sample(WORDS, 3 + i % 2)  # three or four options of one to three tokens
        rows.append({"context": f"Item {i}: the word is", "choices": [f" {o}" for o in options],
                     "label": i % len(options)})
    return rows


@pytest.fixture(scope="module")
def include(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    write_lm_eval_task(folder, "qcl_test_mc", _mc_rows(), target_delimiter="")
    gen_rows = [{"context": f"Say {w}:", "answer": f" {w}"} for w in WORDS]
    write_lm_eval_task(folder, "qcl_test_gen", gen_rows, output_type="generate_until", doc_to_choice=None,
                       doc_to_target="answer", metric="exact_match",
                       generation_kwargs={"until": ["\n"], "max_gen_toks": 6, "do_sample": False})
    return str(folder)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _peer(model_dir, include_path, task):
    """lm-eval's own run: it loads the model from disk itself."""
    return lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(model_dir), "dtype": "float32", "device": "cpu"}, tasks=[task],
        task_manager=TaskManager(include_path=include_path, include_defaults=False), log_samples=True,
        bootstrap_iters=0, batch_size=4)


def test_loglikelihood_task_equals_lm_eval_own_run(tiny_model_dir, include, model_and_tokenizer):
    model, tok = model_and_tokenizer
    ours = LMEvalHarness(tasks=["qcl_test_mc"], include_path=include, batch_size=4).evaluate(model, tok)
    peer = _peer(tiny_model_dir, include, "qcl_test_mc")
    assert ours.score == pytest.approx(peer["results"]["qcl_test_mc"]["acc,none"], abs=1e-6)
    assert ours.metrics["qcl_test_mc/acc"] == pytest.approx(ours.score, abs=1e-12)
    theirs = {str(s["doc_id"]): [r[0] for r in s["filtered_resps"]] for s in peer["samples"]["qcl_test_mc"]}
    assert len(ours.records) == ours.n == 12
    for record in ours.records:
        np.testing.assert_allclose(record["loglikelihoods"], theirs[record["id"].split("/")[1]], atol=1e-5)
        assert record["prediction"] == int(np.argmax(record["loglikelihoods"]))
        assert record["correct"] == (record["prediction"] == int(record["target"]))
        assert record["task"] == "qcl_test_mc" and "doc" in record
    # quantcl's own MultipleChoice on the same items: the same log-likelihoods, the same score
    from datasets import Dataset

    rows = _mc_rows()
    ds = Dataset.from_dict({"prompt": [r["context"] for r in rows], "choices": [r["choices"] for r in rows],
                            "answer": [r["label"] for r in rows]})
    native = MultipleChoice().evaluate(model, tok, ds)
    for i, record in enumerate(native.records):
        np.testing.assert_allclose(record["loglikelihoods"], theirs[str(i)], atol=1e-4)
    assert native.score == pytest.approx(ours.score, abs=1e-12)


def test_generation_task_equals_lm_eval_own_run_exactly(tiny_model_dir, include, model_and_tokenizer):
    model, tok = model_and_tokenizer
    ours = LMEvalHarness(tasks=["qcl_test_gen"], include_path=include, batch_size=4).evaluate(model, tok)
    peer = _peer(tiny_model_dir, include, "qcl_test_gen")
    assert ours.score == peer["results"]["qcl_test_gen"]["exact_match,none"]
    theirs = {str(s["doc_id"]): s["filtered_resps"][0] for s in peer["samples"]["qcl_test_gen"]}
    assert {r["id"].split("/")[1]: r["prediction"] for r in ours.records} == theirs
    assert all(isinstance(r["prediction"], str) for r in ours.records)


def test_global_random_state_model_mode_and_tokenizer_are_left_untouched(include, model_and_tokenizer):
    model, tok = model_and_tokenizer
    model.train()
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    pad, side = tok.pad_token, tok.padding_side
    LMEvalHarness(tasks=["qcl_test_mc"], include_path=include).evaluate(model, tok)
    assert random.getstate() == before[0]
    assert (np.random.get_state()[1] == before[1]).all()
    assert torch.equal(torch.get_rng_state(), before[2])
    assert model.training and (tok.pad_token, tok.padding_side) == (pad, side)
    model.eval()


def test_metric_limit_and_several_tasks(include, model_and_tokenizer):
    model, tok = model_and_tokenizer
    both = LMEvalHarness(tasks=["qcl_test_mc", "qcl_test_gen"], include_path=include, limit=4).evaluate(model, tok)
    mc = LMEvalHarness(tasks=["qcl_test_mc"], include_path=include, limit=4).evaluate(model, tok)
    gen = LMEvalHarness(tasks=["qcl_test_gen"], include_path=include, limit=4).evaluate(model, tok)
    assert both.n == 8 and mc.n == gen.n == 4
    assert both.score == pytest.approx((mc.score + gen.score) / 2)
    with pytest.raises(ConfigError, match="reports none of \\['bleu'\\]"):
        LMEvalHarness(tasks=["qcl_test_mc"], include_path=include, metric="bleu", limit=2).evaluate(model, tok)


def test_errors_before_any_work(include, monkeypatch):
    with pytest.raises(UnknownNameError, match="unknown lm-eval task.*qcl_test_mcc.*did you mean 'qcl_test_mc'.*"
                                               "looked in lm-eval.*own tasks.*and include_path"):
        LMEvalHarness(tasks=["qcl_test_mcc"], include_path=include).check_ready()
    with pytest.raises(ConfigError, match="not a folder"):
        LMEvalHarness(tasks=["x"], include_path=include + "/missing").check_ready()
    for bad, match in ((dict(tasks="arc_easy"), "non-empty list"), (dict(tasks=["a", "a"]), "twice"),
                       (dict(tasks=["a"], limit=0), "limit"), (dict(tasks=["a"], limit=1.5), "limit"),
                       (dict(tasks=["a"], batch_size=0), "batch_size"),
                       (dict(tasks=["a"], apply_chat_template="yes"), "apply_chat_template")):
        with pytest.raises(ConfigError, match=match):
            LMEvalHarness(**bad)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'quantcl\[lmeval\]'"):
        LMEvalHarness(tasks=["qcl_test_mc"], include_path=include).check_ready()


def test_registered_for_yaml_and_saved_with_the_run():
    assert qcl.evaluators.get_evaluator("lm_eval", tasks=["arc_easy"]).tasks == ["arc_easy"]
    node = LMEvalHarness(tasks=["arc_easy"], limit=10).to_dict()
    assert LMEvalHarness.from_dict(node).to_dict() == node


def test_a_missing_pad_token_and_local_rank_are_restored(nopad_model_dir, include, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(nopad_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(nopad_model_dir)
    assert tok.pad_token is None
    monkeypatch.setenv("LOCAL_RANK", "1")  # as in the second process of a torchrun job
    result = LMEvalHarness(tasks=["qcl_test_mc"], include_path=include, limit=3).evaluate(model, tok)
    assert result.n == 3  # lm-eval returned its results although LOCAL_RANK is not 0
    assert tok.pad_token is None and __import__("os").environ["LOCAL_RANK"] == "1"


def test_sampled_answers_do_not_depend_on_the_runs_random_state(tmp_path, model_and_tokenizer):
    model, tok = model_and_tokenizer
    folder = write_lm_eval_task(tmp_path, "qcl_sampled", [{"context": f"Say {w}:", "answer": f" {w}"} for w in WORDS],
                                output_type="generate_until", doc_to_choice=None, doc_to_target="answer",
                                metric="exact_match",
                                generation_kwargs={"until": ["\n"], "max_gen_toks": 8, "do_sample": True,
                                                   "temperature": 1.0})
    harness = LMEvalHarness(tasks=["qcl_sampled"], include_path=str(folder))
    runs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        random.seed(seed)
        runs.append([r["prediction"] for r in harness.evaluate(model, tok).records])
    assert runs[0] == runs[1] and len(set(runs[0])) > 1


def test_acc_norm_records_pick_by_length_normalised_log_likelihood(tmp_path, model_and_tokenizer):
    model, tok = model_and_tokenizer
    folder = write_lm_eval_task(tmp_path, "qcl_norm", _mc_rows(), target_delimiter="", metric=["acc", "acc_norm"])
    result = LMEvalHarness(tasks=["qcl_norm"], include_path=str(folder), metric="acc_norm").evaluate(model, tok)
    assert result.metrics["qcl_norm/acc_norm"] == result.score and "qcl_norm/acc" in result.metrics
    rows = _mc_rows()
    for record in result.records:
        choices = rows[int(record["id"].split("/")[1])]["choices"]
        normed = [ll / len(c) for ll, c in zip(record["loglikelihoods"], choices)]
        assert record["prediction"] == int(np.argmax(normed))
        assert record["correct"] == (record["prediction"] == int(record["target"]))


def test_tags_are_refused_before_any_work(tmp_path):
    folder = write_lm_eval_task(tmp_path, "qcl_tagged", [{"context": "x", "choices": [" a", " b"], "label": 0}])
    yaml_path = folder / "qcl_tagged.yaml"
    yaml_path.write_text(yaml_path.read_text() + "tag: [qcl_a_tag]\n")
    with pytest.raises(ConfigError, match=r"\['qcl_a_tag'\] name lm-eval tags"):
        LMEvalHarness(tasks=["qcl_a_tag"], include_path=str(folder)).check_ready()
