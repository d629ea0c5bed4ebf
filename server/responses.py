"""Responses that send large bodies in parts of about 1 MiB: Arrow IPC record batches, file reads."""

from __future__ import annotations

from collections.abc import Sequence

import anyio.to_thread
import pyarrow as pa
import starlette.responses
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from logitstore.record import Record
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
            part = await anyio.to_thread.run_sync(batch.serialize)  # a copy without the GIL, beside the event loop
            await send({"type": "http.response.body", "body": memoryview(part), "more_body": True})
        await send({"type": "http.response.body", "body": ARROW_EOS, "more_body": False})


class ChunkedFileResponse(starlette.responses.FileResponse):
    """Starlette's file response reading 1 MiB at a time instead of 64 KiB: each read is a hop to a worker thread
    and an ASGI message, which capped a shard download at ~0.4 GB/s on loopback (bench/server.py)."""

    chunk_size = 1 << 20
