"""The operator's commands that talk to a running daemon: status, logs, reload, restart, drain,
undrain, and config show.

Each asks the daemon's HTTP API at the address the same settings as `run` give (env file
included), with BYOC_ORCH_API_TOKEN when one is set. When the daemon cannot be reached, `status`
and `logs` say so and fall back to what Docker shows of this instance's containers. Exit codes:
0 fine, 1 refused (bad input, rejected reload), 2 the daemon (or Docker) out of reach, 3 an
entry failed — DOWN or DEGRADED, never a planned `starting` or `drained` (entry_health.py) — so
`status` works as a monitoring check.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

import httpx

from byoc_orch.engine import ContainerInfo
from byoc_orch.entry_health import PAGING, Health, status_exit_code
from byoc_orch.exit_codes import EXIT_INVALID, EXIT_OK, EXIT_UNAVAILABLE
from byoc_orch.settings import SECRET_SETTINGS, Settings


class DaemonUnreachable(Exception):
    pass


class DaemonClient:
    """The running daemon's API, as this host reaches it."""

    def __init__(self, settings: Settings, timeout: float = 10.0) -> None:
        self.base = settings.local_api_url
        token = settings.api_token.get_secret_value() if settings.api_token else ""
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout

    def call(self, method: str, path: str, **params: Any) -> httpx.Response:
        try:
            return httpx.request(
                method,
                self.base + path,
                params=params or None,
                headers=self._headers,
                timeout=self._timeout,
                trust_env=False,
            )
        except httpx.HTTPError as exc:
            raise DaemonUnreachable(
                f"the byoc-orch daemon is not reachable at {self.base} ({type(exc).__name__}) "
                "— is it running (systemctl status byoc-orch)? This command reads the same "
                "settings as `run`: BYOC_ORCH_HOST/PORT, the env file, flags"
            ) from None

    def json(self, path: str) -> Any:
        reply = self.call("GET", path)
        return reply.json()


# -- status ------------------------------------------------------------------------------------


def status(settings: Settings, *, as_json: bool, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    client = DaemonClient(settings)
    try:
        ready, entries = fetch_status(client)
    except DaemonUnreachable as exc:
        print(f"byoc-orch: {exc}", file=sys.stderr)
        return _docker_view(settings, out, as_json=as_json)
    if as_json:
        out.write(json.dumps(status_document(client.base, ready, entries), indent=2) + "\n")
    else:
        out.write(render_status(client.base, ready, entries))
    return status_code(ready, entries)


def fetch_status(client: DaemonClient) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """/readyz and every entry with its replicas' /workers records in `replica_status`."""
    ready = client.call("GET", "/readyz").json()
    entries = client.json("/entries")
    workers = client.json("/workers")
    by_id = {w["worker_id"]: w for w in workers}
    for entry in entries:
        entry["replica_status"] = [by_id[i] for i in entry["replicas"] if i in by_id]
    return ready, entries


def status_code(ready: dict[str, Any], entries: list[dict[str, Any]]) -> int:
    """entry_health.py's rule: 3 only for a failure (or a daemon not ready)."""
    healths = [Health(e["health"]) for e in entries]
    return status_exit_code(healths, ready=bool(ready.get("ready")))


def status_document(
    base: str, ready: dict[str, Any], entries: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "daemon": {"url": base, **ready},
        "entries": entries,
        "ok": status_code(ready, entries) == EXIT_OK,
    }


def render_status(base: str, ready: dict[str, Any], entries: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    _print_status(base, ready, entries, out)
    return out.getvalue()


def _print_status(
    base: str, ready: dict[str, Any], entries: list[dict[str, Any]], out: TextIO
) -> None:
    warm = sum(1 for e in entries if e["warm"])
    sessions = sum(e["in_use"] for e in entries)
    head = "ready" if ready.get("ready") else "NOT READY"
    print(
        f"byoc-orch at {base} (instance {ready.get('instance')}): {head}, "
        f"Docker {ready.get('engine', '?')} — {warm}/{len(entries)} entries warm, "
        f"{sessions} slot{'s' if sessions != 1 else ''} in use",
        file=out,
    )
    rows: list[tuple[str, ...]] = [
        ("ENTRY / REPLICA", "STATE", "SINCE", "IN USE", "GPUS", "PORT", "RESTARTS", "REASON")
    ]
    for entry in entries:
        health = Health(entry["health"])
        rows.append(
            (
                entry["capability"],
                health.upper() if health in PAGING else str(health),
                "",
                f"{entry['in_use']}/{entry['capacity']}",
                "",
                "",
                "",
                _entry_reason(entry, health),
            )
        )
        for worker in entry["replica_status"]:
            rows.append(_replica_row(worker))
    _table(rows, out)
    _print_runners(entries, out)
    _print_scaling(entries, out)
    for entry in entries:
        for worker in entry["replica_status"]:
            crash = worker.get("last_failure_log")
            if crash and worker["state"] != "warm" and crash.get("lines"):
                print(f"\n{worker['worker_id']} last log lines ({crash['reason']}):", file=out)
                for line in crash["lines"][-8:]:
                    print(f"    {line}", file=out)


def _entry_reason(entry: dict[str, Any], health: Health) -> str:
    rollout = _rollout(entry)
    if rollout:
        return rollout
    wanted, warm = entry["replicas_wanted"], entry.get("replicas_warm", 0)
    drained = entry.get("replicas_drained", 0)
    if health is Health.DRAINED:
        return f"drained by the operator (byoc-orch undrain {entry['entry_id']} takes it back)"
    if health is Health.STARTING:
        return f"{warm}/{wanted} replica{'s' if wanted != 1 else ''} warm, the rest coming up"
    if drained and health is Health.WARM:
        return f"{drained} of {wanted} replicas drained by the operator"
    return ""


def _print_runners(entries: list[dict[str, Any]], out: TextIO) -> None:
    """Each replica's Live Runner runner (heartbeats on), and the sessions its orchestrator
    says it holds beside those the replica runs."""
    rows: list[tuple[str, ...]] = []
    for entry in entries:
        for worker in entry["replica_status"]:
            runner = worker.get("live_runner")
            if not runner:
                continue
            if runner.get("leaving"):
                shown = "unregistering"
            elif not runner.get("registered"):
                shown = "registering"
            elif runner.get("draining"):
                shown = "draining (capacity = its sessions)"
            else:
                shown = "registered"
            held = len(runner.get("orchestrator_sessions") or [])
            note = f"{held} at the orchestrator, {worker['sessions']} running here"
            if runner.get("mismatched"):
                note += f" — {runner['mismatched']} not matched yet"
            rows.append(
                (f"  #{worker['replica']} {worker['worker_id']}", runner["runner_id"], shown, note)
            )
    if rows:
        print("\nLive Runner", file=out)
        _table([("REPLICA", "RUNNER ID", "RUNNER", "SESSIONS"), *rows], out)


def _print_scaling(entries: list[dict[str, Any]], out: TextIO) -> None:
    """Replica ranges: min / max / desired / running / warm, the measured cold start and the
    last scale decision with its reason."""
    rows: list[tuple[str, ...]] = []
    for entry in entries:
        if entry.get("scale") is None and entry.get("replicas_min") == entry.get("replicas_max"):
            continue
        counts = "/".join(
            str(entry.get(key, "?"))
            for key in (
                "replicas_min",
                "replicas_max",
                "replicas_desired",
                "replicas_running",
                "replicas_warm",
            )
        )
        cold = entry.get("cold_start_median_s")
        scale = entry.get("scale") or {}
        last = f"{scale['action']} ({scale['reason']}): {scale['detail']}" if scale else "-"
        shown_cold = "-" if cold is None else f"{cold:.1f} s" + (" (> 10 s)" if cold > 10 else "")
        rows.append((entry["capability"], counts, shown_cold, last[:120]))
    if rows:
        print("\nReplica ranges", file=out)
        _table(
            [("ENTRY", "MIN/MAX/DESIRED/RUNNING/WARM", "COLD START", "LAST DECISION"), *rows], out
        )


def _replica_row(worker: dict[str, Any]) -> tuple[str, ...]:
    state = worker["state"]
    if worker.get("drained_by_operator"):
        state += " (drained)"
    elif worker.get("draining"):
        state += " (draining)"
    restarts = str(worker["restarts"])
    if worker.get("next_restart_at"):
        restarts += f", next in {_until(worker['next_restart_at'])}"
    gpus = worker.get("gpus")
    shown_gpus = ",".join(map(str, gpus)) if isinstance(gpus, list) else str(gpus or "-")
    reason = worker.get("reason") or ""
    cause = worker.get("restart_cause")
    if cause and worker["state"] != "warm":
        # The failure it is coming back from, first: "worker reports LOADING" alone hides it.
        reason = cause if reason in ("", cause) else f"{cause} — restarting ({reason})"
    elif not reason and worker["state"] != "warm" and worker.get("last_failure"):
        reason = f"last failure: {worker['last_failure']}"
    return (
        f"  #{worker['replica']} {worker['worker_id']}",
        state,
        _age(worker.get("since")),
        f"{worker['in_use']}/{worker['capacity']}",
        shown_gpus,
        str(worker.get("host_port") or "-"),
        restarts,
        reason[:240],
    )


def _rollout(entry: dict[str, Any]) -> str:
    rollout = entry.get("rollout")
    if not rollout or rollout["state"] == "done":
        return ""
    return f"rollout {rollout['state']}: {rollout.get('detail') or ''}".strip()


def _table(rows: Sequence[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip(), file=out)


def _age(iso: str | None) -> str:
    if not iso:
        return "-"
    seconds = time.time() - datetime.fromisoformat(iso).timestamp()
    return _duration(seconds) + " ago"


def _until(iso: str) -> str:
    return _duration(datetime.fromisoformat(iso).timestamp() - time.time())


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _our_containers(settings: Settings) -> list[ContainerInfo]:
    """This instance's containers as Docker lists them (EngineError when it cannot be asked)."""
    from byoc_orch.daemon import engine_for

    async def listed() -> list[ContainerInfo]:
        engine = engine_for(settings)
        try:
            return await engine.list_containers()
        finally:
            await engine.close()

    return asyncio.run(listed())


def _docker_view(settings: Settings, out: TextIO, *, as_json: bool) -> int:
    """What Docker shows of this instance's containers when the daemon cannot be asked."""
    from byoc_orch.engine import EngineError

    try:
        containers = _our_containers(settings)
    except EngineError as exc:
        print(f"byoc-orch: Docker cannot be asked either: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if as_json:
        shown = [
            {
                "worker_id": c.worker_id,
                "state": c.state,
                "container_id": c.id,
                "host_port": c.host_port,
                "image": c.image,
            }
            for c in containers
        ]
        out.write(json.dumps({"daemon": None, "containers": shown}, indent=2) + "\n")
        return EXIT_UNAVAILABLE
    print(
        f"Docker at {settings.docker_host} shows {len(containers)} container(s) of instance "
        f"'{settings.instance}' (the daemon's own view is not available):",
        file=out,
    )
    rows: list[tuple[str, ...]] = [("WORKER", "CONTAINER", "STATE", "PORT", "IMAGE")]
    for c in sorted(containers, key=lambda c: c.name):
        port = f"127.0.0.1:{c.host_port}" if c.host_port else "-"
        rows.append((c.worker_id or "?", c.id[:12], c.state, port, c.image))
    _table(rows, out)
    return EXIT_UNAVAILABLE


# -- logs --------------------------------------------------------------------------------------


def logs(
    settings: Settings, name: str, *, follow: bool, tail: int, out: TextIO | None = None
) -> int:
    """A worker's current container log and what its last failed container wrote."""
    out = out or sys.stdout
    try:
        workers = DaemonClient(settings).json("/workers")
    except DaemonUnreachable as exc:
        print(f"byoc-orch: {exc}; reading Docker directly", file=sys.stderr)
        workers = None
    if workers is not None:
        chosen = [w for w in workers if name in (w["worker_id"], w["entry_id"], w["model_id"])]
        if not chosen:
            known = sorted({w["worker_id"] for w in workers} | {w["model_id"] for w in workers})
            print(
                f"byoc-orch: no worker, entry or model_id {name!r}; known: {known}", file=sys.stderr
            )
            return EXIT_INVALID
        targets: list[tuple[str, str | None, Any]] = [
            (w["worker_id"], w.get("container_id"), w.get("last_failure_log")) for w in chosen
        ]
    else:
        found = _containers_named(settings, name)
        if found is None:
            return EXIT_UNAVAILABLE
        targets = found
        if not targets:
            print(f"byoc-orch: Docker has no container of {name!r}", file=sys.stderr)
            return EXIT_INVALID
    if follow and len(targets) > 1:
        print(
            f"byoc-orch: {name!r} has {len(targets)} replicas; follow one of: "
            + ", ".join(t[0] for t in targets),
            file=sys.stderr,
        )
        return EXIT_INVALID
    return _print_logs(settings, targets, follow=follow, tail=tail, out=out)


def _containers_named(settings: Settings, name: str) -> list[tuple[str, str | None, Any]] | None:
    from byoc_orch.container_spec import LABEL_ENTRY, LABEL_MODEL_ID
    from byoc_orch.engine import EngineError

    try:
        containers = _our_containers(settings)
    except EngineError as exc:
        print(f"byoc-orch: {exc}", file=sys.stderr)
        return None
    return [
        (c.worker_id, c.id, None)
        for c in containers
        if name in (c.worker_id, c.labels.get(LABEL_ENTRY), c.labels.get(LABEL_MODEL_ID))
    ]


def _print_logs(
    settings: Settings,
    targets: list[tuple[str, str | None, Any]],
    *,
    follow: bool,
    tail: int,
    out: TextIO,
) -> int:
    from byoc_orch.daemon import engine_for
    from byoc_orch.engine import EngineError

    engine = engine_for(settings)
    for worker_id, container_id, crash in targets:
        if crash:
            print(
                f"== {worker_id}: last failed container {crash['container_id'][:12]} at "
                f"{crash['at']} ({crash['reason']}):",
                file=out,
            )
            for line in crash["lines"]:
                print(line, file=out)
        if not container_id:
            print(f"== {worker_id}: no container running now", file=out)
            continue
        print(f"== {worker_id}: container {container_id[:12]}:", file=out)
        try:
            if follow:
                with contextlib.suppress(KeyboardInterrupt):
                    for line in engine.follow_logs(container_id, tail=tail):
                        print(line, file=out, flush=True)
            else:
                for line in asyncio.run(engine.logs(container_id, tail=tail)):
                    print(line, file=out)
        except EngineError as exc:
            print(f"byoc-orch: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
    return EXIT_OK


# -- lifecycle ---------------------------------------------------------------------------------


def reload(settings: Settings, *, dry_run: bool, out: TextIO | None = None) -> int:
    """Reload aiModels.json in the running daemon, synchronously: the plan, or every problem."""
    out = out or sys.stdout
    try:
        reply = DaemonClient(settings, timeout=120).call(
            "POST", "/reload", **({"dry_run": "true"} if dry_run else {})
        )
    except DaemonUnreachable as exc:
        print(f"byoc-orch: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    body = _body(reply)
    if reply.status_code == 401:
        print(
            "byoc-orch: the daemon wants BYOC_ORCH_API_TOKEN; set it as for `run`", file=sys.stderr
        )
        return EXIT_INVALID
    if reply.status_code != 200:
        print(f"byoc-orch: reload rejected: {body.get('error', reply.text)}", file=sys.stderr)
        for problem in body.get("problems", []):
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_INVALID if reply.status_code == 422 else EXIT_UNAVAILABLE
    kinds = ("added", "replaced", "scaled", "updated", "removed")
    changed = sum(len(body.get(k, [])) for k in kinds)
    if not changed:
        unchanged = len(body.get("unchanged", []))
        print(
            f"reload {'would change' if dry_run else 'changed'} nothing: {unchanged} "
            f"entr{'y' if unchanged == 1 else 'ies'} as they are",
            file=out,
        )
        return EXIT_OK
    print(f"reload {'would change' if dry_run else 'applied'}:", file=out)
    changes: dict[str, list[dict[str, str]]] = body.get("changes") or {}
    for key in kinds:
        for entry_id in body.get(key, []):
            fields = changes.get(entry_id, [])
            label = {
                "added": "added",
                "removed": "removed (drains, then stops)",
                "replaced": "replaced (new containers)",
                "scaled": _scaling(fields),
                "updated": "updated in place (no restart)",
            }[key]
            print(f"  {entry_id}: {label}", file=out)
            for change in fields:
                print(f"      {change['field']}: {change['old']} → {change['new']}", file=out)
    unchanged = body.get("unchanged", [])
    if unchanged:
        print(f"  unchanged: {len(unchanged)} ({', '.join(unchanged)})", file=out)
    return EXIT_OK


def _scaling(fields: list[dict[str, str]]) -> str:
    """"scaled down 3 → 2" — the replicas both counts share are left as they are."""
    for change in fields:
        if change["field"].startswith("replicas"):
            try:
                old, new = int(change["old"]), int(change["new"])
            except ValueError:
                continue
            way = "down" if new < old else "up"
            then = "the extra replicas drain, then stop" if new < old else "new replicas start"
            return f"scaled {way} {old} → {new} replicas ({then}; the others stay as they are)"
    return "scaled (the replicas both counts share stay as they are)"


def act(settings: Settings, action: str, name: str, out: TextIO | None = None) -> int:
    """restart, drain or undrain a worker (or every replica of an entry or model_id)."""
    try:
        return act_reply(DaemonClient(settings), action, name, out or sys.stdout)[1]
    except DaemonUnreachable as exc:
        print(f"byoc-orch: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def act_reply(
    client: DaemonClient, action: str, name: str, out: TextIO
) -> tuple[dict[str, Any] | None, int]:
    """Ask for `action`; the daemon's answer (None when refused) and the exit code so far."""
    reply = client.call("POST", f"/workers/{name}/{action}")
    body = _body(reply)
    if reply.status_code != 202:
        print(
            f"byoc-orch: {action} refused: {body.get('error', reply.text)}"
            + (f" — {body['fix']}" if body.get("fix") else ""),
            file=sys.stderr,
        )
        return None, EXIT_INVALID
    past = {"restart": "restarting", "drain": "drained", "undrain": "undrained"}[action]
    for worker_id in body["workers"]:
        print(f"{past} {worker_id}", file=out)
    return body, EXIT_OK


def config_show(settings: Settings, out: TextIO | None = None) -> int:
    """The effective settings (what `run` would use here), secrets masked."""
    out = out or sys.stdout
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name in SECRET_SETTINGS:
            shown = "********" if value is not None and value.get_secret_value() else ""
        else:
            shown = (
                ""
                if value is None
                else str(value).lower()
                if isinstance(value, bool)
                else str(value)
            )
        print(f"BYOC_ORCH_{name.upper()}={shown}", file=out)
    return EXIT_OK


def _body(reply: httpx.Response) -> dict[str, Any]:
    try:
        body = reply.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
