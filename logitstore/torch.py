"""The DataLoader plugin: stream a cache into student training, rank-aware, resumable, in a deterministic order.

Two ways to use it::

    # batches built inside the dataset (fast: decoded blocks are collated directly); LogitLoader knows how far
    # the epoch got, on any world size and worker count
    ds = LogitDataset("store/topk64", batch_size=8, student_vocab_size=model.config.vocab_size)
    loader = LogitLoader(ds, num_workers=2)
    for batch in loader: ...
    torch.save(loader.state_dict(), "loader.pt")        # any rank: they are identical

    # one record per item, batched by a DataLoader (e.g. torchdata's StatefulDataLoader, HF Trainer)
    ds = LogitDataset("store/topk64")
    loader = DataLoader(ds, batch_size=8, collate_fn=ds.collate)

The order and the split over ranks and workers are described in :mod:`logitstore.order`.
"""

from __future__ import annotations

import bisect
import hashlib
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.utils.data

from logitstore.align import TokenizerAligner
from logitstore.collate import collate
from logitstore.compat import check_student
from logitstore.dataset import Dataset, open_dataset
from logitstore.errors import InvalidInputError
from logitstore.formats.base import FLUSH_ENTRIES
from logitstore.order import EpochOrder, Intervals, Layout, Plan, block_bounds, intervals, total
from logitstore.record import Record

STATE_FORMAT = "logitstore.loader/2"


def distributed_rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)`` from the arguments, else ``torch.distributed``, else ``RANK`` / ``WORLD_SIZE``."""
    if rank is None or world_size is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            found = (dist.get_rank(), dist.get_world_size())
        else:
            found = (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if world_size < 1 or not (0 <= rank < world_size):
        raise InvalidInputError(f"rank {rank} / world_size {world_size} is invalid; need 0 <= rank < world_size")
    return rank, world_size


@dataclass
class _Resume:
    """Where an epoch stands: positions consumed before ``layout`` applied, and batches each worker delivered."""

    consumed: Intervals
    layout: Layout | None = None
    progress: dict[int, int] | None = None


_NEXT_EPOCH = np.zeros((0, 2), dtype=np.int64)  # a sentinel: compared by identity


class LogitDataset(torch.utils.data.IterableDataset):
    """A cache as a PyTorch ``IterableDataset`` (see the module docstring).

    Args:
        source: a dataset path, an fsspec URL, the service's ``http://HOST:PORT/v1/datasets/NAME`` (shards stream
            through it; ``api_key`` if it wants one), or an open :class:`~logitstore.Dataset`.
        batch_size: yield collated batches of this many sequences (the fast path, and what :class:`LogitLoader`
            needs); None yields one :class:`~logitstore.Record` per item, to batch with :meth:`collate`.
        shuffle: False reads in seq_id order.
        seed: with the epoch, fixes the order on every rank.
        rank, world_size: default from ``torch.distributed``, else ``RANK`` / ``WORLD_SIZE``, else 0 / 1.
        student_vocab_size, tokenizer, seq_len, check_tokenizer: the student, checked against the cache at
            construction (:func:`logitstore.compat.check_student`).
        shuffle_window: blocks shuffled together; bigger mixes more and holds more decoded data per worker.
        block_size: sequences per block (default: the shards' row groups, as the manifest records them, so every
            row group is decoded once per epoch; an estimate of one row group for manifests that do not).
        pad_token_id: default: the tokenizer's pad id, else 0.
        verify: check every shard's sha256 before its first read.
        student_tokenizer, teacher_tokenizer: a student with another tokenizer (cross-tokenizer distillation, ULD
            only): each batch is re-tokenized and its positions paired with the teacher's
            (:class:`logitstore.align.TokenizerAligner`); the tokenizer and vocabulary checks are skipped, and every
            loss but ``uld`` refuses such batches. ``teacher_tokenizer`` defaults to the directory the manifest
            names.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Dataset,
        *,
        batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        student_vocab_size: int | None = None,
        tokenizer: Any = None,
        seq_len: int | None = None,
        check_tokenizer: bool = True,
        shuffle_window: int = 8,
        block_size: int | None = None,
        pad_token_id: int | None = None,
        verify: bool = False,
        api_key: str | None = None,
        student_tokenizer: Any = None,
        teacher_tokenizer: Any = None,
    ):
        super().__init__()
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise InvalidInputError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        for name, value in (("shuffle_window", shuffle_window), ("block_size", block_size)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(source, Dataset):
            self._dataset: Dataset | None = source
            self.location, self.verify, self.api_key = source.location, source.verify, source.api_key
        else:
            self._dataset = open_dataset(source, verify=verify, api_key=api_key)
            self.location, self.verify, self.api_key = os.fspath(source), verify, api_key
        self._pid = os.getpid()
        manifest = self._dataset.manifest
        self.manifest = manifest
        self._aligner: TokenizerAligner | None = None
        if student_tokenizer is not None:  # cross-tokenizer: ids are not comparable, so neither check applies
            if tokenizer is not None or student_vocab_size is not None:
                raise InvalidInputError(
                    "student_tokenizer= is for a student with another tokenizer (ULD only); do not also pass "
                    "tokenizer= or student_vocab_size=, which check a student that shares the teacher's ids"
                )
            self._aligner = TokenizerAligner(manifest, student_tokenizer, teacher_tokenizer=teacher_tokenizer)
        self.vocab_size = check_student(
            manifest,
            vocab_size=student_vocab_size,
            tokenizer=tokenizer,
            seq_len=seq_len,
            check_tokenizer=check_tokenizer and student_tokenizer is None,
        )
        self.batch_size = batch_size
        self.shuffle, self.seed, self.shuffle_window = shuffle, int(seed), shuffle_window
        self.rank, self.world_size = distributed_rank_and_world(rank, world_size)
        specials = manifest.tokenizer.special_token_ids
        self.pad_token_id = pad_token_id if pad_token_id is not None else specials.get("pad", 0)
        n = manifest.num_sequences
        self.num_sequences = n
        if n < self.world_size:
            raise InvalidInputError(
                f"cache {manifest.name!r} holds {n} sequences, fewer than world_size {self.world_size}: every rank "
                "needs at least one; use fewer ranks or a larger cache"
            )
        self.block_size = block_size
        if block_size is None and all(s.row_groups for s in manifest.shards):
            self._bounds = np.concatenate([[0], np.cumsum([g for s in manifest.shards for g in s.row_groups])])
        else:  # about one row group per block: the writer flushes every FLUSH_ENTRIES entries
            entries = sum(s.num_entries for s in manifest.shards)
            estimate = block_size or max(1, -(-FLUSH_ENTRIES * n // max(entries, 1)))
            self._bounds = block_bounds([s.num_sequences for s in manifest.shards], estimate)
        self._bounds = self._bounds.astype(np.int64)
        #: identifies the blocks in a saved state: resuming with other blocks would change the epoch order
        self.blocks = hashlib.blake2b(self._bounds.tobytes(), digest_size=8).hexdigest()
        self.epoch = 0
        self._generation = 0  # bumped whenever the epoch or its progress is set from outside
        self._loader_workers = False  # True while a LogitLoader iterates with workers: the state lives there
        self._resume = _Resume(consumed=intervals([]))
        self._active: tuple[Plan, int, list[int]] | None = None  # plan, worker id, progress of this iterator

    # -- pickling for DataLoader workers: reopen the files in the worker --------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_dataset"] = None
        state["_active"] = None
        return state

    @property
    def dataset(self) -> Dataset:
        """The open cache, reopened in a forked DataLoader worker: inherited file handles share their offsets with
        the parent, and an inherited HTTP filesystem's event loop does not run in the child."""
        if self._dataset is None or self._pid != os.getpid():
            self._dataset = open_dataset(self.location, verify=self.verify, api_key=self.api_key)
            self._pid = os.getpid()
        return self._dataset

    # -- what a rank reads -------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Items this rank yields in a full epoch: batches when ``batch_size`` is set, else records."""
        per_rank = self.num_sequences // self.world_size
        return -(-per_rank // self.batch_size) if self.batch_size else per_rank

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning (a different order for every epoch)."""
        if not isinstance(epoch, int) or epoch < 0:
            raise InvalidInputError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch
        self._resume = _Resume(consumed=intervals([]))
        self._active = None
        self._generation += 1

    def order(self) -> EpochOrder:
        return EpochOrder(
            self._bounds, seed=self.seed, epoch=self.epoch, window=self.shuffle_window, shuffle=self.shuffle
        )

    def plan(self, num_workers: int) -> tuple[Plan, list[int]]:
        """The split of what is left of this epoch for ``num_workers`` DataLoader workers, and how many batches
        each worker has already delivered (non-zero only when resuming on the same layout)."""
        unit = self.batch_size or 1
        window_sequences = self.shuffle_window * self.num_sequences // (len(self._bounds) - 1)
        layout = Layout(self.world_size, max(1, num_workers), unit, max(1, window_sequences // unit))
        r = self._resume
        consumed = r.consumed
        if r.layout is not None:
            progress = r.progress or {}
            if r.layout != layout and set(progress) != set(range(r.layout.num_workers)):
                raise InvalidInputError(
                    f"this state was saved by one DataLoader worker (workers {sorted(progress)} of "
                    f"{r.layout.num_workers}); it resumes only on the layout that saved it ({r.layout.to_dict()}), "
                    f"not on {layout.to_dict()}: save LogitLoader.state_dict() to change the world size, batch "
                    "size or worker count"
                )
            saved = Plan(self.num_sequences, r.consumed, r.layout)
            start = [progress.get(w, 0) for w in range(r.layout.num_workers)]
            if saved.is_finished(start):
                # the saved epoch ran to its end: its remainder (< the old world size) waits for the next epoch,
                # also on fewer ranks, which could otherwise split it into a tiny extra pass
                consumed = _NEXT_EPOCH
            elif r.layout == layout:
                return saved, start
            else:
                consumed = saved.consumed_after(start)
        if consumed is _NEXT_EPOCH or (
            total(consumed) > 0 and Plan(self.num_sequences, consumed, layout).num_batches == 0
        ):
            self.set_epoch(self.epoch + 1)
            consumed = self._resume.consumed
        self._resume = _Resume(consumed=consumed, layout=layout, progress={})
        return Plan(self.num_sequences, consumed, layout), [0] * layout.num_workers

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        num_workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        plan, start = self.plan(num_workers)
        progress = list(start)
        self._active = (plan, worker, progress)
        order = self.order()
        blocks = _BlockCache(self.dataset, self._bounds, capacity=self.shuffle_window + 1)
        for batch in plan.batches_of(worker, start[worker]):
            seq_ids = order.seq_ids(plan.batch_positions(self.rank, int(batch)))
            records = [blocks.get(int(s)) for s in seq_ids]
            item: Any = records[0] if self.batch_size is None else self.collate(records)
            progress[worker] += 1  # counted before the yield: a state taken right after it includes the item
            yield item

    def collate(self, records: Sequence[Record]) -> dict[str, Any]:
        """Records of this cache -> one padded batch (:func:`logitstore.collate.collate`), re-tokenized for the
        student when it has another tokenizer (:class:`logitstore.align.TokenizerAligner`)."""
        batch = collate(
            records,
            spec=self.manifest.spec,
            vocab_size=self.vocab_size,
            pad_token_id=self.pad_token_id,
            cache_vocab_size=self.manifest.vocab_size,
        )
        return batch if self._aligner is None else self._aligner(batch)

    # -- resume ------------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where this epoch stands. In the main process (``num_workers=0``) it is the whole job's position, the
        same on every rank; inside a DataLoader worker (torchdata's ``StatefulDataLoader``) it is that worker's."""
        if self._loader_workers and torch.utils.data.get_worker_info() is None:
            raise InvalidInputError(
                "a LogitLoader with worker processes is iterating this dataset: the position lives in the loader; "
                "save loader.state_dict() instead of dataset.state_dict()"
            )
        if self._active is not None:
            plan, worker, progress = self._active
            if plan.layout.num_workers == 1 or torch.utils.data.get_worker_info() is None:
                workers = {w: progress[w] for w in range(plan.layout.num_workers)}
            else:
                workers = {worker: progress[worker]}
            return self._state(plan.consumed, plan.layout, workers)
        r = self._resume
        return self._state(r.consumed, r.layout, r.progress)

    def state_for(self, plan: Plan, progress: Sequence[int]) -> dict[str, Any]:
        """The state after every worker ``w`` delivered ``progress[w]`` batches of ``plan``."""
        return self._state(plan.consumed, plan.layout, dict(enumerate(progress)))

    def _state(self, consumed: Intervals, layout: Layout | None, progress: dict[int, int] | None) -> dict[str, Any]:
        position = total(consumed)
        if layout is not None and progress is not None and len(progress) == layout.num_workers:
            plan = Plan(self.num_sequences, consumed, layout)
            position = total(plan.consumed_after([progress[w] for w in range(layout.num_workers)]))
        return {
            "format": STATE_FORMAT,
            "epoch": self.epoch,
            "position": position,
            "num_sequences": self.num_sequences,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "shuffle_window": self.shuffle_window,
            "blocks": self.blocks,
            "consumed": consumed.tolist(),
            "layout": None if layout is None else layout.to_dict(),
            "progress": None if progress is None else sorted(progress.items()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` (also one saved on another world size, batch size or worker count)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise InvalidInputError(
                f"not a logitstore loader state (format {state.get('format') if isinstance(state, dict) else None!r},"
                f" expected {STATE_FORMAT!r}); pass what LogitDataset.state_dict() or LogitLoader.state_dict() returned"
            )
        for key in ("num_sequences", "seed", "shuffle", "shuffle_window", "blocks"):
            mine = getattr(self, key)
            if state[key] != mine:
                raise InvalidInputError(
                    f"the saved loader state has {key}={state[key]!r} but this dataset has {key}={mine!r}: the epoch "
                    f"order would differ, so samples could repeat or be skipped; construct the dataset with the "
                    f"same {key} (and the same cache){' and block_size' if key == 'blocks' else ''}"
                )
        self.epoch = int(state["epoch"])
        layout = None if state["layout"] is None else Layout(**state["layout"])
        progress = None if state["progress"] is None else {int(w): int(n) for w, n in state["progress"]}
        self._resume = _Resume(consumed=intervals(state["consumed"]), layout=layout, progress=progress)
        self._active = None
        self._generation += 1


class _BlockCache:
    """Decoded blocks of consecutive sequences, least recently used evicted: a window's blocks stay decoded."""

    def __init__(self, dataset: Dataset, bounds: np.ndarray, capacity: int):
        self.dataset, self.bounds, self.capacity = dataset, bounds.tolist(), capacity
        self._blocks: OrderedDict[int, list[Record]] = OrderedDict()

    def get(self, seq_id: int) -> Record:
        block = bisect.bisect_right(self.bounds, seq_id) - 1
        records = self._blocks.get(block)
        if records is None:
            records = self.dataset.read_range(self.bounds[block], self.bounds[block + 1])
            self._blocks[block] = records
            if len(self._blocks) > self.capacity:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(block)
        return records[seq_id - self.bounds[block]]


class LogitLoader:
    """A ``torch.utils.data.DataLoader`` over a batched :class:`LogitDataset` that knows exactly which batches it
    has delivered, so :meth:`state_dict` resumes on any world size, batch size or worker count, and iterating again
    continues where the last iteration stopped (the next epoch once one is finished).

    Keyword arguments (``num_workers``, ``pin_memory``, ``prefetch_factor``, ``persistent_workers``, ``timeout``,
    ``multiprocessing_context``) go to the DataLoader.
    """

    def __init__(self, dataset: LogitDataset, **loader_kwargs: Any):
        if dataset.batch_size is None:
            raise InvalidInputError(
                "LogitLoader needs a LogitDataset built with batch_size=N (it yields whole batches); for per-record "
                "items use a DataLoader with collate_fn=dataset.collate"
            )
        for key in ("batch_size", "shuffle", "sampler", "batch_sampler", "collate_fn", "drop_last"):
            if key in loader_kwargs:
                raise InvalidInputError(f"LogitLoader does not take {key!r}: batching and order belong to the dataset")
        if loader_kwargs.get("in_order", True) is not True:
            raise InvalidInputError(
                "LogitLoader needs in_order=True (the default): it counts delivered batches in worker round-robin "
                "order to resume exactly once"
            )
        self.dataset = dataset
        self.loader_kwargs = loader_kwargs
        self.num_workers = int(loader_kwargs.get("num_workers", 0))
        self._position: tuple[Plan, list[int], int] | None = None
        self._generation = -1  # the dataset's generation that _position belongs to

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.dataset.load_state_dict(self.state_dict())
        plan, start = self.dataset.plan(self.num_workers)
        self.dataset.load_state_dict(self.dataset.state_for(plan, start))
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=None, **self.loader_kwargs)
        self._position, self._generation = (plan, start, 0), self.dataset._generation
        self.dataset._loader_workers = self.num_workers > 0
        try:
            for batch in loader:
                self._position = (plan, start, self._position[2] + 1)
                yield batch
        finally:
            self.dataset._loader_workers = False

    def state_dict(self) -> dict[str, Any]:
        """The job's position in the epoch (identical on every rank of a data-parallel job)."""
        if self._position is None or self._generation != self.dataset._generation:
            # never iterated, or the dataset's epoch / state was set since (dataset.set_epoch, load_state_dict)
            self._position = None
            return self.dataset.state_dict()
        plan, start, delivered = self._position
        return self.dataset.state_for(plan, plan.progress_after(start, delivered))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)
        self._position = None

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
        self._position = None
