"""Process lifecycle: the HTTP server and the daemon in one event loop, signals, and systemd.

The HTTP API comes up first, so /readyz answers 503 while the first reconcile runs. systemd
hears READY=1 once that reconcile is done, a STATUS= line whenever the warm set changes, and
WATCHDOG=1 from the event loop itself. SIGHUP reloads aiModels.json. On SIGTERM or SIGINT
every capability is withdrawn before anything else happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Iterator

import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from byoc_orch.aimodels import ModelsFile
from byoc_orch.aimodels.host import ModelsLoader
from byoc_orch.api import create_app
from byoc_orch.capabilities import Change
from byoc_orch.daemon import Daemon, ReloadRejected, engine_for
from byoc_orch.engine import EngineError
from byoc_orch.exit_codes import EXIT_INVALID, EXIT_OK, EXIT_UNAVAILABLE
from byoc_orch.instance_lock import InstanceLocked, acquire
from byoc_orch.sd_notify import Notifier, run_watchdog
from byoc_orch.settings import Settings, SettingsError, require_token_off_loopback

log = structlog.get_logger("byoc_orch.server")


HEADER_TIMEOUT = 10.0
"""Seconds a client has to send a request's head once it connects or starts the request."""


class HeadersInTime(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's head: a client that
    connects and sends nothing, or dribbles its headers, is cut off after HEADER_TIMEOUT seconds
    instead of holding a connection (and its memory) open for ever."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._await_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_deadline is None:
            self._await_head()

    def on_headers_complete(self) -> None:
        self._head_arrived()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._head_deadline = self.loop.call_later(HEADER_TIMEOUT, self._head_too_slow)

    def _head_arrived(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """byoc-orch installs its own handlers; uvicorn's would swallow SIGTERM/SIGHUP."""
        yield


async def serve(settings: Settings, models: ModelsFile, loader: ModelsLoader) -> int:
    """Run the daemon on ``models``, which ``loader`` loaded (and will load again on reload)."""
    try:
        require_token_off_loopback(settings)
    except SettingsError as exc:
        log.error("refusing to start", error=str(exc))
        return EXIT_INVALID
    try:
        lock = acquire(settings.instance, settings.docker_host, await _engine_id(settings))
    except InstanceLocked as exc:
        log.error("refusing to start", error=str(exc))
        return EXIT_INVALID
    try:
        listening = _listen(settings.host, settings.port)
    except OSError as exc:
        lock.close()
        log.error(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc} — another "
            f"process holds the port (ss -ltnp 'sport = :{settings.port}'); stop it or choose "
            "another BYOC_ORCH_PORT"
        )
        return EXIT_UNAVAILABLE
    try:
        return await _serve(settings, models, loader, listening)
    finally:
        listening.close()
        lock.close()


async def _engine_id(settings: Settings) -> str | None:
    """The Docker engine's own ID, when it answers within a few seconds (else the lock goes by
    its socket alone)."""
    engine = engine_for(settings)
    try:
        async with asyncio.timeout(min(settings.docker_timeout, 5.0)):
            return (await engine.connect()).engine_id or None
    except (EngineError, TimeoutError):
        return None
    finally:
        await engine.close()


def _listen(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound before anything starts so a taken port is one clear
    line and exit 2, not a traceback from inside the server."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    if family == socket.AF_INET:
        with contextlib.suppress(socket.gaierror):
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


async def _serve(
    settings: Settings, models: ModelsFile, loader: ModelsLoader, listening: socket.socket
) -> int:
    daemon = Daemon(settings, models, loader=loader)
    server = _Server(
        uvicorn.Config(
            create_app(daemon),
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=settings.access_log,
            lifespan="off",
            # Forwarded-for headers are never trusted: TRUSTED_NETWORKS must see the real peer.
            proxy_headers=False,
            http=HeadersInTime,
            timeout_graceful_shutdown=3,
        )
    )
    notifier = Notifier()
    daemon.notifier = notifier
    stopping = asyncio.Event()
    reloads: set[asyncio.Task[None]] = set()

    def reload_on_signal() -> None:
        task = asyncio.create_task(_reload(daemon), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, reload_on_signal)
    http = asyncio.create_task(server.serve(sockets=[listening]), name="http")
    while not server.started and not http.done():  # noqa: ASYNC110 (uvicorn has no event)
        await asyncio.sleep(0.01)
    if http.done():
        log.error("HTTP API could not start", host=settings.host, port=settings.port)
        return EXIT_UNAVAILABLE
    log.info("listening", url=f"http://{settings.host}:{settings.port}", instance=settings.instance)
    if settings.api_token is None or not settings.api_token.get_secret_value():
        log.warning(
            "BYOC_ORCH_API_TOKEN is not set: whoever reaches this address can start sessions "
            "and act with the workers' tokens through the proxy; keep it on loopback (or set "
            "BYOC_ORCH_API_TOKEN)",
            host=settings.host,
            trusted_networks=settings.trusted_networks,
        )
    watchdog = asyncio.create_task(run_watchdog(notifier), name="watchdog")
    try:
        await daemon.start()
    except EngineError as exc:
        log.error("cannot start", error=str(exc))
        notifier.status(f"cannot start: {exc}")
        await daemon.stop()
        server.should_exit = True
        await http
        watchdog.cancel()
        return EXIT_UNAVAILABLE

    def report_warm_set(_change: Change) -> None:
        notifier.status(status_line(daemon))

    daemon.registry.subscribe(report_warm_set)
    notifier.ready(status_line(daemon))
    await stopping.wait()
    log.info("shutting down")
    notifier.stopping()
    for task in reloads:
        task.cancel()
    await daemon.stop()
    server.should_exit = True
    await http
    watchdog.cancel()
    notifier.close()
    return EXIT_OK


def status_line(daemon: Daemon) -> str:
    return daemon.status_line()


async def _reload(daemon: Daemon) -> None:
    """SIGHUP: reload aiModels.json; a broken file leaves everything running as it was."""
    log.info("SIGHUP: reloading", path=str(daemon.settings.models_path))
    with contextlib.suppress(ReloadRejected, EngineError):
        await daemon.reload_reported()
