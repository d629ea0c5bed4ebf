"""The service against its own OpenAPI document (schemathesis): no 5xx, and every status code, media type and
body that it answers with is one the document declares.

``schema.parametrize()`` fuzzes every operation (random names and ids mostly reach the 404/422 paths); the
explicit cases below send the requests a real client sends (existing datasets, seq_ids, keys, files, ranges,
Arrow) and validate those responses with the same checks.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from logitstore import open_dataset
from logitstore.server import Settings, create_app
from logitstore.wire import ARROW_STREAM

MAX_BATCH = 8

REJECTED = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429"]
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
CONFIG = schemathesis.Config.from_dict(
    {
        # a list over a documented limit (maxItems) is refused with 413, schemathesis' defaults lack it
        "checks": {"negative_data_rejection": {"expected-statuses": [*REJECTED, "413"]}},
        # refusals of requests the document allows, because what they depend on is not in it:
        "operations": [
            {
                # start/stop beyond the sequence, or start > stop (422): the length of a sequence is data
                "include-path": "/v1/datasets/{name}/sequences/{seq_id}",
                "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "422"]}},
            },
            {
                # a well-formed Range can still start past the end of the file (416) or end before it starts
                # (400); and schemathesis 4.32's coverage phase sends `Range: 0` as a "positive" value although the
                # pattern forbids it (422)
                "include-path": "/v1/datasets/{name}/files/{path}",
                "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "400", "416", "422"]}},
            },
        ],
    }
)
#: examples of the test store, added to the test's copy of the document so that generated requests also reach
#: existing datasets and sequences, not only the 404s of random names
EXAMPLES = {"name": ["sample", "topk"], "seq_id": [0, 22]}


def load_schema() -> schemathesis.BaseSchema:
    """The document does not depend on the store, so it is loaded once at import from an app over any directory;
    requests go to the app over the test store (``schemathesis.pytest.from_fixture`` does not work on pytest 9)."""
    document = copy.deepcopy(create_app(Settings(store=Path(__file__).parent, max_batch_sequences=MAX_BATCH)).openapi())
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] in EXAMPLES:
                    parameter["schema"]["examples"] = EXAMPLES[parameter["name"]]
    return schemathesis.openapi.from_dict(document, config=CONFIG)


schema = load_schema()


@pytest.fixture(scope="module")
def app(store):
    return create_app(Settings(store=store, max_batch_sequences=MAX_BATCH))


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_the_document(case, app):
    case.call_and_validate(app=app)


def known(store: Path) -> dict[str, str]:
    """Real keys and file paths of the test store."""
    sample, topk = open_dataset(store / "sample"), open_dataset(store / "topk")
    zarr_file = next((store / "topk" / "shards").rglob("zarr.json")).relative_to(store / "topk").as_posix()
    return {
        "sample_key": sample[3].key.hex(),
        "topk_key": topk[17].key.hex(),
        "parquet_shard": sample.manifest.shards[1].path,
        "zarr_file": zarr_file,
        "input_ids": sample[6].input_ids.tolist(),
    }


ARROW = {"Accept": ARROW_STREAM}
#: id -> (method, path, Case(...) arguments, expected status)
VALID = {
    "healthz": lambda k: ("GET", "/healthz", {}, 200),
    "metrics": lambda k: ("GET", "/metrics", {}, 200),
    "list": lambda k: ("GET", "/v1/datasets", {}, 200),
    "manifest": lambda k: ("GET", "/v1/datasets/{name}", {"path_parameters": {"name": "topk"}}, 200),
    "sequence-json": lambda k: (
        "GET",
        "/v1/datasets/{name}/sequences/{seq_id}",
        {"path_parameters": {"name": "sample", "seq_id": 0}},
        200,
    ),
    "sequence-arrow": lambda k: (
        "GET",
        "/v1/datasets/{name}/sequences/{seq_id}",
        {"path_parameters": {"name": "topk", "seq_id": 22}, "headers": ARROW},
        200,
    ),
    "sequence-range": lambda k: (
        "GET",
        "/v1/datasets/{name}/sequences/{seq_id}",
        {"path_parameters": {"name": "sample", "seq_id": 4}, "query": {"start": 2, "stop": 5}},
        200,
    ),
    "sequence-missing": lambda k: (
        "GET",
        "/v1/datasets/{name}/sequences/{seq_id}",
        {"path_parameters": {"name": "sample", "seq_id": 23}},
        404,
    ),
    "sequence-bad-range": lambda k: (
        "GET",
        "/v1/datasets/{name}/sequences/{seq_id}",
        {"path_parameters": {"name": "sample", "seq_id": 4}, "query": {"start": 5, "stop": 2}},
        422,
    ),
    "batch-json": lambda k: (
        "POST",
        "/v1/datasets/{name}/batch",
        {"path_parameters": {"name": "sample"}, "body": {"seq_ids": [5, 1, 5]}},
        200,
    ),
    "batch-arrow": lambda k: (
        "POST",
        "/v1/datasets/{name}/batch",
        {"path_parameters": {"name": "topk"}, "body": {"seq_ids": [0, 22]}, "headers": ARROW},
        200,
    ),
    "batch-over-limit": lambda k: (
        "POST",
        "/v1/datasets/{name}/batch",
        {"path_parameters": {"name": "topk"}, "body": {"seq_ids": list(range(MAX_BATCH + 1))}},
        413,
    ),
    "key-json": lambda k: (
        "GET",
        "/v1/datasets/{name}/keys/{key}",
        {"path_parameters": {"name": "sample", "key": k["sample_key"]}},
        200,
    ),
    "key-arrow": lambda k: (
        "GET",
        "/v1/datasets/{name}/keys/{key}",
        {"path_parameters": {"name": "topk", "key": k["topk_key"]}, "headers": ARROW},
        200,
    ),
    "key-missing": lambda k: (
        "GET",
        "/v1/datasets/{name}/keys/{key}",
        {"path_parameters": {"name": "topk", "key": "0" * 32}},
        404,
    ),
    "file-manifest": lambda k: (
        "GET",
        "/v1/datasets/{name}/files/{path}",
        {"path_parameters": {"name": "sample", "path": "manifest.json"}},
        200,
    ),
    "file-keys": lambda k: (
        "GET",
        "/v1/datasets/{name}/files/{path}",
        {"path_parameters": {"name": "topk", "path": "keys.idx"}},
        200,
    ),
    "file-head": lambda k: (
        "HEAD",
        "/v1/datasets/{name}/files/{path}",
        {"path_parameters": {"name": "sample", "path": k["parquet_shard"]}},
        200,
    ),
    "file-zarr": lambda k: (
        "GET",
        "/v1/datasets/{name}/files/{path}",
        {"path_parameters": {"name": "topk", "path": k["zarr_file"]}},
        200,
    ),
    "file-range": lambda k: (
        "GET",
        "/v1/datasets/{name}/files/{path}",
        {"path_parameters": {"name": "sample", "path": k["parquet_shard"]}, "headers": {"Range": "bytes=0-3"}},
        206,
    ),
    "file-manifest-range": lambda k: (
        "GET",
        "/v1/datasets/{name}/files/{path}",
        {"path_parameters": {"name": "sample", "path": "manifest.json"}, "headers": {"Range": "bytes=0-9"}},
        206,
    ),
    "file-ranges": lambda k: (
        "GET",
        "/v1/datasets/{name}/files/{path}",
        {"path_parameters": {"name": "sample", "path": k["parquet_shard"]}, "headers": {"Range": "bytes=0-3,-4"}},
        206,
    ),
    "file-range-beyond-the-end": lambda k: (
        "GET",
        "/v1/datasets/{name}/files/{path}",
        {"path_parameters": {"name": "sample", "path": "keys.idx"}, "headers": {"Range": "bytes=99999999-"}},
        416,
    ),
    "file-range-backwards": lambda k: (
        "GET",
        "/v1/datasets/{name}/files/{path}",
        {"path_parameters": {"name": "sample", "path": "keys.idx"}, "headers": {"Range": "bytes=5-2"}},
        400,
    ),
    "file-range-other-unit": lambda k: (
        "GET",
        "/v1/datasets/{name}/files/{path}",
        {"path_parameters": {"name": "sample", "path": "keys.idx"}, "headers": {"Range": "lines=1-2"}},
        422,
    ),
    "file-not-served": lambda k: (
        "GET",
        "/v1/datasets/{name}/files/{path}",
        {"path_parameters": {"name": "sample", "path": "shards/nope.parquet"}},
        404,
    ),
    "lookup": lambda k: ("POST", "/v1/lookup", {"body": {"input_ids": k["input_ids"]}}, 200),
    "lookup-missing": lambda k: ("POST", "/v1/lookup", {"body": {"input_ids": [1, 2, 3]}}, 404),
}


@pytest.mark.parametrize("which", VALID)
def test_what_real_clients_send_conforms_to_the_document(app, store, which):
    method, path, kwargs, status = VALID[which](known(store))
    headers = kwargs.pop("headers", {})  # passed to the call: a Case drops headers the document does not declare
    response = schema[path][method].Case(**kwargs).call_and_validate(app=app, headers=headers)
    assert response.status_code == status, response.text
    if headers.get("Accept") == ARROW_STREAM:
        assert response.headers["content-type"] == [ARROW_STREAM]


@pytest.mark.parametrize(("path", "method"), [("/v1/datasets", "GET"), ("/v1/datasets/{name}", "GET")])
def test_a_missing_api_key_is_a_documented_401(store, path, method):
    keyed = create_app(Settings(store=store, api_key="k"))
    with TestClient(keyed):
        case = schema[path][method].Case(path_parameters={"name": "topk"} if "{name}" in path else {})
        assert case.call_and_validate(app=keyed).status_code == 401
