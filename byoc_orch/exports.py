"""Files for go-livepeer, printed by `byoc-orch export`.

* `live-runners`: the `-liveRunnerConfig` document for every aiModels.json entry, built from the
  file and the settings alone. go-livepeer polls each entry's readiness URL, so cold entries are
  listed too and become routable once warm. `--format livepeer-node` writes the same runners as
  livepeer/node's `RunnerConfig` TOML (`[[Runners]]` with Go field names, docs/configuration.md
  there), with the `RunnerGrants`/`HealthGrants` its orchestrator config needs for them.
* `aimodels`: the warm entries in go-livepeer's aiModels.json shape with `url` on byoc-orch's
  proxy, read from the running daemon's `GET /capabilities` — only the daemon knows what is warm.

Neither ever contains the orchestrator secret; `aimodels` contains BYOC_ORCH_API_TOKEN only when
asked (`--include-token`), since go-livepeer must then send it as the workers' `token`.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import httpx

from byoc_orch.advertisers.live_runner import runners_document
from byoc_orch.aimodels import GO_LIVEPEER_FIELDS, ModelsFile, parse_models
from byoc_orch.settings import Settings

AIMODELS_KEYS = GO_LIVEPEER_FIELDS


class DaemonUnreachableError(Exception):
    """The running daemon could not be asked; the message says where and why."""


def live_runners(models: ModelsFile, settings: Settings) -> dict[str, Any]:
    return runners_document(models.entries, settings.public_base_url, models.replicas)


NODE_RUNNER_KEYS = (
    ("ID", "label"),
    ("Label", "label"),
    ("RunnerURL", "runner_url"),
    ("App", "app"),
    ("Mode", "mode"),
    ("Capacity", "capacity"),
    ("HealthURL", "health_url"),
    ("HealthCode", "healthy_status_code"),
)
"""livepeer/node's static runner keys and the go-livepeer runners.json field each comes from."""
NODE_GPU_KEYS = (("ID", "id"), ("Name", "name"), ("VRAMMB", "vram_mb"))


def node_runners_toml(document: dict[str, Any], base_url: str) -> str:
    """A go-livepeer runners document as livepeer/node's static runner file.

    livepeer/node routes by runner `ID` (`[A-Za-z0-9_-]`, ≤ 128 bytes; worker ids qualify), takes
    prices only per `hour` or `fixed` — go-livepeer's `720p` unit is USD per hour of 720p at
    30 fps, so the same number is the hour's price of such a stream — and dials a loopback or
    private runner only when its orchestrator config grants that address."""
    address = _host_port(base_url)
    lines = [
        "# livepeer/node static runners, from byoc-orch's aiModels.json (byoc-orch export",
        "# live-runners --format livepeer-node). Load it with RunnerConfig (--runner-config).",
        f'# Its orchestrator config must grant byoc-orch\'s address: RunnerGrants = ["{address}"]',
        f'# and HealthGrants = ["{address}"] (a private or loopback address is refused otherwise).',
        "",
    ]
    for runner in document["runners"]:
        lines.append("[[Runners]]")
        for key, field in NODE_RUNNER_KEYS:
            if field in runner:
                lines.append(f"{key} = {_toml(runner[field])}")
        lines.append('Status = "ready"')
        gpu = runner.get("gpu")
        if gpu:
            lines.append("[Runners.GPU]")
            lines += [f"{key} = {_toml(gpu[f])}" for key, f in NODE_GPU_KEYS if f in gpu]
        price = runner.get("price_info")
        if price:
            lines.append("[Runners.PriceInfo]")
            lines.append(f"Price = {_toml(str(price['price']))}")
            lines.append('Currency = "usd"')
            lines.append('Unit = "hour"')
        lines.append("")
    return "\n".join(lines)


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _toml(value: Any) -> str:
    """A TOML scalar: strings JSON-quoted (a valid TOML basic string), numbers and bools bare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(str(value), ensure_ascii=False)


def unpriced(document: dict[str, Any]) -> list[str]:
    """Runners an on-chain orchestrator refuses: it needs a USD `price_info` for each."""
    apps = sorted({r["app"] for r in document["runners"] if "price_info" not in r})
    if not apps:
        return []
    return [
        f"no USD price for {', '.join(apps)}: an on-chain orchestrator refuses runners without "
        'price_info — give the entry price_per_unit, pixels_per_unit and currency "USD" '
        "(off-chain orchestrators need none)"
    ]


def live_runner_warnings(settings: Settings) -> list[str]:
    """What would stop go-livepeer from using the exported runners."""
    warnings = []
    if settings.public_url is None:
        warnings.append(
            f"BYOC_ORCH_PUBLIC_URL is not set; the runners point at {settings.public_base_url} — "
            "set it to byoc-orch's address as go-livepeer reaches it"
        )
    if (
        settings.api_token is not None
        and settings.api_token.get_secret_value()
        and not settings.trusted
    ):
        warnings.append(
            "BYOC_ORCH_API_TOKEN is set, but go-livepeer's live runner proxy forwards the "
            "client's headers, not a token: session calls through it will get 401 — set "
            "BYOC_ORCH_TRUSTED_NETWORKS to go-livepeer's address, or serve live runners from a "
            "byoc-orch on loopback without a token"
        )
    return warnings


def fetch_warm_aimodels(
    settings: Settings, *, include_token: bool = False, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """The daemon's warm entries, reduced to go-livepeer's aiModels.json fields."""
    url = settings.local_api_url + "/capabilities"
    try:
        response = httpx.get(url, timeout=timeout, trust_env=False)
    except httpx.HTTPError as exc:
        raise DaemonUnreachableError(
            f"cannot reach the byoc-orch daemon at {url} ({type(exc).__name__}: {exc}) — is "
            "`byoc-orch run` running with the same --host/--port (BYOC_ORCH_HOST/PORT)?"
        ) from None
    if response.status_code != 200:
        raise DaemonUnreachableError(
            f"the byoc-orch daemon at {url} answered HTTP {response.status_code}"
        )
    try:
        listed = response.json()
        assert isinstance(listed, list)
    except (ValueError, AssertionError):
        raise DaemonUnreachableError(f"{url} did not answer with a JSON list") from None
    token = settings.api_token.get_secret_value() if settings.api_token is not None else ""
    entries = []
    for item in listed:
        entry = {key: item[key] for key in AIMODELS_KEYS if key in item and key != "token"}
        if include_token and token:
            entry = {**entry, "token": token}
        entries.append(entry)
    return entries


def check_aimodels(entries: list[dict[str, Any]]) -> ModelsFile:
    """Parse the export as byoc-orch (and so go-livepeer) would; ModelsFileError if it fails."""
    return parse_models(json.dumps(entries), source="exported aiModels.json")


def render(document: Any) -> str:
    return json.dumps(document, indent=2) + "\n"
