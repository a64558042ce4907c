"""Who may change things: the API token check shared by every state-changing route (session
calls, pass-through writes, reload), and the networks trusted without it."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Guard:
    """`denied(request)` is None when the call may go ahead: no token configured, a read, a
    caller in a trusted network, or the right bearer token (compared in constant time, never
    echoed); otherwise the 401 to send. `allowed` asks the same without a response."""

    def __init__(self, token: str | None, trusted: Sequence[Network] = ()) -> None:
        self._expected = f"Bearer {token}".encode() if token else None
        self._trusted = tuple(trusted)

    def denied(self, request: Request, *, reads_too: bool = False) -> Response | None:
        """`reads_too`: a read needs the token as well (a call through the proxy acts with the
        worker's own credential, whatever its method)."""
        if self._expected is None or (request.method in READ_METHODS and not reads_too):
            return None
        if self._trusted and _client_in(request, self._trusted):
            return None
        got = request.headers.get("authorization", "")
        if hmac.compare_digest(got.encode("latin-1", "replace"), self._expected):
            return None
        return JSONResponse(
            {
                "error": "this call needs Authorization: Bearer <BYOC_ORCH_API_TOKEN>",
                "source": "byoc-orch",
            },
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    def allowed(self, request: Request) -> bool:
        return self.denied(request, reads_too=True) is None


def token_denied(request: Request, token: str | None) -> Response | None:
    return Guard(token).denied(request)


def _client_in(request: Request, networks: Sequence[Network]) -> bool:
    client = request.client
    if client is None:
        return False
    try:
        address = ipaddress.ip_address(client.host)
    except ValueError:
        return False
    return any(address in network for network in networks)
