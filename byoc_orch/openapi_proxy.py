"""The session proxy's routes in OpenAPI terms.

Proxy traffic is served ahead of FastAPI's routing (see api.ProxyFirst), so FastAPI cannot
describe it by itself. This module adds those paths to the generated document, so
`/openapi.json` lists every route byoc-orch answers: the per-entry and per-replica proxy, its
session calls, the pass-through, and the session calls routed by `X-Model-Id` at the root.
"""

from __future__ import annotations

from typing import Any

_TARGET = {
    "name": "target",
    "in": "path",
    "required": True,
    "description": "An entry's id (routed over its replicas) or one replica's worker id, as "
    "GET /capabilities and GET /workers list them.",
    "schema": {"type": "string"},
}
_SESSION_HEADERS = [
    {
        "name": name,
        "in": "header",
        "required": False,
        "description": "Names the session (gateway_request_id) the call is about.",
        "schema": {"type": "string"},
    }
    for name in ("X-Gateway-Request-Id", "X-Stream-Id")
]
_MODEL_HEADERS = [
    {
        "name": "X-Model-Id",
        "in": "header",
        "required": True,
        "description": "The model_id whose worker takes the call.",
        "schema": {"type": "string"},
    },
    {
        "name": "X-Pipeline",
        "in": "header",
        "required": False,
        "description": "The pipeline, when one model_id serves several.",
        "schema": {"type": "string"},
    },
]
_START_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["gateway_request_id"],
                "properties": {
                    "gateway_request_id": {"type": "string", "minLength": 1},
                    "subscribe_url": {"type": "string"},
                    "publish_url": {"type": "string"},
                    "control_url": {"type": "string"},
                    "events_url": {"type": "string"},
                    "data_url": {"type": "string"},
                    "params": {"type": "object"},
                },
            }
        }
    },
}
_ANY_JSON = {"required": False, "content": {"application/json": {"schema": {}}}}


def _answers(*extra: int) -> dict[str, Any]:
    codes = {
        "200": "The worker's answer, passed through unchanged (so are its other codes).",
        "400": "A malformed call, refused by byoc-orch (or the worker's own 400).",
        "401": "BYOC_ORCH_API_TOKEN is set and the call did not carry it.",
        "404": "No such entry or worker.",
        "413": "The body is over the limit.",
        "502": "The worker could not be reached, or broke off its answer.",
        "504": "The worker did not answer in time.",
    }
    codes |= {str(code): _EXTRA[code] for code in extra}
    return {code: {"description": text} for code, text in sorted(codes.items())}


_EXTRA = {
    409: "That gateway_request_id is already live.",
    503: "No replica is warm, or every slot is taken (Retry-After: 1).",
}


def _operation(summary: str, *, body: dict[str, Any] | None, extra: tuple[int, ...] = ()) -> Any:
    operation: dict[str, Any] = {
        "tags": ["proxy"],
        "summary": summary,
        "responses": _answers(*extra),
    }
    if body is not None:
        operation["requestBody"] = body
    return operation


def proxy_paths() -> dict[str, Any]:
    """Path items for every route the proxy serves."""
    paths: dict[str, Any] = {}
    calls = {
        "start": _operation(
            "Start a session on the least-loaded warm replica", body=_START_BODY, extra=(409, 503)
        ),
        "stop": _operation("Stop a session, on the replica holding it", body=_ANY_JSON),
        "params": _operation("Update a session's params, on its replica", body=_ANY_JSON),
        "update": _operation("The same as params (the older route name)", body=_ANY_JSON),
    }
    status = _operation("The session's status, from the replica holding it", body=None)
    for prefix in ("", "/api"):
        for name, operation in calls.items():
            paths[f"/proxy/{{target}}{prefix}/stream/{name}"] = {
                "post": {**operation, "parameters": [_TARGET, *_SESSION_HEADERS]}
            }
            paths[f"{prefix}/stream/{name}"] = {
                "post": {**operation, "parameters": [*_MODEL_HEADERS, *_SESSION_HEADERS]}
            }
        paths[f"/proxy/{{target}}{prefix}/stream/status"] = {
            "get": {**status, "parameters": [_TARGET, *_SESSION_HEADERS]}
        }
        paths[f"{prefix}/stream/status"] = {
            "get": {**status, "parameters": [*_MODEL_HEADERS, *_SESSION_HEADERS]}
        }
    passthrough = _operation(
        "Any other path: streamed to a replica with a free slot and back (batch workers)",
        body={"required": False, "content": {"*/*": {"schema": {}}}},
        extra=(503,),
    )
    rest = {
        "name": "path",
        "in": "path",
        "required": True,
        "description": "The path passed to the worker as written.",
        "schema": {"type": "string"},
    }
    paths["/proxy/{target}/{path}"] = {
        method: {**passthrough, "parameters": [_TARGET, rest]}
        for method in ("get", "post", "put", "patch", "delete")
    }
    return paths
