"""``/v1/datasets``: the store's datasets, their manifests, and records by seq_id, batch or content key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from logitstore.errors import LimitExceededError
from logitstore.keys import parse_key
from logitstore.record import Record
from logitstore.server.schemas import BatchRequest, DatasetList, DatasetSummary, RecordList, RecordOut
from logitstore.server.store import Store
from logitstore.wire import ARROW_STREAM, record_to_json, records_to_arrow

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong API key"},
    404: {"description": "unknown dataset, sequence or key"},
    413: {"description": "more than the configured limit"},
    422: {"description": "malformed request"},
}
BINARY = {"schema": {"type": "string", "format": "binary"}}
Name = Annotated[str, Path(description="dataset name (a directory of the store)")]


def _store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def wants_arrow(request: Request) -> bool:
    return ARROW_STREAM in request.headers.get("accept", "")


def records_response(request: Request, records: list[Record], *, single: bool) -> Response:
    """Arrow IPC when the Accept header asks for it, else JSON."""
    if wants_arrow(request):
        return Response(records_to_arrow(records), media_type=ARROW_STREAM)
    if single:
        return JSONResponse(record_to_json(records[0]))
    return JSONResponse({"records": [record_to_json(r) for r in records]})


@router.get("", response_model=DatasetList, responses={401: ERRORS[401]})
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
    responses={**ERRORS, 200: {"content": {"application/json": {"schema": {"type": "object"}}}}},
)
def manifest(request: Request, name: Name) -> JSONResponse:
    """The dataset's manifest (docs/FORMAT.md)."""
    return JSONResponse(_store(request).dataset(name)[0].manifest.to_dict())


@router.get(
    "/{name}/sequences/{seq_id}",
    response_model=RecordOut,
    responses={**ERRORS, 200: {"content": {ARROW_STREAM: BINARY}}},
)
def sequence(
    request: Request,
    name: Name,
    seq_id: Annotated[int, Path(ge=0, description="0..N-1")],
    start: Annotated[int | None, Query(ge=0, description="first position (default 0)")] = None,
    stop: Annotated[int | None, Query(ge=0, description="one past the last position (default T)")] = None,
) -> Response:
    """One record, or the positions ``start..stop-1`` of it. JSON, or Arrow IPC with
    ``Accept: application/vnd.apache.arrow.stream``."""
    dataset, lock = _store(request).dataset(name)
    with lock:
        record = dataset[seq_id]
    if start is not None or stop is not None:
        record = record.slice(0 if start is None else start, len(record) if stop is None else stop)
    limit = request.app.state.settings.max_positions
    if len(record) > limit:
        raise LimitExceededError(
            f"{len(record)} positions requested, the limit is {limit}: ask for a range with ?start=&stop="
        )
    return records_response(request, [record], single=True)


@router.post(
    "/{name}/batch",
    response_model=RecordList,
    responses={**ERRORS, 200: {"content": {ARROW_STREAM: BINARY}}},
)
def batch(request: Request, name: Name, body: BatchRequest) -> Response:
    """Many records, in the order asked, as one Arrow IPC stream (or JSON ``{"records": [...]}``)."""
    limit = request.app.state.settings.max_batch_sequences
    if len(body.seq_ids) > limit:
        raise LimitExceededError(f"{len(body.seq_ids)} seq_ids in one batch, the limit is {limit}: split the batch")
    dataset, lock = _store(request).dataset(name)
    with lock:
        records = [dataset[i] for i in body.seq_ids]
    return records_response(request, records, single=False)


@router.get(
    "/{name}/keys/{key}",
    response_model=RecordOut,
    responses={**ERRORS, 200: {"content": {ARROW_STREAM: BINARY}}},
)
def by_key(
    request: Request, name: Name, key: Annotated[str, Path(description="32 hex digits (blake2b-128 of input_ids)")]
) -> Response:
    """The record whose content key is ``key``."""
    parsed = parse_key(key)
    dataset, lock = _store(request).dataset(name)
    with lock:
        record = dataset.get_by_key(parsed)
    return records_response(request, [record], single=True)
