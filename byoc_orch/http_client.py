"""The one outbound HTTP client byoc-orch shares: probes, the session proxy, advertisers.

Two costs of httpx's defaults matter at a few hundred workers, and both are avoided here:

- httpcore keeps one pool for every origin and, on each request, checks every pooled
  connection for expiry (a socket call each). With one keep-alive connection per worker, each
  probe would cost O(workers) system calls. The client's transport therefore keeps one small
  pool per origin (a dict lookup), so a request only looks at its own worker's connections.
- httpcore asks `import sniffio` on every request to learn which async library runs it. When
  sniffio is not installed (anyio no longer needs it) each of those imports fails after
  searching the whole of sys.path. Marking the module absent once makes the failure instant;
  httpcore then assumes asyncio, which is what byoc-orch runs.
"""

from __future__ import annotations

import http.cookiejar
import importlib.util
import ssl
import sys
import urllib.request

import httpx


def _skip_sniffio_search() -> None:
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


class _NoCookies(http.cookiejar.CookieJar):
    """byoc-orch keeps no cookies: a worker's Set-Cookie belongs to the caller the answer is
    relayed to, and must never ride along on byoc-orch's next request."""

    def add_cookie_header(self, request: urllib.request.Request) -> None:
        return None

    def extract_cookies(self, response: object, request: urllib.request.Request) -> None:
        return None


class PerOriginTransport(httpx.AsyncBaseTransport):
    """One connection pool per (scheme, host, port), created on first use."""

    def __init__(self, limits: httpx.Limits) -> None:
        self._limits = limits
        self._pools: dict[tuple[bytes, bytes, int | None], httpx.AsyncHTTPTransport] = {}
        self._tls: ssl.SSLContext | None = None

    def _pool_for(self, url: httpx.URL) -> httpx.AsyncHTTPTransport:
        key = (url.raw_scheme, url.raw_host, url.port)
        pool = self._pools.get(key)
        if pool is None:
            if self._tls is None:
                self._tls = ssl.create_default_context()  # once: each load costs ~1 MB
            pool = httpx.AsyncHTTPTransport(limits=self._limits, verify=self._tls)
            self._pools[key] = pool
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._pool_for(request.url).handle_async_request(request)

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()


def shared_client(per_origin_connections: int = 64) -> httpx.AsyncClient:
    """Pooled keep-alive connections, per origin; the environment's proxy variables are
    ignored, since every target is a worker on this host or go-livepeer."""
    _skip_sniffio_search()
    limits = httpx.Limits(
        max_connections=per_origin_connections,
        max_keepalive_connections=max(per_origin_connections // 4, 2),
    )
    return httpx.AsyncClient(
        transport=PerOriginTransport(limits), trust_env=False, cookies=_NoCookies()
    )
