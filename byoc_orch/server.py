"""Process lifecycle: the HTTP server and the daemon in one event loop, and signal handling.

The HTTP API comes up first, so /readyz answers 503 while the first reconcile runs. On SIGTERM
or SIGINT every capability is withdrawn before anything else happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import structlog
import uvicorn

from byoc_orch.aimodels import ModelsFile
from byoc_orch.api import create_app
from byoc_orch.daemon import Daemon
from byoc_orch.engine import EngineError
from byoc_orch.settings import Settings, SettingsError, require_token_off_loopback

log = structlog.get_logger("byoc_orch.server")

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNAVAILABLE = 2


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """byoc-orch installs its own handlers; uvicorn's would swallow SIGTERM/SIGHUP."""
        yield


async def serve(settings: Settings, models: ModelsFile) -> int:
    try:
        require_token_off_loopback(settings)
    except SettingsError as exc:
        log.error("refusing to start", error=str(exc))
        return EXIT_INVALID
    daemon = Daemon(settings, models)
    server = _Server(
        uvicorn.Config(
            create_app(daemon),
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=3,
        )
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    http = asyncio.create_task(server.serve(), name="http")
    while not server.started and not http.done():  # noqa: ASYNC110 (uvicorn has no event)
        await asyncio.sleep(0.01)
    if http.done():
        log.error("HTTP API could not start", host=settings.host, port=settings.port)
        return EXIT_UNAVAILABLE
    log.info("listening", url=f"http://{settings.host}:{settings.port}", instance=settings.instance)
    try:
        await daemon.start()
    except EngineError as exc:
        log.error("cannot start", error=str(exc))
        await daemon.stop()
        server.should_exit = True
        await http
        return EXIT_UNAVAILABLE
    await stopping.wait()
    log.info("shutting down")
    await daemon.stop()
    server.should_exit = True
    await http
    return EXIT_OK
