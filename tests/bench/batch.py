"""Batch pass-through: 64 MiB bodies each way, small-request latency, 32 concurrent clients.

byoc-orch runs as `byoc-orch run` in a subprocess (its own interpreter and HTTP stack, as
deployed; probes as in `replicas`: the fast start-up settings with the shipped 1 s probe) with
one warm demo worker whose entry has `"capacity": 64`, so the slot each pass-through request
holds while in flight is never refused. "Proxied" is `/proxy/<entry_id>/<path>` on the daemon,
"direct" is the same path on the container's published port. Every call is checked; a wrong
answer is an error that stops the benchmark, never a sample.

1. 64 MiB up and down. Upload: `POST /v1/sha256` with a sized body (`Content-Length`) that the
   client streams in 1 MiB pieces; the worker hashes it as it arrives and the answer must name
   the body's sha256 and size. Download: `GET /v1/bytes?n=67108864`, read to the end and hashed
   on the fly; the size and the sha256 must match the pattern's and the worker's
   `X-Demo-Sha256`. Each side has one keep-alive httpx client; a trial is the four transfers
   (up and down, proxied and direct) in a random order, so drift falls on both sides alike. A
   transfer is timed from the request to its last byte (the worker hashes all 64 MiB before it
   answers a download, on both sides alike); MB/s is 10^6 bytes a second. The ratio is
   proxied ÷ direct per trial and direction (target: p50 ≥ 50 % of direct, DESIGN §5). Memory:
   the daemon's VmHWM (peak RSS, /proc/<pid>/status) once 1 MiB transfers and small calls
   have warmed its code paths, then after the last 64 MiB transfer (one discarded warm-up of
   each kind, then the trials); the growth must not be body-sized (target < 16 MiB).
2. Small-request added latency. `POST /v1/echo` with a 98-byte JSON body, one proxied and one
   direct per pair in a random order per pair, on one keep-alive httpx client per side, after
   a warm-up, as `proxy` measures session calls. Added latency is the per-pair difference
   (proxied minus direct); target p50 ≤ 1 ms.
3. 32 concurrent clients. 32 keep-alive connections, each a minimal HTTP/1.1 client (raw
   asyncio streams on uvloop, so the load generator costs far less CPU than httpx would) that
   sends `POST /v1/echo` and reads the whole answer, back to back, for a fixed window (5 s,
   2 s with --quick). Each connection is opened and has had one answer before the window
   starts; requests/s is the 200s answered over the time until the last client's last
   answer. The two sides get separate windows, alternating which goes first each trial, after
   a 0.5 s warm-up window each. Any answer other than 200, or a broken connection, counts as
   an error (target: none). The demo worker is a threaded stdlib server (one thread per
   connection, one GIL), so "direct" is bounded by it too, and all of it shares the machine's
   cores with the daemon and the client. Beside it, how many connections to the worker
   byoc-orch closed during each proxied window (sockets in TIME-WAIT towards the worker's port
   in /proc/net/tcp at the end and not at the start), per 100 requests: connections its pool
   did not keep alive, each opened for a request or a few. Only byoc-orch connects to that
   port during a proxied window. The JSON adds, per window, the daemon's CPU, the clients'
   latency p50/p99 and, when the engine runs on this machine, the worker's TcpExt
   ListenOverflows (/proc/<container pid>/net/netstat): connections its listen queue (the
   stdlib default, 5) had no room for, each costing its client a 1 s retry. Baselines are
   taken when the window starts.

Between windows the worker's call record (`/_demo/calls`) is cleared, so it stays small.
Every container carries the run's instance label and is removed at the end, on failure too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvloop

from tests.bench import targets
from tests.bench.common import (
    DaemonProcess,
    Figure,
    Run,
    cpu_seconds,
    log,
    managed_entries,
    memory_mb,
    pct,
    wait_listed,
    write_models,
)
from tests.bench.proxy import WARMUP
from tests.bench.replicas import FAST, _remove

MIB = 1024 * 1024
BODY = 64 * MIB
CAPACITY = 64
CLIENTS = 32
LOAD_SECONDS = 0.2
WARM_WINDOW_S = 0.5
TRANSFER_TIMEOUT = 120.0
SIDES = ("proxy", "direct")
WAYS = ("up", "down")
PIECE = bytes(range(256)) * 4096
"""1 MiB of the demo worker's pattern (`bytes(range(256))` repeated): what /v1/bytes sends."""
ECHO_BODY = (
    b'{"prompt":"a lighthouse at dusk, oil on canvas, soft light",'
    b'"seed":1234,"steps":20,"guidance":7.5}'
)


class TransferError(RuntimeError):
    """A pass-through answer that is wrong: an error, never a sample."""


# -- 1. 64 MiB up and down ---------------------------------------------------------------------


def _pattern(size: int) -> Iterator[bytes]:
    left = size
    while left > 0:
        piece = PIECE if left >= len(PIECE) else PIECE[:left]
        left -= len(piece)
        yield piece


@functools.cache
def _expected(size: int) -> str:
    digest = hashlib.sha256()
    for piece in _pattern(size):
        digest.update(piece)
    return digest.hexdigest()


def _upload(client: httpx.Client, base: str, size: int) -> float:
    """POST /v1/sha256 with a streamed, sized body; seconds until the answer is in."""
    want = {"sha256": _expected(size), "bytes": size}
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    began = time.perf_counter()
    reply = client.post(f"{base}/v1/sha256", content=_pattern(size), headers=headers)
    seconds = time.perf_counter() - began
    if reply.status_code != 200 or reply.json() != want:
        raise TransferError(
            f"POST {base}/v1/sha256 ({size} bytes) → {reply.status_code} "
            f"{reply.text[:200]!r}, want {want}"
        )
    return seconds


def _download(client: httpx.Client, base: str, size: int) -> float:
    """GET /v1/bytes?n=size read to the end and hashed; seconds until the last byte."""
    digest, received = hashlib.sha256(), 0
    began = time.perf_counter()
    with client.stream("GET", f"{base}/v1/bytes", params={"n": size}) as reply:
        if reply.status_code != 200:
            reply.read()
            raise TransferError(
                f"GET {base}/v1/bytes?n={size} → {reply.status_code} {reply.text[:200]!r}"
            )
        for chunk in reply.iter_raw():
            digest.update(chunk)
            received += len(chunk)
        declared = reply.headers.get("x-demo-sha256")
    seconds = time.perf_counter() - began
    got = digest.hexdigest()
    if received != size or got != _expected(size) or declared != got:
        raise TransferError(
            f"GET {base}/v1/bytes?n={size}: got {received} bytes, sha256 {got}; "
            f"want {size} bytes, sha256 {_expected(size)} (worker says {declared})"
        )
    return seconds


TRANSFERS: dict[str, Callable[[httpx.Client, str, int], float]] = {
    "up": _upload,
    "down": _download,
}


def _hwm_mib(pid: int) -> float:
    return memory_mb(pid)["VmHWM"] * 1e6 / MIB


def _transfers(bases: dict[str, str], trials: int, pid: int) -> dict[str, Any]:
    """Blocking: warm-ups, then `trials` rounds of the four transfers in a random order."""
    samples: dict[str, list[float]] = {f"{side}.{way}": [] for side in SIDES for way in WAYS}
    rng = random.Random(0)
    clients = {side: httpx.Client(trust_env=False, timeout=TRANSFER_TIMEOUT) for side in SIDES}
    try:
        for side in SIDES:  # connections and code paths warm, nothing body-sized yet
            for _ in range(5):
                _echo(clients[side], f"{bases[side]}/v1/echo")
            for way in WAYS:
                TRANSFERS[way](clients[side], bases[side], MIB)
        hwm_before = _hwm_mib(pid)
        for side in SIDES:
            for way in WAYS:
                TRANSFERS[way](clients[side], bases[side], BODY)
        cpu_before = cpu_seconds(pid)
        for _ in range(trials):
            order = [(side, way) for side in SIDES for way in WAYS]
            rng.shuffle(order)
            for side, way in order:
                seconds = TRANSFERS[way](clients[side], bases[side], BODY)
                samples[f"{side}.{way}"].append(BODY / seconds / 1e6)
        cpu = cpu_seconds(pid) - cpu_before
        hwm_after = _hwm_mib(pid)
    finally:
        for client in clients.values():
            client.close()
    return {
        "samples": samples,
        "hwm_before_mib": hwm_before,
        "hwm_after_mib": hwm_after,
        "daemon_cpu_s_per_proxied_64mib": cpu / (len(WAYS) * trials) if trials else None,
    }


# -- 2. small-request added latency --------------------------------------------------------------


def _echo(client: httpx.Client, url: str) -> float:
    """One small POST /v1/echo; seconds. Anything but the worker's 200 is an error."""
    began = time.perf_counter()
    reply = client.post(url, content=ECHO_BODY, headers={"Content-Type": "application/json"})
    seconds = time.perf_counter() - began
    if reply.status_code != 200 or reply.headers.get("x-demo-echo") != "1":
        raise TransferError(f"POST {url} → {reply.status_code} {reply.text[:200]!r}")
    return seconds


def _latency(bases: dict[str, str], pairs: int) -> dict[str, list[float]]:
    """Blocking: WARMUP pairs, then `pairs` pairs, the two sides in a random order per pair."""
    urls = {side: f"{base}/v1/echo" for side, base in bases.items()}
    samples: dict[str, list[float]] = {side: [] for side in SIDES}
    rng = random.Random(1)
    clients = {side: httpx.Client(trust_env=False, timeout=10) for side in SIDES}
    try:
        for _ in range(WARMUP):
            for side in SIDES:
                _echo(clients[side], urls[side])
        for _ in range(pairs):
            order = list(SIDES)
            rng.shuffle(order)
            for side in order:
                samples[side].append(_echo(clients[side], urls[side]) * 1000)
    finally:
        for client in clients.values():
            client.close()
    return samples


# -- 3. 32 concurrent clients --------------------------------------------------------------------


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 answer whole (sized or chunked); its status and whether it closes."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name:
            headers[name.strip().lower()] = value.strip()
    closes = headers.get(b"connection", b"").lower() == b"close"
    if b"content-length" in headers:
        await reader.readexactly(int(headers[b"content-length"]))
    elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        while size := int((await reader.readline()).split(b";")[0].strip(), 16):
            await reader.readexactly(size + 2)
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # trailers
    else:
        await reader.read()
        closes = True
    return status, closes


async def _window(
    port: int, path: str, seconds: float, started: Callable[[], None] = lambda: None
) -> dict[str, Any]:
    """CLIENTS keep-alive connections sending POST `path` back to back for `seconds`, timed
    once each is open and has had one answer (`started` is called then)."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(ECHO_BODY)}\r\n\r\n"
    ).encode() + ECHO_BODY
    opened = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", port) for _ in range(CLIENTS))
    )

    async def prime(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One untimed call: the server has accepted this connection (and byoc-orch opened
        its own to the worker) before the window starts."""
        writer.write(request)
        status, _ = await _answer(reader)
        if status != 200:
            raise TransferError(f"POST {path} on port {port} → {status} before the window")

    await asyncio.gather(*(prime(r, w) for r, w in opened))
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    started()
    began = time.perf_counter()
    deadline = began + seconds

    async def client(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> asyncio.StreamWriter:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                writer.write(request)
                status, closes = await _answer(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                outcomes["broken"] += 1
                closes = True
            else:
                latencies.append(time.perf_counter() - sent)
                outcomes[str(status)] += 1
            if closes:
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return writer

    writers = await asyncio.gather(*(client(r, w) for r, w in opened))
    elapsed = time.perf_counter() - began
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    ok = outcomes.get("200", 0)
    return {
        "seconds": elapsed,
        "ok": ok,
        "errors": sum(outcomes.values()) - ok,
        "outcomes": dict(outcomes),
        "rps": ok / elapsed,
        "latency_p50_ms": statistics.median(latencies) * 1000 if latencies else None,
        "latency_p99_ms": pct(latencies, 0.99) * 1000 if latencies else None,
    }


def _time_wait(port: int) -> set[tuple[str, str]]:
    """Sockets in TIME-WAIT towards `port` (each a connection its client closed), by address
    pair, so the ones a window added can be told from older ones expiring meanwhile."""
    found: set[tuple[str, str]] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if fields[3] == "06" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                    found.add((fields[1], fields[2]))
    return found


def _listen_overflows(netstat: Path | None) -> int | None:
    """TcpExt ListenOverflows in the worker's network namespace: connections its listen
    queue had no room for (the client retransmits its SYN a second later)."""
    if netstat is None:
        return None
    with contextlib.suppress(OSError, ValueError, StopIteration):
        rows = [line.split() for line in netstat.read_text().splitlines()]
        names, values = (r for r in rows if r and r[0] == "TcpExt:")
        return int(values[names.index("ListenOverflows")])
    return None


@dataclass(frozen=True)
class _Ends:
    """Where the 32 clients go on each side, and what is watched while they run."""

    targets: dict[str, tuple[int, str]]
    reset: str
    daemon_pid: int
    worker_port: int
    worker_netstat: Path | None


def _concurrent(ends: _Ends, trials: int, seconds: float) -> dict[str, list[dict[str, Any]]]:
    """Blocking: a warm-up window per side, then `trials` windows per side, alternating which
    side goes first. The client runs on its own uvloop loop in this thread."""
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    with (
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
        httpx.Client(trust_env=False, timeout=10) as admin,
    ):

        def clear() -> None:
            admin.post(ends.reset).raise_for_status()

        before: dict[str, Any] = {}

        def started() -> None:
            """The baselines, taken once every connection is open."""
            before.update(
                cpu=cpu_seconds(ends.daemon_pid),
                closed=_time_wait(ends.worker_port),
                overflows=_listen_overflows(ends.worker_netstat),
            )

        for side in SIDES:
            runner.run(_window(*ends.targets[side], WARM_WINDOW_S))
            clear()
        for n in range(trials):
            for side in SIDES if n % 2 == 0 else SIDES[::-1]:
                got = runner.run(_window(*ends.targets[side], seconds, started))
                cpu = cpu_seconds(ends.daemon_pid) - before["cpu"]
                got["daemon_cpu_pct"] = 100 * cpu / got["seconds"]
                if side == "proxy":  # only byoc-orch (and its prober) connects to the worker
                    closed = _time_wait(ends.worker_port) - before["closed"]
                    got["worker_connections_closed"] = len(closed)
                overflows = _listen_overflows(ends.worker_netstat)
                if overflows is not None and before["overflows"] is not None:
                    got["worker_listen_overflows"] = overflows - before["overflows"]
                results[side].append(got)
                clear()
    return results


def _netstat(run: Run, container_id: str) -> Path | None:
    """The container's /proc/<pid>/net/netstat, when its engine runs on this machine."""
    client = run.docker()
    try:
        pid = client.api.inspect_container(container_id)["State"]["Pid"]
    finally:
        client.close()
    path = Path(f"/proc/{pid}/net/netstat")
    return path if pid and _listen_overflows(path) is not None else None


# -- the benchmark -------------------------------------------------------------------------------


async def batch(run: Run) -> list[Figure]:
    trials = run.trial_count(full=20, quick=5)
    pairs = max(1000, run.trial_count(full=2000, quick=1000))
    windows = run.trial_count(full=5, quick=2)
    window_s = 2.0 if run.quick else 5.0
    instance = run.instance("batch")
    (entry,) = managed_entries(run.image, 1, load_seconds=LOAD_SECONDS, prefix="batch")
    models = write_models(run, "batch", [{**entry, "capacity": CAPACITY}])
    settings = {**FAST, "BYOC_ORCH_PROBE_INTERVAL": "1"}  # as `replicas` runs its proxy figures
    daemon = DaemonProcess(
        run, models=models, instance=instance, settings=settings, log_name="batch"
    )
    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            daemon.spawn()
            try:
                await wait_listed(daemon, http, 1, within=120)
                (listed,) = (await http.get(f"{daemon.url}/entries")).json()
                (worker,) = (await http.get(f"{daemon.url}/workers")).json()
                entry_id, port = listed["entry_id"], worker["host_port"]
                bases = {
                    "proxy": f"{daemon.url}/proxy/{entry_id}",
                    "direct": f"http://127.0.0.1:{port}",
                }
                probe = await http.get(f"{bases['direct']}/v1/bytes", params={"n": 0})
                if probe.status_code != 200:
                    raise RuntimeError(
                        f"the demo worker image has no batch routes (GET /v1/bytes → "
                        f"{probe.status_code}); rebuild it with bash scripts/test-env.sh"
                    )
                log(f"batch: {trials} rounds of 64 MiB up and down, proxied and direct")
                moved = await asyncio.to_thread(_transfers, bases, trials, daemon.pid)
                log(f"batch: {pairs} interleaved small POST /v1/echo pairs")
                echoed = await asyncio.to_thread(_latency, bases, pairs)
                await http.post(f"{bases['direct']}/_demo/reset")
                log(f"batch: {windows} × {window_s:g} s windows of {CLIENTS} clients per side")
                targets = {
                    "proxy": (daemon.port, f"/proxy/{entry_id}/v1/echo"),
                    "direct": (port, "/v1/echo"),
                }
                ends = _Ends(
                    targets=targets,
                    reset=f"{bases['direct']}/_demo/reset",
                    daemon_pid=daemon.pid,
                    worker_port=port,
                    worker_netstat=await asyncio.to_thread(_netstat, run, worker["container_id"]),
                )
                loaded = await asyncio.to_thread(_concurrent, ends, windows, window_s)
            finally:
                await daemon.stop()
    finally:
        await asyncio.to_thread(_remove, run, instance)
    return _figures(run, moved, echoed, loaded)


def _figures(
    run: Run,
    moved: dict[str, Any],
    echoed: dict[str, list[float]],
    loaded: dict[str, list[dict[str, Any]]],
) -> list[Figure]:
    s = moved["samples"]
    grown = moved["hwm_after_mib"] - moved["hwm_before_mib"]
    added = [p - d for p, d in zip(echoed["proxy"], echoed["direct"], strict=True)]
    rps = {side: [w["rps"] for w in loaded[side]] for side in SIDES}
    run.shared["batch"] = {
        "body_bytes": BODY,
        "capacity": CAPACITY,
        "transfers": {k: v for k, v in moved.items() if k != "samples"},
        "echo_body_bytes": len(ECHO_BODY),
        "echo_pairs": len(added),
        "echo_p50_ms": {side: statistics.median(v) for side, v in echoed.items()},
        "concurrent_windows": loaded,
    }
    figures: list[Figure] = []
    for way, name in (("up", "upload, POST /v1/sha256"), ("down", "download, GET /v1/bytes")):
        ratio = [100 * p / d for p, d in zip(s[f"proxy.{way}"], s[f"direct.{way}"], strict=True)]
        figures += [
            Figure(f"batch.{way}.direct", f"64 MiB {name}, direct", "MB/s", s[f"direct.{way}"]),
            Figure(
                f"batch.{way}.proxied",
                f"64 MiB {name}, through byoc-orch",
                "MB/s",
                s[f"proxy.{way}"],
            ),
            Figure(
                f"batch.{way}.ratio",
                f"  64 MiB {way}load through byoc-orch ÷ direct (paired)",
                "%",
                ratio,
                **targets.PASSTHROUGH_THROUGHPUT.figure(),
                show_p99=False,
            ),
        ]
    transfers = 2 * (len(s["proxy.up"]) + 1)
    figures += [
        Figure(
            "batch.rss_growth",
            f"  daemon peak RSS growth over {transfers} proxied 64 MiB transfers",
            "MiB",
            [grown],
            **targets.PASSTHROUGH_MEMORY.figure(),
            show_p99=False,
        ),
        Figure("batch.echo.direct", "small POST /v1/echo (98 B), direct", "ms", echoed["direct"]),
        Figure(
            "batch.echo.proxied", "small POST /v1/echo, through byoc-orch", "ms", echoed["proxy"]
        ),
        Figure(
            "batch.echo.added",
            "small POST /v1/echo: added by byoc-orch (paired difference)",
            "ms",
            added,
            **targets.PASSTHROUGH_SMALL_ADDED.figure(),
        ),
        Figure(
            "batch.concurrent.direct",
            f"{CLIENTS} keep-alive clients, POST /v1/echo, direct",
            "req/s",
            rps["direct"],
        ),
        Figure(
            "batch.concurrent.proxied",
            f"{CLIENTS} keep-alive clients, POST /v1/echo, through byoc-orch",
            "req/s",
            rps["proxy"],
        ),
        Figure(
            "batch.concurrent.ratio",
            f"  {CLIENTS} clients through byoc-orch ÷ direct (same trial)",
            "%",
            [100 * p / d for p, d in zip(rps["proxy"], rps["direct"], strict=True)],
            show_p99=False,
        ),
        Figure(
            "batch.concurrent.reconnects",
            "  worker connections byoc-orch closed, per 100 proxied requests (TIME-WAIT)",
            "",
            [
                round(100 * w["worker_connections_closed"] / max(1, w["ok"] + w["errors"]), 1)
                for w in loaded["proxy"]
            ],
            show_p99=False,
        ),
        Figure(
            "batch.concurrent.errors",
            f"  {CLIENTS} clients: answers other than 200, per window (either side)",
            "",
            [w["errors"] for side in SIDES for w in loaded[side]],
            **targets.CONCURRENT_ERRORS.figure(),
        ),
    ]
    return figures
