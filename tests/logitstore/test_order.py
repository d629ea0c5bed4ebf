"""Epoch order and the split over ranks, workers and batches: every sample exactly once, across resumes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from logitstore.order import EpochOrder, Layout, Plan, block_bounds, complement, intervals, total, union


def test_block_bounds_never_cross_shards():
    assert block_bounds([10, 7], 4).tolist() == [0, 4, 8, 10, 14, 17]
    assert block_bounds([3], 8).tolist() == [0, 3]


def test_epoch_order_is_a_deterministic_permutation_that_changes_with_epoch_and_seed():
    bounds = block_bounds([50, 30, 20], 8)
    order = EpochOrder(bounds, seed=1, epoch=0, window=3, shuffle=True).seq_ids(np.arange(100))
    assert sorted(order.tolist()) == list(range(100))
    same = EpochOrder(bounds, seed=1, epoch=0, window=3, shuffle=True).seq_ids(np.arange(100))
    assert np.array_equal(order, same)
    for other in (dict(seed=1, epoch=1), dict(seed=2, epoch=0)):
        assert not np.array_equal(order, EpochOrder(bounds, window=3, shuffle=True, **other).seq_ids(np.arange(100)))
    unshuffled = EpochOrder(bounds, seed=1, epoch=0, window=3, shuffle=False).seq_ids(np.arange(100))
    assert unshuffled.tolist() == list(range(100))


def test_a_window_holds_few_blocks_so_reads_stay_local():
    bounds = block_bounds([1000], 10)
    order = EpochOrder(bounds, seed=0, epoch=0, window=4, shuffle=True).seq_ids(np.arange(1000))
    for start in range(0, 1000, 40):  # every run of 40 positions comes from 4 blocks
        assert len(np.unique(order[start : start + 40] // 10)) == 4


def test_interval_helpers():
    a = intervals([[5, 8], [0, 2], [2, 3], [10, 10]])
    assert a.tolist() == [[0, 3], [5, 8]]
    assert complement(a, 12).tolist() == [[3, 5], [8, 12]]
    assert union(a, intervals([[3, 5]])).tolist() == [[0, 8]]
    assert total(a) == 6


def delivered(plan: Plan, start: list[int], count: int | None) -> list[int]:
    """Epoch positions of the first ``count`` batches every rank's DataLoader delivers (None: all)."""
    order = plan.delivery_order(start)
    order = order if count is None else order[:count]
    nxt = list(start)
    out: list[int] = []
    for w in order:
        batch = int(plan.worker_batches[w][nxt[w]])
        nxt[w] += 1
        for rank in range(plan.layout.world_size):
            out.extend(plan.batch_positions(rank, batch).tolist())
    return out


layouts = st.builds(
    Layout,
    world_size=st.integers(1, 5),
    num_workers=st.integers(1, 3),
    batch_size=st.integers(1, 7),
    chunk_batches=st.integers(1, 4),
)


@settings(max_examples=300)
@given(
    n=st.integers(1, 300),
    first=layouts,
    second=layouts,
    third=layouts,
    stops=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_resuming_on_any_layout_delivers_every_sample_at_most_once_and_loses_only_the_remainder(
    n, first, second, third, stops
):
    consumed = intervals([])
    seen: list[int] = []
    for layout, stop in ((first, stops[0]), (second, stops[1]), (third, None)):
        plan = Plan(n, consumed, layout)
        start = [0] * layout.num_workers
        batches = len(plan.delivery_order(start))
        count = None if stop is None else int(stop * batches)
        got = delivered(plan, start, count)
        seen.extend(got)
        progress = plan.progress_after(start, batches if count is None else count)
        consumed = plan.consumed_after(progress)
        # the interval bookkeeping agrees with what was actually delivered
        assert sorted(seen) == [p for a, b in consumed.tolist() for p in range(a, b)]
        # every rank got the same number of samples
        assert len(got) % layout.world_size == 0
    assert len(seen) == len(set(seen))
    left = n - len(seen)
    assert 0 <= left < third.world_size  # only the last split's remainder waits for the next epoch


@settings(max_examples=200)
@given(n=st.integers(1, 200), layout=layouts, stop=st.floats(0, 1))
def test_resuming_on_the_same_layout_continues_each_worker(n, layout, stop):
    plan = Plan(n, intervals([]), layout)
    start = [0] * layout.num_workers
    count = int(stop * len(plan.delivery_order(start)))
    before = delivered(plan, start, count)
    progress = plan.progress_after(start, count)
    after = delivered(plan, progress, None)
    assert sorted(before + after) == sorted(delivered(plan, start, None))
    assert len(set(before + after)) == len(before) + len(after)
