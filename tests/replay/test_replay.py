"""Tests of quantcl.replay: capacities, strategies, streaming, mixing."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from scipy import stats

from quantcl.errors import ConfigError, UnknownNameError
from quantcl.replay import ReplayBuffer, ReplayStrategy, Reservoir, register_strategy


def make(n: int, prefix: str = "p", **extra) -> datasets.Dataset:
    """n distinct rows: prompt ``{prefix}{i}``, target ``{prefix}-t{i}`` (unique across prefixes too)."""
    d = {"prompt": [f"{prefix}{i}" for i in range(n)], "target": [f"{prefix}-t{i}" for i in range(n)]}
    d.update(extra)
    return datasets.Dataset.from_dict(d)


def stream_rows(n: int, prefix: str) -> list[dict]:
    return [{"prompt": f"{prefix}{i}", "target": f"{prefix}-t{i}"} for i in range(n)]


def assert_kept_rows_are_the_source_rows(buffer: ReplayBuffer, sources: dict) -> None:
    """Every row of ``buffer.sample()`` is the source row at its kept index, under its task name.

    ``sources`` maps task name -> the task's dataset (or list of row dicts, for streams).
    """
    state = buffer.state_dict()
    assert list(state["kept"]) == buffer.tasks == list(sources)
    rows = buffer.sample().to_list()
    want, want_tasks = [], []
    for task, kept in state["kept"].items():
        assert len(set(kept)) == len(kept), f"{task}: duplicate kept indices {kept}"
        assert all(0 <= i < len(sources[task]) for i in kept)
        want += [dict(sources[task][i]) for i in kept]
        want_tasks += [task] * len(kept)
    assert [r["source_task"] for r in rows] == want_tasks
    assert [{k: v for k, v in r.items() if k != "source_task"} for r in rows] == want
    assert len({tuple(sorted((k, str(v)) for k, v in r.items())) for r in rows}) == len(rows)  # distinct
    assert state["rows"] == {t: [dict(sources[t][i]) for i in k] for t, k in state["kept"].items()}


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
    a, big = make(10), make(2000, "q")
    b.add_task("a", a)
    b.add_task("b", big)
    assert b.config()["tasks"] == {"a": 2, "b": 400}
    assert_kept_rows_are_the_source_rows(b, {"a": a, "b": big})


@pytest.mark.parametrize("strategy", ["uniform", "reservoir", "first"])
def test_capacity_rebalances_to_equal_shares(strategy):
    b = ReplayBuffer(capacity=10, seed=0, strategy=strategy)
    sources = {"a": make(100), "b": make(100, "q"), "c": make(100, "r")}
    b.add_task("a", sources["a"])
    assert len(b) == 10
    assert_kept_rows_are_the_source_rows(b, {"a": sources["a"]})
    kept_a = b.state_dict()["kept"]["a"]
    b.add_task("b", sources["b"])
    assert b.config()["tasks"] == {"a": 5, "b": 5}
    assert_kept_rows_are_the_source_rows(b, {"a": sources["a"], "b": sources["b"]})
    b.add_task("c", sources["c"])
    assert b.config()["tasks"] == {"a": 4, "b": 3, "c": 3}
    assert_kept_rows_are_the_source_rows(b, sources)
    # shrinking keeps a subset of what was kept before, not fresh rows
    assert set(b.state_dict()["kept"]["a"]) < set(kept_a)


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
    # every row keeps its own source: the 4 replayed rows are the buffer's, the 10 new ones all there
    rows = m1.to_list()
    replayed = sorted((r["prompt"], r["target"]) for r in rows if r["source_task"] == "a")
    assert replayed == sorted((r["prompt"], r["target"]) for r in b.sample().to_list())
    new = sorted((r["prompt"], r["target"]) for r in rows if r["source_task"] == "b")
    assert new == sorted((r["prompt"], r["target"]) for r in make(10, "n").to_list())


def test_mix_ratio_per_batch_blocks():
    b = ReplayBuffer(fraction=0.1, seed=0)
    b.add_task("a", make(20))
    m = b.mix(make(30, "n"), task_name="b", ratio=0.25, batch_size=4)
    src = m["source_task"]
    assert len(src) == 40
    assert all(src[i:i + 4].count("a") == 1 for i in range(0, 40, 4))


def test_add_stream_matches_reservoir_size():
    b = ReplayBuffer(capacity=5, seed=0)
    rows = stream_rows(100, "p")
    b.add_stream("a", iter(rows), k=5, chunk=16)
    assert len(b) == 5
    assert_kept_rows_are_the_source_rows(b, {"a": rows})


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
    streamed, a = stream_rows(6, "s"), make(4)
    for row in streamed:
        b.add_example("s", row, k=2)
    b.add_task("a", a)
    assert b.tasks == ["s", "a"] and len(b) == 4
    assert b.sample()["source_task"] == ["s", "s", "a", "a"]
    assert_kept_rows_are_the_source_rows(b, {"s": streamed, "a": a})



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
    items = [f"row{i}" for i in range(12)]
    r = Reservoir(3, np.random.default_rng(0))
    r.offer(items)
    one_by_one = Reservoir(3, np.random.default_rng(0))
    for item in items:
        one_by_one.add(item)
    assert r.seen == 12 and len(set(r.items)) == 3
    assert r.items == one_by_one.items  # the same rows in the same slots as add() on each in turn
    # wrap stores (stream position, row): the position is the row's index in the stream
    w = Reservoir(3, np.random.default_rng(0))
    w.offer(items, lambda pos, row: (pos, row))
    assert [row for _, row in w.items] == r.items and all(items[pos] == row for pos, row in w.items)


def test_capacity_shared_with_streamed_task():
    b = ReplayBuffer(capacity=6, seed=0)
    a, streamed = make(100), stream_rows(100, "q")
    b.add_task("a", a)
    b.add_stream("b", iter(streamed))
    assert b.config()["tasks"] == {"a": 3, "b": 3} and len(b) == 6
    assert_kept_rows_are_the_source_rows(b, {"a": a, "b": streamed})


def _mix_two_stages(seed: int, strategy: str = "first", **mix_kw) -> tuple[list[dict], list[dict], dict]:
    """Two stages of a fresh buffer: (stage-2 mix, stage-3 mix, state after stage 3's task).

    capacity=4 keeps 4 rows in both stages (4 of a, then 2 of a + 2 of b), so both mixes have the
    same length: only the stage number can make their shuffles differ.
    """
    b = ReplayBuffer(capacity=4, seed=seed, strategy=strategy)
    b.add_task("a", make(6))
    one = b.mix(make(20, "n"), task_name="b", **mix_kw).to_list()
    b.add_task("b", make(6, "q"))
    two = b.mix(make(20, "n"), task_name="c", **mix_kw).to_list()
    return one, two, b.state_dict()


@pytest.mark.parametrize("mix_kw", [{}, {"ratio": 0.25, "batch_size": 4}])
def test_mix_shuffle_differs_per_stage_reproducibly(mix_kw):
    one, two, state = _mix_two_stages(0, **mix_kw)
    # the same seed gives the very same rows in the very same order, stage by stage
    again_one, again_two, again_state = _mix_two_stages(0, **mix_kw)
    assert again_one == one and again_two == two and again_state == state
    # the shuffle depends on the stage: the new rows come in another order in stage 3 than in stage 2
    new_one = [r["prompt"] for r in one if r["prompt"].startswith("n")]
    new_two = [r["prompt"] for r in two if r["prompt"].startswith("n")]
    assert sorted(new_one) == sorted(new_two) and new_two != new_one
    # and on the seed: another seed orders the same rows differently
    other_one, other_two, _ = _mix_two_stages(1, **mix_kw)
    assert [r["prompt"] for r in other_one] != [r["prompt"] for r in one]
    assert [r["prompt"] for r in other_two] != [r["prompt"] for r in two]
    if not mix_kw:  # without a ratio every row appears once: the same multiset, permuted
        assert sorted(map(str, other_two)) == sorted(map(str, two))


def test_same_seed_selects_identical_rows_and_another_seed_others():
    _, _, state = _mix_two_stages(5, strategy="uniform")
    _, _, again = _mix_two_stages(5, strategy="uniform")
    _, _, other = _mix_two_stages(6, strategy="uniform")
    assert again["kept"] == state["kept"] and again["rows"] == state["rows"] and again["rng"] == state["rng"]
    assert other["kept"] != state["kept"]


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


def test_mix_refuses_to_change_replayed_values_to_the_new_tasks_type():
    # task a's targets are strings ("1", "02"); task b's are ints: casting would replay "02" as 2
    b = ReplayBuffer(fraction=1.0, seed=0)
    b.add_task("a", datasets.Dataset.from_dict({"prompt": ["x", "y"], "target": ["1", "02"]}))
    new = datasets.Dataset.from_dict({"prompt": ["z"], "target": [3]})
    with pytest.raises(ConfigError, match=r"column 'target' is string in the replayed rows of task 'a' but int64 "
                                          r"in the new task's \('b'\): .*would change their values"):
        b.mix(new, task_name="b")


def test_mix_widens_types_that_lose_nothing_and_keeps_every_value():
    import pyarrow as pa

    b = ReplayBuffer(fraction=1.0, seed=0)
    old = datasets.Dataset.from_dict({"prompt": ["x", "y"], "target": ["1", "2"], "score": [7, 8],
                                      "note": [None, None]},
                                     features=datasets.Features({"prompt": datasets.Value("string"),
                                                                 "target": datasets.Value("string"),
                                                                 "score": datasets.Value("int32"),
                                                                 "note": datasets.Value("null")}))
    b.add_task("a", old)
    new = datasets.Dataset.from_dict({"prompt": ["z"], "target": ["3"], "score": [2**40], "note": ["n"]})
    m = b.mix(new, task_name="b")
    assert m.data.table.schema.field("score").type == pa.int64()
    replayed = sorted((r["prompt"], r["target"], r["score"], r["note"]) for r in m.to_list() if r["source_task"] == "a")
    assert replayed == [("x", "1", 7, None), ("y", "2", 8, None)]
