"""Which sequences every rank and DataLoader worker reads in an epoch, in what order, and how far the epoch got.

Pure numpy and deterministic: every rank and worker derives the same plan from (seed, epoch, what was already
consumed), so nothing is communicated.

- **Epoch order.** Sequences are cut into *blocks* of consecutive seq_ids that never cross a shard (about one
  Parquet row group each). The blocks are permuted from (seed, epoch), and the sequences of every *window* of
  ``window`` consecutive blocks are shuffled together. A reader therefore touches a handful of blocks at a time and
  reads each about once per epoch, while a window of a few thousand sequences gives a well-mixed order.
- **Split.** The positions of the epoch order not yet consumed are cut into ``world_size`` equal contiguous parts
  (the last ``remaining % world_size`` positions wait for the next epoch, which permutes them elsewhere, so every
  rank gets the same number of samples and a DDP job cannot hang). A rank's part is cut into batches; runs of
  ``chunk_batches`` consecutive batches go round-robin to the DataLoader workers, so each worker reads its own
  blocks.
- **Progress.** A DataLoader hands out worker batches round-robin, so "c batches delivered" fixes exactly which
  batches every worker has delivered (:meth:`Plan.progress_after`). Consumed positions are kept as intervals of the
  epoch order; resuming on another world size, batch size or worker count re-splits what is left, so every sample
  is delivered exactly once per epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from logitstore.rng import permutation

#: ``[m, 2] int64`` sorted, disjoint, non-empty half-open ranges ``[start, stop)`` of epoch positions.
Intervals = np.ndarray


def block_bounds(shard_sizes: Sequence[int], block_size: int) -> np.ndarray:
    """``[num_blocks + 1] int64`` seq_id boundaries of blocks of ``block_size`` sequences within each shard."""
    bounds = [0]
    start = 0
    for size in shard_sizes:
        bounds.extend(range(start + block_size, start + size, block_size))
        start += size
        bounds.append(start)
    return np.unique(np.asarray(bounds, dtype=np.int64))


class EpochOrder:
    """The order of all ``N`` sequences in one epoch (see the module docstring).

    Args:
        bounds: ``[num_blocks + 1] int64`` block boundaries from :func:`block_bounds`.
        seed, epoch: the order is a pure function of these two and the blocks.
        window: blocks shuffled together.
        shuffle: False keeps seq_id order.
    """

    def __init__(self, bounds: np.ndarray, *, seed: int, epoch: int, window: int, shuffle: bool):
        self.bounds = bounds
        self.seed, self.epoch, self.window, self.shuffle = seed, epoch, window, shuffle
        num_blocks = len(bounds) - 1
        self.blocks = permutation(num_blocks, seed, epoch, 0) if shuffle else np.arange(num_blocks, dtype=np.int64)
        sizes = np.diff(bounds)[self.blocks]
        per_window = np.add.reduceat(sizes, np.arange(0, num_blocks, window)) if num_blocks else np.zeros(0, np.int64)
        self.window_starts = np.concatenate([[0], np.cumsum(per_window)]).astype(np.int64)
        self._window = lru_cache(maxsize=4)(self._window_uncached)

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def seq_ids(self, positions: np.ndarray) -> np.ndarray:
        """``[n] int64`` seq_ids at the given epoch positions."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty(len(positions), dtype=np.int64)
        windows = np.searchsorted(self.window_starts, positions, side="right") - 1
        for w in np.unique(windows):
            sel = windows == w
            out[sel] = self._window(int(w))[positions[sel] - self.window_starts[w]]
        return out

    def _window_uncached(self, w: int) -> np.ndarray:
        blocks = self.blocks[w * self.window : (w + 1) * self.window]
        ids = np.concatenate([np.arange(self.bounds[b], self.bounds[b + 1]) for b in blocks])
        if self.shuffle:
            ids = ids[permutation(len(ids), self.seed, self.epoch, 1, w)]
        return ids


# -- interval sets -------------------------------------------------------------------------------------------------


def intervals(pairs: Sequence[Sequence[int]] | np.ndarray) -> Intervals:
    """Normalize ``[[start, stop), ...]`` into sorted, merged, non-empty intervals."""
    a = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    a = a[a[:, 1] > a[:, 0]]
    if len(a) == 0:
        return a
    a = a[np.argsort(a[:, 0], kind="stable")]
    out = [list(a[0])]
    for start, stop in a[1:]:
        if start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], stop)
        else:
            out.append([start, stop])
    return np.asarray(out, dtype=np.int64)


def union(a: Intervals, b: Intervals) -> Intervals:
    return intervals(np.concatenate([a.reshape(-1, 2), b.reshape(-1, 2)]))


def complement(a: Intervals, n: int) -> Intervals:
    """The positions of ``[0, n)`` not in ``a``."""
    edges = np.concatenate([[0], a.reshape(-1), [n]]).reshape(-1, 2)
    return intervals(edges)


def total(a: Intervals) -> int:
    return int((a[:, 1] - a[:, 0]).sum()) if len(a) else 0


class Remaining:
    """The not-yet-consumed positions of an epoch as one list: index ``i`` of the list -> an epoch position."""

    def __init__(self, free: Intervals):
        self.free = free
        self.lengths = free[:, 1] - free[:, 0]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def positions(self, lo: int, hi: int) -> np.ndarray:
        """``[hi - lo] int64`` epoch positions of list indices ``lo..hi-1``."""
        idx = np.arange(lo, hi, dtype=np.int64)
        k = np.searchsorted(self.offsets, idx, side="right") - 1
        return self.free[k, 0] + (idx - self.offsets[k])

    def spans(self, lo: int, hi: int) -> Intervals:
        """Epoch-position intervals covering list indices ``lo..hi-1``."""
        if hi <= lo:
            return np.zeros((0, 2), dtype=np.int64)
        first = int(np.searchsorted(self.offsets, lo, side="right") - 1)
        last = int(np.searchsorted(self.offsets, hi - 1, side="right") - 1)
        out = self.free[first : last + 1].copy()
        out[0, 0] += lo - self.offsets[first]
        out[-1, 1] = self.free[last, 0] + (hi - self.offsets[last])
        return out


# -- the split over ranks, workers and batches ----------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How an epoch's remaining positions are split: ranks x DataLoader workers x batches."""

    world_size: int
    num_workers: int
    batch_size: int
    chunk_batches: int

    def to_dict(self) -> dict[str, int]:
        return {
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "batch_size": self.batch_size,
            "chunk_batches": self.chunk_batches,
        }


class Plan:
    """One layout applied to the positions left after ``consumed``.

    Every rank holds ``per_rank = len(remaining) // world_size`` positions, cut into ``num_batches`` batches of
    ``batch_size`` (the last one may be short, identically on every rank). Batches are grouped into chunks of
    ``chunk_batches``; chunk ``c`` belongs to worker ``c % num_workers``. Everything here is closed-form in the
    number of workers and ranks, never in the number of batches, so a state can be taken after every step of a
    100M-sequence epoch.
    """

    def __init__(self, num_sequences: int, consumed: Intervals, layout: Layout):
        self.num_sequences = num_sequences
        self.consumed = consumed
        self.layout = layout
        self.remaining = Remaining(complement(consumed, num_sequences))
        self.per_rank = len(self.remaining) // layout.world_size
        self.num_batches = -(-self.per_rank // layout.batch_size)
        self.num_chunks = -(-self.num_batches // layout.chunk_batches)

    def num_batches_of(self, worker: int) -> int:
        """Batches worker ``worker`` yields (on every rank)."""
        k, cb = self.layout.num_workers, self.layout.chunk_batches
        chunks = max(0, -(-(self.num_chunks - worker) // k))  # chunks worker, worker + k, ... < num_chunks
        short = self.num_chunks * cb - self.num_batches if chunks and (self.num_chunks - 1) % k == worker else 0
        return chunks * cb - short

    def batches_of(self, worker: int, start: int = 0) -> Iterator[int]:
        """Batch indices of one worker from its ``start``-th on, in the order it yields them."""
        k, cb = self.layout.num_workers, self.layout.chunk_batches
        for i in range(start, self.num_batches_of(worker)):
            yield (worker + k * (i // cb)) * cb + i % cb

    def batch_range(self, rank: int, batch: int) -> tuple[int, int]:
        """Remaining-list indices ``[lo, hi)`` of one batch of one rank."""
        base = rank * self.per_rank
        b = self.layout.batch_size
        return base + batch * b, base + min((batch + 1) * b, self.per_rank)

    def batch_positions(self, rank: int, batch: int) -> np.ndarray:
        """``[<= batch_size] int64`` epoch positions of one batch of one rank."""
        return self.remaining.positions(*self.batch_range(rank, batch))

    def progress_after(self, start: Sequence[int], delivered: int) -> list[int]:
        """Batches each worker has delivered after ``delivered`` more batches came out of the DataLoader, which
        goes round-robin over the workers that still have batches (worker ``w`` had delivered ``start[w]``)."""
        k = self.layout.num_workers
        left = np.maximum([self.num_batches_of(w) - start[w] for w in range(k)], 0).astype(np.int64)
        delivered = min(int(delivered), int(left.sum()))
        # R full rounds hand out sum(min(left, R)); find the last R that fits, then part of round R
        lo, hi = 0, int(left.max(initial=0))
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if int(np.minimum(left, mid).sum()) <= delivered else (lo, mid - 1)
        done = np.minimum(left, lo)
        extra = delivered - int(done.sum())
        done[np.flatnonzero(left > lo)[:extra]] += 1
        return [int(s) + int(d) for s, d in zip(start, done, strict=True)]

    def _done_batches(self, progress: Sequence[int]) -> Intervals:
        """Batch-index intervals covered by the first ``progress[w]`` batches of every worker ``w``."""
        k, cb, nb = self.layout.num_workers, self.layout.chunk_batches, self.num_batches
        rows = -(-self.num_chunks // k)  # chunk c sits in row c // k, column (worker) c % k
        full = np.empty(k, dtype=np.int64)  # whole chunks done per worker
        runs = []
        for w in range(k):
            n = min(int(progress[w]), self.num_batches_of(w))
            if n == self.num_batches_of(w):
                full[w] = rows
                continue
            full[w], part = divmod(n, cb)
            if part:
                c = w + k * int(full[w])
                runs.append((c * cb, c * cb + part))
        low, high = int(full.min()), int(full.max())
        runs.append((0, min(low * k * cb, nb)))  # every chunk of the first `low` rows
        if high > low:  # the ragged frontier: a few rows when workers advance together
            row = np.arange(low, high)[:, None]
            chunk = row * k + np.arange(k)[None, :]
            chunk = chunk[(row < full[None, :]) & (chunk < self.num_chunks)]
            runs.extend(zip(chunk * cb, np.minimum((chunk + 1) * cb, nb), strict=True))
        return intervals(runs)

    def consumed_after(self, progress: Sequence[int]) -> Intervals:
        """``consumed`` plus, on every rank, the first ``progress[w]`` batches of every worker ``w``."""
        done = self._done_batches(progress)
        if len(done) == 0:
            return self.consumed
        spans = [self.consumed]
        for rank in range(self.layout.world_size):
            for first, stop in done.tolist():
                lo, _ = self.batch_range(rank, first)
                _, hi = self.batch_range(rank, stop - 1)
                spans.append(self.remaining.spans(lo, hi))
        return intervals(np.concatenate([s.reshape(-1, 2) for s in spans]))

    def is_finished(self, progress: Sequence[int]) -> bool:
        return all(int(progress[w]) >= self.num_batches_of(w) for w in range(self.layout.num_workers))
