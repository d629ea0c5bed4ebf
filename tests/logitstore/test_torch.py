"""LogitDataset / LogitLoader on a real cache: order, ranks, real DataLoader workers, resume, compatibility checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from logitstore import CorpusInfo, DatasetWriter, Spec, TokenizerInfo, open_dataset
from logitstore.errors import InvalidInputError, SpecMismatchError
from logitstore.torch import LogitDataset, LogitLoader
from tests.conftest import synthetic_record, teacher

N = 41
VOCAB = 64
TOKENIZER_HASH = "ab" * 32


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("store") / "topk"
    spec = Spec(method="topk", k=4)
    with DatasetWriter(
        root,
        spec=spec,
        teacher=teacher(VOCAB),
        tokenizer=TokenizerInfo(name="t", vocab_size=60, vocab_hash=TOKENIZER_HASH, special_token_ids={"pad": 3}),
        corpus=CorpusInfo(seq_len=20),
        shard_entries=600,
    ) as w:
        for i in range(N):
            w.write(synthetic_record(spec, rng, seq_id=i, length=8 + i % 13, vocab_size=60))
    assert len(open_dataset(root).manifest.shards) >= 3
    return root


def make(cache, **kw) -> LogitDataset:
    kw.setdefault("block_size", 4)
    kw.setdefault("shuffle_window", 2)
    return LogitDataset(cache, **kw)


def seq_ids(batches) -> list[int]:
    return [int(s) for b in batches for s in b["seq_ids"]]


def test_batches_hold_the_records(cache):
    ds = make(cache, batch_size=5, shuffle=False)
    batch = next(iter(ds))
    records = open_dataset(cache).read_range(0, 5)
    t = max(len(r) for r in records)
    assert batch["input_ids"].shape == (5, t) and batch["target_ids"].shape == (5, t, 4)
    assert batch["target_ids"].dtype == torch.int32 and batch["target_mask"].dtype == torch.bool
    for i, r in enumerate(records):
        n = len(r)
        assert batch["input_ids"][i, :n].tolist() == r.input_ids.tolist()
        assert batch["input_ids"][i, n:].eq(3).all()  # the tokenizer's pad id
        assert batch["attention_mask"][i].sum() == n
        assert batch["labels"][i, : n - 1].tolist() == r.input_ids[1:].tolist()
        assert batch["labels"][i, n - 1 :].eq(-100).all()
        assert batch["target_ids"][i, :n].flatten().tolist() == r.ids.tolist()
        assert np.array_equal(batch["target_logprobs"][i, :n].flatten().numpy(), r.logprobs)
        assert not batch["target_mask"][i, n:].any()
        assert np.array_equal(batch["lse"][i, :n].numpy(), r.lse)
    assert batch["spec"] == ds.manifest.spec and batch["vocab_size"] == VOCAB


def test_one_epoch_is_every_sequence_once_in_a_seeded_order(cache):
    ds = make(cache, batch_size=4)
    first = seq_ids(ds)
    assert sorted(first) == list(range(N)) and first != list(range(N))
    assert seq_ids(make(cache, batch_size=4)) == first  # deterministic
    assert seq_ids(make(cache, batch_size=4, seed=1)) != first
    ds.set_epoch(1)
    assert sorted(seq_ids(ds)) == list(range(N)) and seq_ids(ds) != first
    records = [r.seq_id for r in make(cache)]  # one record per item
    assert records == first
    assert seq_ids(make(cache, batch_size=4, shuffle=False)) == list(range(N))


def test_ranks_get_equal_disjoint_shares(cache):
    shares = [seq_ids(make(cache, batch_size=3, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shares] == [N // 3] * 3
    flat = [s for share in shares for s in share]
    assert len(set(flat)) == len(flat) == N - N % 3


def test_rank_and_world_size_default_from_the_environment(cache, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ds = make(cache)
    assert (ds.rank, ds.world_size) == (1, 2)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(InvalidInputError, match="rank 2 / world_size 2 is invalid"):
        make(cache)
    with pytest.raises(InvalidInputError, match=f"holds {N} sequences, fewer than world_size 64"):
        make(cache, rank=0, world_size=64)


def run(loader, stop=None) -> list[int]:
    """seq_ids of the batches a training loop takes from ``loader``: all, or the first ``stop``."""
    out: list[int] = []
    if stop == 0:
        return out
    for i, batch in enumerate(loader, start=1):
        out.extend(int(s) for s in batch["seq_ids"])
        if i == stop:
            break
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resumes_on_another_world_size_and_worker_count(cache, workers):
    loader = LogitLoader(make(cache, batch_size=3), num_workers=workers)
    before = run(loader, stop=5)
    state = loader.state_dict()
    assert state["position"] == len(before) == 15
    after = []
    for rank in range(2):  # resume on two ranks, each with one worker
        resumed = LogitLoader(make(cache, batch_size=4, rank=rank, world_size=2), num_workers=1)
        resumed.load_state_dict(state)
        after.extend(run(resumed))
    both = before + after
    assert len(both) == len(set(both))
    assert len(both) >= N - 1  # at most world_size - 1 wait for the next epoch


def test_loader_continues_where_it_stopped_and_then_starts_the_next_epoch(cache):
    loader = LogitLoader(make(cache, batch_size=4), num_workers=2)
    part = run(loader, stop=3)
    rest = run(loader)
    assert sorted(part + rest) == list(range(N))
    assert loader.state_dict()["position"] == N
    second = run(loader)
    assert sorted(second) == list(range(N)) and second != part + rest
    assert loader.state_dict()["epoch"] == 1


@settings(max_examples=20)
@given(
    worlds=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    batch_sizes=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    stop=st.integers(0, 12),
)
def test_exactly_once_across_a_resume_with_real_loaders(cache, worlds, batch_sizes, stop):
    def loaders(world, batch_size):
        return [
            LogitLoader(make(cache, batch_size=batch_size, rank=r, world_size=world), num_workers=0)
            for r in range(world)
        ]

    first = loaders(worlds[0], batch_sizes[0])
    before = [s for loader in first for s in run(loader, stop=stop)]
    states = [loader.state_dict() for loader in first]
    assert all(s == states[0] for s in states)  # every rank saves the same state
    after = []
    resumed = loaders(worlds[1], batch_sizes[1])
    for loader in resumed:
        loader.load_state_dict(states[0])
        after.extend(run(loader))
    if resumed[0].state_dict()["epoch"] == 1:  # the first run had finished epoch 0: the resumed one is epoch 1
        assert N - len(before) < worlds[0] and len(set(before)) == len(before)
        assert N - len(after) < worlds[1] and len(set(after)) == len(after)
    else:
        both = before + after
        assert len(both) == len(set(both))
        assert N - len(both) < worlds[1]


def test_dataset_set_epoch_restarts_a_loader_that_had_stopped_mid_epoch(cache):
    ds = make(cache, batch_size=4)
    loader = LogitLoader(ds, num_workers=0)
    run(loader, stop=2)
    ds.set_epoch(3)  # e.g. a training loop that calls set_epoch on the dataset it holds
    assert loader.state_dict()["epoch"] == 3 and loader.state_dict()["position"] == 0
    third = run(loader)
    assert sorted(third) == list(range(N))
    fresh = make(cache, batch_size=4)
    fresh.set_epoch(3)
    assert third == seq_ids(fresh)


def test_a_finished_epoch_resumed_on_fewer_ranks_starts_the_next_epoch(cache):
    world = 3  # N = 41: one sequence waits for the next epoch
    loaders = [LogitLoader(make(cache, batch_size=5, rank=r, world_size=world)) for r in range(world)]
    first = [s for loader in loaders for s in run(loader)]
    assert len(first) == N - N % world
    resumed = LogitLoader(make(cache, batch_size=5))
    resumed.load_state_dict(loaders[0].state_dict())
    second = run(resumed)
    assert sorted(second) == list(range(N))  # a whole epoch 1, not a 1-sequence leftover of epoch 0
    assert resumed.state_dict()["epoch"] == 1


def test_dataset_state_is_refused_while_a_loader_with_workers_holds_it(cache):
    ds = make(cache, batch_size=4)
    loader = LogitLoader(ds, num_workers=1)
    it = iter(loader)
    next(it)
    with pytest.raises(InvalidInputError, match=r"save loader.state_dict\(\) instead"):
        ds.state_dict()
    assert loader.state_dict()["position"] == 4
    it.close()
    assert ds.state_dict()["format"] == "logitstore.loader/2"


def test_blocks_follow_the_row_groups_so_each_is_decoded_once_per_epoch(tmp_path, monkeypatch):
    from logitstore.formats import base, parquet

    monkeypatch.setattr(base, "FLUSH_ENTRIES", 150)  # many row groups per shard
    rng = np.random.default_rng(1)
    spec = Spec(method="topk", k=4)
    with DatasetWriter(tmp_path / "rg", spec=spec, teacher=teacher(VOCAB), shard_entries=700) as w:
        for i in range(N):
            w.write(synthetic_record(spec, rng, seq_id=i, length=8 + i % 13, vocab_size=60))
    shards = open_dataset(tmp_path / "rg").manifest.shards
    groups = [g for s in shards for g in s.row_groups]
    assert sum(groups) == N and len(groups) > 2 * len(shards)
    decoded = []
    original = parquet.ParquetShardReader._read_group_uncached
    monkeypatch.setattr(
        parquet.ParquetShardReader,
        "_read_group_uncached",
        lambda self, g: decoded.append((self.info.path, g)) or original(self, g),
    )
    ds = LogitDataset(tmp_path / "rg", batch_size=3, shuffle_window=2)
    assert sorted(seq_ids(ds)) == list(range(N))
    assert len(decoded) == len(set(decoded)) == len(groups)


def test_stateful_dataloader_with_workers_resumes_each_worker(cache):
    from torchdata.stateful_dataloader import StatefulDataLoader

    def loader():
        ds = make(cache)
        return StatefulDataLoader(ds, batch_size=4, num_workers=2, collate_fn=ds.collate)

    first = loader()
    before = run(first, stop=4)
    state = first.state_dict()
    second = loader()
    second.load_state_dict(state)
    after = run(second)
    assert len(before + after) == len(set(before + after)) == N


def test_stateful_dataloader_in_the_main_process_saves_a_global_position(cache):
    from torchdata.stateful_dataloader import StatefulDataLoader

    first = StatefulDataLoader(make(cache, batch_size=5), batch_size=None, num_workers=0)
    before = run(first, stop=3)
    dataset_state = first.state_dict()["dataset_state"]
    assert dataset_state["position"] == 15
    after = []
    for rank in range(3):
        ds = make(cache, batch_size=2, rank=rank, world_size=3)
        ds.load_state_dict(dataset_state)
        after.extend(seq_ids(ds))
    assert len(before + after) == len(set(before + after)) >= N - 2


def test_a_worker_state_cannot_resume_on_another_layout(cache):
    ds = make(cache, batch_size=2)
    state = ds.state_dict()
    state.update(layout={"world_size": 1, "num_workers": 2, "batch_size": 2, "chunk_batches": 4}, progress=[[1, 3]])
    ds.load_state_dict(state)
    with pytest.raises(InvalidInputError, match=r"saved by one DataLoader worker .* save LogitLoader.state_dict\(\)"):
        next(iter(ds))


def test_a_state_from_another_order_is_refused(cache):
    state = make(cache, batch_size=2).state_dict()
    with pytest.raises(InvalidInputError, match="seed=0 but this dataset has seed=5"):
        make(cache, batch_size=2, seed=5).load_state_dict(state)
    with pytest.raises(InvalidInputError, match="not a logitstore loader state"):
        make(cache).load_state_dict({"epoch": 1})


def test_loader_refuses_batching_options(cache):
    with pytest.raises(InvalidInputError, match="needs a LogitDataset built with batch_size"):
        LogitLoader(make(cache))
    with pytest.raises(InvalidInputError, match="does not take 'shuffle'"):
        LogitLoader(make(cache, batch_size=2), shuffle=True)
    with pytest.raises(InvalidInputError, match="needs in_order=True"):
        LogitLoader(make(cache, batch_size=2), in_order=False)
    with pytest.raises(InvalidInputError, match="batch_size must be a positive integer"):
        make(cache, batch_size=0)


# -- student compatibility ------------------------------------------------------------------------------------------


def test_student_vocabulary_checks(cache):
    assert make(cache, student_vocab_size=VOCAB).vocab_size == VOCAB
    assert make(cache, student_vocab_size=100).vocab_size == VOCAB  # a padded student head
    # smaller than the teacher's head but not than its tokenizer (60 ids): the extra teacher ids are padding
    ds = make(cache, student_vocab_size=61, batch_size=N, shuffle=False)
    batch = next(iter(ds))
    assert batch["vocab_size"] == 61 and not (batch["target_ids"][batch["target_mask"]] >= 61).any()
    with pytest.raises(SpecMismatchError, match=r"student vocabulary 50 < logit dimension 64 .* tokenizer has 60 ids"):
        make(cache, student_vocab_size=50)


def test_tokenizer_and_seq_len_checks(cache):
    make(cache, tokenizer=TOKENIZER_HASH, seq_len=20)
    with pytest.raises(SpecMismatchError, match=r"vocab hash cdcdcdcdcdcd\.\.\.\) differs .* check_tokenizer=False"):
        make(cache, tokenizer="cd" * 32)
    make(cache, tokenizer="cd" * 32, check_tokenizer=False)

    class Tokenizer:
        def get_vocab(self):
            return {"a": 0, "b": 1}

    with pytest.raises(SpecMismatchError, match="differs from the teacher's tokenizer"):
        make(cache, tokenizer=Tokenizer())
    with pytest.raises(
        SpecMismatchError, match=r"sequences of up to 20 tokens but the student takes 16: .*--seq-len 16"
    ):
        make(cache, seq_len=16)


def test_plain_dataloader_with_collate(cache):
    ds = make(cache)
    batches = list(DataLoader(ds, batch_size=6, num_workers=2, collate_fn=ds.collate))
    assert sorted(seq_ids(batches)) == list(range(N))
