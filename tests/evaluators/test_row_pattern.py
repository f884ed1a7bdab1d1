"""Evaluators written as score_rows + aggregate: the library owns eval mode, batching and sharding."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

import quantcl as qcl
from quantcl.evaluators import EvalResult, Evaluator, Shard, evaluate_rows, generate, inference_mode, loglikelihood


class ExactMatch(Evaluator):
    required_columns = ("prompt", "target")

    def __init__(self, max_new_tokens: int = 6) -> None:
        self.max_new_tokens = max_new_tokens

    def score_rows(self, model, tokenizer, rows):
        assert not model.training and not torch.is_grad_enabled()  # the library's inference mode
        outputs = generate(model, tokenizer, rows["prompt"], max_new_tokens=self.max_new_tokens, stop=["\n"])
        return [{"prompt": p, "prediction": o.strip(), "correct": o.strip() == t.strip(), "batch": len(rows)}
                for p, o, t in zip(rows["prompt"], outputs, rows["target"])]

    def aggregate(self, records):
        acc = sum(r["correct"] for r in records) / len(records)
        return EvalResult(acc, {"acc": acc}, records, len(records))


@pytest.fixture(scope="module")
def demo():
    from quantcl.models import demo_model_dir

    model, tok = qcl.PrecisionPolicy("fp32").load_model(demo_model_dir())
    nlu = qcl.recipes.synthetic(seed=0, n_train=4, n_eval=7, tasks=("nlu",))["nlu"]
    return model, tok, nlu.eval_rows(tok)


def test_records_come_batch_by_batch_in_row_order_and_are_aggregated_once(demo):
    model, tok, rows = demo
    model.train()
    result = ExactMatch().evaluate(model, tok, rows, batch_size=3, progress=False)
    assert model.training  # restored
    assert [r["prompt"] for r in result.records] == list(rows["prompt"])
    assert [r["batch"] for r in result.records] == [3, 3, 3, 3, 3, 3, 1]
    expected = generate(model, tok, rows["prompt"][:3], max_new_tokens=6, stop=["\n"])
    assert [r["prediction"] for r in result.records[:3]] == [e.strip() for e in expected]
    assert result.score == sum(r["correct"] for r in result.records) / 7 and result.n == 7


def test_shares_of_whole_batches_merge_into_the_one_process_result(demo):
    model, tok, rows = demo
    ev = ExactMatch()
    assert ev.shardable
    whole = ev.evaluate(model, tok, rows, batch_size=2, progress=False)
    shares = [ev.evaluate_shard(model, tok, rows, Shard(i, 3), batch_size=2, progress=False) for i in (2, 0, 1)]
    assert [s.rows for s in shares] == [(4, 5), (0, 1, 6), (2, 3)]
    assert ev.merge(shares) == whole

    class TwoProcesses:  # process 1 of 2, the other's share already known
        rank, world_size = 1, 2

        def all_gather(self, part):
            other = ev.evaluate_shard(model, tok, rows, Shard(0, 2), batch_size=2, progress=False)
            return [other, part]

    assert evaluate_rows(ev, model, tok, rows, group=TwoProcesses(), batch_size=2, progress=False) == whole


def test_score_rows_must_return_one_record_per_row(demo):
    model, tok, rows = demo

    class Short(ExactMatch):
        def score_rows(self, model, tokenizer, rows):
            return super().score_rows(model, tokenizer, rows)[:-1]

    with pytest.raises(qcl.ConfigError, match=r"Short.score_rows returned 2 records for 3 rows"):
        Short().evaluate(model, tok, rows, batch_size=3, progress=False)


def test_an_evaluator_with_neither_method_says_so():
    class Nothing(Evaluator):
        pass

    with pytest.raises(NotImplementedError, match="Nothing implements neither evaluate"):
        Nothing().evaluate(None, None, Dataset.from_dict({"prompt": ["a"]}))
    assert not Nothing().shardable

    class Half(Evaluator):
        def score_rows(self, model, tokenizer, rows):
            return [{} for _ in range(len(rows))]

    with pytest.raises(NotImplementedError, match="Half implements score_rows.. but not aggregate"):
        Half().evaluate(torch.nn.Linear(1, 1), None, Dataset.from_dict({"prompt": ["a"]}))


def test_the_helpers_match_the_built_in_scoring(demo):
    model, tok, rows = demo
    pairs = [(p, " " + t) for p, t in zip(rows["prompt"][:4], rows["target"][:4])]
    one_by_one = [loglikelihood(model, tok, [pair])[0] for pair in pairs]
    together = loglikelihood(model, tok, pairs)
    assert [n for _, n in together] == [n for _, n in one_by_one]
    for (a, _), (b, _) in zip(together, one_by_one):
        assert a == pytest.approx(b, abs=1e-4)
    with torch.no_grad():  # the first pair's log-likelihood by hand
        ctx = tok(pairs[0][0], add_special_tokens=False)["input_ids"]
        cont = tok(pairs[0][1], add_special_tokens=False)["input_ids"]
        logits = model(torch.tensor([ctx + cont])).logits[0].log_softmax(-1)
        by_hand = sum(float(logits[len(ctx) - 1 + i, tok_id]) for i, tok_id in enumerate(cont))
    assert together[0][0] == pytest.approx(by_hand, abs=1e-4) and together[0][1] == len(cont)
    model.train()
    with inference_mode(model):
        assert not model.training
    assert model.training


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_inference_mode_gives_the_head_a_contiguous_input_in_half_precision(tiny_model_dir, dtype):
    """``logits_to_keep=1`` hands the vocabulary projection a strided view, which torch's CPU
    ``linear`` multiplies through a per-row copy of the weight; in bf16/fp16 the library's
    inference mode copies the (small) input instead, and leaves fp32 as it is."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
    head = model.get_output_embeddings()
    seen = []
    ids = torch.randint(3, 100, (3, 7))

    def record(module, args):
        seen.append(args[0].is_contiguous())

    with torch.no_grad():
        plain = model(input_ids=ids, logits_to_keep=1).logits
    with inference_mode(model):
        watch = head.register_forward_pre_hook(record)  # runs after the library's hook
        fixed = model(input_ids=ids, logits_to_keep=1).logits
        watch.remove()
    with torch.no_grad():
        watch = head.register_forward_pre_hook(record)
        model(input_ids=ids, logits_to_keep=1)
        watch.remove()
    assert seen == [dtype == torch.bfloat16, False]  # the view reaches the head outside the block
    assert not head._forward_pre_hooks  # the hook leaves with the block
    torch.testing.assert_close(fixed, plain, rtol=0, atol=1e-2 if dtype == torch.bfloat16 else 0)
