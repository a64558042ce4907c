"""go-livepeer's request shapes and their validation, for the fake orchestrator: Go's
encoding/json as it fills the structs byoc-orch sends (core.ExternalCapability,
runner.LiveRunnerHeartbeatRequest, runner.StaticLiveRunnerConfig), `normalizeHeartbeat`, and what
go-livepeer checks in a `-liveRunnerConfig` file before registering it."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

INT64 = (-(2**63), 2**63 - 1)
INT = INT64

EXTERNAL_CAPABILITY = {
    "name": "string",
    "description": "string",
    "url": "string",
    "capacity": "int",
    "price_per_unit": "int64",
    "price_scaling": "int64",
    "currency": "string",
    "token": "string",
}
PRICE_INFO = {"price": "number", "currency": "string", "unit": "string"}
GPU = {"id": "string", "name": "string", "vram_mb": "int"}
HEARTBEAT_REQUEST = {
    "runner_id": "string",
    "label": "string",
    "proxy": "bool",
    "runner_url": "string",
    "version": "string",
    "metadata": "string",
    "status": "string",
    "mode": "string",
    "gpu": "gpu",
    "app": "string",
    "capacity": "int",
    "price_info": PRICE_INFO,
    "session_ids": "[]string",
}
STATIC_RUNNER_ENTRY = {
    "label": "string",
    "routing": "string",
    "proxy": "bool",
    "runner_url": "string",
    "version": "string",
    "metadata": "string",
    "mode": "string",
    "gpu": "gpu",
    "app": "string",
    "capacity": "int",
    "price_info": PRICE_INFO,
    "health_url": "string",
    "healthy_status_code": "int",
}
STATIC_RUNNER_CONFIG = {"runners": ("[]", STATIC_RUNNER_ENTRY)}


class GoJSONError(ValueError):
    """What encoding/json would have returned."""


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _reject_constant(token: str) -> Any:
    raise GoJSONError(f"invalid character '{token[0]}' looking for beginning of value")


def go_decode(data: bytes, spec: dict[str, Any], type_name: str, *, strict: bool = False) -> dict:
    """Decode `data` into a struct described by `spec` as Go's json.Unmarshal would: the fields it
    sets, or GoJSONError. `strict` also refuses keys the struct does not have (Go ignores them;
    tests use it to catch misspelt fields)."""
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except GoJSONError:
        raise
    except ValueError as exc:
        raise GoJSONError(f"invalid JSON: {exc}") from None
    return _decode_struct(value, spec, type_name, type_name.rsplit(".", 1)[-1], strict)


def _decode_struct(value: Any, spec: dict, type_name: str, path: str, strict: bool) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GoJSONError(
            f"json: cannot unmarshal {_json_kind(value)} into Go value of type {type_name}"
        )
    out: dict[str, Any] = {}
    first: GoJSONError | None = None
    for key, item in value.items():
        field = key if key in spec else next((f for f in spec if f.lower() == key.lower()), None)
        if field is None:
            if strict:
                first = first or GoJSONError(f"unknown field {key!r} in {path}")
            continue
        try:
            out[field] = _decode_value(item, spec[field], f"{path}.{field}", strict)
        except GoJSONError as exc:
            first = first or exc
    if first is not None:
        raise first
    return out


def _decode_value(value: Any, kind: Any, path: str, strict: bool) -> Any:
    def mismatch(go_type: str) -> GoJSONError:
        shown = _json_kind(value)
        if shown == "number":
            shown = f"number {value}"
        return GoJSONError(
            f"json: cannot unmarshal {shown} into Go struct field {path} of type {go_type}"
        )

    if isinstance(kind, dict):
        return _decode_struct(value, kind, path, path, strict)
    if isinstance(kind, tuple):
        if value is None:
            return []
        if not isinstance(value, list):
            raise mismatch("[]struct")
        return [_decode_value(v, kind[1], path, strict) for v in value]
    if value is None:
        return {"string": "", "int": 0, "int64": 0, "bool": False, "number": ""}.get(kind)
    if kind == "string":
        if not isinstance(value, str):
            raise mismatch("string")
        return value
    if kind in ("int", "int64"):
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not INT64[0] <= value <= INT64[1]
        ):
            raise mismatch(kind)
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise mismatch("bool")
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise mismatch("json.Number")
        text = str(value)
        try:
            float(text)
        except ValueError:
            quoted = json.dumps(json.dumps(value))
            raise GoJSONError(
                f"json: invalid number literal, trying to unmarshal {quoted} into Number"
            ) from None
        return text
    if kind == "[]string":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise mismatch("[]string")
        return value
    if kind == "gpu":
        if isinstance(value, int) and not isinstance(value, bool):
            return {"id": str(value)}
        return _decode_struct(value, GPU, "runner.LiveRunnerGPU", path, strict)
    raise AssertionError(kind)


def _absolute_http(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and bool(parts.hostname)


def normalize_heartbeat(req: dict[str, Any], *, onchain: bool) -> dict[str, Any]:
    """go-livepeer's normalizeHeartbeat: ValueError with its message, or the normalised request."""
    req = dict(req)
    if not _absolute_http(req.get("runner_url", "")):
        raise ValueError("invalid runner_url")
    app = req.get("app", "")
    if not app or app != app.strip():
        raise ValueError("app must be trimmed")
    metadata = req.get("metadata", "")
    if len(metadata.encode()) > 1024:
        raise ValueError("metadata must be at most 1024 bytes")
    status = req.get("status", "")
    if status != status.strip().lower():
        raise ValueError("status must be lowercase and trimmed")
    mode = req.get("mode") or "persistent"
    mode = "single-shot" if mode == "single_shot" else mode
    if mode not in ("persistent", "single-shot"):
        raise ValueError('mode must be "persistent" or "single-shot"')
    req["mode"] = mode
    capacity = req.get("capacity", 0)
    if capacity < 0:
        raise ValueError("capacity must be >= 0")
    req["capacity"] = capacity or 1
    if onchain:
        price = req.get("price_info", {})
        text = str(price.get("price", "")).strip()
        if not text:
            raise ValueError("price_info.price is required")
        try:
            if float(text) <= 0:
                raise ValueError
        except ValueError:
            raise ValueError("price_info.price must be a positive decimal") from None
        if (price.get("currency") or "usd").strip().lower() != "usd":
            raise ValueError("price_info.currency must be usd")
        if (price.get("unit") or "hour").strip().lower() not in ("hour", "720p", "fixed"):
            raise ValueError("price_info.unit must be hour, 720p, or fixed")
    return req


def check_static_runner_config(data: bytes, *, onchain: bool, strict: bool = True) -> list[dict]:
    """What go-livepeer does with a `-liveRunnerConfig` file before registering it
    (ParseStaticLiveRunnerConfig, RegisterStaticRunners, buildStaticRunner): the normalised
    entries, or ValueError/GoJSONError with its message."""
    config = go_decode(data, STATIC_RUNNER_CONFIG, "runner.StaticLiveRunnerConfig", strict=strict)
    entries = config.get("runners", [])
    labels: set[str] = set()
    for i, entry in enumerate(entries):
        routing = (entry.get("routing") or "").strip() or "runner-id"
        if routing not in ("runner-id", "label"):
            raise ValueError(f'runners[{i}]: routing must be "runner-id" or "label"')
        entry["routing"] = routing
        entry["healthy_status_code"] = entry.get("healthy_status_code") or 200
        health = entry.get("health_url", "")
        if health.startswith("/") and not health.startswith("//"):
            if not _absolute_http(entry.get("runner_url", "")):
                raise ValueError(f"runners[{i}]: invalid runner_url")
            health = entry["runner_url"].rstrip("/") + health
        entry["health_url"] = health
        label = entry.get("label", "")
        try:
            if not label or label != label.strip():
                raise ValueError("label is required and must be trimmed")
            if not health:
                raise ValueError("health_url is required")
            if not _absolute_http(health):
                raise ValueError("invalid health_url")
            if not 100 <= entry["healthy_status_code"] <= 599:
                raise ValueError("healthy_status_code must be a valid HTTP status code")
            normalize_heartbeat(entry, onchain=onchain)
        except ValueError as exc:
            raise ValueError(f"runners[{i}]: {exc}") from None
        if label in labels:
            raise ValueError(f"runners[{i}]: duplicate label {label!r}")
        if routing == "label" and "/" in label:
            raise ValueError(f'runners[{i}]: label cannot contain / when routing is "label"')
        labels.add(label)
    return entries
