"""``POST /v1/lookup``: which datasets hold exactly these token ids, and the record."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from logitstore.errors import LimitExceededError, LogitStoreError, NotFoundError, SequenceNotFoundError
from logitstore.keys import content_key
from logitstore.server.errors import error_responses
from logitstore.server.responses import RecordsJSONResponse
from logitstore.server.schemas import LookupRequest, LookupResponse
from logitstore.wire import record_to_json

router = APIRouter(prefix="/v1", tags=["lookup"])


@router.post(
    "/lookup",
    response_model=LookupResponse,
    responses=error_responses(
        401,
        404,
        413,
        422,
        500,
        meaning={
            404: "no dataset of the store caches this sequence",
            413: "more input_ids than the service's max_lookup_tokens (the document's maxItems)",
        },
    ),
)
def lookup(request: Request, body: LookupRequest) -> JSONResponse:
    """Search every dataset's key index for the sequence; 404 when nothing caches it."""
    limit = request.app.state.settings.max_lookup_tokens
    if len(body.input_ids) > limit:
        raise LimitExceededError(f"{len(body.input_ids)} input_ids, the limit is {limit}")
    key = content_key(body.input_ids)
    store = request.app.state.store
    matches: list[dict[str, Any]] = []
    first = None
    unreadable = []
    for name in store.names():
        try:
            dataset, lock = store.dataset(name)
        except NotFoundError:  # removed since names() listed it
            continue
        except LogitStoreError as exc:  # one unreadable dataset must not fail lookups in the others
            request.app.state.metrics.count_error(type(exc).__name__)
            unreadable.append(name)
            continue
        with lock:
            found = dataset.find_key(key)
            if found and first is None:
                first = dataset[found[0]]
        matches.extend({"dataset": name, "seq_id": i} for i in found)
    if first is None:
        skipped = f"; unreadable, not searched: {', '.join(unreadable)}" if unreadable else ""
        raise SequenceNotFoundError(f"no dataset in this store caches this sequence (content key {key.hex()}){skipped}")
    return RecordsJSONResponse({"matches": matches, "record": record_to_json(first, arrays=True)})
