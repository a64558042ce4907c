"""The one outbound HTTP client byoc-orch shares: probes, the session proxy, advertisers.

httpcore asks `import sniffio` on every request to learn which async library runs it. When
sniffio is not installed (anyio no longer needs it) each of those imports fails after
searching the whole of sys.path, which costs about half a millisecond per request. Marking
the module absent once makes the failure instant; httpcore then assumes asyncio, which is
what byoc-orch runs.
"""

from __future__ import annotations

import importlib.util
import sys

import httpx


def _skip_sniffio_search() -> None:
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def shared_client(max_connections: int = 1024) -> httpx.AsyncClient:
    """Pooled keep-alive connections; the environment's proxy variables are ignored, since
    every target is a worker on this host or go-livepeer."""
    _skip_sniffio_search()
    return httpx.AsyncClient(
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections // 2
        ),
        trust_env=False,
    )
