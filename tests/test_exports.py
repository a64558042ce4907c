"""`byoc-orch export`: runners.json as go-livepeer would load it, aiModels.json as it parses."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from byoc_orch import exports
from byoc_orch.advertisers.live_runner import (
    PIXELS_PER_720P_HOUR,
    WorkerStatus,
    live_runner_router,
)
from byoc_orch.aimodels import load_models, parse_models
from byoc_orch.capabilities import Capability
from byoc_orch.offer import Offer
from byoc_orch.settings import Settings
from byoc_orch.worker_state import State
from tests.conftest import free_port
from tests.fake_livepeer import check_static_runner_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "aiModels.example.json"
PUBLIC = "http://10.1.2.3:9935"


@contextmanager
def fake_daemon(payload: Any, status: int = 200) -> Iterator[int]:
    """A stand-in for the daemon's API answering GET /capabilities; yields its port."""
    body = json.dumps(payload).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = status if self.path == "/capabilities" else 404
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def warm_listing() -> list[dict[str, Any]]:
    """What GET /capabilities serves for two warm workers (with byoc-orch-only extras)."""
    caps = [
        Capability(
            "w1", "live-video-to-video", "comfyui", f"{PUBLIC}/proxy/w1", 1, Offer(Fraction(1200))
        ),
        Capability(
            "w2",
            "live-video-to-video",
            "streamdiffusion",
            f"{PUBLIC}/proxy/w2",
            4,
            Offer(Fraction(1, 4), Fraction(100_000_000), "USD", "0xgateway"),
            in_use=2,
        ),
    ]
    return [c.as_aimodels_entry(with_free=True) for c in caps]


# --------------------------------------------------------------------------- live runners


def test_live_runners_load_as_go_livepeer_loads_them() -> None:
    models = load_models(EXAMPLE)
    document = exports.live_runners(models, Settings(public_url=PUBLIC))
    entries = check_static_runner_config(exports.render(document).encode(), onchain=False)
    assert len(entries) == len(models.entries)
    for entry, model in zip(entries, models.entries, strict=True):
        worker_id = model.worker_id
        assert entry["label"] == worker_id
        assert entry["routing"] == "label"
        assert entry["runner_url"] == f"{PUBLIC}/proxy/{worker_id}"
        assert entry["health_url"] == f"{PUBLIC}/live-runner/{worker_id}/health"
        assert entry["healthy_status_code"] == 200
        assert entry["app"] == f"{model.pipeline}/{model.model_id}"
        assert entry["mode"] == "persistent"
        assert entry["capacity"] == model.capacity
    by_app = {e["app"]: e for e in entries}
    assert by_app["text-to-image/stabilityai/sd-turbo"]["gpu"] == {"id": "1"}
    price = by_app["live-video-to-video/streamdiffusion"]["price_info"]
    assert (price["currency"], price["unit"]) == ("usd", "720p")
    per_pixel = Fraction(price["price"]) / PIXELS_PER_720P_HOUR
    assert per_pixel == Fraction(1, 4) / 100_000_000
    assert "price_info" not in by_app["live-video-to-video/comfyui"]


def test_every_replica_is_a_runner_with_its_own_url_and_gpu() -> None:
    entry = {
        "pipeline": "live-video-to-video",
        "model_id": "many",
        "container": "livepeer/comfystream:latest",
        "url": "http://127.0.0.1:8100",
        "replicas": 3,
    }
    models = parse_models(json.dumps([entry]), source="t", gpu_pool=("0", "1", "2"))
    document = exports.live_runners(models, Settings(public_url=PUBLIC))
    runners = check_static_runner_config(exports.render(document).encode(), onchain=False)
    labels = [r["label"] for r in runners]
    assert labels == [f"{models.entries[0].worker_id}-r{i}" for i in range(3)]
    assert [r["runner_url"] for r in runners] == [f"{PUBLIC}/proxy/{label}" for label in labels]
    assert [r["health_url"] for r in runners] == [
        f"{PUBLIC}/live-runner/{label}/health" for label in labels
    ]
    assert {r["app"] for r in runners} == {"live-video-to-video/many"}
    assert [r["gpu"] for r in runners] == [{"id": "0"}, {"id": "1"}, {"id": "2"}]
    assert [r["capacity"] for r in runners] == [1, 1, 1]


def test_on_chain_needs_usd_prices() -> None:
    models = load_models(EXAMPLE)
    text = exports.render(exports.live_runners(models, Settings(public_url=PUBLIC))).encode()
    with pytest.raises(ValueError, match=r"runners\[0\]: price_info.price is required"):
        check_static_runner_config(text, onchain=True)
    priced = parse_models(
        json.dumps(
            [
                {
                    "pipeline": "live-video-to-video",
                    "model_id": "m",
                    "url": "http://10.0.0.1:9000",
                    "price_per_unit": 3,
                    "pixels_per_unit": 1_000_000_000,
                    "currency": "usd",
                }
            ]
        ),
        source="t",
    )
    text = exports.render(exports.live_runners(priced, Settings(public_url=PUBLIC))).encode()
    (entry,) = check_static_runner_config(text, onchain=True)
    assert entry["price_info"]["price"] == "298.5984"


def test_live_runners_fall_back_to_host_and_port_and_warn() -> None:
    settings = Settings(host="0.0.0.0", port=9999, api_token="tok-Qm3")
    assert settings.public_base_url == "http://127.0.0.1:9999"
    warnings = exports.live_runner_warnings(settings)
    assert any("BYOC_ORCH_PUBLIC_URL" in w for w in warnings)
    assert any("401" in w for w in warnings)
    assert all("tok-Qm3" not in w for w in warnings)
    assert Settings(host="::", port=1).local_api_url == "http://[::1]:1"


async def test_the_exported_health_urls_are_served_by_the_router() -> None:
    models = load_models(EXAMPLE)
    entries = exports.live_runners(models, Settings(public_url=PUBLIC))["runners"]
    states = {models.entries[0].worker_id: WorkerStatus(State.WARM, None)}
    app = FastAPI()
    app.include_router(live_runner_router(states.get))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        warm = await client.get(entries[0]["health_url"])
        unknown = await client.get(entries[1]["health_url"])
    assert warm.status_code == 200
    assert unknown.status_code == 404


# --------------------------------------------------------------------------- aimodels


def test_aimodels_export_parses_as_external_entries() -> None:
    with fake_daemon(warm_listing()) as port:
        entries = exports.fetch_warm_aimodels(Settings(port=port))
    assert [set(e) - set(exports.AIMODELS_KEYS) for e in entries] == [set(), set()]
    assert entries[1] == {
        "pipeline": "live-video-to-video",
        "model_id": "streamdiffusion",
        "url": f"{PUBLIC}/proxy/w2",
        "warm": True,
        "capacity": 4,
        "gateway": "0xgateway",
        "price_per_unit": 0.25,
        "pixels_per_unit": 100_000_000,
        "currency": "USD",
    }
    models = exports.check_aimodels(entries)
    assert models.warnings == []
    assert [m.managed for m in models.entries] == [False, False]
    assert [m.url for m in models.entries] == [f"{PUBLIC}/proxy/w1", f"{PUBLIC}/proxy/w2"]
    assert all(m.token is None for m in models.entries)


def test_aimodels_token_only_when_asked() -> None:
    with fake_daemon(warm_listing()) as port:
        settings = Settings(port=port, api_token="tok-Qm3")
        plain = exports.fetch_warm_aimodels(settings)
        with_token = exports.fetch_warm_aimodels(settings, include_token=True)
    assert "tok-Qm3" not in json.dumps(plain)
    assert [e["token"] for e in with_token] == ["tok-Qm3", "tok-Qm3"]
    models = exports.check_aimodels(with_token)
    assert models.entries[0].token is not None
    assert models.entries[0].token.get_secret_value() == "tok-Qm3"


def test_aimodels_export_without_a_daemon() -> None:
    port = free_port()
    with pytest.raises(exports.DaemonUnreachableError, match=f"127.0.0.1:{port}/capabilities"):
        exports.fetch_warm_aimodels(Settings(port=port), timeout=1)
    with fake_daemon({"not": "a list"}) as port, pytest.raises(exports.DaemonUnreachableError):
        exports.fetch_warm_aimodels(Settings(port=port))
    with fake_daemon([], status=503) as port, pytest.raises(exports.DaemonUnreachableError):
        exports.fetch_warm_aimodels(Settings(port=port))
