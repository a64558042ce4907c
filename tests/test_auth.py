"""Who may change things: the token, and the networks trusted without it."""

from __future__ import annotations

import ipaddress

import pytest
from starlette.requests import Request

from byoc_orch.auth import Guard
from byoc_orch.settings import SettingsError, load_settings, require_token_off_loopback


def request(method: str, client: str, authorization: str | None = None) -> Request:
    headers = [(b"authorization", authorization.encode())] if authorization else []
    return Request(
        {
            "type": "http",
            "method": method,
            "path": "/proxy/x/stream/start",
            "headers": headers,
            "client": (client, 40000),
        }
    )


def test_reads_are_open_and_writes_need_the_token() -> None:
    guard = Guard("s3cret")
    assert guard.denied(request("GET", "192.0.2.9")) is None
    refused = guard.denied(request("POST", "192.0.2.9"))
    assert refused is not None and refused.status_code == 401
    assert b"s3cret" not in bytes(refused.body)
    assert guard.denied(request("POST", "192.0.2.9", "Bearer wrong")) is not None
    assert guard.denied(request("POST", "192.0.2.9", "Bearer s3cret")) is None


def test_trusted_networks_need_no_token_and_others_still_do() -> None:
    guard = Guard("s3cret", [ipaddress.ip_network("10.0.0.0/24")])
    assert guard.denied(request("POST", "10.0.0.7")) is None
    assert guard.denied(request("POST", "10.0.1.7")) is not None
    assert guard.denied(request("POST", "not-an-ip")) is not None


def test_without_a_token_everything_is_open() -> None:
    assert Guard(None).denied(request("POST", "192.0.2.9")) is None


def test_trusted_networks_let_a_non_loopback_bind_start_without_a_token() -> None:
    with pytest.raises(SettingsError, match="TRUSTED_NETWORKS"):
        require_token_off_loopback(load_settings(host="10.0.0.2"))
    settings = load_settings(host="10.0.0.2", trusted_networks="10.0.0.5, 192.168.0.0/16")
    require_token_off_loopback(settings)
    assert [str(n) for n in settings.trusted] == ["10.0.0.5/32", "192.168.0.0/16"]


def test_a_bad_network_is_named_with_the_fix() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(trusted_networks="10.0.0.0/24, office")
    assert "BYOC_ORCH_TRUSTED_NETWORKS" in str(caught.value)
    assert "'office' is not a network" in str(caught.value)
