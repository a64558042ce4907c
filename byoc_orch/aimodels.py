"""aiModels.json: the model of one entry, loading the file, and every check on it.

The same file feeds go-livepeer (core/ai.go ``AIModelConfig``), so its fields are accepted
unchanged and typed the way Go's ``json.Unmarshal`` reads them: anything byoc-orch accepts,
go-livepeer accepts too. byoc-orch's own fields are ones go-livepeer ignores. Loading never
stops at the first mistake: every problem is reported with the entry index (as ``jq '.[N]'``
counts), its model_id, the field and the fix, because an operator fixing a file one error per
restart is the failure this module exists to prevent.

Loading is total: whatever the file holds (a FIFO, 20 MiB, nesting a thousand deep, a
5,000-digit number, NUL bytes, unpaired surrogates), `load_models` and `parse_models` return or
raise ModelsFileError, within the MAX_* bounds below, and no message carries a NUL, a token or
a url's password. Volume host paths are checked as this host resolves them (symlinks, '..',
'//'), so a link to the Docker socket is the Docker socket.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import posixpath
import re
import stat
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, Self
from urllib.parse import SplitResult, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from byoc_orch.image_ref import ImageRef, ImageRefError, parse_image_ref
from byoc_orch.offer import Offer, json_number
from byoc_orch.redact import MASK, display_url

if TYPE_CHECKING:
    from byoc_orch.gpu import GpuInfo
    from byoc_orch.placement import GpuPool, ReplicaSlot

__all__ = [
    "CAPABILITIES",
    "DEFAULT_CONTAINER_PORT",
    "DROPPED_CAPABILITIES",
    "GO_LIVEPEER_FIELDS",
    "GpuRequest",
    "ModelEntry",
    "ModelsFile",
    "ModelsFileError",
    "Problem",
    "UnreadableModelsFileError",
    "load_models",
    "loopback_port",
    "parse_models",
    "redact_url",
    "worker_id",
]

DEFAULT_CONTAINER_PORT = 8000
# go-livepeer's AIModelConfig fields (core/ai.go), in its order.
GO_LIVEPEER_FIELDS = (
    "pipeline",
    "model_id",
    "url",
    "token",
    "warm",
    "capacity",
    "optimization_flags",
    "gateway",
    "price_per_unit",
    "pixels_per_unit",
    "currency",
)
# Fields that only mean something when byoc-orch runs the container itself.
CONTAINER_ONLY_FIELDS = frozenset(
    {
        "optimization_flags",
        "container_port",
        "gpus",
        "env",
        "command",
        "volumes",
        "shm_size",
        "pull",
        "allow_host_access",
        "privileged",
        "network_mode",
        "pid_mode",
        "replicas",
        "replicas_per_gpu",
        "cap_add",
        "memory",
        "cpus",
    }
)
ENV_SET_BY_BYOC_ORCH = ("PIPELINE", "MODEL_ID")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost"})
_EXTERNAL_LOOPBACK_HOSTS = LOOPBACK_HOSTS | {"::1"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s?([kmgtp])?i?b?", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_NO_PORTS: Mapping[int, str] = MappingProxyType({})
_GPUS_FIX = 'use "all", a count such as 2, a list of device indexes or UUIDs such as [0], or "none"'
MAX_REPLICAS = 64
MAX_REPLICAS_PER_GPU = 16
MAX_PORT = 65535
# Bounds on what one file may hold, so no input can exhaust the parser or the host.
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_JSON_DEPTH = 64
MAX_NUMBER_CHARS = 100
MAX_ENTRIES = 1024
MAX_VOLUMES = 256
# Bounds on numbers that have no natural limit; each is far past any real use.
MAX_CAPACITY = 10_000
MAX_GPU_COUNT = 1024
MAX_STARTUP_TIMEOUT = 7 * 24 * 3600
MIN_MEMORY = 6 * 1024 * 1024  # Docker refuses a memory limit below 6 MiB.
MAX_SIZE_BYTES = 1 << 44  # 16 TiB, for shm_size and memory.
MAX_CPUS = 1024
# Linux capabilities (capabilities(7)), as Docker names them: without the CAP_ prefix.
CAPABILITIES = frozenset(
    {
        "AUDIT_CONTROL",
        "AUDIT_READ",
        "AUDIT_WRITE",
        "BLOCK_SUSPEND",
        "BPF",
        "CHECKPOINT_RESTORE",
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "IPC_LOCK",
        "IPC_OWNER",
        "KILL",
        "LEASE",
        "LINUX_IMMUTABLE",
        "MAC_ADMIN",
        "MAC_OVERRIDE",
        "MKNOD",
        "NET_ADMIN",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_RAW",
        "PERFMON",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYSLOG",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_CHROOT",
        "SYS_MODULE",
        "SYS_NICE",
        "SYS_PACCT",
        "SYS_PTRACE",
        "SYS_RAWIO",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "WAKE_ALARM",
    }
)
# Docker's default capabilities that byoc-orch drops; cap_add may give these back freely.
DROPPED_CAPABILITIES = ("NET_RAW", "MKNOD", "SYS_CHROOT", "AUDIT_WRITE")
_REPLICAS_FIX = f'use a count from 1 to {MAX_REPLICAS}, or "per-gpu" for one replica per GPU'
_HOST_ACCESS_FIX = (
    'set "allow_host_access": true on this entry if you trust the image with the host, or remove it'
)


redact_url = partial(display_url, mask=MASK)
"""`display_url` as validate and aiModels.json problems show a url: ``***@`` for credentials."""


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong (or suspicious) in aiModels.json, addressed the way an operator looks."""

    entry_index: int | None
    model_id: str | None
    field: str | None
    message: str
    fix: str
    source: str | None = None

    def __str__(self) -> str:
        if self.entry_index is None:
            head = self.source or "aiModels.json"
        elif self.model_id:
            head = f"entry {self.entry_index} ({self.model_id})"
        else:
            head = f"entry {self.entry_index}"
        text = ": ".join(part for part in (head, self.field, self.message) if part)
        return f"{text} — {self.fix}" if self.fix else text


class ModelsFileError(ValueError):
    """aiModels.json cannot be used; ``problems`` lists every reason, ``warnings`` the rest."""

    def __init__(self, problems: list[Problem], warnings: list[Problem] | None = None) -> None:
        self.problems = problems
        self.warnings = warnings or []
        super().__init__("\n".join(str(problem) for problem in problems))


class UnreadableModelsFileError(ModelsFileError):
    """The file could not be read at all (missing, a directory, no permission)."""


Loc = tuple[str | int, ...]


class _Issue(NamedTuple):
    """A problem inside one entry, before the entry's index and model_id are attached."""

    loc: Loc
    message: str
    fix: str


def _invalid(message: str, fix: str, at: Loc = ()) -> PydanticCustomError:
    """A validation error that carries its fix, so the loader can report both; ``at`` is where
    inside the field's value the problem is (a list position, a key)."""
    return PydanticCustomError("byoc_orch", "{message}", {"message": message, "fix": fix, "at": at})


# --------------------------------------------------------------------------- field types


def _json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case dict():
            return "object"
    return type(value).__name__


def _kind(value: object) -> str:
    """The value's JSON type with its article, for when the value itself must not show."""
    kind = _json_type(value)
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _describe(value: object) -> str:
    """A value as the operator wrote it, short enough for one line."""
    kind = _json_type(value)
    if isinstance(value, dict | list):
        return _kind(value)
    text = json.dumps(value)
    if len(text) > 40:
        text = text[:37] + "…"
    return f"{kind} {text}" if value is not None else "null"


def _not_blank(value: str) -> str:
    if not value.strip():
        raise _invalid("must not be empty", "give it a value")
    return value


def _secret_not_blank(value: SecretStr) -> SecretStr:
    """A blank token would be sent as "Bearer " and refused by every worker that checks one."""
    if not value.get_secret_value().strip():
        raise _invalid(
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


def _bad_text(text: str) -> tuple[str, str] | None:
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


def _bad_characters(value: object) -> Iterator[_Issue]:
    """Every string in ``value``, keys included, that holds a NUL or an unpaired surrogate."""
    stack: list[tuple[Loc, object]] = [((), value)]
    while stack:
        loc, item = stack.pop()
        if isinstance(item, str):
            found = _bad_text(item)
            if found is not None:
                yield _Issue(loc, *found)
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                stack.append(((*loc, key), child))
            for key in item:
                found = _bad_text(key) if isinstance(key, str) else None
                if found is not None:
                    yield _Issue((*loc, key), f"the key {found[0]}", found[1])
        elif isinstance(item, list | tuple):
            stack.extend(((*loc, index), child) for index, child in reversed(list(enumerate(item))))


def _rational(value: object) -> Fraction:
    """Read a number the way go-livepeer's JSONRat does: a bare JSON number, never a string."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(
            f"expected a JSON number, got {_describe(value)}",
            "write a bare number such as 0.5 or 1200; go-livepeer's JSONRat refuses quoted "
            "values, so it would reject the whole file",
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise _invalid(f"{value} is not a finite number", "write a finite number such as 0.5")
    return Fraction(str(value)) if isinstance(value, float) else Fraction(value)


def _non_negative(value: Fraction) -> Fraction:
    if value < 0:
        raise _invalid(f"must not be negative, got {value}", "use 0 or a positive price")
    return value


def _positive_integer(value: Fraction) -> Fraction:
    if value.denominator != 1 or value <= 0:
        raise _invalid(
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
    raise _invalid(
        f"expected a string or true/false, got {_kind(value)}",
        f"{quote}; go-livepeer reads flags only as strings or booleans",
    )


FlagValue = Annotated[str | bool, BeforeValidator(_flag_value)]


def _env_names(mapping: dict[str, Any]) -> dict[str, Any]:
    bad = [json.dumps(name) for name in mapping if not _ENV_NAME.fullmatch(name)]
    if bad:
        raise _invalid(
            f"not valid environment variable names: {', '.join(bad)}",
            "use letters, digits and '_', not starting with a digit (e.g. MY_FLAG)",
        )
    return mapping


def _check_url(value: str) -> str:
    fix = 'write a full address such as "http://127.0.0.1:8001"'
    shown = json.dumps(redact_url(value))
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise _invalid(f"{shown} is not a valid URL ({exc})", fix) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid(f"{shown} is not an http:// or https:// URL with a host", fix)
    if port == 0:
        raise _invalid(f"{shown} has port 0", "use a port between 1 and 65535")
    return value


def _check_image(value: str) -> str:
    try:
        parse_image_ref(value)
    except ImageRefError as exc:
        raise _invalid(
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
            raise _invalid(
                f"a GPU count must be at most {MAX_GPU_COUNT}, got {_describe(value)}",
                "use the number of GPUs each container needs, e.g. 1",
            )
        fix = 'use "none" for no GPUs' if value == 0 else _GPUS_FIX
        raise _invalid(f"a GPU count must be at least 1, got {value}", fix)
    if isinstance(value, list):
        return _check_gpu_list(value)
    fix = _GPUS_FIX
    if isinstance(value, str) and re.fullmatch(r"\d+(\s*,\s*\d+)+", value):
        devices = ", ".join(part.strip() for part in value.split(","))
        fix = f"write the devices as a JSON list: [{devices}]"
    elif isinstance(value, str) and value.isdigit():
        fix = f"write the count without quotes: {value}, or the device as a list: [{value}]"
    raise _invalid(f"unknown gpus value {_describe(value)}", fix)


def _check_gpu_list(devices: list[object]) -> list[object]:
    if not devices:
        raise _invalid("the device list is empty", 'use "none" for no GPUs, or list devices')
    for device in devices:
        is_index = (
            isinstance(device, int) and not isinstance(device, bool) and 0 <= device < MAX_GPU_COUNT
        )
        is_uuid = isinstance(device, str) and bool(device) and not re.search(r"[\s,]", device)
        if not (is_index or is_uuid):
            raise _invalid(
                f"{_describe(device)} is not a device index (0, 1, …) or a GPU UUID",
                'list device indexes or UUIDs, e.g. [0, 1] or ["GPU-6f2…"]',
            )
    repeated = [str(d) for d, n in Counter(str(d) for d in devices).items() if n > 1]
    if repeated:
        raise _invalid(f"device {repeated[0]} is listed twice", "list each device once")
    return devices


GpuSpec = Annotated[
    Literal["all", "none"]
    | Annotated[int, Field(ge=1, le=MAX_GPU_COUNT)]
    | Annotated[list[Annotated[int, Field(ge=0, lt=MAX_GPU_COUNT)] | str], Field(min_length=1)],
    BeforeValidator(_check_gpus),
]


def _check_replicas(value: object) -> object:
    """One clear error for every wrong shape, instead of one per member of the union."""
    if value == "per-gpu":
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if 1 <= value <= MAX_REPLICAS:
            return value
        fix = "use 1 for a single container" if value < 1 else _REPLICAS_FIX
        raise _invalid(f"must be from 1 to {MAX_REPLICAS}, got {value}", fix)
    fix = _REPLICAS_FIX
    if isinstance(value, str) and value.isdigit():
        fix = f"write the count without quotes: {value}"
    elif isinstance(value, str) and re.sub(r"[^a-z]", "", value.lower()) == "pergpu":
        fix = 'write it exactly "per-gpu"'
    raise _invalid(f"unknown replicas value {_describe(value)}", fix)


Replicas = Annotated[
    Annotated[int, Field(ge=1, le=MAX_REPLICAS)] | Literal["per-gpu"],
    BeforeValidator(_check_replicas),
]


def _check_volume(value: str) -> str:
    fix = 'write "/host/path:/container/path", optionally ending in ":ro" or ":rw"'
    parts = value.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise _invalid(f"{json.dumps(value)} is not host_path:container_path[:ro|:rw]", fix)
    host, target = parts[0], parts[1]
    if not host.startswith("/"):
        raise _invalid(
            f"host path {json.dumps(host)} is not absolute (named volumes are not supported)", fix
        )
    if not target.startswith("/"):
        raise _invalid(f"container path {json.dumps(target)} is not absolute", fix)
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
        raise _invalid(
            f"{json.dumps(value)} is not a size",
            'use a byte count or a number with a unit, e.g. "512m" or "2g"',
        )
    number = match.group(1)
    if len(number) > 30:
        raise _invalid(
            f"the size has {len(number)} digits, far more than any memory",
            'use a byte count or a number with a unit, e.g. "512m" or "2g"',
        )
    unit = match.group(2).lower() if match.group(2) else None
    return int(Fraction(number) * _SIZE_UNITS[unit])


def _show_bytes(size: int) -> str:
    for unit, name in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if size >= unit:
            return f"{size / unit:.4g} {name}"
    return f"{size} bytes"


def _size_bounds(value: int, *, minimum: int, why: str) -> int:
    if value < minimum:
        raise _invalid(
            f"must be at least {_show_bytes(minimum)}{why}, got {_show_bytes(value)}",
            f'use {_show_bytes(minimum)} or more, e.g. "512m" or "8g"',
        )
    if value > MAX_SIZE_BYTES:
        raise _invalid(
            f"must be at most {_show_bytes(MAX_SIZE_BYTES)}, got {_show_bytes(value)}",
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
        raise _invalid(
            f"expected an array of capability names, got {_describe(value)}",
            'write a list, e.g. ["NET_RAW"]',
        )
    names: list[str] = []
    for position, item in enumerate(value):
        if not isinstance(item, str):
            raise _invalid(
                f"expected a capability name, got {_describe(item)}",
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
            raise _invalid(
                f"{_describe(item)} is not a Linux capability",
                f"{hint}use one of {', '.join(sorted(CAPABILITIES))} (with or without CAP_)",
                (position,),
            )
        if name in names:
            raise _invalid(f"{name} is listed twice", "list each capability once", (position,))
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
        raise _invalid(
            f"must be at most {MAX_CAPACITY}, got {_describe(value)}: capacity is the sessions "
            "one container (each replica) serves at once, not a total",
            "use what one container can really serve, e.g. 1; for more sessions, add replicas",
        )
    return value


def _check_health_path(value: str) -> str:
    if not value.startswith("/") or any(ch.isspace() for ch in value):
        raise _invalid(f"{json.dumps(value)} must be a path starting with '/'", 'e.g. "/health"')
    return value


NonEmptyStr = Annotated[str, Field(min_length=1), AfterValidator(_not_blank)]
EnvMap = Annotated[dict[str, str], AfterValidator(_env_names)]
FlagMap = Annotated[dict[str, FlagValue], AfterValidator(_env_names)]


# --------------------------------------------------------------------------- the entry


@dataclass(frozen=True, slots=True)
class GpuRequest:
    """What to ask Docker for: ``count`` (-1 = all) or specific ``device_ids``."""

    count: int | None
    device_ids: tuple[str, ...] = ()

    @property
    def shown(self) -> str | int | list[str]:
        """As aiModels.json writes it: "all", a count, or the device list."""
        if self.device_ids:
            return list(self.device_ids)
        return "all" if self.count in (None, -1) else int(self.count or 0)


def worker_id(pipeline: str, model_id: str) -> str:
    """A stable, URL-safe id that is also a valid Docker container-name fragment.

    The readable slug can collide ("a/b" and "a-b"), so a hash of the exact pair follows it.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", f"{pipeline}-{model_id}".lower()).strip("-")
    slug = slug[:40].rstrip("-")
    digest = hashlib.sha256(f"{pipeline}/{model_id}".encode()).hexdigest()[:8]
    return f"{slug}-{digest}" if slug else digest


class ModelEntry(BaseModel):
    """One aiModels.json entry. Only valid entries can be constructed."""

    model_config = ConfigDict(
        strict=True,
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
        title="aiModels.json entry",
    )

    pipeline: NonEmptyStr = Field(
        description="go-livepeer: pipeline name, e.g. live-video-to-video. Passed to the "
        "container as PIPELINE.",
    )
    model_id: NonEmptyStr = Field(
        description="go-livepeer: model name. pipeline/model_id is the advertised capability "
        "and must be unique in the file. Passed to the container as MODEL_ID.",
    )
    url: Annotated[str, AfterValidator(_check_url)] | None = Field(
        default=None,
        description="go-livepeer: the worker's address. With container, it must be "
        "http://127.0.0.1:PORT (or localhost): PORT is the host port the container port is "
        "published on, on 127.0.0.1 only. Without container, byoc-orch only health-polls, "
        "advertises and proxies this address (an external worker).",
    )
    token: Annotated[SecretStr, AfterValidator(_secret_not_blank)] | None = Field(
        default=None,
        description="go-livepeer: secret sent to the worker as 'Authorization: Bearer'. "
        "Never logged or shown; must not be empty or whitespace.",
    )
    warm: bool = Field(
        default=False,
        description="go-livepeer: true = start it with the daemon and keep it running; false = "
        "known but not started or advertised (cold).",
    )
    capacity: Annotated[int, AfterValidator(_check_capacity)] = Field(
        default=1,
        ge=1,
        json_schema_extra={"maximum": MAX_CAPACITY},
        description="go-livepeer: concurrent sessions this worker takes; with replicas, per "
        f"replica (at most {MAX_CAPACITY}).",
    )
    optimization_flags: FlagMap = Field(
        default_factory=dict,
        description="go-livepeer: flags given to the container as environment variables "
        "(values are strings or booleans; booleans become 'true'/'false').",
    )
    gateway: str | None = Field(
        default=None,
        description="go-livepeer: gateway address the price applies to ('default' if unset).",
    )
    price_per_unit: Price = Field(
        default=None,
        description="go-livepeer: price per pixels_per_unit pixels, a bare JSON number "
        "(quoted values are refused by go-livepeer).",
    )
    pixels_per_unit: PixelsPerUnit = Field(
        default=None,
        description="go-livepeer: pixels per price unit, a positive integer.",
    )
    currency: str | None = Field(
        default=None,
        description="go-livepeer: currency of price_per_unit, e.g. USD (default: wei).",
    )
    container: Annotated[str, AfterValidator(_check_image)] | None = Field(
        default=None,
        description="Image byoc-orch pulls and runs for this entry (docker pull syntax, "
        "e.g. livepeer/comfystream:latest). Without it the entry is external.",
    )
    container_port: int = Field(
        default=DEFAULT_CONTAINER_PORT,
        ge=1,
        le=65535,
        description="Port the worker listens on inside the container.",
    )
    gpus: GpuSpec = Field(
        default="all",
        description='GPUs each container gets (each replica, with replicas): "all", a count, '
        'a list of device indexes or UUIDs (only without replicas), or "none". Default: "all" '
        "for a single container, 1 per replica with replicas. A single container's count lets "
        "Docker pick the GPUs; replicas are placed on GPUs of their own from the pool.",
    )
    replicas: Replicas = Field(
        default=1,
        description='How many containers run this entry: a count, or "per-gpu" for one per '
        "GPU of the pool (BYOC_ORCH_GPUS, else every GPU NVML lists). Replica i listens on "
        "host port url port + i and keeps its GPUs across restarts; capacity is per replica.",
    )
    replicas_per_gpu: int = Field(
        default=1,
        ge=1,
        le=MAX_REPLICAS_PER_GPU,
        description="How many replicas of this entry may share one GPU: with gpus 1 and "
        "replicas_per_gpu 2, replicas 0 and 1 share the first GPU, 2 and 3 the next. No "
        'effect without replicas, or with gpus "all" or "none".',
    )
    env: EnvMap = Field(
        default_factory=dict,
        description="Extra environment variables for the container (string values). Cannot "
        "override PIPELINE, MODEL_ID or an optimization_flags key.",
    )
    command: Annotated[list[str], Field(min_length=1)] | None = Field(
        default=None,
        description="Replaces the image's CMD. Omit to keep the image's own.",
    )
    volumes: list[Volume] = Field(
        default_factory=list,
        max_length=MAX_VOLUMES,
        description="Bind mounts, 'host_path:container_path[:ro|:rw]', both absolute. A host "
        "path that resolves to the Docker or containerd socket, a directory holding one, "
        "/proc, /sys, /dev or /, or to /etc mounted writable, needs allow_host_access.",
    )
    shm_size: ShmSize | None = Field(
        default=None,
        description="Size of /dev/shm: bytes, or a string such as '2g' or '512m' "
        "(default: Docker's 64m).",
    )
    pull: Literal["missing", "always", "never"] = Field(
        default="missing",
        description="When to pull the image: only if missing locally, on every start, or never.",
    )
    health_path: Annotated[str, AfterValidator(_check_health_path)] = Field(
        default="/health",
        description='Path polled for {"status": ...}; warm when it says ok/OK/IDLE.',
    )
    stream_prefix: Literal["auto", "", "/api"] = Field(
        default="auto",
        description="Where the worker serves its stream routes: '' (/stream/start, pytrickle "
        ">= 0.1.5), '/api' (/api/stream/start, older workers), or 'auto' to detect it.",
    )
    startup_timeout: Annotated[float, Field(gt=0, le=MAX_STARTUP_TIMEOUT)] | None = Field(
        default=None,
        description="Seconds the worker may take to become healthy before the start counts "
        f"as failed, at most {MAX_STARTUP_TIMEOUT} (a week); default: the daemon's setting.",
    )
    cap_add: CapAdd = Field(
        default=(),
        description='Linux capabilities to add, e.g. ["NET_RAW"] (with or without CAP_, any '
        "case). byoc-orch drops " + ", ".join(DROPPED_CAPABILITIES) + " from Docker's "
        "default set; adding one of those back is free, any other needs allow_host_access.",
    )
    memory: Memory | None = Field(
        default=None,
        description="Memory limit of each container: bytes, or a string such as '8g' or "
        "'512m'; at least 6m (Docker's minimum). Default: no limit.",
    )
    cpus: Annotated[float, Field(gt=0, le=MAX_CPUS)] | None = Field(
        default=None,
        description=f"CPUs each container may use, e.g. 2 or 0.5 (more than 0, at most "
        f"{MAX_CPUS}). Default: no limit.",
    )
    allow_host_access: bool = Field(
        default=False,
        description="Must be true for privileged, network_mode host, pid_mode host, a "
        "capability in cap_add other than those byoc-orch drops, or a volume whose host path "
        "(after resolving symlinks) is, holds or lies inside the Docker or containerd socket "
        "or their directories, /proc, /sys, /dev or /, or is /etc or under it mounted "
        "writable: each gives the container control of the host.",
    )
    privileged: bool = Field(
        default=False, description="Run the container privileged (needs allow_host_access)."
    )
    network_mode: Literal["bridge", "host"] = Field(
        default="bridge",
        description="'host' shares the host's network (needs allow_host_access); the "
        "container_port must then equal the url's port.",
    )
    pid_mode: Literal["", "host"] = Field(
        default="", description="'host' shares the host's PID namespace (needs allow_host_access)."
    )

    @model_validator(mode="before")
    @classmethod
    def _gpus_default_per_replica(cls, data: Any) -> Any:
        """Replicas default to one GPU each; a single container keeps today's "all"."""
        if (
            isinstance(data, dict)
            and "gpus" not in data
            and data.get("container") is not None
            and _asks_for_replicas(data.get("replicas"))
        ):
            return {**data, "gpus": 1}
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _carriable_text(cls, value: Any) -> Any:
        """No NUL or unpaired surrogate anywhere: a container, a path or a header can't hold one
        (`parse_models` reports each of them before the model sees the entry)."""
        for issue in _bad_characters(value):
            raise _invalid(issue.message, issue.fix, issue.loc)
        return value

    @model_validator(mode="after")
    def _entry_rules(self, info: ValidationInfo) -> Self:
        context = info.context if isinstance(info.context, dict) else {}
        host_paths = context.get(_HOST_PATHS_CONTEXT)
        if not isinstance(host_paths, _HostPaths):
            host_paths = _HostPaths.for_engine(None)
        issues = _entry_issues(self, host_paths)
        if issues:
            summary = "; ".join(f"{_render_loc(i.loc)}: {i.message}" for i in issues)
            raise PydanticCustomError(
                "entry_rules", "{summary}", {"summary": summary, "issues": tuple(issues)}
            )
        return self

    @property
    def managed(self) -> bool:
        """byoc-orch runs this one's container (otherwise it only reaches ``url``)."""
        return self.container is not None

    @property
    def image(self) -> ImageRef | None:
        return parse_image_ref(self.container) if self.container is not None else None

    @property
    def host_port(self) -> int | None:
        """The port of ``url`` (the scheme's default when it names none)."""
        return _url_port(urlsplit(self.url)) if self.url is not None else None

    @property
    def worker_id(self) -> str:
        return worker_id(self.pipeline, self.model_id)

    @property
    def offer(self) -> Offer:
        return Offer(self.price_per_unit, self.pixels_per_unit, self.currency, self.gateway)

    @property
    def capability(self) -> str:
        return f"{self.pipeline}/{self.model_id}"

    @property
    def replicated(self) -> bool:
        """The entry opted in to replicas: its containers are placed on the GPU pool, each on
        its own port; otherwise it is today's single container, untouched by placement."""
        return _asks_for_replicas(self.replicas)

    @property
    def gpus_per_replica(self) -> Literal["all", "none"] | int | list[int | str]:
        """What each container gets, after the default ("all" alone, 1 per replica)."""
        return self.gpus

    def gpu_request(self) -> GpuRequest | None:
        """GPUs to request from Docker for one container, or None for none at all. For a
        replicated entry a count is per replica; placement turns it into device ids."""
        if self.gpus == "none":
            return None
        if self.gpus == "all":
            return GpuRequest(count=-1)
        if isinstance(self.gpus, int):
            return GpuRequest(count=self.gpus)
        return GpuRequest(count=None, device_ids=tuple(str(device) for device in self.gpus))


def _url_port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def _asks_for_replicas(value: object) -> bool:
    if value == "per-gpu":
        return True
    return isinstance(value, int) and not isinstance(value, bool) and value > 1


def _entry_issues(entry: ModelEntry, host_paths: _HostPaths) -> list[_Issue]:
    """Rules that involve more than one field of an entry."""
    issues: list[_Issue] = []
    if entry.container is None and entry.url is None:
        issues.append(
            _Issue(
                ("container",),
                "the entry has neither container nor url, so there is nothing to run or reach",
                'add "container" (an image) and "url": "http://127.0.0.1:<port>" for byoc-orch '
                'to run it, or only "url" for a worker you run yourself',
            )
        )
    if entry.managed:
        url_issues = _managed_url_issues(entry)
        issues += url_issues
        issues += _replica_issues(entry, check_ports=not url_issues)
    issues += _host_access_issues(entry, host_paths)
    issues += _env_collisions(entry)
    return issues


def _managed_url_issues(entry: ModelEntry) -> list[_Issue]:
    if entry.url is None:
        return [
            _Issue(
                ("url",),
                "a managed entry (one with container) needs url to choose its host port",
                'add "url": "http://127.0.0.1:<free port>", e.g. "http://127.0.0.1:8001"',
            )
        ]
    parts = urlsplit(entry.url)
    port = parts.port
    suggestion = f"http://127.0.0.1:{port or '<port>'}"
    if parts.hostname not in LOOPBACK_HOSTS:
        return [
            _Issue(
                ("url",),
                f"host {parts.hostname} cannot reach a managed container: byoc-orch "
                "publishes the container port on 127.0.0.1 only",
                f'use "{suggestion}"; for a worker on another machine, remove "container" '
                "and keep url (an external entry)",
            )
        ]
    if parts.scheme != "http" or port is None or parts.path not in ("", "/") or parts.query:
        return [
            _Issue(
                ("url",),
                f"{json.dumps(redact_url(entry.url))} must be exactly http://127.0.0.1:PORT (an "
                "explicit port, plain http, no path): the port is where the container is "
                "published",
                f'use "{suggestion}"',
            )
        ]
    if entry.network_mode == "host" and entry.container_port != port:
        return [
            _Issue(
                ("container_port",),
                f"with network_mode host the container listens on the host directly, so "
                f"container_port {entry.container_port} must equal the url port {port}",
                f"set container_port to {port}, or change the url port to {entry.container_port}",
            )
        ]
    return []


def _replica_issues(entry: ModelEntry, *, check_ports: bool) -> list[_Issue]:
    """Replica rules that one entry decides alone; the pool and other entries are placement's."""
    if not entry.replicated:
        return []
    issues: list[_Issue] = []
    gpus = entry.gpus
    if isinstance(gpus, list):
        issues.append(
            _Issue(
                ("gpus",),
                f"a device list names one container's GPUs, but replicas is "
                f"{json.dumps(entry.replicas)}",
                "with replicas use a count per replica (e.g. 1), or drop replicas",
            )
        )
    if entry.replicas == "per-gpu" and gpus in ("all", "none"):
        meaning = "gives every replica every GPU" if gpus == "all" else "gives replicas no GPU"
        issues.append(
            _Issue(
                ("replicas",),
                f'"per-gpu" places one replica per GPU, but gpus "{gpus}" {meaning}',
                'give each replica a GPU count (e.g. "gpus": 1, the default with replicas), or '
                'use a replica count such as "replicas": 2',
            )
        )
    if entry.network_mode == "host":
        issues.append(
            _Issue(
                ("replicas",),
                "with network_mode host every replica would listen on the host's own port "
                f"{entry.container_port}; they cannot share it",
                'drop replicas, or use network_mode "bridge"',
            )
        )
    elif check_ports and isinstance(entry.replicas, int) and entry.host_port is not None:
        last = entry.host_port + entry.replicas - 1
        if last > MAX_PORT:
            issues.append(
                _Issue(
                    ("replicas",),
                    f"replica ports url port + 0…{entry.replicas - 1} run to {last}, past "
                    f"{MAX_PORT}",
                    f"lower the url port to {MAX_PORT - entry.replicas + 1} or less, or lower "
                    "replicas",
                )
            )
    return issues


def _host_access_issues(entry: ModelEntry, host_paths: _HostPaths) -> list[_Issue]:
    if entry.allow_host_access:
        return []
    issues: list[_Issue] = []
    if entry.privileged:
        issues.append(
            _Issue(("privileged",), "a privileged container controls the host", _HOST_ACCESS_FIX)
        )
    if entry.network_mode == "host":
        issues.append(
            _Issue(
                ("network_mode",),
                "network_mode host shares the host's network stack",
                _HOST_ACCESS_FIX,
            )
        )
    if entry.pid_mode == "host":
        issues.append(
            _Issue(("pid_mode",), "pid_mode host shares the host's processes", _HOST_ACCESS_FIX)
        )
    for index, capability in enumerate(entry.cap_add):
        found = _capability_issue(capability)
        if found is not None:
            issues.append(_Issue(("cap_add", index), *found))
    for index, volume in enumerate(entry.volumes):
        found = _volume_exposure(volume, host_paths)
        if found is not None:
            issues.append(_Issue(("volumes", index), *found))
    return issues


# Docker's default capability set (moby's oci/caps/defaults.go).
_DOCKER_DEFAULT_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "NET_RAW",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)


def _capability_issue(capability: str) -> tuple[str, str] | None:
    """Why adding ``capability`` needs allow_host_access, with the fix; None when it doesn't."""
    if capability in DROPPED_CAPABILITIES:
        return None
    given_back = ", ".join(DROPPED_CAPABILITIES)
    if capability == "ALL":
        return "ALL gives the container every capability, as much as privileged", _HOST_ACCESS_FIX
    if capability in _DOCKER_DEFAULT_CAPABILITIES:
        return (
            f"{capability} is already in Docker's default set; without allow_host_access "
            f"cap_add may only give back what byoc-orch drops ({given_back})",
            'remove it (the container has it already), or set "allow_host_access": true',
        )
    return (
        f"{capability} is beyond Docker's default capabilities and widens what the container "
        f"may do to the host; without allow_host_access cap_add may only give back what "
        f"byoc-orch drops ({given_back})",
        _HOST_ACCESS_FIX,
    )


_DEFAULT_ENGINE_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
_CONTAINERD_DIRS = ("/run/containerd", "/var/run/containerd")
_KERNEL_PATHS = (
    ("/proc", "the host's processes and kernel settings"),
    ("/sys", "the host's kernel and device settings"),
    ("/dev", "the host's devices"),
)
_HOST_PATHS_CONTEXT = "byoc_orch.host_paths"
_VOLUME_FIX = (
    'set "allow_host_access": true on this entry if you trust the image with the host, or '
    "mount another path"
)


def _plain(path: str) -> str:
    """``path`` without '..', '.' or repeated slashes (POSIX keeps a leading '//'; Linux
    doesn't)."""
    return "/" + posixpath.normpath(path).lstrip("/")


def _resolved(path: str) -> str:
    """``path`` as this host resolves it: symlinks followed, '..' and repeated slashes gone."""
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError, RecursionError):
        real = posixpath.normpath(path)
    return "/" + real.lstrip("/")


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _engine_socket_path(engine_socket: str | None) -> str | None:
    """The unix socket path of a Docker endpoint: a path, or a unix:// URL; None for others."""
    if not engine_socket:
        return None
    if engine_socket.startswith("unix://"):
        engine_socket = engine_socket.removeprefix("unix://")
    if not engine_socket.startswith("/") or _bad_text(engine_socket) is not None:
        return None
    return engine_socket


@dataclass(frozen=True, slots=True)
class _HostPaths:
    """The Docker engine sockets a volume may not reach without allow_host_access: the default
    ones and the configured one, each as written and as this host resolves it."""

    sockets: tuple[str, ...]

    @classmethod
    def for_engine(cls, engine_socket: str | None) -> _HostPaths:
        configured = _engine_socket_path(engine_socket)
        candidates = ([configured] if configured else []) + list(_DEFAULT_ENGINE_SOCKETS)
        sockets: list[str] = []
        for candidate in candidates:
            for form in (_resolved(candidate), _plain(candidate)):
                if form not in sockets:
                    sockets.append(form)
        return cls(tuple(sockets))


def _volume_exposure(volume: str, host_paths: _HostPaths) -> tuple[str, str] | None:
    """Why mounting ``volume`` hands the container the host, with the fix; None when it
    doesn't. The host path is checked as written and as it resolves here (symlinks, '..',
    '//'), so a symlink to the engine socket or the directory holding it counts as the socket.
    """
    parts = volume.split(":")
    host = parts[0]
    writable = len(parts) < 3 or parts[2] == "rw"
    resolved = _resolved(host)
    forms = [(resolved, "resolves to")]
    if _plain(host) != resolved:
        forms.append((_plain(host), "is written as"))
    shown = json.dumps(host)

    def reach(form: str, target: str) -> str | None:
        if form == target:
            return target
        if _within(form, target):
            return f"{form}, inside {target}"
        if _within(target, form):
            return f"{form}, which holds {target}"
        return None

    for form, verb in forms:
        for socket in host_paths.sockets:
            if _within(socket, form):  # the socket itself, or a directory holding it
                where = socket if form == socket else f"{form}, which holds {socket}"
                return (
                    f"{shown} exposes the Docker socket: it {verb} {where}, the Docker engine "
                    "socket, which gives the container root on the host",
                    _VOLUME_FIX,
                )
        if form.endswith("docker.sock"):
            return (
                f"{shown} exposes the Docker socket: it {verb} {form}, named like a Docker "
                "engine socket, which gives the container root on the host",
                _VOLUME_FIX,
            )
    for form, verb in forms:
        for directory in _CONTAINERD_DIRS:
            reached = reach(form, directory)
            if reached is not None:
                return (
                    f"{shown} exposes containerd: it {verb} {reached}, containerd's socket and "
                    "state, which control every container on the host",
                    _VOLUME_FIX,
                )
        for directory, what in _KERNEL_PATHS:
            reached = reach(form, directory)
            if reached is not None:
                return (
                    f"{shown} exposes the host's {directory}: it {verb} {reached}, {what}",
                    _VOLUME_FIX,
                )
        if writable and _within(form, "/etc"):
            return (
                f"{shown} mounts the host's /etc writable: it {verb} {form}; a writable /etc "
                "lets the container change the host's users, sudoers and services",
                'add ":ro" to mount it read-only, or ' + _VOLUME_FIX,
            )
        if form == "/":
            return (
                f"{shown} exposes the host's whole filesystem: it {verb} /",
                _VOLUME_FIX,
            )
    return None


def _env_collisions(entry: ModelEntry) -> list[_Issue]:
    issues: list[_Issue] = []
    for source in ("optimization_flags", "env"):
        names: dict[str, Any] = getattr(entry, source)
        for name in names:
            if name in ENV_SET_BY_BYOC_ORCH:
                issues.append(
                    _Issue(
                        (source, name),
                        f"{name} is set by byoc-orch from {name.lower()}",
                        f"remove it; set the entry's {name.lower()} instead",
                    )
                )
    for name in entry.env.keys() & entry.optimization_flags.keys():
        issues.append(
            _Issue(
                ("env", name),
                f"{name} is also set in optimization_flags; the container can get only one",
                "keep it in one place (optimization_flags is what go-livepeer reads too)",
            )
        )
    return issues


# --------------------------------------------------------------------------- the file


@dataclass(frozen=True, slots=True)
class ModelsFile:
    """A valid aiModels.json: its entries in file order, anything worth a warning, and where
    each managed entry's containers run (``replicas``, by worker_id: one slot per container)."""

    entries: list[ModelEntry]
    warnings: list[Problem] = field(default_factory=list)
    source: str = "aiModels.json"
    replicas: dict[str, tuple[ReplicaSlot, ...]] = field(default_factory=dict)


def load_models(
    path: Path,
    *,
    reserved_ports: Mapping[int, str] = _NO_PORTS,
    gpu_pool: GpuPool | None = None,
    pool_configured: bool = False,
    gpu_inventory: Sequence[GpuInfo] = (),
    engine_socket: str | None = None,
) -> ModelsFile:
    """Read and check aiModels.json and place its replicas; raise ModelsFileError listing every
    problem, and nothing else whatever the file holds. Only a regular file of at most
    MAX_FILE_BYTES is read (a FIFO, device, socket or directory is refused without opening it
    for a blocking read). See `parse_models` for the other arguments."""
    source = str(path)
    data = _read_regular_file(path, source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problem = Problem(
            None, None, None, f"line {line}: the file is not UTF-8 text", "save it as UTF-8", source
        )
        raise ModelsFileError([problem]) from None
    return parse_models(
        text,
        source=source,
        reserved_ports=reserved_ports,
        gpu_pool=gpu_pool,
        pool_configured=pool_configured,
        gpu_inventory=gpu_inventory,
        engine_socket=engine_socket,
    )


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _read_regular_file(path: Path, source: str) -> bytes:
    """The bytes of ``path`` if it is a regular file no larger than MAX_FILE_BYTES.

    The kind is checked before opening (opening a FIFO for reading blocks until a writer comes;
    opening a device may act on it), and again on the open descriptor, which is opened
    non-blocking in case the path was swapped in between.
    """

    def refuse(message: str, fix: str) -> UnreadableModelsFileError:
        return UnreadableModelsFileError([Problem(None, None, None, message, fix, source)])

    def refuse_os(exc: OSError) -> UnreadableModelsFileError:
        return refuse(
            f"cannot read the file: {exc.strerror or exc}",
            "check the path and that byoc-orch's user may read it",
        )

    def check(status: os.stat_result) -> None:
        for is_kind, kind in _FILE_KINDS:
            if is_kind(status.st_mode):
                raise refuse(
                    f"cannot read the file: it is {kind}, not a regular file",
                    "give the path of the aiModels.json file itself",
                )
        if not stat.S_ISREG(status.st_mode):
            raise refuse(
                "cannot read the file: it is not a regular file",
                "give the path of the aiModels.json file itself",
            )
        if status.st_size > MAX_FILE_BYTES:
            raise too_large(status.st_size)

    def too_large(size: int) -> UnreadableModelsFileError:
        return refuse(
            f"the file is {_show_bytes(size)}, more than the {_show_bytes(MAX_FILE_BYTES)} an "
            "aiModels.json may be",
            "check that this is the right file; a real aiModels.json is a few kilobytes",
        )

    try:
        status = os.stat(path)
    except OSError as exc:
        raise refuse_os(exc) from None
    except ValueError:
        raise refuse(
            "cannot read the file: the path contains a NUL character",
            "give the path of the aiModels.json file",
        ) from None
    check(status)
    try:
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
        descriptor = os.open(path, flags)
    except OSError as exc:
        raise refuse_os(exc) from None
    try:
        check(os.fstat(descriptor))
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(descriptor, min(1 << 20, MAX_FILE_BYTES + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_FILE_BYTES:
                raise too_large(total)
    except OSError as exc:
        raise refuse_os(exc) from None
    finally:
        os.close(descriptor)
    return b"".join(chunks)


def parse_models(
    text: str,
    *,
    source: str,
    reserved_ports: Mapping[int, str] = _NO_PORTS,
    gpu_pool: GpuPool | None = None,
    pool_configured: bool = False,
    gpu_inventory: Sequence[GpuInfo] = (),
    engine_socket: str | None = None,
) -> ModelsFile:
    """Check aiModels.json text, then place its replicas; raise ModelsFileError listing every
    problem, and nothing else whatever the text holds.

    ``gpu_pool`` is the GPUs replicas may use (`placement.pool_from`); ``pool_configured`` says
    it came from BYOC_ORCH_GPUS; ``gpu_inventory`` (NVML's GPUs, when known) matches a GPU's
    index with its UUID. Entries without replicas need none of them.

    ``engine_socket`` is the Docker engine's unix socket (a path, or BYOC_ORCH_DOCKER_HOST's
    ``unix://`` URL; other endpoints are ignored). Volumes whose host path resolves to it, to
    the default sockets (/var/run/docker.sock, /run/docker.sock) or to a directory holding one
    need allow_host_access, as do /proc, /sys, /dev, containerd's directory, / and a writable
    /etc; host paths are resolved on this host (symlinks, '..', '//').
    """
    raw_entries = _decode(text, source)
    context = {_HOST_PATHS_CONTEXT: _HostPaths.for_engine(engine_socket)}
    problems: list[Problem] = []
    warnings: list[Problem] = []
    valid: list[tuple[int, ModelEntry]] = []
    for index, raw in enumerate(raw_entries):
        entry, entry_problems, entry_warnings = _check_entry(index, raw, context)
        problems += entry_problems
        warnings += entry_warnings
        if entry is not None:
            valid.append((index, entry))
    problems += _duplicate_capabilities(valid)
    port_problems, port_warnings = _port_conflicts(valid, reserved_ports)
    problems += port_problems
    warnings += port_warnings
    problems.sort(key=_problem_order)
    warnings.sort(key=_problem_order)
    if problems:
        raise ModelsFileError(problems, warnings)
    from byoc_orch.placement import plan

    entries = [entry for _, entry in valid]
    placed = plan(
        entries,
        gpu_pool,
        source=source,
        reserved_ports=reserved_ports,
        pool_configured=pool_configured,
        inventory=gpu_inventory,
    )
    warnings = sorted(warnings + placed.warnings, key=_problem_order)
    if placed.problems:
        raise ModelsFileError(placed.problems, warnings)
    return ModelsFile(entries=entries, warnings=warnings, source=source, replicas=placed.slots)


def _problem_order(problem: Problem) -> int:
    return -1 if problem.entry_index is None else problem.entry_index


# --------------------------------------------------------------------------- JSON syntax


class _JsonObject(dict[str, Any]):
    """A JSON object that remembers keys written more than once (Go keeps the last silently)."""

    repeated: tuple[str, ...] = ()

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _JsonObject:
        obj = cls(pairs)
        if len(obj) != len(pairs):
            counts = Counter(key for key, _ in pairs)
            obj.repeated = tuple(key for key, n in counts.items() if n > 1)
        return obj


class _NotJson(ValueError):
    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.token = token


class _BadNumber(ValueError):
    def __init__(self, token: str, message: str) -> None:
        super().__init__(message)
        self.token = token
        self.message = message


def _reject_constant(token: str) -> object:
    raise _NotJson(token)


def _number_size(token: str) -> None:
    if len(token) > MAX_NUMBER_CHARS:
        raise _BadNumber(
            token,
            f"a number {len(token)} characters long; aiModels.json numbers may have at most "
            f"{MAX_NUMBER_CHARS}",
        )


def _parse_int(token: str) -> int:
    _number_size(token)
    return int(token)


def _parse_float(token: str) -> float:
    _number_size(token)
    value = float(token)
    if not math.isfinite(value):
        raise _BadNumber(token, f"{token} is too large for a number")
    return value


# A JSON string (closed or not), a bracket, or a number: enough to find depth and numbers.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]|-?[0-9][0-9.eE+-]*')


def _too_deep(text: str) -> int | None:
    """Where nesting first goes past MAX_JSON_DEPTH (json would recurse into a RecursionError)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return None
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return match.start()
        elif token in ("]", "}"):
            depth -= 1
    return None


def _number_position(text: str, token: str) -> int:
    """Where the number ``token`` first stands outside a string."""
    for match in _TOKENS.finditer(text):
        if match.group() == token:
            return match.start()
    return max(text.find(token), 0)


def _decode(text: str, source: str) -> list[Any]:
    at = partial(Problem, None, None, None, source=source)
    deep = _too_deep(text)
    if deep is not None:
        line, column = _line_column(text, deep)
        raise ModelsFileError(
            [
                at(
                    f"line {line} column {column}: arrays and objects are nested more than "
                    f"{MAX_JSON_DEPTH} deep",
                    "an aiModels.json entry nests two or three levels; check for a runaway "
                    "'[' or '{'",
                )
            ]
        )
    try:
        document = json.loads(
            text,
            object_pairs_hook=_JsonObject.from_pairs,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
            parse_float=_parse_float,
        )
    except json.JSONDecodeError as exc:
        raise ModelsFileError([_syntax_problem(text, exc, source)]) from None
    except _NotJson as exc:
        line, column = _line_column(text, max(text.find(exc.token), 0))
        raise ModelsFileError(
            [
                at(
                    f"line {line} column {column}: {exc.token} is not valid JSON",
                    "use a number, or a string if it is text",
                )
            ]
        ) from None
    except _BadNumber as exc:
        line, column = _line_column(text, _number_position(text, exc.token))
        raise ModelsFileError(
            [
                at(
                    f"line {line} column {column}: {exc.message}",
                    "write a number of a sensible size: aiModels.json numbers are counts, "
                    "ports, seconds, sizes and prices",
                )
            ]
        ) from None
    except RecursionError:
        raise ModelsFileError(
            [
                at(
                    f"arrays and objects are nested more than {MAX_JSON_DEPTH} deep",
                    "check for a runaway '[' or '{'",
                )
            ]
        ) from None
    if not isinstance(document, list):
        fix = "write a JSON array of entries: [ {...}, {...} ]"
        if isinstance(document, dict):
            fix = "wrap the entry in [ ]: [ {...} ]"
        raise ModelsFileError(
            [
                at(
                    f"the top level is {_describe(document)}; aiModels.json must be an array "
                    "of entries",
                    fix,
                )
            ]
        )
    if len(document) > MAX_ENTRIES:
        raise ModelsFileError(
            [
                at(
                    f"the file has {len(document)} entries; aiModels.json may have at most "
                    f"{MAX_ENTRIES}",
                    "check that this is the right file; each entry is one model on this host",
                )
            ]
        )
    return document


_SYNTAX_HINTS: tuple[tuple[str, str, str], ...] = (
    (
        "Expecting property name",
        "expected a key in double quotes",
        'quote keys with double quotes, e.g. "model_id"; JSON has no comments or single quotes',
    ),
    ("Expecting ',' delimiter", "a comma is missing between two items", "add ',' here"),
    ("Expecting ':' delimiter", "a ':' is missing after a key", 'write "key": value'),
    (
        "Expecting value",
        "expected a value",
        "check for a missing value, a comment (JSON has none) or a single-quoted string",
    ),
    (
        "Extra data",
        "there is text after the end of the top-level array",
        "keep the whole file one JSON array; move extra entries inside its [ ]",
    ),
    ("Unterminated string", "a string is not closed", 'add the closing "'),
    (
        "Invalid control character",
        "a raw control character (tab or newline) is inside a string",
        "escape it as \\t or \\n",
    ),
    ("Invalid \\escape", "invalid backslash escape in a string", "write a backslash as \\\\"),
)


def _syntax_problem(text: str, exc: json.JSONDecodeError, source: str) -> Problem:
    at = partial(Problem, None, None, None, source=source)
    if text.startswith("\ufeff"):
        return at(
            "line 1 column 1: the file starts with a byte-order mark",
            "save it as UTF-8 without BOM (go-livepeer refuses it too)",
        )
    if not text.strip():
        return at("the file is empty", "write [] for no models, or an array of entries")
    comma = _trailing_comma(text, exc.pos)
    if comma is not None:
        line, column = _line_column(text, comma)
        closer = text[exc.pos]
        return at(
            f"line {line} column {column}: trailing comma before '{closer}'",
            "delete this comma; JSON allows none after the last item",
        )
    message, fix = exc.msg, "fix the JSON syntax here"
    for prefix, hint, hint_fix in _SYNTAX_HINTS:
        if exc.msg.startswith(prefix):
            message, fix = hint, hint_fix
            break
    return at(f"line {exc.lineno} column {exc.colno}: {message}", fix)


def _trailing_comma(text: str, pos: int) -> int | None:
    """Where the comma is when the parser stopped at ']' or '}' right after one."""
    if pos >= len(text) or text[pos] not in "]}":
        return None
    before = text[:pos].rstrip()
    return len(before) - 1 if before.endswith(",") else None


def _line_column(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


# --------------------------------------------------------------------------- one entry


def _check_entry(
    index: int, raw: object, context: dict[str, Any] | None = None
) -> tuple[ModelEntry | None, list[Problem], list[Problem]]:
    if not isinstance(raw, dict):
        problem = Problem(
            index,
            None,
            None,
            f"expected an object, got {_describe(raw)}",
            'each entry is an object: {"pipeline": "...", "model_id": "...", ...}',
        )
        return None, [problem], []
    model_id = raw.get("model_id")
    shown_id = (
        model_id
        if isinstance(model_id, str) and model_id.strip() and model_id.isprintable()
        else None
    )
    at = partial(Problem, index, shown_id)
    problems = [at(_render_loc(loc), *_repeated_key_text(loc)) for loc in _repeated_keys(raw)]
    unusable = list(_bad_characters(raw))
    problems += [at(_render_loc(issue.loc), issue.message, issue.fix) for issue in unusable]
    tainted = {str(issue.loc[0]) for issue in unusable if issue.loc}
    key_problems, warnings = _unknown_keys({k: v for k, v in raw.items() if k not in tainted}, at)
    problems += key_problems
    if tainted:
        # Validate the rest, with stand-ins where a rule needs the field to be present.
        clean = {key: value for key, value in raw.items() if key not in tainted}
        clean |= {key: _STAND_INS[key] for key in tainted & _STAND_INS.keys()}
        _, issues = _validate(clean, context)
        issues = [issue for issue in issues if not issue.loc or issue.loc[0] not in tainted]
        entry = None
    else:
        entry, issues = _validate(raw, context)
    problems += [at(_render_loc(issue.loc), issue.message, issue.fix) for issue in issues]
    if entry is not None and not entry.managed:
        warnings += [
            at(
                name,
                "ignored: this entry has no container, so byoc-orch runs nothing for it",
                'remove it, or add "container" for byoc-orch to run the worker',
            )
            for name in ModelEntry.model_fields
            if name in CONTAINER_ONLY_FIELDS and name in entry.model_fields_set
        ]
    if entry is not None and entry.managed:
        warnings += [at(_render_loc(i.loc), i.message, i.fix) for i in _replica_warnings(entry)]
    return entry, problems, warnings


def _replica_warnings(entry: ModelEntry) -> list[_Issue]:
    """replicas_per_gpu where it changes nothing: the operator expected sharing that won't be."""
    if entry.replicas_per_gpu == 1:
        return []
    if not entry.replicated:
        return [
            _Issue(
                ("replicas_per_gpu",),
                "has no effect: replicas is 1, so there is one container",
                'set "replicas" (a count or "per-gpu"), or remove replicas_per_gpu',
            )
        ]
    if not isinstance(entry.gpus, int):
        return [
            _Issue(
                ("replicas_per_gpu",),
                f'has no effect with gpus "{entry.gpus}": no GPU is placed, so none is shared',
                "give each replica a GPU count, or remove replicas_per_gpu",
            )
        ]
    return []


def _repeated_keys(value: object, loc: Loc = ()) -> Iterator[Loc]:
    if isinstance(value, _JsonObject):
        for key in value.repeated:
            yield (*loc, key)
        for key, child in value.items():
            yield from _repeated_keys(child, (*loc, key))
    elif isinstance(value, list):
        for position, child in enumerate(value):
            yield from _repeated_keys(child, (*loc, position))


def _repeated_key_text(loc: Loc) -> tuple[str, str]:
    return (
        f"key {json.dumps(loc[-1])} appears more than once; go-livepeer silently keeps the last",
        "keep only one of them",
    )


def _unknown_keys(raw: dict[str, Any], at: partial[Problem]) -> tuple[list[Problem], list[Problem]]:
    """Unknown keys only warn (go-livepeer may add fields), but case variants are errors:
    Go matches keys ignoring case, so "Warm" would be warm to go-livepeer and nothing to us."""
    known = list(ModelEntry.model_fields)
    by_lower = {name.lower(): name for name in known}
    problems: list[Problem] = []
    warnings: list[Problem] = []
    unknown = 0
    for key in raw:
        if key in ModelEntry.model_fields:
            continue
        exact = by_lower.get(key.lower())
        if exact is not None:
            reader = "go-livepeer reads it as" if exact in GO_LIVEPEER_FIELDS else "it looks like"
            problems.append(
                at(
                    _render_loc((key,)),
                    f"field names are case-sensitive here ({reader} {json.dumps(exact)})",
                    f"rename it to {json.dumps(exact)}",
                )
            )
            continue
        unknown += 1
        if unknown > _MAX_UNKNOWN_KEY_WARNINGS:
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75) if len(key) <= 64 else []
        fix = f"did you mean {json.dumps(close[0])}?" if close else "remove it if it is a typo"
        warnings.append(at(_render_loc((key,)), "unknown field, ignored", fix))
    if unknown > _MAX_UNKNOWN_KEY_WARNINGS:
        warnings.append(
            at(
                None,
                f"{unknown - _MAX_UNKNOWN_KEY_WARNINGS} more unknown fields, ignored",
                "remove the fields byoc-orch and go-livepeer do not read",
            )
        )
    return problems, warnings


_MAX_UNKNOWN_KEY_WARNINGS = 20


_STAND_INS = {
    "pipeline": "-",
    "model_id": "-",
    "container": "stand-in",
    "url": "http://127.0.0.1:1",
}


def _validate(
    raw: dict[str, Any], context: dict[str, Any] | None = None
) -> tuple[ModelEntry | None, list[_Issue]]:
    """Validate one entry, reporting field errors and cross-field rules together.

    Pydantic skips the cross-field rules when a field is invalid, so the rules are run again
    without the invalid fields, or with a stand-in where the rules need one to be present (a
    bad image still makes the entry managed); findings about those fields are left out.
    """
    try:
        return ModelEntry.model_validate(raw, context=context), []
    except ValidationError as exc:
        errors = exc.errors()
    issues = [issue for error in errors for issue in _issues_from_error(error)]
    if any(error["type"] == "entry_rules" for error in errors):
        return None, issues
    bad_fields = {str(issue.loc[0]) for issue in issues if issue.loc}
    retry = {key: value for key, value in raw.items() if key not in bad_fields}
    retry |= {key: _STAND_INS[key] for key in bad_fields & _STAND_INS.keys()}
    try:
        ModelEntry.model_validate(retry, context=context)
    except ValidationError as exc:
        issues += [
            issue
            for error in exc.errors()
            if error["type"] == "entry_rules"
            for issue in _issues_from_error(error)
            if issue.loc[0] not in bad_fields
        ]
    return None, issues


# --------------------------------------------------------------------------- error wording

_EXPECTED = {
    "string_type": ("a string", "string"),
    "bool_type": ("true or false", "boolean"),
    "int_type": ("an integer", "number"),
    "float_type": ("a number", "number"),
    "dict_type": ("an object", "object"),
    "list_type": ("an array", "array"),
}
_MISSING_FIX = {
    "pipeline": 'add "pipeline": "<pipeline name>", e.g. "live-video-to-video"',
    "model_id": 'add "model_id": "<model name>"',
}
# Values never echoed in messages: the token, and container env that may carry credentials.
_SECRET_FIELDS = frozenset({"token", "env", "optimization_flags"})


def _issues_from_error(error: ErrorDetails) -> list[_Issue]:
    ctx = error.get("ctx") or {}
    if error["type"] == "entry_rules":
        return list(ctx["issues"])
    loc = tuple(error["loc"])
    if "fix" in ctx:
        return [_Issue((*loc, *ctx.get("at", ())), ctx["message"], ctx["fix"])]
    return [_Issue(loc, *_wording(error, loc))]


def _wording(error: ErrorDetails, loc: Loc) -> tuple[str, str]:
    kind, value = error["type"], error.get("input")
    ctx = error.get("ctx") or {}
    name = str(loc[0]) if loc else "value"
    got = f"got {_kind(value)}" if name in _SECRET_FIELDS else f"got {_describe(value)}"
    if kind == "missing":
        return "required but missing", _MISSING_FIX.get(name, f'add "{name}"')
    if kind in _EXPECTED:
        expected, json_kind = _EXPECTED[kind]
        return f"expected {expected}, {got}", _type_fix(expected, json_kind, value, name)
    if kind == "literal_error":
        choices = str(ctx.get("expected", "")).replace("'", '"')
        return f"must be {choices}, {got}", f"use {choices}"
    bounds = {
        "greater_than_equal": ("ge", "at least {}", "use {} or more"),
        "greater_than": ("gt", "more than {}", "use a value above {}"),
        "less_than_equal": ("le", "at most {}", "use {} or less"),
    }
    if kind in bounds:
        key, rule, fix = bounds[kind]
        limit = ctx[key]
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return f"must be {rule.format(limit)}, {got}", fix.format(limit)
    if kind == "string_too_short":
        return "must not be empty", "give it a value"
    if kind == "too_short":
        return "must not be empty", f'give at least one item, or remove "{name}"'
    if kind == "too_long":
        limit = ctx.get("max_length")
        return f"has more than {limit} items", f"keep at most {limit}"
    return error["msg"], "see the aiModels.json schema in config/aimodels.schema.json"


def _type_fix(expected: str, json_kind: str, value: object, name: str) -> str:
    if isinstance(value, str) and name not in _SECRET_FIELDS:
        try:
            unquoted = json.loads(value)
        except ValueError:
            unquoted = None
        if unquoted is not None and _json_type(unquoted) == json_kind:
            return f"remove the quotes: write {value}"
    if json_kind == "string" and isinstance(value, int | float | bool):
        if name in _SECRET_FIELDS:
            return "put the value in double quotes"
        return f"put it in double quotes: {json.dumps(json.dumps(value))}"
    return f"write {expected}"


def _render_loc(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, str) and not part.isprintable():
            part = json.dumps(part)  # NUL, surrogates, control characters: escaped, quoted
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


# --------------------------------------------------------------------------- across entries


def _duplicate_capabilities(valid: list[tuple[int, ModelEntry]]) -> list[Problem]:
    first: dict[str, int] = {}
    problems: list[Problem] = []
    for index, entry in valid:
        earlier = first.setdefault(entry.capability, index)
        if earlier != index:
            problems.append(
                Problem(
                    index,
                    entry.model_id,
                    "model_id",
                    f"{entry.capability} is already defined by entry {earlier}; each "
                    "pipeline+model_id may appear once",
                    f"rename model_id in entry {earlier} or {index}, or delete one of them",
                )
            )
    return problems


def _port_conflicts(
    valid: list[tuple[int, ModelEntry]], reserved: Mapping[int, str]
) -> tuple[list[Problem], list[Problem]]:
    """Host ports on loopback must be unique wherever a managed container would bind one."""
    problems: list[Problem] = []
    warnings: list[Problem] = []
    holders: dict[int, tuple[int, ModelEntry]] = {}
    for index, entry in valid:
        port = loopback_port(entry)
        if port is None:
            continue
        at = partial(Problem, index, entry.model_id, "url")
        if port in reserved:
            problems.append(
                at(
                    f"port {port} is taken by {reserved[port]}",
                    "choose another port for this entry's url",
                )
            )
        if port not in holders:
            holders[port] = (index, entry)
            continue
        other_index, other = holders[port]
        if entry.managed or other.managed:
            problems.append(
                at(
                    f"host port {port} is also used by entry {other_index} ({other.model_id})",
                    "give each worker its own port in url",
                )
            )
        else:
            warnings.append(
                at(
                    f"port {port} is also used by entry {other_index} ({other.model_id}); both "
                    "reach the same worker",
                    "check that one worker really serves both",
                )
            )
    return problems, warnings


def loopback_port(entry: ModelEntry) -> int | None:
    """The host port an entry's worker takes on this host's loopback (every managed entry's
    url port; an external entry's only when its url is on loopback), else None."""
    if entry.url is None:
        return None
    parts = urlsplit(entry.url)
    if entry.managed or parts.hostname in _EXTERNAL_LOOPBACK_HOSTS:
        return _url_port(parts)
    return None
