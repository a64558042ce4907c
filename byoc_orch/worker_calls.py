"""Calls from byoc-orch's proxy to one worker: the worker's origin and token, the proxy's
deadlines, and the worker named in every failure. Framework-free: callers pass the raw header
list and query string, so the session proxy, the pass-through and session recovery share it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar

import httpcore

from byoc_orch.forwarding import (
    Answer,
    Body,
    Deadlines,
    Unreachable,
    WorkerConnections,
    exchange,
    forward,
    framing,
    request_headers,
)

if TYPE_CHECKING:
    from byoc_orch.worker import Worker

SESSION_ANSWER_LIMIT = 1024 * 1024
"""Largest answer to a session call byoc-orch reads (status answers are a few hundred bytes)."""
RawHeaders = Iterable[tuple[bytes, bytes]]
T = TypeVar("T")


class WorkerCalls:
    def __init__(
        self, connections: WorkerConnections, *, connect_timeout: float, timeout: float
    ) -> None:
        self._connections = connections
        self._session_deadlines = Deadlines(connect_timeout, timeout, connect_timeout + timeout)
        self._stream_deadlines = Deadlines(connect_timeout, timeout)

    async def send(
        self,
        worker: Worker,
        method: str,
        path: str,
        *,
        headers: RawHeaders = (),
        query: bytes = b"",
        body: bytes = b"",
    ) -> Answer | Unreachable:
        """A session call: the whole answer, within the proxy timeout overall."""
        answer = await exchange(
            self._connections,
            self._connections.origin(worker.upstream_url),
            method,
            _with_query(path, query),
            headers=request_headers(headers, _token(worker)),
            body=body,
            deadlines=self._session_deadlines,
            what=_what(worker, method, path),
            limit=SESSION_ANSWER_LIMIT,
        )
        return _about(worker, answer)

    async def open(
        self,
        worker: Worker,
        method: str,
        path: str,
        *,
        headers: RawHeaders,
        query: bytes,
        body: Body,
        length: int | None,
    ) -> httpcore.Response | Unreachable:
        """A pass-through call: the answer's head, its body left to stream."""
        answer = await forward(
            self._connections,
            self._connections.origin(worker.upstream_url),
            method,
            _with_query(path, query),
            headers=[*request_headers(headers, _token(worker)), *framing(body, length)],
            body=body,
            deadlines=self._stream_deadlines,
            what=_what(worker, method, path),
        )
        return _about(worker, answer)


def _what(worker: Worker, method: str, path: str) -> str:
    return f"{worker.entry.capability} ({worker.worker_id}) {method} {path}"


def _with_query(path: str, query: bytes) -> str:
    return f"{path}?{query.decode('latin-1')}" if query else path


def _token(worker: Worker) -> str | None:
    token = worker.entry.token
    return token.get_secret_value() if token else None


def _about(worker: Worker, answer: T) -> T:
    if isinstance(answer, Unreachable):
        answer.details.update(
            worker_id=worker.worker_id,
            model_id=worker.entry.model_id,
            state=str(worker.status.state),
        )
    return answer
