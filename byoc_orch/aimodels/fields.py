"""The types of aiModels.json's fields, each checked the way go-livepeer reads it (prices as bare
JSON numbers, flags as strings or booleans) or Docker takes it (sizes, capabilities), with one
clear message and fix per wrong shape instead of one per member of a union. No string may hold
a NUL or an unpaired surrogate: no container, path or header can carry one."""

from __future__ import annotations

import difflib
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    SecretStr,
    WithJsonSchema,
)

from byoc_orch.aimodels.limits import (
    CAPABILITIES,
    MAX_CAPACITY,
    MAX_GPU_COUNT,
    MAX_REPLICAS,
    MAX_SIZE_BYTES,
    MIN_MEMORY,
)
from byoc_orch.aimodels.problems import Issue, Loc, invalid
from byoc_orch.aimodels.wording import describe, kind_of, show_bytes
from byoc_orch.image_ref import ImageRefError, parse_image_ref
from byoc_orch.offer import json_number
from byoc_orch.redact import MASK, display_url

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s?([kmgtp])?i?b?", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_GPUS_FIX = 'use "all", a count such as 2, a list of device indexes or UUIDs such as [0], or "none"'
_REPLICAS_FIX = f'use a count from 1 to {MAX_REPLICAS}, or "per-gpu" for one replica per GPU'


def _not_blank(value: str) -> str:
    if not value.strip():
        raise invalid("must not be empty", "give it a value")
    return value


def _secret_not_blank(value: SecretStr) -> SecretStr:
    """A blank token would be sent as "Bearer " and refused by every worker that checks one."""
    if not value.get_secret_value().strip():
        raise invalid(
            "is empty or only whitespace, so the worker would get no usable token",
            'give the worker\'s token, or remove "token" to send none',
        )
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")
_CHARACTER_FIX = {
    "nul": "remove it: a NUL cannot be passed on in a container's environment, command or "
    "mounts, nor in an HTTP header",
    "surrogate": "write the character itself, or a complete \\uXXXX\\uXXXX surrogate pair",
}


def bad_text(text: str) -> tuple[str, str] | None:
    """What is wrong with a string no container, path or header can carry, and its fix."""
    if "\0" in text:
        return "contains a NUL character (\\u0000)", _CHARACTER_FIX["nul"]
    surrogate = _SURROGATE.search(text)
    if surrogate is not None:
        code = f"\\u{ord(surrogate.group()):04x}"
        return (
            f"contains an unpaired surrogate ({code}), which is not a character",
            _CHARACTER_FIX["surrogate"],
        )
    return None


def bad_characters(value: object) -> Iterator[Issue]:
    """Every string in ``value``, keys included, that holds a NUL or an unpaired surrogate."""
    stack: list[tuple[Loc, object]] = [((), value)]
    while stack:
        loc, item = stack.pop()
        if isinstance(item, str):
            found = bad_text(item)
            if found is not None:
                yield Issue(loc, *found)
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                stack.append(((*loc, key), child))
            for key in item:
                found = bad_text(key) if isinstance(key, str) else None
                if found is not None:
                    yield Issue((*loc, key), f"the key {found[0]}", found[1])
        elif isinstance(item, list | tuple):
            stack.extend(((*loc, index), child) for index, child in reversed(list(enumerate(item))))


def _rational(value: object) -> Fraction:
    """Read a number the way go-livepeer's JSONRat does: a bare JSON number, never a string."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(
            f"expected a JSON number, got {describe(value)}",
            "write a bare number such as 0.5 or 1200; go-livepeer's JSONRat refuses quoted "
            "values, so it would reject the whole file",
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise invalid(f"{value} is not a finite number", "write a finite number such as 0.5")
    return Fraction(str(value)) if isinstance(value, float) else Fraction(value)


def _non_negative(value: Fraction) -> Fraction:
    if value < 0:
        raise invalid(f"must not be negative, got {value}", "use 0 or a positive price")
    return value


def _positive_integer(value: Fraction) -> Fraction:
    if value.denominator != 1 or value <= 0:
        raise invalid(
            f"must be a positive whole number, got {_show_number(value)}",
            "use a positive integer such as 1; go-livepeer refuses anything else",
        )
    return value


def _show_number(value: Fraction) -> str:
    try:
        return f"{float(value):g}"
    except OverflowError:
        return str(value)


# The number check sits outside the Optional because JSONRat refuses null as well.
Price = Annotated[
    Annotated[Fraction, AfterValidator(_non_negative), PlainSerializer(json_number)] | None,
    BeforeValidator(_rational),
    WithJsonSchema({"type": "number", "minimum": 0}),
]
PixelsPerUnit = Annotated[
    Annotated[Fraction, AfterValidator(_positive_integer), PlainSerializer(json_number)] | None,
    BeforeValidator(_rational),
    WithJsonSchema({"type": "integer", "minimum": 1}),
]


def _flag_value(value: object) -> object:
    """go-livepeer's EnvValue takes a string or a boolean; a number makes it reject the file.

    The value is not echoed: flags, like env, may hold secrets.
    """
    if isinstance(value, str | bool):
        return value
    quote = "put the value in double quotes" if isinstance(value, int | float) else "use a string"
    raise invalid(
        f"expected a string or true/false, got {kind_of(value)}",
        f"{quote}; go-livepeer reads flags only as strings or booleans",
    )


FlagValue = Annotated[str | bool, BeforeValidator(_flag_value)]


def _env_names(mapping: dict[str, Any]) -> dict[str, Any]:
    bad = [json.dumps(name) for name in mapping if not _ENV_NAME.fullmatch(name)]
    if bad:
        raise invalid(
            f"not valid environment variable names: {', '.join(bad)}",
            "use letters, digits and '_', not starting with a digit (e.g. MY_FLAG)",
        )
    return mapping


def _check_url(value: str) -> str:
    fix = 'write a full address such as "http://127.0.0.1:8001"'
    shown = json.dumps(display_url(value, mask=MASK))
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise invalid(f"{shown} is not a valid URL ({exc})", fix) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid(f"{shown} is not an http:// or https:// URL with a host", fix)
    if port == 0:
        raise invalid(f"{shown} has port 0", "use a port between 1 and 65535")
    return value


def _check_image(value: str) -> str:
    try:
        parse_image_ref(value)
    except ImageRefError as exc:
        raise invalid(
            f"invalid image reference: {exc}",
            'write it as docker pull takes it, e.g. "livepeer/comfystream:latest"',
        ) from None
    return value


def _check_gpus(value: object) -> object:
    """One clear error for every wrong shape, instead of one per member of the union."""
    if value in ("all", "none"):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if 1 <= value <= MAX_GPU_COUNT:
            return value
        if value > MAX_GPU_COUNT:
            raise invalid(
                f"a GPU count must be at most {MAX_GPU_COUNT}, got {describe(value)}",
                "use the number of GPUs each container needs, e.g. 1",
            )
        fix = 'use "none" for no GPUs' if value == 0 else _GPUS_FIX
        raise invalid(f"a GPU count must be at least 1, got {value}", fix)
    if isinstance(value, list):
        return _check_gpu_list(value)
    fix = _GPUS_FIX
    if isinstance(value, str) and re.fullmatch(r"\d+(\s*,\s*\d+)+", value):
        devices = ", ".join(part.strip() for part in value.split(","))
        fix = f"write the devices as a JSON list: [{devices}]"
    elif isinstance(value, str) and value.isdigit():
        fix = f"write the count without quotes: {value}, or the device as a list: [{value}]"
    raise invalid(f"unknown gpus value {describe(value)}", fix)


def _check_gpu_list(devices: list[object]) -> list[object]:
    if not devices:
        raise invalid("the device list is empty", 'use "none" for no GPUs, or list devices')
    for device in devices:
        is_index = (
            isinstance(device, int) and not isinstance(device, bool) and 0 <= device < MAX_GPU_COUNT
        )
        is_uuid = isinstance(device, str) and bool(device) and not re.search(r"[\s,]", device)
        if not (is_index or is_uuid):
            raise invalid(
                f"{describe(device)} is not a device index (0, 1, …) or a GPU UUID",
                'list device indexes or UUIDs, e.g. [0, 1] or ["GPU-6f2…"]',
            )
    repeated = [str(d) for d, n in Counter(str(d) for d in devices).items() if n > 1]
    if repeated:
        raise invalid(f"device {repeated[0]} is listed twice", "list each device once")
    return devices


GpuSpec = Annotated[
    Literal["all", "none"]
    | Annotated[int, Field(ge=1, le=MAX_GPU_COUNT)]
    | Annotated[list[Annotated[int, Field(ge=0, lt=MAX_GPU_COUNT)] | str], Field(min_length=1)],
    BeforeValidator(_check_gpus),
]


@dataclass(frozen=True, slots=True)
class ReplicaRange:
    """``replicas: {"min": m, "max": n}``: at least m replicas always run (warm and advertised),
    up to n follow demand on the shared GPU pool."""

    min: int
    max: int


_RANGE_FIX = 'write {"min": 1, "max": 4}: min at least 1, max at least min, at most ' + str(
    MAX_REPLICAS
)


def _check_range(value: dict[Any, Any]) -> ReplicaRange:
    unknown = sorted(str(key) for key in value if key not in ("min", "max"))
    if unknown:
        raise invalid(f"unknown key {json.dumps(unknown[0])} in the replica range", _RANGE_FIX)
    bounds: dict[str, int] = {}
    for key in ("min", "max"):
        if key not in value:
            raise invalid(f'the replica range has no "{key}"', _RANGE_FIX, (key,))
        bound = value[key]
        if not isinstance(bound, int) or isinstance(bound, bool):
            raise invalid(
                f"{key} must be a whole number, got {describe(bound)}", _RANGE_FIX, (key,)
            )
        bounds[key] = bound
    low, high = bounds["min"], bounds["max"]
    if low < 1:
        raise invalid(
            f"min must be at least 1, got {low}: the capability must stay warm and advertised",
            'use "min": 1; to stop the entry altogether use "warm": false',
            ("min",),
        )
    if high > MAX_REPLICAS:
        raise invalid(f"max must be at most {MAX_REPLICAS}, got {high}", _RANGE_FIX, ("max",))
    if high < low:
        raise invalid(
            f"max {high} is below min {low}",
            f"raise max to at least {low}, or lower min to {high}",
            ("max",),
        )
    return ReplicaRange(low, high)


def _check_replicas(value: object) -> object:
    """One clear error for every wrong shape, instead of one per member of the union."""
    if value == "per-gpu" or isinstance(value, ReplicaRange):
        return value
    if isinstance(value, dict):
        return _check_range(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if 1 <= value <= MAX_REPLICAS:
            return value
        fix = "use 1 for a single container" if value < 1 else _REPLICAS_FIX
        raise invalid(f"must be from 1 to {MAX_REPLICAS}, got {value}", fix)
    fix = _REPLICAS_FIX + ', or a range {"min": 1, "max": 4} that follows demand'
    if isinstance(value, str) and value.isdigit():
        fix = f"write the count without quotes: {value}"
    elif isinstance(value, str) and re.sub(r"[^a-z]", "", value.lower()) == "pergpu":
        fix = 'write it exactly "per-gpu"'
    raise invalid(f"unknown replicas value {describe(value)}", fix)


_REPLICAS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": MAX_REPLICAS},
        {"const": "per-gpu", "type": "string"},
        {
            "type": "object",
            "properties": {
                "min": {"type": "integer", "minimum": 1, "maximum": MAX_REPLICAS},
                "max": {"type": "integer", "minimum": 1, "maximum": MAX_REPLICAS},
            },
            "required": ["min", "max"],
            "additionalProperties": False,
        },
    ]
}

Replicas = Annotated[
    Annotated[int, Field(ge=1, le=MAX_REPLICAS)] | Literal["per-gpu"] | ReplicaRange,
    BeforeValidator(_check_replicas),
    WithJsonSchema(_REPLICAS_SCHEMA),
]


def _check_volume(value: str) -> str:
    fix = 'write "/host/path:/container/path", optionally ending in ":ro" or ":rw"'
    parts = value.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise invalid(f"{json.dumps(value)} is not host_path:container_path[:ro|:rw]", fix)
    host, target = parts[0], parts[1]
    if not host.startswith("/"):
        raise invalid(
            f"host path {json.dumps(host)} is not absolute (named volumes are not supported)", fix
        )
    if not target.startswith("/"):
        raise invalid(f"container path {json.dumps(target)} is not absolute", fix)
    return value


Volume = Annotated[
    str,
    AfterValidator(_check_volume),
    WithJsonSchema({"type": "string", "pattern": r"^/[^:]*:/[^:]*(:(ro|rw))?$"}),
]


def _parse_size(value: object) -> object:
    """Accept Docker's size strings ("2g", "512m") as well as a byte count."""
    if not isinstance(value, str):
        return value
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise invalid(
            f"{json.dumps(value)} is not a size",
            'use a byte count or a number with a unit, e.g. "512m" or "2g"',
        )
    number = match.group(1)
    if len(number) > 30:
        raise invalid(
            f"the size has {len(number)} digits, far more than any memory",
            'use a byte count or a number with a unit, e.g. "512m" or "2g"',
        )
    unit = match.group(2).lower() if match.group(2) else None
    return int(Fraction(number) * _SIZE_UNITS[unit])


def _size_bounds(value: int, *, minimum: int, why: str) -> int:
    if value < minimum:
        raise invalid(
            f"must be at least {show_bytes(minimum)}{why}, got {show_bytes(value)}",
            f'use {show_bytes(minimum)} or more, e.g. "512m" or "8g"',
        )
    if value > MAX_SIZE_BYTES:
        raise invalid(
            f"must be at most {show_bytes(MAX_SIZE_BYTES)}, got {show_bytes(value)}",
            'use a size this host can give, e.g. "512m" or "8g"',
        )
    return value


_SIZE_PATTERN = r"^\d+(\.\d+)?\s?[kKmMgGtTpP]?[iI]?[bB]?$"

ShmSize = Annotated[
    int,
    BeforeValidator(_parse_size),
    Field(ge=1),
    AfterValidator(partial(_size_bounds, minimum=1, why="")),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_SIZE_BYTES},
                {"type": "string", "pattern": _SIZE_PATTERN},
            ]
        }
    ),
]
Memory = Annotated[
    int,
    BeforeValidator(_parse_size),
    AfterValidator(
        partial(_size_bounds, minimum=MIN_MEMORY, why=" (Docker refuses a smaller limit)")
    ),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": MIN_MEMORY, "maximum": MAX_SIZE_BYTES},
                {"type": "string", "pattern": _SIZE_PATTERN},
            ]
        }
    ),
]


def _check_capabilities(value: object) -> object:
    """Names as Docker takes them: upper case, without CAP_; "cap_net_raw" is NET_RAW."""
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise invalid(
            f"expected an array of capability names, got {describe(value)}",
            'write a list, e.g. ["NET_RAW"]',
        )
    names: list[str] = []
    for position, item in enumerate(value):
        if not isinstance(item, str):
            raise invalid(
                f"expected a capability name, got {describe(item)}",
                'write names such as "NET_RAW"',
                (position,),
            )
        name = item.strip().upper()
        name = name.removeprefix("CAP_")
        if name != "ALL" and name not in CAPABILITIES:
            close = (
                difflib.get_close_matches(name, sorted(CAPABILITIES), n=1, cutoff=0.75)
                if len(name) <= 64
                else []
            )
            hint = f"did you mean {json.dumps(close[0])}? " if close else ""
            raise invalid(
                f"{describe(item)} is not a Linux capability",
                f"{hint}use one of {', '.join(sorted(CAPABILITIES))} (with or without CAP_)",
                (position,),
            )
        if name in names:
            raise invalid(f"{name} is listed twice", "list each capability once", (position,))
        names.append(name)
    return tuple(names)


CapAdd = Annotated[
    tuple[str, ...],
    BeforeValidator(_check_capabilities),
    WithJsonSchema(
        {
            "type": "array",
            "items": {"type": "string", "pattern": "^[A-Za-z_]+$"},
        }
    ),
]


def _check_capacity(value: int) -> int:
    if value > MAX_CAPACITY:
        raise invalid(
            f"must be at most {MAX_CAPACITY}, got {describe(value)}: capacity is the sessions "
            "one container (each replica) serves at once, not a total",
            "use what one container can really serve, e.g. 1; for more sessions, add replicas",
        )
    return value


def _check_health_path(value: str) -> str:
    if not value.startswith("/") or any(ch.isspace() for ch in value):
        raise invalid(f"{json.dumps(value)} must be a path starting with '/'", 'e.g. "/health"')
    return value


NonEmptyStr = Annotated[str, Field(min_length=1), AfterValidator(_not_blank)]
EnvMap = Annotated[dict[str, str], AfterValidator(_env_names)]
FlagMap = Annotated[dict[str, FlagValue], AfterValidator(_env_names)]
Token = Annotated[SecretStr, AfterValidator(_secret_not_blank)]
Url = Annotated[str, AfterValidator(_check_url)]
Image = Annotated[str, AfterValidator(_check_image)]
Capacity = Annotated[int, AfterValidator(_check_capacity)]
HealthPath = Annotated[str, AfterValidator(_check_health_path)]
