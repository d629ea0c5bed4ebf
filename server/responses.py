"""Responses of records and files: Arrow IPC record batches and file reads sent in parts of about 1 MiB, records
as JSON encoded by orjson."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Sequence
from pathlib import Path
from secrets import token_hex
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import starlette.responses
from starlette._utils import create_collapsing_task_group
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse, MalformedRangeHeader, PlainTextResponse, RangeNotSatisfiable, Response
from starlette.types import Receive, Scope, Send

from logitstore.errors import NotFoundError
from logitstore.record import Record
from logitstore.server.cache import Cached
from logitstore.wire import ARROW_EOS, ARROW_STREAM, records_to_arrow_batches


class ArrowResponse(Response):
    """Records as an Arrow IPC stream with a Content-Length, each record batch (about 1 MiB) serialized just
    before it is sent.

    Serializing the whole stream up front would hold a copy of every large batch in flight (34 MB for 32 top-k 64
    sequences of 2,048 tokens, times the concurrent requests) in freshly allocated, page-faulted memory; one
    batch at a time, a response needs about 1 MiB beyond the records, like a file streamed from disk."""

    media_type = ARROW_STREAM

    def __init__(self, records: Sequence[Record]) -> None:
        schema, self.batches = records_to_arrow_batches(records)
        self.schema_message = schema.serialize()
        length = self.schema_message.size + sum(pa.ipc.get_record_batch_size(b) for b in self.batches)
        super().__init__(headers={"content-length": str(length + len(ARROW_EOS))})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": memoryview(self.schema_message), "more_body": True})
        for batch in self.batches:
            # a copy of about 1 MiB (~0.05 ms): on the event loop, since a hop to a worker thread costs more
            await send({"type": "http.response.body", "body": memoryview(batch.serialize()), "more_body": True})
        await send({"type": "http.response.body", "body": ARROW_EOS, "more_body": False})


def _stream_parts(stream: bytes) -> tuple[memoryview, memoryview] | None:
    """The schema message and the record batch messages of a one-row Arrow IPC stream as the cache keeps it
    (schema, batch, end of stream), or None if it does not have that shape."""
    if len(stream) < 16 or stream[:4] != b"\xff\xff\xff\xff" or not stream.endswith(ARROW_EOS):
        return None
    end_of_schema = 8 + int.from_bytes(stream[4:8], "little")
    if end_of_schema > len(stream) - len(ARROW_EOS):
        return None
    view = memoryview(stream)
    return view[:end_of_schema], view[end_of_schema : len(stream) - len(ARROW_EOS)]


def cached_arrow_response(entries: Sequence[Cached]) -> Response:
    """Cached records as one Arrow IPC stream, built from the one-row streams the cache keeps: the first one's
    schema message, then each record's batch message as it is (no encoding, no copy; one record batch per record,
    which any Arrow reader and :func:`~logitstore.wire.records_from_arrow` read as one table). Records whose
    streams do not share a schema, or were kept without one, are encoded as :class:`ArrowResponse` does."""
    if len(entries) == 1 and entries[0].arrow is not None:  # one record: its stream as it is
        return Response(entries[0].arrow, media_type=ARROW_STREAM)
    schema: memoryview | None = None
    messages: list[memoryview | bytes] = []
    for entry in entries:
        parts = None if entry.arrow is None else _stream_parts(entry.arrow)
        if parts is None or (schema is not None and parts[0] != schema):
            return ArrowResponse([e.record for e in entries])
        schema = parts[0]
        messages.append(parts[1])
    if schema is None:
        return ArrowResponse([])
    return _MessagesResponse([schema, *messages, ARROW_EOS])


class _MessagesResponse(Response):
    """An Arrow IPC stream sent as the messages it is made of, each as its own body part."""

    media_type = ARROW_STREAM

    def __init__(self, messages: list[memoryview | bytes]) -> None:
        self.messages = messages
        super().__init__(headers={"content-length": str(sum(len(m) for m in messages))})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        last = len(self.messages) - 1
        for i, message in enumerate(self.messages):
            await send({"type": "http.response.body", "body": message, "more_body": i < last})


class RecordsJSONResponse(JSONResponse):
    """JSON with numpy arrays in it (``record_to_json(record, arrays=True)``), encoded by orjson: non-finite floats
    as ``null`` (the JSON contract of records), float32 in their shortest repr. ~5 ms for a 2,048-token top-k 64
    record where ``json.dumps`` of its lists took ~100 ms, and ~40% fewer bytes."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _read_cached(fd: int, size: int, offset: int) -> memoryview | None:
    """Up to ``size`` bytes of ``fd`` at ``offset`` if the page cache holds them (``preadv`` with ``RWF_NOWAIT``:
    the kernel copies what is cached and never waits for the disk), else None. One copy into an uninitialized
    buffer. None also where the flag is missing or refused (not Linux, a filesystem without it): then every read
    goes to a thread."""
    global _NOWAIT
    if not _NOWAIT:
        return None
    buffer = np.empty(size, dtype=np.uint8)
    try:
        got = os.preadv(fd, [buffer], offset, os.RWF_NOWAIT)
    except BlockingIOError:  # EAGAIN: not in the page cache
        return None
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        _NOWAIT = False
        return None
    return memoryview(buffer)[:got]


_NOWAIT = hasattr(os, "RWF_NOWAIT") and hasattr(os, "preadv")


async def _read_in_thread(fd: int, size: int, offset: int) -> memoryview:
    """``os.pread`` in the event loop's default executor: a read that may wait for the disk."""
    return memoryview(await asyncio.get_running_loop().run_in_executor(None, os.pread, fd, size, offset))


class FileRangeResponse(starlette.responses.FileResponse):
    """A file of the store, whole or by HTTP Range, with Starlette's semantics (headers, 206, multipart
    byteranges, ``If-Range``, 400 and 416 as plain text), at a fraction of its cost.

    Starlette's ``FileResponse`` hops to a worker thread for the ``stat``, the open, the seek, every 64 KiB read and
    the close, and under ASGI 2.3 (uvicorn) starts a task that waits for a disconnect: ~2.8 ms of server CPU for a
    64 KiB range or for 1 MiB, ~0.8 and ~1.2 ms here (bench/RESULTS.md, Service). Here the route has already checked
    the path and taken its ``stat`` on the event loop; the file is opened there (a metadata call), and read 1 MiB at
    a time with ``preadv(RWF_NOWAIT)``, which copies what the page cache holds without ever waiting for the disk;
    only a read the cache cannot answer goes to a worker thread (``os.pread``). Each part is sent as the buffer it
    was read into (one copy from the page cache). A disconnect is watched for only when the body is over
    ``watch_above`` bytes: a smaller one is read to its end (at most that many bytes of wasted reads)."""

    chunk_size = 1 << 20
    watch_above = 8 << 20

    def __init__(self, path: Path, stat_result: os.stat_result, media_type: str) -> None:
        super().__init__(path, stat_result=stat_result, media_type=media_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.stat_result is not None
        size = self.stat_result.st_size
        method = scope["method"].upper()
        request_headers = Headers(scope=scope)
        http_range, if_range = request_headers.get("range"), request_headers.get("if-range")
        ranges: list[tuple[int, int]] = []
        if (
            http_range is not None
            and method in ("GET", "HEAD")
            and (if_range is None or self._should_use_range(if_range))
        ):
            try:
                ranges = self._parse_range_header(http_range, size)
            except MalformedRangeHeader as exc:
                await PlainTextResponse(exc.content, status_code=400)(scope, receive, send)
                return
            except RangeNotSatisfiable as exc:
                response = PlainTextResponse(status_code=416, headers={"Content-Range": f"bytes */{exc.max_size}"})
                await response(scope, receive, send)
                return
        headers = MutableHeaders(raw=list(self.raw_headers))
        parts: list[tuple[bytes, int, int]]  # (bytes before, first, end) of each part
        trailer = b""
        if not ranges:  # no Range, a stale If-Range, or more ranges than Starlette serves: the whole file
            status, parts = 200, [(b"", 0, size)]
        elif len(ranges) == 1:
            (first, end) = ranges[0]
            headers["content-range"] = f"bytes {first}-{end - 1}/{size}"
            headers["content-length"] = str(end - first)
            status, parts = 206, [(b"", first, end)]
        else:
            boundary = token_hex(13)
            length, part_header = self.generate_multipart(ranges, boundary, size, self.headers["content-type"])
            headers["content-type"] = f"multipart/byteranges; boundary={boundary}"
            headers["content-length"] = str(length)
            status = 206
            parts = [(part_header(first, end), first, end) for first, end in ranges]
            parts = [(head if i == 0 else b"\r\n" + head, first, end) for i, (head, first, end) in enumerate(parts)]
            trailer = f"\r\n--{boundary}--".encode("latin-1")
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:  # removed since the route saw it (a rebuild): a 404, nothing sent yet
            raise NotFoundError(f"file {os.path.basename(self.path)!r} was removed; try again") from None
        try:
            await self._send(fd, scope, receive, send, status, headers, parts, trailer)
        finally:
            os.close(fd)

    async def _send(
        self,
        fd: int,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        headers: MutableHeaders,
        parts: list[tuple[bytes, int, int]],
        trailer: bytes,
    ) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers.raw})
        if scope["method"].upper() == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        body = self._body(fd, send, parts, trailer)
        if sum(end - first for _, first, end in parts) <= self.watch_above:
            await body
            return
        async with create_collapsing_task_group() as task_group:  # Starlette's disconnect watch (ASGI < 2.4)

            async def stream() -> None:
                await body
                task_group.cancel_scope.cancel()

            task_group.start_soon(stream)
            while (await receive())["type"] != "http.disconnect":
                pass
            task_group.cancel_scope.cancel()

    async def _body(self, fd: int, send: Send, parts: list[tuple[bytes, int, int]], trailer: bytes) -> None:
        for head, offset, end in parts:
            if head:
                await send({"type": "http.response.body", "body": head, "more_body": True})
            while offset < end:
                size = min(self.chunk_size, end - offset)
                chunk = _read_cached(fd, size, offset)
                if not chunk:  # not cached (or the flag is unsupported): the disk read in a worker thread
                    chunk = await _read_in_thread(fd, size, offset)
                if not chunk:
                    raise RuntimeError(f"file at path {self.path} is shorter than expected")
                offset += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": trailer, "more_body": False})
