"""``/v1/datasets``: the store's datasets, their manifests, and records by seq_id, batch or content key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from logitstore.errors import LimitExceededError
from logitstore.keys import parse_key
from logitstore.record import Record
from logitstore.server.errors import error_responses
from logitstore.server.responses import ArrowResponse, RecordsJSONResponse, cached_arrow_response
from logitstore.server.schemas import (
    KEY_PATTERN,
    BatchRequest,
    DatasetList,
    DatasetSummary,
    RecordList,
    RecordOut,
    manifest_schema,
)
from logitstore.server.store import NAME, Store
from logitstore.wire import ARROW_STREAM, record_to_json

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

BINARY = {"schema": {"type": "string", "format": "binary"}}
#: the 200 of the record routes: JSON (the response model) or, with ``Accept: ARROW_STREAM``, Arrow IPC
ARROW_200: dict[int | str, dict[str, Any]] = {200: {"content": {ARROW_STREAM: BINARY}}}
Name = Annotated[
    str,
    Path(description="dataset name (a directory of the store)", pattern=f"^{NAME.pattern}$", examples=["topk64"]),
]


def _store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def wants_arrow(request: Request) -> bool:
    return ARROW_STREAM in request.headers.get("accept", "")


def records_response(request: Request, records: list[Record], *, single: bool) -> Response:
    """Arrow IPC when the Accept header asks for it, else JSON."""
    if wants_arrow(request):
        return ArrowResponse(records)
    if single:
        return RecordsJSONResponse(record_to_json(records[0], arrays=True))
    return RecordsJSONResponse({"records": [record_to_json(r, arrays=True) for r in records]})


@router.get("", response_model=DatasetList, responses=error_responses(401))
def list_datasets(request: Request) -> DatasetList:
    """Every complete dataset of the store, with its teacher, method and size."""
    store = _store(request)
    out = []
    for name in store.names():
        try:
            m = store.dataset(name)[0].manifest
        except Exception:  # noqa: BLE001 -- one unreadable manifest must not hide the others
            continue
        out.append(
            DatasetSummary(
                name=name,
                teacher=m.teacher.name,
                method=m.spec.method,
                spec=m.spec.describe(),
                backend=m.backend,
                sequences=m.num_sequences,
                tokens=m.num_tokens,
                bytes_per_token=m.stats.bytes_per_token if m.stats else 0.0,
            )
        )
    return DatasetList(datasets=out)


@router.get(
    "/{name}",
    response_class=JSONResponse,
    responses={
        200: {"description": "the manifest", "content": {"application/json": {"schema": manifest_schema()}}},
        **error_responses(401, 404, 422, 500, meaning={404: "no such dataset"}),
    },
)
def manifest(request: Request, name: Name) -> JSONResponse:
    """The dataset's manifest (docs/FORMAT.md)."""
    return JSONResponse(_store(request).dataset(name)[0].manifest.to_dict())


@router.get(
    "/{name}/sequences/{seq_id}",
    response_model=RecordOut,
    responses={
        **ARROW_200,
        **error_responses(
            401,
            404,
            413,
            422,
            500,
            meaning={
                404: "no such dataset, or seq_id >= the number of sequences",
                413: "more positions than the service's max_positions: ask for a range",
                422: "malformed parameters, or start/stop outside the sequence",
            },
        ),
    },
)
async def sequence(
    request: Request,
    name: Name,
    seq_id: Annotated[int, Path(ge=0, description="0..N-1", examples=[0])],
    start: Annotated[int | None, Query(ge=0, description="first position (default 0)")] = None,
    stop: Annotated[int | None, Query(ge=0, description="one past the last position (default T)")] = None,
) -> Response:
    """One record, or the positions ``start..stop-1`` of it. JSON, or Arrow IPC with
    ``Accept: application/vnd.apache.arrow.stream``."""
    if wants_arrow(request):
        # fast path: a record in the cache is answered on the event loop with the Arrow stream kept beside it (or a
        # range of it wrapped without a copy), without the thread pool hop that a plain ``def`` route costs
        cached = _store(request).cached(name, seq_id)
        if cached is not None:
            record = _positions(request, cached.record, start, stop)
            if cached.arrow is not None and record is cached.record:  # the whole record: its stream as it is
                return Response(cached.arrow, media_type=ARROW_STREAM)
            return ArrowResponse([record])
    # a miss decodes a row group (ms) and JSON encodes ~130k numbers: both in the thread pool, off the event loop
    return await run_in_threadpool(_sequence, request, name, seq_id, start, stop)


def _sequence(request: Request, name: str, seq_id: int, start: int | None, stop: int | None) -> Response:
    dataset, lock = _store(request).dataset(name)
    with lock:
        record = dataset[seq_id]
    return records_response(request, [_positions(request, record, start, stop)], single=True)


def _positions(request: Request, record: Record, start: int | None, stop: int | None) -> Record:
    """The positions ``start..stop-1`` of ``record``, refused past the service's ``max_positions``."""
    if start is not None or stop is not None:
        record = record.slice(0 if start is None else start, len(record) if stop is None else stop)
    limit = request.app.state.settings.max_positions
    if len(record) > limit:
        raise LimitExceededError(
            f"{len(record)} positions requested, the limit is {limit}: ask for a range with ?start=&stop="
        )
    return record


@router.post(
    "/{name}/batch",
    response_model=RecordList,
    responses={
        **ARROW_200,
        **error_responses(
            401,
            404,
            413,
            422,
            500,
            meaning={
                404: "no such dataset, or a seq_id >= the number of sequences",
                413: "more seq_ids than the service's max_batch_sequences (the document's maxItems)",
            },
        ),
    },
)
async def batch(request: Request, name: Name, body: BatchRequest) -> Response:
    """Many records, in the order asked, as one Arrow IPC stream (or JSON ``{"records": [...]}``)."""
    limit = request.app.state.settings.max_batch_sequences
    if len(body.seq_ids) > limit:
        raise LimitExceededError(f"{len(body.seq_ids)} seq_ids in one batch, the limit is {limit}: split the batch")
    if wants_arrow(request):
        # every record in the cache: their kept streams, on the event loop (as for one record)
        cached = _store(request).cached_many(name, body.seq_ids)
        if cached is not None:
            return cached_arrow_response(cached)
    return await run_in_threadpool(_batch, request, name, body.seq_ids)


def _batch(request: Request, name: str, seq_ids: list[int]) -> Response:
    dataset, lock = _store(request).dataset(name)
    with lock:
        records = [dataset[i] for i in seq_ids]
    return records_response(request, records, single=False)


@router.get(
    "/{name}/keys/{key}",
    response_model=RecordOut,
    responses={
        **ARROW_200,
        **error_responses(401, 404, 422, 500, meaning={404: "no such dataset, or no sequence with this key"}),
    },
)
async def by_key(
    request: Request,
    name: Name,
    key: Annotated[
        str,
        Path(
            description="32 hex digits: blake2b-128 of the int32 input_ids (logitstore.content_key)",
            pattern=KEY_PATTERN,
            examples=["0123456789abcdef0123456789abcdef"],
        ),
    ],
) -> Response:
    """The record whose content key is ``key``."""
    parsed = parse_key(key)
    if wants_arrow(request):
        cached = _store(request).cached_key(name, parsed)
        if cached is not None:
            return cached_arrow_response([cached])
    return await run_in_threadpool(_by_key, request, name, parsed)


def _by_key(request: Request, name: str, key: bytes) -> Response:
    dataset, lock = _store(request).dataset(name)
    with lock:
        record = dataset.get_by_key(key)
    return records_response(request, [record], single=True)
