"""Evaluator.merge: the shares of an evaluation, merged, equal the unsharded evaluation exactly.

No torchrun here: each share is scored in this process with ``evaluate_shard`` (as process
``index`` of ``count`` would score it) and the shares are merged; tests/trainer/test_sharded_eval.py
runs the same under torchrun.
"""

from __future__ import annotations

import pytest
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

import quantcl as qcl
from quantcl.evaluators import (
    CodeExecution,
    EvalResult,
    Evaluator,
    MultipleChoice,
    NumericMatch,
    Shard,
    ShardResult,
    ordered_records,
)
from quantcl.evaluators._batching import batch_seed

N_EVAL = 10
BATCH = 3  # 4 batches of 10 rows: every share holds rows from apart in the dataset


@pytest.fixture(scope="module")
def model_and_tok(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def rows(model_and_tok):
    tok = model_and_tok[1]
    tasks = qcl.recipes.synthetic(seed=0, n_train=2, n_eval=N_EVAL)
    return {t.name: t.eval_rows(tok) for t in tasks}


EVALUATORS = {
    "mc-loglikelihood": ("nlu", lambda: MultipleChoice(normalization="acc_norm")),
    "mc-generate": ("nlu", lambda: MultipleChoice(mode="generate", max_new_tokens=6)),
    "numeric": ("math", lambda: NumericMatch(max_new_tokens=8)),
    "code-greedy": ("code", lambda: CodeExecution(allow_code_execution=True, max_new_tokens=8, timeout=5.0)),
    "code-sampled": ("code", lambda: CodeExecution(allow_code_execution=True, n_samples=3, k=(1, 3),
                                                   temperature=1.0, max_new_tokens=6, timeout=5.0, seed=5)),
}


def _shares(ev, model, tok, data, count):
    return [ev.evaluate_shard(model, tok, data, Shard(i, count), batch_size=BATCH, progress=False)
            for i in range(count)]


@pytest.mark.parametrize("name", list(EVALUATORS))
def test_merged_shares_equal_one_evaluation(name, model_and_tok, rows):
    model, tok = model_and_tok
    task, make = EVALUATORS[name]
    ev, data = make(), rows[task]
    whole = ev.evaluate(model, tok, data, batch_size=BATCH, progress=False)
    for count in (2, 3):
        parts = _shares(ev, model, tok, data, count)
        assert sorted(r for p in parts for r in p.rows) == list(range(N_EVAL))  # each row scored once
        assert all(len(p.rows) < N_EVAL for p in parts)
        for order in (parts, parts[::-1]):  # the shares may arrive in any order
            merged = ev.merge(order)
            assert merged == whole  # score, metrics (exact floats), records in row order, n
        # the check above is order-sensitive: the shares' records simply concatenated are not it
        assert [r for p in parts for r in p.result.records] != whole.records


def test_sampled_completions_do_not_depend_on_the_sharing(model_and_tok, rows):
    model, tok = model_and_tok
    ev = EVALUATORS["code-sampled"][1]()
    whole = ev.evaluate(model, tok, rows["code"], batch_size=BATCH, progress=False)
    completions = [r["completions"] for r in whole.records]
    assert any(len(set(c)) > 1 for c in completions)  # really sampled
    parts = _shares(ev, model, tok, rows["code"], 2)
    assert [r["completions"] for r in ev.merge(parts).records] == completions
    other = CodeExecution(allow_code_execution=True, n_samples=3, k=(1, 3), temperature=1.0, max_new_tokens=6,
                          timeout=5.0, seed=6)
    assert [r["completions"] for r in other.evaluate(model, tok, rows["code"], batch_size=BATCH,
                                                      progress=False).records] != completions


def test_shares_are_whole_batches_of_the_unsharded_run(model_and_tok, rows):
    # generation batches are formed longest prompt first, BATCH at a time; batch b goes to share b % 2
    model, tok = model_and_tok
    data = rows["math"]
    lengths = [len(tok(p)["input_ids"]) for p in data["prompt"]]
    order = sorted(range(N_EVAL), key=lambda i: -lengths[i])
    batches = [order[b:b + BATCH] for b in range(0, N_EVAL, BATCH)]
    parts = _shares(NumericMatch(max_new_tokens=4), model, tok, data, 2)
    assert [set(p.rows) for p in parts] == [set(batches[0] + batches[2]), set(batches[1] + batches[3])]
    assert [list(p.rows) for p in parts] == [sorted(p.rows) for p in parts]


def test_batch_seed_keeps_batch_zero_on_the_given_seed():
    assert batch_seed(7, 0) == 7
    assert len({batch_seed(s, b) for s in range(4) for b in range(4)}) == 16


# merge arithmetic without a model --------------------------------------------------------------
def _part(rows, records):
    return ShardResult(tuple(rows), EvalResult(0.0, {}, records, len(records)))


def test_code_metrics_are_summed_over_rows_in_order_not_averaged_per_share():
    ev = CodeExecution(allow_code_execution=True, n_samples=3, k=(1, 2), temperature=0.8)
    values = [0.1, 0.7, 0.2, 1 / 3, 0.6, 0.3, 2 / 3]
    records = [{"pass@1": v, "pass@2": v / 3} for v in values]
    parts = [_part(range(0, 7, 2), records[0::2]), _part(range(1, 7, 2), records[1::2])]
    merged = ev.merge(parts[::-1])
    in_order = 0.0
    for v in values:
        in_order += v
    assert merged.metrics["pass@1"] == in_order / 7 == merged.score
    assert merged.records == records
    # what averaging the shares' averages would give differs in the last bits
    averaged = (sum(values[0::2]) / 4 * 4 + sum(values[1::2]) / 3 * 3) / 7
    assert averaged != merged.score


def test_counting_metrics_are_counts_over_n():
    ev = NumericMatch()
    records = [{"correct": c, "prediction": p, "well_formed": w}
               for c, p, w in [(True, 1.0, True), (False, None, False), (False, 2.0, True)]]
    merged = ev.merge([_part([2], records[2:]), _part([0, 1], records[:2])])
    assert merged.metrics == {"acc": 1 / 3, "extracted": 2 / 3, "invalid": 1 / 3, "acc_valid": 1 / 2}
    assert merged.n == 3
    mc = MultipleChoice(normalization="acc_norm")
    recs = [{"correct_acc": a, "correct_acc_norm": b} for a, b in [(True, False), (True, True), (False, False)]]
    assert mc.merge([_part([0, 1, 2], recs)]).metrics == {"acc": 2 / 3, "acc_norm": 1 / 3}
    assert mc.merge([_part([0, 1, 2], recs)]).score == 1 / 3


@pytest.mark.parametrize("parts, message", [
    ([_part([0, 1], [{}, {}]), _part([1], [{}])], "twice"),
    ([_part([0, 2], [{}, {}])], "outside"),
    ([_part([0, 1], [{}])], "records for 2 rows"),
])
def test_merge_refuses_overlapping_missing_or_ragged_shares(parts, message):
    with pytest.raises(ValueError, match=message):
        ordered_records(parts)
    with pytest.raises(ValueError, match=message):
        NumericMatch().merge(parts)


def test_ordered_records_sees_a_missing_row_given_n():
    with pytest.raises(ValueError, match=r"rows \[2\] were scored by no shard"):
        ordered_records([_part([0, 1], [{}, {}])], n=3)


# the contract for custom evaluators ------------------------------------------------------------
class Exact(Evaluator):
    """Scores a row 1 when its prompt equals its target; evaluated per row, so row shares merge."""

    def evaluate(self, model, tokenizer, dataset, *, batch_size=None, progress=True):
        records = [{"correct": p == t} for p, t in zip(dataset["prompt"], dataset["target"])]
        return self.merge([_part(range(len(records)), records)])

    def merge(self, parts):
        records = ordered_records(parts)
        acc = sum(r["correct"] for r in records) / len(records)
        return EvalResult(acc, {"acc": acc}, records, len(records))


class NoMerge(Evaluator):
    def evaluate(self, model, tokenizer, dataset, *, batch_size=None, progress=True):
        return EvalResult(1.0, {}, [], len(dataset))


class ChangedEvaluate(MultipleChoice):
    def evaluate(self, model, tokenizer, dataset, *, batch_size=None, progress=True):
        return EvalResult(1.0, {}, [], len(dataset))


class ChangedBoth(ChangedEvaluate):
    def merge(self, parts):
        return EvalResult(1.0, {}, [], 0)


def test_which_evaluators_are_shardable():
    assert all(make().shardable for _, make in EVALUATORS.values())
    assert Exact().shardable
    assert not NoMerge().shardable and not Evaluator().shardable
    assert not ChangedEvaluate().shardable  # inherits merge, but its evaluate is not the one merge matches
    assert ChangedBoth().shardable


def test_default_evaluate_shard_takes_every_count_th_row_and_merges():
    data = Dataset.from_dict({"prompt": list("abcde"), "target": list("abxdy")})
    ev = Exact()
    parts = [ev.evaluate_shard(None, None, data, Shard(i, 2)) for i in range(2)]
    assert [p.rows for p in parts] == [(0, 2, 4), (1, 3)]
    assert ev.merge(parts[::-1]) == ev.evaluate(None, None, data)
    empty = ev.evaluate_shard(None, None, data.select([0]), Shard(1, 2))  # more processes than rows
    assert empty.rows == () and empty.result.records == []


@pytest.mark.parametrize("index, count", [(2, 2), (-1, 2), (0, 0), (True, 2)])
def test_shard_refuses_bad_numbers(index, count):
    with pytest.raises(qcl.ConfigError, match="Shard"):
        Shard(index, count)
