"""The API token check shared by every state-changing route (session calls, reload)."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def token_denied(request: Request, token: str | None) -> Response | None:
    """None when the call may go ahead: no token configured, a read, or the right bearer.
    The token is compared in constant time and never echoed."""
    if token is None or request.method in READ_METHODS:
        return None
    got = request.headers.get("authorization", "")
    if hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
        return None
    return JSONResponse(
        {
            "error": "this call needs Authorization: Bearer <BYOC_ORCH_API_TOKEN>",
            "source": "byoc-orch",
        },
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )
