"""The daemon's one typed configuration object.

Precedence, highest first: command-line flags, `BYOC_ORCH_*` environment variables, the
optional env file, then the defaults below. The Docker endpoint is resolved here, explicitly,
because docker-py would otherwise follow whatever Docker CLI context the service user has.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
DEFAULT_ENV_FILE = Path("/etc/byoc-orch/byoc-orch.env")
"""The env file the systemd unit reads; commands read it too, so `status` and `reload` find the
daemon an operator configured there."""
INSTANCE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")

SECRET_SETTINGS = frozenset({"api_token", "orch_secret"})

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]


class SettingsError(Exception):
    """Settings that cannot be used; the message names the variable and the fix."""


class Settings(BaseSettings):
    """Everything the daemon reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="BYOC_ORCH_",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    models_path: Path = Field(
        default=Path("/etc/byoc-orch/aiModels.json"),
        description="aiModels.json to load (the same file go-livepeer reads).",
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP API binds to.")
    port: int = Field(default=9935, ge=1, le=65535, description="Port of the HTTP API.")
    instance: str = Field(
        default="default",
        description=(
            "Instance id written into every container's labels and name. Two daemons on one "
            "Docker engine must use different ids: each only ever touches its own containers."
        ),
    )
    docker_host: str = Field(
        default=DEFAULT_DOCKER_HOST,
        description=(
            "Docker endpoint. BYOC_ORCH_DOCKER_HOST, else DOCKER_HOST, else the local socket; "
            "Docker CLI contexts are deliberately not consulted."
        ),
    )
    docker_config: Path | None = Field(
        default=None,
        description=(
            "Docker config.json holding registry credentials. Unset: Docker's own lookup "
            "($DOCKER_CONFIG/config.json, then ~/.docker/config.json)."
        ),
    )
    docker_timeout: float = Field(
        default=30.0, gt=0, description="Seconds an ordinary Docker API call may take."
    )
    stop_timeout: float = Field(
        default=10.0,
        ge=0,
        description="Seconds a container gets between SIGTERM and SIGKILL when stopped.",
    )
    reconcile_interval: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Seconds between sweeps for containers of this instance that no worker tracks "
            "(left behind by an interrupted reload, say); they are removed. Also runs after "
            "every reload."
        ),
    )
    drain_timeout: float = Field(
        default=300.0,
        ge=0,
        description=(
            "Seconds a replica being replaced or removed keeps serving its running sessions "
            "(taking no new ones) before they are ended and it is stopped."
        ),
    )
    startup_timeout: float = Field(
        default=600.0,
        gt=0,
        description="Seconds a worker may report LOADING before it counts as failed.",
    )
    public_url: str | None = Field(
        default=None,
        description=(
            "byoc-orch's base URL as go-livepeer reaches it; capability URLs point under it. "
            "Unset: http://HOST:PORT."
        ),
    )
    probe_interval: float = Field(
        default=1.0, gt=0, description="Seconds between /health probes of a warm worker."
    )
    startup_probe_interval: float = Field(
        default=0.1, gt=0, description="Seconds between /health probes while a worker starts."
    )
    probe_timeout: float = Field(default=1.0, gt=0, description="Seconds one probe may take.")
    failure_threshold: int = Field(
        default=3, ge=1, description="Consecutive failed probes that make a warm worker unhealthy."
    )
    unhealthy_restart_after: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a managed worker may stay unhealthy before a restart.",
    )
    backoff_initial: float = Field(
        default=10.0, gt=0, description="First back-off delay after the (immediate) first restart."
    )
    backoff_max: float = Field(default=300.0, gt=0, description="Cap of the restart back-off.")
    backoff_reset_after: float = Field(
        default=600.0, gt=0, description="Seconds warm after which the back-off is forgotten."
    )
    stop_containers_on_exit: bool = Field(
        default=False,
        description=(
            "Stop managed containers when the daemon exits. Default: leave them running so the "
            "next start adopts them without a cold start."
        ),
    )
    pull_progress_interval: float = Field(
        default=5.0, gt=0, description="Seconds between image pull progress log lines."
    )
    api_token: SecretStr | None = Field(
        default=None,
        description=(
            "Bearer token every state-changing call (session calls, reload) must carry; reads "
            "stay open. Required when HOST is not a loopback address."
        ),
    )
    trusted_networks: str | None = Field(
        default=None,
        description=(
            "Comma-separated networks (CIDR) whose calls need no API token, e.g. the go-livepeer "
            "orchestrator's address: go-livepeer's Live Runner proxy forwards its client's "
            "headers, never a token. Lets byoc-orch listen beyond loopback for a remote "
            "orchestrator; everyone else still needs the token when one is set."
        ),
    )
    proxy_connect_timeout: float = Field(
        default=2.0, gt=0, description="Seconds to connect to a worker container when proxying."
    )
    proxy_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a session call may take in all, and a pass-through request may "
        "wait for its answer to start or between two pieces of it (then 504).",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Largest request body a session call (start, stop, params) may carry "
        "(larger: 413); pass-through requests have their own limit.",
    )
    max_passthrough_bytes: int = Field(
        default=2 * 1024**3,
        ge=0,
        description=(
            "Largest request body passed through to a worker on any path other than the "
            "session calls (batch requests: images, audio, video), streamed, never held in "
            "memory; larger: 413. 0: no limit."
        ),
    )
    orch_url: str | None = Field(
        default=None,
        description=(
            "go-livepeer orchestrator base URL for BYOC /capability/register; with ORCH_SECRET "
            "it enables the BYOC register advertiser."
        ),
    )
    orch_secret: SecretStr | None = Field(
        default=None,
        description="go-livepeer's -orchSecret, sent raw in Authorization; never logged.",
    )
    register_refresh_interval: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Seconds between re-registrations of the warm set with go-livepeer, which forgets "
            "capabilities when it restarts."
        ),
    )
    register_retry_initial: float = Field(
        default=1.0, gt=0, description="First retry delay when go-livepeer cannot be reached."
    )
    register_retry_max: float = Field(
        default=30.0, gt=0, description="Cap of the retry delay when go-livepeer is down."
    )
    byoc_register: bool = Field(
        default=True,
        description=(
            "Register warm capabilities with go-livepeer's BYOC /capability/register when "
            "ORCH_URL and ORCH_SECRET are set."
        ),
    )
    live_runner_heartbeat: bool = Field(
        default=False,
        description=(
            "Register warm workers as go-livepeer Live Runners by heartbeat (needs ORCH_URL "
            "and ORCH_SECRET)."
        ),
    )
    live_runner_price_unit: Literal["720p", "hour"] = Field(
        default="720p",
        description=(
            "Unit of the USD price Live Runner heartbeats carry: 720p (go-livepeer; exact for "
            "aiModels.json's per-pixel prices) or hour (livepeer/node, which refuses 720p: the "
            "price of an hour of 720p at 30 fps)."
        ),
    )
    state_directory: Path | None = Field(
        default_factory=lambda: Path(
            os.environ.get("STATE_DIRECTORY", "/var/lib/byoc-orch").split(":")[0]
        ),
        description=(
            "Where byoc-orch keeps what must survive its restart: Live Runner runner ids and "
            "heartbeat secrets, live sessions' orchestrator credentials, drained replicas "
            "(one file per instance, mode 0600). Default: systemd's $STATE_DIRECTORY "
            "(StateDirectory=), else /var/lib/byoc-orch."
        ),
    )
    register_probe_interval: float = Field(
        default=2.0,
        gt=0,
        description=(
            "Seconds between cheap checks that go-livepeer is up (a restart there is answered "
            "by re-registering the warm set)."
        ),
    )
    orch_tls_verify: bool = Field(
        default=False,
        description=(
            "Verify go-livepeer's TLS certificate. go-livepeer makes a new self-signed one at "
            "every start, so verification is off unless it sits behind a real certificate."
        ),
    )
    gpus: str | None = Field(
        default=None,
        description=(
            "GPUs replicas may be placed on: comma-separated indexes or UUIDs as "
            "`nvidia-smi -L` lists them, e.g. 0,1,2. Unset: every GPU NVML lists. Leave out "
            "GPUs kept for go-livepeer's own AI workers; entries without replicas are not "
            "placed and keep their own gpus."
        ),
    )
    gpu_memory_mb: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Memory of each pool GPU in MiB where NVML does not say (no driver, pretend GPUs "
            "in CI, BYOC_ORCH_GPU_METRICS=false): what vram_mb packing fits replicas into. "
            "NVML's total wins where it knows the GPU."
        ),
    )
    gpu_sessions: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Sessions one GPU can serve at once, across every entry whose replicas share it. "
            "A session started on one lowers what the others advertise (BYOC capacity and "
            "Live Runner heartbeat capacity), so a GPU is never promised twice. Unset: each "
            "replica's own capacity is its only limit."
        ),
    )
    scale_interval: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Seconds between looks at replica ranges' demand (also looked at at once "
        "when a session start is refused).",
    )
    gpu_metrics: bool = Field(
        default=True,
        description="Read GPU gauges through NVML; without a driver there are no GPU series.",
    )
    access_log: bool = Field(
        default=False,
        description=(
            "One log line per HTTP request to byoc-orch's API (uvicorn's access log, as JSON "
            "with client, method, path, status). Off by default: session calls are logged anyway."
        ),
    )
    log_level: LogLevel = "info"
    log_format: LogFormat = Field(
        default="auto",
        description="auto: JSON lines when stderr is not a terminal (journald), else console.",
    )

    @property
    def public_base_url(self) -> str:
        """byoc-orch's base URL as go-livepeer reaches it: PUBLIC_URL, else http://HOST:PORT."""
        return self.public_url or self.local_api_url

    @property
    def local_api_url(self) -> str:
        """Where this host reaches the daemon's API: a wildcard bind address becomes loopback."""
        return f"http://{_client_host(self.host)}:{self.port}"

    @property
    def gpu_pool_setting(self) -> tuple[str, ...] | None:
        """BYOC_ORCH_GPUS as device ids in the operator's order; None when unset."""
        return tuple(self.gpus.split(",")) if self.gpus is not None else None

    @property
    def trusted(self) -> tuple[IPNetwork, ...]:
        """TRUSTED_NETWORKS parsed (validated when the settings were made)."""
        return _networks(self.trusted_networks)

    @field_validator("trusted_networks")
    @classmethod
    def _networks_parse(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        _networks(value)
        return value

    @field_validator("instance")
    @classmethod
    def _instance_is_label_safe(cls, value: str) -> str:
        if not INSTANCE_PATTERN.match(value):
            raise ValueError(
                "must be 1-32 characters of a-z, 0-9, '_', '.', '-' starting with a letter or "
                "digit, because it goes into container names and labels"
            )
        return value

    @field_validator("docker_config")
    @classmethod
    def _docker_config_exists(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        path = value / "config.json" if value.is_dir() else value
        if not path.is_file():
            raise ValueError(f"{path} does not exist; give the path of a Docker config.json")
        return path

    @field_validator("public_url", "orch_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parsed = urlsplit(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value.rstrip("/")

    @field_validator("gpus")
    @classmethod
    def _gpu_list(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        members = [member.strip() for member in value.split(",")]
        if any(not member for member in members):
            raise ValueError("has an empty member; write GPU indexes or UUIDs like 0,1,2")
        if any(char.isspace() for member in members for char in member):
            raise ValueError("a GPU id contains a space; separate GPUs with commas: 0,1,2")
        members = [str(int(m)) if m.isdigit() else m for m in members]
        lowered = [m.lower() for m in members]
        repeated = [m for m, low in zip(members, lowered, strict=True) if lowered.count(low) > 1]
        if repeated:
            raise ValueError(f"lists GPU {repeated[0]} twice; list each GPU once")
        return ",".join(members)

    @field_validator("api_token", "orch_secret")
    @classmethod
    def _secret_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        """Empty means unset; only whitespace is a mistake (a value lost in an env file) that
        would otherwise be sent as a credential nobody holds."""
        if value is not None and value.get_secret_value() and not value.get_secret_value().strip():
            raise ValueError(
                "is only whitespace; set a long random string, or leave it empty to unset it"
            )
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


def load_settings(env_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings, turning pydantic's errors into one line per variable with its fix."""
    env_file = env_file or _env_file_from_environment()
    if env_file is not None and not env_file.is_file():
        raise SettingsError(
            f"env file {env_file}: not found — create it or drop --env-file/BYOC_ORCH_ENV_FILE"
        )
    cleaned = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = Settings(_env_file=env_file, **cleaned)  # type: ignore[call-arg]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            shown = "***" if field in SECRET_SETTINGS else repr(error.get("input"))
            lines.append(
                f"BYOC_ORCH_{field.upper()}: {error['msg']} (got {shown}) — "
                f"fix the environment variable, env file or --{field.replace('_', '-')} flag"
            )
        raise SettingsError("\n".join(lines)) from None
    generic_host = os.environ.get("DOCKER_HOST")
    if generic_host and "docker_host" not in settings.model_fields_set:
        settings = settings.model_copy(update={"docker_host": generic_host})
    return settings


def _env_file_from_environment() -> Path | None:
    value = os.environ.get("BYOC_ORCH_ENV_FILE")
    if value:
        return Path(value)
    try:
        return DEFAULT_ENV_FILE if DEFAULT_ENV_FILE.is_file() else None
    except OSError:
        return None


def reserved_ports(settings: Settings) -> dict[int, str]:
    """Host ports aiModels.json entries may not publish on."""
    return {settings.port: "byoc-orch's own HTTP API (BYOC_ORCH_PORT)"}


def require_token_off_loopback(settings: Settings) -> None:
    """Refuse to serve session calls on a reachable address with nothing guarding them: an API
    token, or a list of the only networks trusted without one."""
    if settings.api_token is not None and settings.api_token.get_secret_value():
        return
    if _is_loopback(settings.host) or settings.trusted:
        return
    raise SettingsError(
        f"BYOC_ORCH_HOST={settings.host} is not a loopback address and BYOC_ORCH_API_TOKEN is "
        "not set — set BYOC_ORCH_API_TOKEN (a long random string), bind to 127.0.0.1, or name "
        "the networks allowed without a token in BYOC_ORCH_TRUSTED_NETWORKS"
    )


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(value: str | None) -> tuple[IPNetwork, ...]:
    if not value:
        return ()
    networks = []
    for part in value.split(","):
        text = part.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(
                f"{text!r} is not a network: write addresses or CIDRs such as 10.0.0.5 or "
                "10.0.0.0/24, comma-separated"
            ) from None
    return tuple(networks)


def _client_host(host: str) -> str:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if address.is_unspecified:
        return "127.0.0.1" if address.version == 4 else "[::1]"
    return f"[{address}]" if address.version == 6 else str(address)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
