"""Tests of quantcl.replay: capacities, strategies, streaming, mixing."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from scipy import stats

from quantcl.errors import ConfigError, UnknownNameError
from quantcl.replay import ReplayBuffer, ReplayStrategy, Reservoir, register_strategy


def make(n: int, prefix: str = "p", **extra) -> datasets.Dataset:
    d = {"prompt": [f"{prefix}{i}" for i in range(n)], "target": [str(i) for i in range(n)]}
    d.update(extra)
    return datasets.Dataset.from_dict(d)


def test_reservoir_bulk_inclusion_is_exactly_uniform():
    n, k, trials = 50, 5, 4000
    rng = np.random.default_rng(123)
    counts = np.zeros(n)
    for _ in range(trials):
        r = Reservoir(k, rng)
        r.add_bulk(n)
        counts[r.items] += 1
    assert stats.chisquare(counts).pvalue > 0.001


def test_reservoir_single_adds_are_exactly_uniform():
    n, k, trials = 40, 4, 3000
    rng = np.random.default_rng(7)
    counts = np.zeros(n)
    for _ in range(trials):
        r = Reservoir(k, rng)
        for i in range(n):
            r.add(i)
        counts[r.items] += 1
    assert stats.chisquare(counts).pvalue > 0.001


def test_chi_square_rejects_biased_sampler():
    n, k, trials = 50, 5, 4000
    rng = np.random.default_rng(123)
    counts = np.zeros(n)
    w = np.linspace(1.0, 1.5, n)
    for _ in range(trials):
        counts[rng.choice(n, size=k, replace=False, p=w / w.sum())] += 1
    assert stats.chisquare(counts).pvalue < 0.001


def test_fraction_point_one_percent_keeps_at_least_one_with_ceil():
    b = ReplayBuffer(fraction=0.001, seed=0)
    b.add_task("a", make(50))
    assert len(b) == 1


def test_fraction_point_one_percent_floor_keeps_none():
    b = ReplayBuffer(fraction=0.001, seed=0, rounding="floor")
    b.add_task("a", make(50))
    assert len(b) == 0


def test_fraction_twenty_percent_is_exact():
    b = ReplayBuffer(fraction=0.2, seed=0)
    b.add_task("a", make(10))
    b.add_task("b", make(2000))
    assert b.config()["tasks"] == {"a": 2, "b": 400}


def test_capacity_rebalances_to_equal_shares():
    b = ReplayBuffer(capacity=10, seed=0, strategy="uniform")
    b.add_task("a", make(100))
    assert len(b) == 10
    b.add_task("b", make(100, "q"))
    b.add_task("c", make(100, "r"))
    assert b.config()["tasks"] == {"a": 4, "b": 3, "c": 3}
    assert set(b.sample().filter(lambda r: r["source_task"] == "a")["prompt"]) <= {f"p{i}" for i in range(100)}


def test_first_keeps_first_rows():
    b = ReplayBuffer(fraction=0.1, strategy="first")
    b.add_task("a", make(30))
    assert b.sample()["prompt"] == ["p0", "p1", "p2"]


def test_loss_keeps_top_k_by_column():
    losses = [0.1, 5.0, 0.3, 9.0, 2.0, 0.0, 7.0, 1.0, 3.0, 4.0]
    b = ReplayBuffer(fraction=0.3, strategy="loss", loss_column="loss")
    b.add_task("a", make(10, loss=losses))
    assert sorted(b.sample()["prompt"]) == ["p1", "p3", "p6"]


def test_loss_uses_model_scorer_lowest():
    class Scorer:
        def losses(self, ds):
            return np.arange(len(ds), dtype=float)[::-1]

        def embeddings(self, ds):
            return np.zeros((len(ds), 2))

    b = ReplayBuffer(fraction=0.2, strategy="loss", keep="lowest")
    b.add_task("a", make(10), model=Scorer())
    assert sorted(b.sample()["prompt"]) == ["p8", "p9"]


def test_loss_without_column_or_model_errors():
    b = ReplayBuffer(fraction=0.2, strategy="loss")
    with pytest.raises(ConfigError, match="loss_column"):
        b.add_task("a", make(10))


def test_diversity_picks_k_centers():
    # three tight clusters plus the centre point; k=4 should take the centre then one per cluster
    emb = [[0, 0], [10, 0], [10.1, 0], [0, 10], [0, 10.1], [-10, -10], [-10.1, -10]]
    b = ReplayBuffer(fraction=4 / 7, strategy="diversity", embedding_column="e")
    b.add_task("a", make(7, e=emb))
    kept = set(b.sample()["prompt"])
    assert "p0" in kept and len(kept) == 4
    assert len(kept & {"p1", "p2"}) == 1 and len(kept & {"p3", "p4"}) == 1 and len(kept & {"p5", "p6"}) == 1


def test_balanced_equal_per_label_counts():
    labels = ["x"] * 20 + ["y"] * 5 + ["z"] * 5
    b = ReplayBuffer(fraction=0.2, strategy="balanced", label_column="label")
    b.add_task("a", make(30, label=labels))
    got = b.sample()["label"]
    assert {lab: got.count(lab) for lab in "xyz"} == {"x": 2, "y": 2, "z": 2}


def test_custom_registered_strategy_by_name():
    @register_strategy("last_rows_test")
    class Last(ReplayStrategy):
        def select(self, task, dataset, k, *, rng, model=None):
            return list(range(len(dataset) - k, len(dataset)))

    b = ReplayBuffer(fraction=0.2, strategy="last_rows_test")
    b.add_task("a", make(10))
    assert b.sample()["prompt"] == ["p8", "p9"]


def test_custom_strategy_duplicate_indices_error():
    class Dup(ReplayStrategy):
        def select(self, task, dataset, k, *, rng, model=None):
            return [0] * k

    with pytest.raises(ConfigError, match="distinct"):
        ReplayBuffer(fraction=0.5, strategy=Dup()).add_task("a", make(4))


def test_unknown_strategy_lists_names():
    with pytest.raises(UnknownNameError, match="reservoir"):
        ReplayBuffer(fraction=0.1, strategy="nope")


@pytest.mark.parametrize("kw", [{"fraction": 1.5}, {"capacity": -1}, {}, {"fraction": 0.1, "capacity": 3}])
def test_bad_capacity_arguments_raise(kw):
    with pytest.raises(ConfigError):
        ReplayBuffer(**kw)


def test_empty_dataset_and_duplicate_task_raise():
    b = ReplayBuffer(fraction=0.1)
    with pytest.raises(ConfigError, match="empty"):
        b.add_task("a", make(0))
    b.add_task("a", make(5))
    with pytest.raises(ConfigError, match="already"):
        b.add_task("a", make(5))


def test_mismatched_columns_raise_naming_columns():
    b = ReplayBuffer(fraction=0.5)
    b.add_task("a", make(4))
    with pytest.raises(ConfigError, match="prompt"):
        b.add_task("b", datasets.Dataset.from_dict({"text": ["a"]}))


def test_mix_appends_all_rows_with_source_and_is_deterministic():
    b = ReplayBuffer(fraction=0.2, seed=3)
    b.add_task("a", make(20))
    m1 = b.mix(make(10, "n"), task_name="b")
    m2 = b.mix(make(10, "n"), task_name="b")
    assert len(m1) == 14 and m1["prompt"] == m2["prompt"]
    assert sorted(m1["source_task"]) == ["a"] * 4 + ["b"] * 10


def test_mix_ratio_per_batch_blocks():
    b = ReplayBuffer(fraction=0.1, seed=0)
    b.add_task("a", make(20))
    m = b.mix(make(30, "n"), task_name="b", ratio=0.25, batch_size=4)
    src = m["source_task"]
    assert len(src) == 40
    assert all(src[i:i + 4].count("a") == 1 for i in range(0, 40, 4))


def test_add_stream_matches_reservoir_size():
    b = ReplayBuffer(capacity=5, seed=0)
    b.add_stream("a", ({"prompt": f"p{i}", "target": "t"} for i in range(100)), k=5)
    assert len(b) == 5 and len(set(b.sample()["prompt"])) == 5


def test_add_example_stream_is_exactly_uniform():
    n, trials = 30, 1500
    counts = np.zeros(n)
    for t in range(trials):
        b = ReplayBuffer(capacity=3, seed=t)
        for i in range(n):
            b.add_example("a", {"prompt": f"p{i}", "target": "t"})
        counts[b._open["a"].positions] += 1  # stream positions kept (no Dataset build: keeps it fast)
    assert counts.sum() == 3 * trials and stats.chisquare(counts).pvalue > 0.001


def test_add_example_then_add_task_keeps_order_and_columns():
    b = ReplayBuffer(fraction=0.5, seed=0)
    for i in range(4):
        b.add_example("s", {"prompt": f"s{i}", "target": "t"}, k=2)
    b.add_task("a", make(4))
    assert b.tasks == ["s", "a"] and len(b) == 4
    assert b.sample()["source_task"] == ["s", "s", "a", "a"]



def test_add_task_reservoir_inclusion_is_exactly_uniform():
    n, trials = 25, 800
    ds = make(n)
    counts = np.zeros(n)
    for t in range(trials):
        b = ReplayBuffer(fraction=0.2, strategy="reservoir", seed=t)
        b.add_task("a", ds)
        counts[b._kept["a"]] += 1
    assert counts.sum() == 5 * trials and stats.chisquare(counts).pvalue > 0.001


def test_add_stream_chunked_is_exactly_uniform():
    n, trials = 30, 500
    counts = np.zeros(n)
    for t in range(trials):
        b = ReplayBuffer(fraction=0.1, seed=t)
        b.add_stream("a", ({"prompt": f"p{i}", "target": "t"} for i in range(n)), k=3, chunk=7)
        counts[b._kept["a"]] += 1
    assert counts.sum() == 3 * trials and stats.chisquare(counts).pvalue > 0.001


def test_reservoir_offer_keeps_rows_not_positions():
    r = Reservoir(2, np.random.default_rng(0))
    r.offer(["a", "b", "c", "d"])
    assert len(r.items) == 2 and set(r.items) <= {"a", "b", "c", "d"} and r.seen == 4


def test_capacity_shared_with_streamed_task():
    b = ReplayBuffer(capacity=6, seed=0)
    b.add_task("a", make(100))
    b.add_stream("b", ({"prompt": f"q{i}", "target": "t"} for i in range(100)))
    assert b.config()["tasks"] == {"a": 3, "b": 3} and len(b) == 6


def test_mix_shuffle_differs_per_stage_reproducibly():
    b = ReplayBuffer(fraction=0.5, seed=0, strategy="first")
    b.add_task("a", make(4))
    one = b.mix(make(20, "n"))["prompt"]
    b.add_task("b", make(4, "q"))
    two = b.mix(make(20, "n"))["prompt"]
    assert [p for p in two if p.startswith("n")] != [p for p in one if p.startswith("n")]


def test_mix_rejects_bad_ratio_before_work():
    b = ReplayBuffer(fraction=0.5)
    b.add_task("a", make(4))
    with pytest.raises(ConfigError, match="ratio"):
        b.mix(make(4, "n"), ratio=1.0)


def test_mix_keeps_non_string_features():
    b = ReplayBuffer(fraction=0.5, seed=0)
    b.add_task("a", make(4, score=[1, 2, 3, 4]))
    m = b.mix(make(4, "n", score=[5, 6, 7, 8]), task_name="b")
    assert m.features["score"].dtype == "int64" and sorted(m["score"])[-1] == 8
