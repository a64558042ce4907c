"""Pull dedupe: 8 entries sharing one image from the loopback registry → how many pulls.

A fresh image is built for the run (the demo worker plus one file unique to the run), pushed
under a unique tag and removed from the engine, so its top layer really has to come over the
wire. Each trial starts an in-process daemon whose 8 warm entries all name that image, waits
until all 8 are warm, and counts pulls twice: the adapter's own counter
(`Engine.pulls_started`) and, independently, the registry's access log (GETs of the tag's
manifest and of the unique layer's blob). Side by side, for reference: 8 plain concurrent
`docker pull`s of the same image, which is what 8 uncoordinated callers would send.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import tarfile
import threading
from pathlib import Path
from typing import Any

import httpx

from byoc_orch.aimodels import parse_models
from byoc_orch.daemon import Daemon
from byoc_orch.settings import Settings
from byoc_orch.worker_state import State
from tests.bench import targets
from tests.bench.common import Figure, Run, free_port, log, managed_entries, remove_instance, until

ENTRIES = 8
REPOSITORY = "byoc/bench-pull"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def _context(base: str, unique: str) -> io.BytesIO:
    """A build context whose one COPY makes a layer no other image on the engine has."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (
            ("Dockerfile", f"FROM {base}\nCOPY bench-id /bench-id\n".encode()),
            ("bench-id", f"{unique}\n".encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def _stream_errors(stream: Any) -> None:
    for message in stream:
        if "error" in message or "errorDetail" in message:
            raise RuntimeError(str(message.get("error") or message.get("errorDetail")))


def _prepare(run: Run, image: str, repo: str, tag: str, unique: str | None = None) -> None:
    """Blocking: build, push, then remove the local copy so the next use must pull.

    `unique` (default: the run id) is the content of the image's own layer; images built with
    different values share no layer that could already be on the engine."""
    client = run.docker()
    try:
        _stream_errors(
            client.api.build(
                fileobj=_context(run.image, unique or run.run_id),
                custom_context=True,
                tag=image,
                rm=True,
                forcerm=True,
                decode=True,
            )
        )
        _stream_errors(client.api.push(repo, tag=tag, stream=True, decode=True))
        client.api.remove_image(image)
    finally:
        client.close()


def _drop_local(run: Run, image: str) -> None:
    client = run.docker()
    try:
        try:
            client.api.remove_image(image, force=True)
        except Exception as exc:
            if "No such image" not in str(exc):
                raise
    finally:
        client.close()


def _plain_pulls(run: Run, repo: str, tag: str) -> None:
    """Blocking: ENTRIES concurrent pulls, each from its own client, as independent callers."""
    errors: list[BaseException] = []

    def pull() -> None:
        client = run.docker()
        try:
            _stream_errors(client.api.pull(repo, tag=tag, stream=True, decode=True))
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=pull) for _ in range(ENTRIES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


class RegistryLog:
    """Counts requests in the registry's access log written after a mark."""

    def __init__(self, path: Path, repository: str, tag: str, layer: str) -> None:
        self.path = path
        self._manifest = re.compile(
            rf'"(?:HEAD|GET) /v2/{re.escape(repository)}/manifests/{tag} HTTP'
        )
        self._layer = re.compile(rf'"GET /v2/{re.escape(repository)}/blobs/{re.escape(layer)} ')
        self._offset = 0

    def mark(self) -> None:
        self._offset = self.path.stat().st_size

    def count(self) -> tuple[int, int]:
        """(requests for the tag's manifest, GETs of the unique layer) since the mark.

        dockerd 20.10 starts every pull with one HEAD (or GET) of `manifests/<tag>`, then
        fetches by digest; so requests for the tag count pulls asked of the registry, while
        dockerd itself shares concurrent downloads of one layer."""
        with self.path.open("rb") as f:
            f.seek(self._offset)
            text = f.read().decode(errors="replace")
        return len(self._manifest.findall(text)), len(self._layer.findall(text))


async def _byoc_trial(run: Run, image: str, trial: int) -> int:
    instance = run.instance(f"pulls-{trial}")
    entries = managed_entries(image, ENTRIES, load_seconds=0.2, prefix="pull")
    models = parse_models(json.dumps(entries), source="bench-pulls")
    settings = Settings(docker_host=run.docker_host, instance=instance, port=free_port())
    daemon = Daemon(settings, models)
    try:
        await daemon.start()
        await until(
            lambda: all(w.status.state is State.WARM for w in daemon.workers.values()),
            180,
            "all 8 warm",
        )
        return daemon.engine.pulls_started
    finally:
        await daemon.stop()
        client = run.docker()
        try:
            await asyncio.to_thread(remove_instance, client, instance)
        finally:
            await asyncio.to_thread(client.close)


async def pulls(run: Run) -> list[Figure]:
    trials = run.trial_count(full=3, quick=2)
    registry = run.env["BYOC_TEST_REGISTRY"]
    repo, tag = f"{registry}/{REPOSITORY}", f"run-{run.run_id}"
    image = f"{repo}:{tag}"
    log(f"pulls: building and pushing {image}")
    await asyncio.to_thread(_prepare, run, image, repo, tag)
    run.cleanups.append(lambda: _delete_from_registry(registry, tag))
    run.cleanups.append(lambda: _drop_local(run, image))
    async with httpx.AsyncClient(trust_env=False) as http:
        reply = await http.get(
            f"http://{registry}/v2/{REPOSITORY}/manifests/{tag}", headers={"Accept": MANIFEST_V2}
        )
        reply.raise_for_status()
        layer = reply.json()["layers"][-1]["digest"]
    log_path = Path(run.env.get("BYOC_TEST_STATE", "/var/tmp/byoc-orch-test")) / "registry"
    access = RegistryLog(log_path / "registry.log", REPOSITORY, tag, layer)
    have_log = access.path.is_file()
    if not have_log:
        run.notes.append(f"pulls: no registry log at {access.path}; adapter counter only")
    counted: dict[str, list[float]] = {
        "adapter": [],
        "byoc_manifests": [],
        "byoc_layers": [],
        "plain_manifests": [],
        "plain_layers": [],
    }
    for trial in range(trials):
        log(f"pulls: trial {trial + 1}/{trials}: byoc-orch, then {ENTRIES} plain docker pulls")
        for side in ("byoc", "plain"):
            await asyncio.to_thread(_drop_local, run, image)
            if have_log:
                access.mark()
            if side == "byoc":
                counted["adapter"].append(await _byoc_trial(run, image, trial))
            else:
                await asyncio.to_thread(_plain_pulls, run, repo, tag)
            if have_log:
                await asyncio.sleep(0.5)  # let the registry finish writing its log lines
                manifests, layers = access.count()
                counted[f"{side}_manifests"].append(manifests)
                counted[f"{side}_layers"].append(layers)
    run.shared["pulls_detail"] = {"image": image, "unique_layer": layer, **counted}
    figures = [
        Figure(
            "pulls.adapter",
            f"{ENTRIES} entries, one image: pulls started (Engine.pulls_started)",
            "",
            counted["adapter"],
            **targets.ONE_PULL.figure(),
        )
    ]
    if have_log:
        figures += [
            Figure(
                "pulls.registry.manifests",
                f"{ENTRIES} entries, one image: pulls seen by the registry (tag manifest requests)",
                "",
                counted["byoc_manifests"],
                **targets.ONE_PULL.figure(),
            ),
            Figure(
                "pulls.registry.layers",
                f"{ENTRIES} entries, one image: unique-layer downloads",
                "",
                counted["byoc_layers"],
                note="shows the layer really came over the wire; dockerd shares concurrent "
                "layer downloads by itself, so this does not tell deduped pulls apart",
            ),
            Figure(
                "pulls.plain.manifests",
                f"{ENTRIES} plain concurrent docker pulls: tag manifest requests",
                "",
                counted["plain_manifests"],
            ),
            Figure(
                "pulls.plain.layers",
                f"{ENTRIES} plain concurrent docker pulls: unique-layer downloads",
                "",
                counted["plain_layers"],
            ),
        ]
    return figures


def _delete_from_registry(registry: str, tag: str) -> None:
    """Remove the run's tag from the registry again (its blobs stay until garbage collection)."""
    with httpx.Client(trust_env=False, timeout=10) as http:
        head = http.head(
            f"http://{registry}/v2/{REPOSITORY}/manifests/{tag}", headers={"Accept": MANIFEST_V2}
        )
        digest = head.headers.get("Docker-Content-Digest")
        if head.status_code == 200 and digest:
            http.delete(f"http://{registry}/v2/{REPOSITORY}/manifests/{digest}")
