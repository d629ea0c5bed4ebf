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


# -- explicit references for the closed forms of Plan ------------------------------------------------------------


def worker_batches(plan: Plan) -> list[np.ndarray]:
    """Batch indices of each worker, by listing every batch's owner: chunk c -> worker c % num_workers."""
    k, cb = plan.layout.num_workers, plan.layout.chunk_batches
    owner = (np.arange(plan.num_batches) // cb) % k
    return [np.flatnonzero(owner == w) for w in range(k)]


def delivery_order(plan: Plan, start: list[int]) -> list[int]:
    """Worker ids in DataLoader delivery order: round-robin over the workers that still have batches."""
    left = [len(b) - s for b, s in zip(worker_batches(plan), start, strict=True)]
    order = []
    for r in range(max(left, default=0)):
        order.extend(w for w in range(len(left)) if left[w] > r)
    return order


def delivered(plan: Plan, start: list[int], count: int | None) -> list[int]:
    """Epoch positions of the first ``count`` batches every rank's DataLoader delivers (None: all)."""
    order = delivery_order(plan, start)
    order = order if count is None else order[:count]
    lists = worker_batches(plan)
    nxt = list(start)
    out: list[int] = []
    for w in order:
        batch = int(lists[w][nxt[w]])
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
        batches = len(delivery_order(plan, start))
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
    count = int(stop * len(delivery_order(plan, start)))
    before = delivered(plan, start, count)
    progress = plan.progress_after(start, count)
    after = delivered(plan, progress, None)
    assert sorted(before + after) == sorted(delivered(plan, start, None))
    assert len(set(before + after)) == len(before) + len(after)


@settings(max_examples=300)
@given(n=st.integers(0, 400), layout=layouts, data=st.data())
def test_the_closed_forms_match_listing_every_batch(n, layout, data):
    plan = Plan(n, intervals([]), layout)
    lists = worker_batches(plan)
    for w in range(layout.num_workers):
        assert plan.num_batches_of(w) == len(lists[w])
        assert list(plan.batches_of(w, 1)) == lists[w][1:].tolist()
    start = [data.draw(st.integers(0, len(b))) for b in lists]
    order = delivery_order(plan, start)
    count = data.draw(st.integers(0, len(order) + 2))
    want = [s + order[:count].count(w) for w, s in enumerate(start)]
    assert plan.progress_after(start, count) == want
    done = sorted(int(b) for w, lst in enumerate(lists) for b in lst[: want[w]])
    positions = [p for b in done for r in range(layout.world_size) for p in plan.batch_positions(r, b).tolist()]
    assert [p for a, b in plan.consumed_after(want).tolist() for p in range(a, b)] == sorted(positions)
    assert plan.is_finished(want) == (count >= len(order))


def test_progress_and_consumed_cost_nothing_per_batch():
    """A state after any step of a 10^15-sequence epoch: nothing here may allocate per batch (numpy would refuse
    the petabytes), so a StatefulDataLoader can save a state every step."""
    layout = Layout(world_size=8, num_workers=4, batch_size=8, chunk_batches=16)
    plan = Plan(10**15, intervals([[0, 10**6]]), layout)
    start = plan.progress_after([0] * 4, 10**12 + 7)
    assert sum(start) == 10**12 + 7 and max(start) - min(start) <= 1
    consumed = plan.consumed_after(start)
    assert total(consumed) == 10**6 + 8 * 8 * (10**12 + 7)
    assert not plan.is_finished(start) and len(consumed) <= 8 * 4
