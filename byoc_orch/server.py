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

from byoc_orch import socket_activation
from byoc_orch.aimodels import ModelsFile
from byoc_orch.aimodels.host import ModelsLoader
from byoc_orch.capabilities import Change
from byoc_orch.daemon import Daemon, ReloadRejected, engine_for
from byoc_orch.engine import EngineError
from byoc_orch.exit_codes import EXIT_INVALID, EXIT_OK, EXIT_UNAVAILABLE
from byoc_orch.front import create_front
from byoc_orch.instance_lock import InstanceLocked, acquire
from byoc_orch.sd_notify import Notifier, run_watchdog
from byoc_orch.settings import Settings, SettingsError, require_token_off_loopback

log = structlog.get_logger("byoc_orch.server")


SETTLE_TIMEOUT = 5.0
"""Seconds a socket-activated start waits for its adopted workers' first probes before it
accepts calls (they wait in the socket's backlog meanwhile)."""
MAX_HEAD_BYTES = 64 * 1024
"""The request line and headers of one request, at most (nginx's default is 32 KiB, Go's 1 MiB;
go-livepeer's session headers are a few hundred bytes)."""
HEADER_TIMEOUT = 10.0
"""Seconds a client has to send a request's head once it connects or starts the request."""
FIRST_REQUEST_GRACE = 1.0
"""Seconds a connection accepted just before shutdown, with nothing received yet, is kept open
for its request (served, then closed) instead of being closed under a client that has just
sent it — that client would see a reset, not an answer."""


class HeadersInTime(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size bound for each request's head:
    a client that connects and sends nothing, or dribbles its headers, is cut off after
    HEADER_TIMEOUT seconds, and a head (request line and headers) larger than MAX_HEAD_BYTES is
    answered 431 and the connection closed before more of it is held — so many connections
    cannot each make the daemon keep megabytes of headers."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._received = False
        self._head_started = False
        self._last_request = False
        self._in_head = True
        self._head_bytes = 0
        self._tail = b""
        self._await_head()

    def shutdown(self) -> None:
        """uvicorn closes every connection with no request in progress, even one whose request
        is arriving: one accepted a moment ago that has received nothing yet, or one half-way
        through a request's head, is given that request (served, then closed)."""
        if self._received and not self._head_started:
            super().shutdown()
            return
        self._last_request = True
        self.loop.call_later(FIRST_REQUEST_GRACE, self._close_if_nothing_came)

    def _close_if_nothing_came(self) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        if idle and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._received = True
        if self._in_head:
            window = self._tail + data
            end = window.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._tail))
            if self._head_bytes > MAX_HEAD_BYTES:
                self._head_too_large()
                return
            self._tail = window[-3:]
        super().data_received(data)

    def _head_too_large(self) -> None:
        self._head_arrived()
        body = (
            f'{{"error": "request head larger than {MAX_HEAD_BYTES} bytes", '
            '"fix": "send fewer or smaller headers"}'
        ).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True
        self._in_head = True
        self._head_bytes = 0
        if self._head_deadline is None:
            self._await_head()

    def on_headers_complete(self) -> None:
        self._head_started = False
        self._in_head = False
        self._tail = b""
        self._head_arrived()
        super().on_headers_complete()
        if self._last_request and self.cycle is not None:
            self.cycle.keep_alive = False

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
        activated = socket_activation.inherited()
    except socket_activation.ActivationError as exc:
        log.error("refusing to start: the sockets systemd passed cannot be served", error=str(exc))
        return EXIT_INVALID
    try:
        lock = acquire(settings.instance, settings.docker_host, await _engine_id(settings))
    except InstanceLocked as exc:
        log.error("refusing to start", error=str(exc))
        return EXIT_INVALID
    if activated:
        disagreement = socket_activation.disagreement(activated, settings.host, settings.port)
        if disagreement is not None:
            log.warning(disagreement)
        listening = [listener.sock for listener in activated]
    else:
        try:
            listening = [_listen(settings.host, settings.port)]
        except OSError as exc:
            lock.close()
            log.error(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc} — "
                f"another process holds the port (ss -ltnp 'sport = :{settings.port}'); stop it "
                "or choose another BYOC_ORCH_PORT"
            )
            return EXIT_UNAVAILABLE
    try:
        return await _serve(settings, models, loader, listening, activated=bool(activated))
    finally:
        for sock in listening:
            sock.close()
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
    settings: Settings,
    models: ModelsFile,
    loader: ModelsLoader,
    listening: list[socket.socket],
    *,
    activated: bool,
) -> int:
    """Without socket activation the API answers first (503 on /readyz until the first
    reconcile); handed its socket by systemd, byoc-orch accepts nothing until its workers are
    adopted and probed — calls wait in the socket's backlog meanwhile, so a restart answers no
    call with a refusal, a 404 or a 503."""
    daemon = Daemon(settings, models, loader=loader)
    front = create_front(daemon)
    server = _Server(
        uvicorn.Config(
            front,
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
    daemon.request_exit = stopping.set
    reloads: set[asyncio.Task[None]] = set()

    def reload_on_signal() -> None:
        task = asyncio.create_task(_reload(daemon), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, reload_on_signal)
    if settings.api_token is None or not settings.api_token.get_secret_value():
        log.warning(
            "BYOC_ORCH_API_TOKEN is not set: whoever reaches this address can start sessions "
            "and act with the workers' tokens through the proxy; keep it on loopback (or set "
            "BYOC_ORCH_API_TOKEN)",
            host=settings.host,
            trusted_networks=settings.trusted_networks,
        )
    watchdog = asyncio.create_task(run_watchdog(notifier), name="watchdog")
    http: asyncio.Task[None] | None = None
    if not activated:
        http = await _start_http(server, listening, settings)
        if http is None:
            watchdog.cancel()
            return EXIT_UNAVAILABLE
    try:
        await daemon.start()
    except EngineError as exc:
        log.error("cannot start", error=str(exc))
        notifier.status(f"cannot start: {exc}")
        await daemon.stop()
        await _stop_http(server, http)
        watchdog.cancel()
        return EXIT_UNAVAILABLE
    if activated:
        unsettled = await daemon.settled(SETTLE_TIMEOUT)
        if unsettled:
            log.warning(
                "serving before every adopted worker answered its first probe",
                waited_seconds=SETTLE_TIMEOUT,
                workers=unsettled,
            )
        http = await _start_http(server, listening, settings)
        if http is None:
            await daemon.stop()
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
    if settings.stop_containers_on_exit:
        # The containers go: the API stays up while their sessions drain.
        await daemon.stop()
        await _stop_http(server, http)
    else:
        # New connections wait in the socket's backlog (with socket activation, for the next
        # process) while the calls in flight finish; then the daemon lets go of its workers.
        await _stop_http(server, http)
        await daemon.stop()
    watchdog.cancel()
    notifier.close()
    return EXIT_OK


async def _start_http(
    server: uvicorn.Server, listening: list[socket.socket], settings: Settings
) -> asyncio.Task[None] | None:
    http = asyncio.create_task(server.serve(sockets=listening), name="http")
    while not server.started and not http.done():  # noqa: ASYNC110 (uvicorn has no event)
        await asyncio.sleep(0.005)
    if http.done():
        log.error("HTTP API could not start", host=settings.host, port=settings.port)
        return None
    shown = [_address(sock) for sock in listening]
    log.info("listening", url=shown[0], on=shown, instance=settings.instance)
    return http


async def _stop_http(server: uvicorn.Server, http: asyncio.Task[None] | None) -> None:
    if http is None:
        return
    server.should_exit = True
    await http


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"


def status_line(daemon: Daemon) -> str:
    return daemon.status_line()


async def _reload(daemon: Daemon) -> None:
    """SIGHUP: reload aiModels.json; a broken file leaves everything running as it was."""
    log.info("SIGHUP: reloading", path=str(daemon.settings.models_path))
    with contextlib.suppress(ReloadRejected, EngineError):
        await daemon.reload_reported()
