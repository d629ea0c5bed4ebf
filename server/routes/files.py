"""``/v1/datasets/{name}/files/{path}``: raw manifest, key index and shard bytes, with HTTP Range, for remote
readers (``open_dataset("http://host/v1/datasets/NAME")`` reads through this)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import FileResponse

from logitstore.server.errors import error_responses
from logitstore.server.responses import FileRangeResponse
from logitstore.server.routes.datasets import BINARY, Name
from logitstore.server.schemas import manifest_schema
from logitstore.server.store import SERVED

router = APIRouter(prefix="/v1/datasets", tags=["files"])

#: the Range syntax served; anything else is a 422 (Starlette would answer an unknown unit with a 400)
RANGE_PATTERN = r"^bytes=[0-9]*-[0-9]*(, *[0-9]*-[0-9]*)*$"
#: Starlette's own answers to a well-formed Range it cannot serve
TEXT = {"text/plain": {"schema": {"type": "string"}}}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the whole file (manifest.json as application/json)",
        "content": {"application/octet-stream": BINARY, "application/json": {"schema": manifest_schema()}},
    },
    206: {
        "description": "the requested byte range (Content-Range says which): part of a file, so no JSON schema",
        "content": {"application/octet-stream": BINARY, "application/json": {}, "multipart/byteranges": BINARY},
    },
    400: {"description": "a Range with no range in it (bytes=-) or one that ends before it starts", "content": TEXT},
    416: {"description": "the Range starts beyond the end of the file (Content-Range: bytes */SIZE)", "content": TEXT},
    **error_responses(
        401, 404, 422, meaning={404: "no such dataset, or not a file a reader needs (manifest, key index, shards)"}
    ),
}


@router.get("/{name}/files/{path:path}", response_class=FileResponse, responses=RESPONSES, operation_id="get_file")
@router.head("/{name}/files/{path:path}", response_class=FileResponse, responses=RESPONSES, operation_id="head_file")
async def file(
    request: Request,
    name: Name,
    path: Annotated[
        str,
        Path(
            description="manifest.json, keys.idx, or a file under shards/ (a Zarr shard is a directory of files)",
            pattern=f"^{SERVED.pattern}$",
            examples=["manifest.json"],
        ),
    ],
    byte_range: Annotated[
        str,
        Header(
            alias="Range",
            description="bytes=FIRST-LAST (inclusive), bytes=FIRST- or bytes=-SUFFIX_LENGTH; several comma-separated "
            "ranges answer multipart/byteranges",
            pattern=RANGE_PATTERN,
            examples=["bytes=0-1023"],
        ),
    ] = None,  # type: ignore[assignment]  # optional, but documented as a string: a header is never null
) -> FileRangeResponse:
    """The bytes of one file of a dataset; ``Range: bytes=a-b`` gives part of it. (``byte_range`` is only checked
    against its pattern here; the file response reads the header itself.)

    ``async``: the checks of the name and the path (a few ``stat``s, no read) run on the event loop, and the
    response reads the page cache from there too; only a read that would wait for the disk goes to a thread."""
    target, stat_result = request.app.state.store.file(name, path)
    media = "application/json" if target.name.endswith(".json") else "application/octet-stream"
    return FileRangeResponse(target, stat_result, media_type=media)
