"""``POST /v1/lookup``: which datasets hold exactly these token ids, and the record."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from logitstore.errors import InvalidInputError, LimitExceededError, SequenceNotFoundError
from logitstore.keys import content_key
from logitstore.server.routes.datasets import ERRORS
from logitstore.server.schemas import LookupRequest, LookupResponse
from logitstore.wire import record_to_json

router = APIRouter(prefix="/v1", tags=["lookup"])


@router.post("/lookup", response_model=LookupResponse, responses=ERRORS)
def lookup(request: Request, body: LookupRequest) -> JSONResponse:
    """Search every dataset's key index for the sequence; 404 when nothing caches it."""
    limit = request.app.state.settings.max_lookup_tokens
    if len(body.input_ids) > limit:
        raise LimitExceededError(f"{len(body.input_ids)} input_ids, the limit is {limit}")
    if any(not 0 <= t < 2**31 for t in body.input_ids):
        raise InvalidInputError("input_ids must be token ids in [0, 2**31)")
    key = content_key(body.input_ids)
    store = request.app.state.store
    matches = []
    first = None
    for name in store.names():
        dataset, lock = store.dataset(name)
        with lock:
            found = dataset.find_key(key)
            if found and first is None:
                first = dataset[found[0]]
        matches.extend({"dataset": name, "seq_id": i} for i in found)
    if first is None:
        raise SequenceNotFoundError(f"no dataset in this store caches this sequence (content key {key.hex()})")
    return JSONResponse({"matches": matches, "record": record_to_json(first)})
