"""Loader benchmark: tokens/s delivered as collated torch batches by one process, beside its floor and a baseline.

Run from the repository root::

    .venv/bin/python bench/loader.py            # default: 256 sequences x 1024 tokens, V = 32,000
    .venv/bin/python bench/loader.py --quick    # smoke run

For top-k 64 and sample n=50 (compact encoding, Parquet), in one process pinned to one core
(``torch.set_num_threads(1)``), side by side and interleaved over ``--repeats`` rounds (best round reported):

- **pyarrow floor**: every row group of the same shards read with ``pyarrow.parquet`` and each column's values
  turned into numpy arrays: decompression and nothing else, the least work any loader of these files must do.
- **logitstore**: ``LogitDataset(batch_size=B)`` in shuffled order, ``num_workers=0``: decode, collate to padded
  ``[B, T, K]`` torch tensors (ids, logprobs, counts, masks, lse, labels).
- **datasets**: the same logical records as a Hugging Face ``datasets`` Arrow dataset (nested ``[T][K]`` lists,
  what a hand-rolled offline-KD pipeline stores), read in shuffled order with ``with_format("numpy")`` and a
  straightforward collate to the same tensors (stack for fixed K; pad position by position for ragged K).
- **service**: the logitstore path again, reading the same cache through a real ``logitstore serve`` on loopback:
  ``LogitDataset("http://127.0.0.1:PORT/v1/datasets/NAME")``, shards fetched with HTTP Range requests from
  ``/files`` (fsspec's HTTP filesystem) and decoded here. The server runs on the other core (the loader keeps its
  one), as a service on another host would; ``--no-service`` skips it.

Logits come from ``bench/teacher_like.py`` for ``--distinct`` sequences; the cache repeats them (with distinct
token ids, so keys differ) up to ``--sequences``, which changes nothing for a decoder that does not look across
sequences. Results: stdout, ``bench/out/loader.md`` and ``bench/out/loader.json`` (server log:
``bench/out/loader-server.log``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service import running_server  # noqa: E402
from teacher_like import TeacherLike  # noqa: E402

import logitstore  # noqa: E402
from logitstore.rng import position_streams  # noqa: E402
from logitstore.sparsify import sparsify  # noqa: E402
from logitstore.torch import LogitDataset  # noqa: E402

METHODS: dict[str, dict[str, Any]] = {"topk64": {"method": "topk", "k": 64}, "sample50": {"method": "sample", "n": 50}}
OUT_DIR = Path(__file__).resolve().parent / "out"


def build_records(spec: logitstore.Spec, teacher: TeacherLike, distinct: int, total: int, seq_len: int):
    base = []
    for i in range(distinct):
        z = teacher.logits(i, seq_len)
        input_ids = np.random.default_rng([7, i]).integers(0, teacher.vocab_size, size=seq_len, dtype=np.int32)
        key = logitstore.content_key(input_ids)
        streams, positions = position_streams(spec.seed, [key], [seq_len])
        base.append((input_ids, sparsify(z, spec, streams=streams, positions=positions).numpy()))
    for i in range(total):
        input_ids, sparse = base[i % distinct]
        ids = np.roll(input_ids, i // distinct)  # distinct content keys for the repeats
        yield logitstore.Record(seq_id=i, key=logitstore.content_key(ids), input_ids=ids, **sparse)


def write_cache(out: Path, spec: logitstore.Spec, teacher: TeacherLike, args: argparse.Namespace) -> Path:
    with logitstore.DatasetWriter(
        out,
        spec=spec,
        teacher=logitstore.TeacherInfo(name="teacher-like", vocab_size=teacher.vocab_size, dtype="float32"),
        corpus=logitstore.CorpusInfo(seq_len=args.seq_len),
    ) as w:
        for r in build_records(spec, teacher, args.distinct, args.sequences, args.seq_len):
            w.write(r)
    return out


def write_hf(path: Path, cache: Path) -> Path:
    """The cache's records as a Hugging Face dataset with nested [T][K] lists."""
    import datasets

    ds = logitstore.open_dataset(cache)

    def rows():
        for r in ds:
            off = r.offsets
            row = {
                "input_ids": r.input_ids,
                "lse": r.lse,
                "target_ids": [r.ids[off[t] : off[t + 1]] for t in range(len(r))],
                "target_logprobs": [r.logprobs[off[t] : off[t + 1]] for t in range(len(r))],
            }
            if r.counts is not None:
                row["target_counts"] = [r.counts[off[t] : off[t + 1]] for t in range(len(r))]
            yield row

    nested_int = datasets.Sequence(datasets.Sequence(datasets.Value("int32")))
    features = {
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "lse": datasets.Sequence(datasets.Value("float32")),
        "target_ids": nested_int,
        "target_logprobs": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
    }
    if ds.manifest.spec.has_counts:
        features["target_counts"] = nested_int
    hf = datasets.Dataset.from_generator(rows, features=datasets.Features(features))
    hf.save_to_disk(str(path))
    return path


def hf_collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """What a user writes: stack when every position holds K entries, else pad position by position."""
    input_ids = torch.from_numpy(np.stack([e["input_ids"] for e in examples])).long()
    out = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": torch.cat([input_ids[:, 1:], torch.full_like(input_ids[:, :1], -100)], 1),
        "lse": torch.from_numpy(np.stack([e["lse"] for e in examples])),
    }
    first = examples[0]["target_ids"]
    if first.dtype != object:  # fixed K: numpy gives [T, K] arrays
        for name in ("target_ids", "target_logprobs", "target_counts"):
            if name in examples[0]:
                out[name] = torch.from_numpy(np.stack([e[name] for e in examples]))
        out["target_mask"] = torch.ones(out["target_ids"].shape, dtype=torch.bool)
        return out
    b, t = len(examples), len(first)
    k = max(len(row) for e in examples for row in e["target_ids"])
    ids = torch.zeros(b, t, k, dtype=torch.int32)
    logprobs = torch.full((b, t, k), -float("inf"))
    counts = torch.zeros(b, t, k, dtype=torch.int32)
    mask = torch.zeros(b, t, k, dtype=torch.bool)
    for i, e in enumerate(examples):
        rows = zip(e["target_ids"], e["target_logprobs"], e["target_counts"], strict=True)
        for p, (row_ids, row_lp, row_c) in enumerate(rows):
            n = len(row_ids)
            ids[i, p, :n] = torch.tensor(row_ids)
            logprobs[i, p, :n] = torch.tensor(row_lp)
            counts[i, p, :n] = torch.tensor(row_c)
            mask[i, p, :n] = True
    out.update(target_ids=ids, target_logprobs=logprobs, target_counts=counts, target_mask=mask)
    return out


# -- the timed paths --------------------------------------------------------------------------------------------------


def run_floor(cache: Path) -> int:
    tokens = 0
    for shard in sorted((cache / "shards").glob("*.parquet")):
        f = pq.ParquetFile(shard)
        for g in range(f.num_row_groups):
            table = f.read_row_group(g)
            for column in table.columns:
                arr = column.combine_chunks()
                while hasattr(arr, "values"):  # list columns: down to the flat values
                    arr = arr.values
                values = arr.to_numpy(zero_copy_only=False)
                if column._name == "lse":
                    tokens += len(values)
    return tokens


def run_logitstore(cache: Path | str, batch_size: int) -> int:
    tokens = 0
    for batch in LogitDataset(cache, batch_size=batch_size, seed=1):
        tokens += int(batch["attention_mask"].sum())
    return tokens


def run_datasets(path: Path, batch_size: int) -> int:
    import datasets

    hf = datasets.load_from_disk(str(path)).with_format("numpy")
    loader = torch.utils.data.DataLoader(hf, batch_size=batch_size, shuffle=True, collate_fn=hf_collate)
    torch.manual_seed(1)
    tokens = 0
    for batch in loader:
        tokens += int(batch["attention_mask"].sum())
    return tokens


def timed(fn, *args) -> tuple[float, int]:
    t = time.perf_counter()
    tokens = fn(*args)
    return time.perf_counter() - t, tokens


def measure(cache: Path, hf_path: Path, url: str | None, args: argparse.Namespace) -> dict[str, Any]:
    """Every path over one cache, interleaved over ``args.repeats`` rounds; the best round of each."""
    paths = {
        "pyarrow floor": lambda: run_floor(cache),
        "logitstore": lambda: run_logitstore(cache, args.batch_size),
        "datasets": lambda: run_datasets(hf_path, args.batch_size),
    }
    if url is not None:
        paths["service"] = lambda: run_logitstore(f"{url}/v1/datasets/{cache.name}", args.batch_size)
    best: dict[str, float] = {}
    tokens: dict[str, int] = {}
    for _ in range(args.repeats):  # interleaved rounds: each path sees the same machine state
        for label, fn in paths.items():
            seconds, n = timed(fn)
            best[label] = min(best.get(label, float("inf")), seconds)
            tokens[label] = n
    rate = {label: tokens[label] / best[label] for label in paths}
    out = {
        "tokens": tokens,
        "tokens_per_s": rate,
        "logitstore_vs_datasets": rate["logitstore"] / rate["datasets"],
        "floor_vs_logitstore": rate["pyarrow floor"] / rate["logitstore"],
        "bytes_per_token": logitstore.open_dataset(cache).manifest.stats.bytes_per_token,
    }
    if url is not None:
        out["service_vs_local"] = rate["service"] / rate["logitstore"]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=256)
    p.add_argument("--distinct", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=32_000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="16 sequences of 256 tokens, 1 round")
    p.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU")
    p.add_argument("--no-service", action="store_true", help="skip the path through `logitstore serve`")
    args = p.parse_args(argv)
    if args.quick:
        args.sequences, args.distinct, args.seq_len, args.repeats = 16, 4, 256, 1
    torch.set_num_threads(1)
    server_cpus = None
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[0]})
        server_cpus = set(cpus[1:]) or None
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import datasets

    datasets.disable_progress_bars()
    teacher = TeacherLike(args.vocab, seed=0)
    root = Path(tempfile.mkdtemp(prefix="logitstore-loader-bench-"))
    results: dict[str, Any] = {"config": vars(args), "methods": {}}
    try:
        caches = {name: write_cache(root / name, logitstore.Spec(**o), teacher, args) for name, o in METHODS.items()}
        with ExitStack() as stack:
            url = None
            if not args.no_service:
                log = OUT_DIR / "loader-server.log"
                OUT_DIR.mkdir(exist_ok=True)
                url, _ = stack.enter_context(running_server(root, log, cpus=server_cpus))
            for name, cache in caches.items():
                results["methods"][name] = measure(cache, write_hf(root / f"{name}-hf", cache), url, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(results)
    return results


def report(results: dict[str, Any]) -> None:
    cfg = results["config"]
    lines = [
        f"# Loader benchmark ({cfg['sequences']} x {cfg['seq_len']} tokens, V={cfg['vocab']}, batch "
        f"{cfg['batch_size']}, one core (the service on the other), best of {cfg['repeats']})",
        "",
        "| method | B/token | pyarrow floor tok/s | logitstore tok/s | datasets tok/s | vs datasets | floor / ours "
        "| via service tok/s | service / local |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["methods"].items():
        t = r["tokens_per_s"]
        service = f"{t['service'] / 1e6:.2f}M | {r['service_vs_local']:.2f}x" if "service" in t else "- | -"
        lines.append(
            f"| {name} | {r['bytes_per_token']:.0f} | {t['pyarrow floor'] / 1e6:.2f}M | {t['logitstore'] / 1e6:.2f}M "
            f"| {t['datasets'] / 1e6:.3f}M | {r['logitstore_vs_datasets']:.1f}x | {r['floor_vs_logitstore']:.2f}x "
            f"| {service} |"
        )
    text = "\n".join(lines)
    print(text)
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "loader.md").write_text(text + "\n")
    (OUT_DIR / "loader.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
