"""Responses of records and files: Arrow IPC record batches and file reads sent in parts of about 1 MiB, records
as JSON encoded by orjson."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pyarrow as pa
import starlette.responses
from starlette.responses import JSONResponse, Response
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
            # a copy of about 1 MiB (~0.05 ms): on the event loop, since a hop to a worker thread costs more
            await send({"type": "http.response.body", "body": memoryview(batch.serialize()), "more_body": True})
        await send({"type": "http.response.body", "body": ARROW_EOS, "more_body": False})


class RecordsJSONResponse(JSONResponse):
    """JSON with numpy arrays in it (``record_to_json(record, arrays=True)``), encoded by orjson: non-finite floats
    as ``null`` (the JSON contract of records), float32 in their shortest repr. ~5 ms for a 2,048-token top-k 64
    record where ``json.dumps`` of its lists took ~100 ms, and ~40% fewer bytes."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class ChunkedFileResponse(starlette.responses.FileResponse):
    """Starlette's file response reading 1 MiB at a time instead of 64 KiB: each read is a hop to a worker thread
    and an ASGI message, which capped a shard download at ~0.4 GB/s on loopback (bench/server.py)."""

    chunk_size = 1 << 20
