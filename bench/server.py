"""Service benchmark: latency and throughput of ``logitstore serve`` under 32 concurrent clients on loopback.

Run from the repository root::

    .venv/bin/python bench/server.py            # 64 sequences x 2,048 tokens, top-k 64, V = 32,000; 10 s per case
    .venv/bin/python bench/server.py --quick    # smoke run: 2 s per case, one server configuration

A real ``logitstore serve`` process (``--log-level warning``, log in ``bench/out/``) serves a top-k 64 dataset
(compact encoding, Parquet; teacher-like logits from ``bench/teacher_like.py``, built once into
``bench/out/server-store/`` and reused). This process is the load generator: ``--clients`` asyncio tasks on one
aiohttp session (one keep-alive connection each), a separate process from the server, so they do not share a GIL;
they do share the machine's cores. Each case is warmed up, then runs closed-loop for ``--duration`` seconds
(each client sends its next request as soon as the previous response is read in full); latency is request sent
to last body byte received (a request retried on a new connection because the server had closed the pooled
one counts once, with the time lost; the results count the retries). The cases:

- **single JSON** / **single Arrow**: ``GET /sequences/{random seq_id}``, JSON or Arrow IPC.
- **batch Arrow** (and **batch JSON** with ``--batch-json``): ``POST /batch`` with ``--batch`` random seq_ids.
- **static single** / **static batch**: the very bytes of a single-sequence and of a batch Arrow response,
  captured from the running server and written as files under the dataset's ``shards/`` directory, served by the
  same uvicorn through ``GET /files/...`` (the service's static-file path, ``FileRangeResponse``: page-cache reads
  on the event loop, with no record decoding and no encoding). Same process, same bytes per response, same
  clients: the ratio of the two is what reading and encoding records costs against pushing the same bytes from the
  page cache. (The shard file
  itself would not do: it holds the compressed records, ~4x fewer bytes than a decoded batch.)
- **floor: healthz**: ``GET /healthz`` (a few bytes, no dataset): what one request costs the HTTP stack and the
  clients alone, with nothing to read or send; no case can have a lower p99 on this host.

Each case also runs with one client (``--unloaded-duration``): the service time of one request with nothing
queued, which under a closed loop of N clients bounds the latency to about N / (requests/s).
Results: stdout, ``bench/out/server.md`` and ``bench/out/server.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loader import build_records  # noqa: E402
from service import cpu_seconds, running_server  # noqa: E402
from teacher_like import TeacherLike  # noqa: E402

import logitstore  # noqa: E402
from logitstore.wire import ARROW_STREAM, record_from_json, records_from_arrow  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent / "out"
STATIC_SINGLE = "shards/static-single.arrow"
STATIC_BATCH = "shards/static-batch.arrow"

#: (method, path, headers, json body) of one request
Request = tuple[str, str, dict[str, str], Any]


def build_store(args: argparse.Namespace) -> tuple[Path, str]:
    """The benchmark's store and dataset name; the dataset is built once and reused while its shape matches."""
    store = OUT_DIR / "server-store"
    name = f"topk64_{args.sequences}x{args.seq_len}_v{args.vocab}"
    path = store / name
    try:
        m = logitstore.open_dataset(path).manifest
        if (m.num_sequences, m.corpus.seq_len, m.vocab_size) == (args.sequences, args.seq_len, args.vocab):
            return store, name
    except logitstore.errors.LogitStoreError:
        pass
    shutil.rmtree(path, ignore_errors=True)
    store.mkdir(parents=True, exist_ok=True)
    print(f"building {path} ({args.sequences} x {args.seq_len} tokens, {args.distinct} distinct) ...", flush=True)
    spec = logitstore.Spec(method="topk", k=64)
    teacher = TeacherLike(args.vocab, seed=0)
    with logitstore.DatasetWriter(
        path,
        spec=spec,
        teacher=logitstore.TeacherInfo(name="teacher-like", vocab_size=args.vocab, dtype="float32"),
        corpus=logitstore.CorpusInfo(seq_len=args.seq_len),
    ) as w:
        for r in build_records(spec, teacher, args.distinct, args.sequences, args.seq_len):
            w.write(r)
    return store, name


def cases(name: str, args: argparse.Namespace) -> dict[str, Callable[[random.Random], Request]]:
    """Each case: a function of the client's random generator giving its next request."""
    base = f"/v1/datasets/{name}"
    arrow = {"Accept": ARROW_STREAM}
    n, b = args.sequences, args.batch
    out: dict[str, Callable[[random.Random], Request]] = {
        "floor: healthz": lambda rng: ("GET", "/healthz", {}, None),
        "single JSON": lambda rng: ("GET", f"{base}/sequences/{rng.randrange(n)}", {}, None),
        "single Arrow": lambda rng: ("GET", f"{base}/sequences/{rng.randrange(n)}", arrow, None),
        "static single": lambda rng: ("GET", f"{base}/files/{STATIC_SINGLE}", {}, None),
        f"batch Arrow ({b})": lambda rng: ("POST", f"{base}/batch", arrow, {"seq_ids": rng.sample(range(n), b)}),
        f"static batch ({b})": lambda rng: ("GET", f"{base}/files/{STATIC_BATCH}", {}, None),
    }
    if args.batch_json:
        out[f"batch JSON ({b})"] = lambda rng: ("POST", f"{base}/batch", {}, {"seq_ids": rng.sample(range(n), b)})
    return out


# -- the load generator -----------------------------------------------------------------------------------------------


async def _client(session: Any, url: str, make: Callable, rng: random.Random, stop: float, out: list) -> None:
    import aiohttp

    while time.perf_counter() < stop:
        method, path, headers, body = make(rng)
        t0 = time.perf_counter()
        for attempt in range(3):
            try:
                async with session.request(method, url + path, headers=headers, json=body) as response:
                    data = await response.read()
                break
            except aiohttp.ClientConnectionError:
                # a pooled keep-alive connection the server closed (uvicorn closes idle ones after 5 s): retry on a
                # new one, as HTTP clients do; the time lost stays in this request's latency
                if attempt == 2:
                    raise
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status}: {data[:300]!r}")
        out.append((t0, time.perf_counter(), len(data), attempt))


async def _load(
    url: str, make: Callable, clients: int, warmup: float, duration: float, server_cpu: Callable[[], float]
) -> dict[str, float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        rngs = [random.Random(1000 + i) for i in range(clients)]
        if warmup > 0:
            stop = time.perf_counter() + warmup
            await asyncio.gather(*(_client(session, url, make, rng, stop, []) for rng in rngs))
        samples: list[tuple[float, float, int, int]] = []
        cpu = (server_cpu(), time.process_time())
        start = time.perf_counter()
        await asyncio.gather(*(_client(session, url, make, rng, start + duration, samples) for rng in rngs))
    elapsed = max(end for _, end, _, _ in samples) - start
    server_cores, client_cores = (server_cpu() - cpu[0]) / elapsed, (time.process_time() - cpu[1]) / elapsed
    latency = np.array([end - begin for begin, end, _, _ in samples])
    nbytes = sum(n for _, _, n, _ in samples)
    return {
        "clients": clients,
        "requests": len(samples),
        "seconds": elapsed,
        "requests_per_s": len(samples) / elapsed,
        "mb_per_s": nbytes / elapsed / 1e6,
        "bytes_per_response": nbytes / len(samples),
        "p50_ms": float(np.percentile(latency, 50) * 1e3),
        "p99_ms": float(np.percentile(latency, 99) * 1e3),
        "max_ms": float(latency.max() * 1e3),
        "retries": sum(retries for *_, retries in samples),
        "server_cpu_cores": server_cores,
        "client_cpu_cores": client_cores,
    }


def load(url: str, make: Callable, clients: int, warmup: float, duration: float, pid: int) -> dict[str, float]:
    """Closed-loop load from ``clients`` concurrent clients; ``pid`` is the server's, for its CPU time."""
    return asyncio.run(_load(url, make, clients, warmup, duration, lambda: cpu_seconds(pid)))


# -- setup and checks -------------------------------------------------------------------------------------------------


def capture_static_files(url: str, store: Path, name: str, args: argparse.Namespace) -> None:
    """Write the bytes of a single-sequence and of a batch Arrow response as files the service serves, and check
    that what the service returns is what is on disk."""
    import httpx

    local = logitstore.open_dataset(store / name)
    base = f"{url}/v1/datasets/{name}"
    arrow = {"Accept": ARROW_STREAM}
    with httpx.Client(timeout=600) as http:
        single = http.get(f"{base}/sequences/3", headers=arrow).raise_for_status().content
        seq_ids = random.Random(0).sample(range(args.sequences), args.batch)
        batch = http.post(f"{base}/batch", headers=arrow, json={"seq_ids": seq_ids}).raise_for_status().content
        as_json = record_from_json(http.get(f"{base}/sequences/5").raise_for_status().json())
    assert records_from_arrow(single)[0].equals(local[3])
    assert all(r.equals(local[i]) for r, i in zip(records_from_arrow(batch), seq_ids, strict=True))
    assert as_json.equals(local[5])
    (store / name / STATIC_SINGLE).write_bytes(single)
    (store / name / STATIC_BATCH).write_bytes(batch)


def run_server(store: Path, name: str, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    log = OUT_DIR / f"server-workers{workers}.log"
    results: dict[str, Any] = {}
    extra = ("--max-batch", str(max(256, args.batch)))
    env = {} if args.cache_mb is None else {"LOGITSTORE_CACHE_MB": str(args.cache_mb)}
    with running_server(store, log, workers=workers, extra=extra, env=env) as (url, pid):
        capture_static_files(url, store, name, args)
        for label, make in cases(name, args).items():
            if args.only and args.only not in label:
                continue
            loaded = load(url, make, args.clients, args.warmup, args.duration, pid)
            unloaded = load(url, make, 1, min(args.warmup, 1.0), args.unloaded_duration, pid)
            results[label] = {"loaded": loaded, "unloaded": unloaded}
            print(
                f"  workers={workers} {label:<18} {loaded['requests_per_s']:8.1f} req/s {loaded['mb_per_s']:8.1f} "
                f"MB/s  p50 {loaded['p50_ms']:8.1f} ms  p99 {loaded['p99_ms']:8.1f} ms  "
                f"cpu server {loaded['server_cpu_cores']:.2f} client {loaded['client_cpu_cores']:.2f} "
                f"(1 client: p50 {unloaded['p50_ms']:.1f} ms)",
                flush=True,
            )
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=64)
    p.add_argument("--distinct", type=int, default=8, help="teacher-like sequences generated (then repeated)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32_000)
    p.add_argument("--batch", type=int, default=32, help="sequences per batch request")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients (closed loop)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per case under load")
    p.add_argument("--unloaded-duration", type=float, default=3.0, help="seconds per case with one client")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each case is measured")
    p.add_argument("--workers", default="1,2", help="server worker processes to try, comma-separated")
    p.add_argument("--batch-json", action="store_true", help="also time batches as JSON (slow)")
    p.add_argument("--cache-mb", type=int, help="the server's record cache (default: its own; 0 decodes every read)")
    p.add_argument("--only", help="run only the cases whose name contains this (e.g. batch)")
    p.add_argument("--quick", action="store_true", help="2 s per case, one server worker")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.unloaded_duration, args.warmup, args.workers = 2.0, 1.0, 0.5, "1"
    OUT_DIR.mkdir(exist_ok=True)
    store, name = build_store(args)
    busy = os.getloadavg()[0]
    if busy > 0.5:
        print(f"warning: load average {busy:.1f} before the run: other work on this host skews the figures")
    results: dict[str, Any] = {"config": vars(args), "dataset": name, "load_average": busy, "servers": {}}
    for workers in (int(w) for w in args.workers.split(",")):
        results["servers"][workers] = run_server(store, name, workers, args)
    report(results)
    return results


def report(results: dict[str, Any]) -> None:
    cfg = results["config"]
    b = cfg["batch"]
    lines = [
        f"# Service benchmark ({cfg['clients']} concurrent clients on loopback, {cfg['duration']:g} s per case; "
        f"top-k 64, {cfg['seq_len']} tokens per sequence, V={cfg['vocab']}, {cfg['sequences']} sequences)",
        "",
        "| workers | case | KB/response | req/s | MB/s | p50 ms | p99 ms | CPU server / client | 1 client: p50 ms "
        "| 1 client: p99 ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    targets = []
    for workers, cases_ in results["servers"].items():
        for label, r in cases_.items():
            lo, un = r["loaded"], r["unloaded"]
            lines.append(
                f"| {workers} | {label} | {lo['bytes_per_response'] / 1e3:,.0f} | {lo['requests_per_s']:,.1f} "
                f"| {lo['mb_per_s']:,.0f} | {lo['p50_ms']:,.1f} | {lo['p99_ms']:,.1f} "
                f"| {lo['server_cpu_cores']:.2f} / {lo['client_cpu_cores']:.2f} | {un['p50_ms']:,.1f} "
                f"| {un['p99_ms']:,.1f} |"
            )
        if "single Arrow" in cases_:
            p99 = cases_["single Arrow"]["loaded"]["p99_ms"]
            targets.append(f"| Arrow single-sequence p99 <= 10 ms | {workers} | {p99:.1f} ms | {_met(p99 <= 10)} |")
        if f"batch Arrow ({b})" in cases_ and f"static batch ({b})" in cases_:
            ratio = (
                cases_[f"batch Arrow ({b})"]["loaded"]["mb_per_s"] / cases_[f"static batch ({b})"]["loaded"]["mb_per_s"]
            )
            targets.append(f"| batch bytes/s >= 0.7x static file | {workers} | {ratio:.2f}x | {_met(ratio >= 0.7)} |")
    retries = sum(r[k]["retries"] for c in results["servers"].values() for r in c.values() for k in r)
    lines += [
        "",
        f"Requests retried on a new connection: {retries}. Load average before the run: "
        f"{results['load_average']:.1f} (2 cores, shared by the clients and the server).",
    ]
    lines += ["", "| target | workers | measured | status |", "|---|---:|---:|---|", *targets]
    text = "\n".join(lines)
    print(text)
    (OUT_DIR / "server.md").write_text(text + "\n")
    (OUT_DIR / "server.json").write_text(json.dumps(results, indent=2))


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


if __name__ == "__main__":
    main()
