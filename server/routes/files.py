"""``/v1/datasets/{name}/files/{path}``: raw manifest, key index and shard bytes, with HTTP Range, for remote
readers (``open_dataset("http://host/v1/datasets/NAME")`` reads through this)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import FileResponse

from logitstore.server.routes.datasets import BINARY, ERRORS

router = APIRouter(prefix="/v1/datasets", tags=["files"])


RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {"content": {"application/octet-stream": BINARY}},
    206: {"description": "the requested byte range", "content": {"application/octet-stream": BINARY}},
    416: {"description": "range not satisfiable"},
}


@router.get("/{name}/files/{path:path}", response_class=FileResponse, responses=RESPONSES, operation_id="get_file")
@router.head("/{name}/files/{path:path}", response_class=FileResponse, responses=RESPONSES, operation_id="head_file")
def file(
    request: Request,
    name: Annotated[str, Path()],
    path: Annotated[str, Path(description="manifest.json, keys.idx, or shards/...")],
) -> FileResponse:
    """The bytes of one file of a dataset; ``Range: bytes=a-b`` gives part of it."""
    target = request.app.state.store.file(name, path)
    media = "application/json" if target.name.endswith(".json") else "application/octet-stream"
    return FileResponse(target, media_type=media)
