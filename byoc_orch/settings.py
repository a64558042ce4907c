"""The daemon's one typed configuration object.

Precedence, highest first: command-line flags, `BYOC_ORCH_*` environment variables, the
optional env file, then the defaults below. The Docker endpoint is resolved here, explicitly,
because docker-py would otherwise follow whatever Docker CLI context the service user has.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
INSTANCE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")

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
    log_level: LogLevel = "info"
    log_format: LogFormat = Field(
        default="auto",
        description="auto: JSON lines when stderr is not a terminal (journald), else console.",
    )

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
            lines.append(
                f"BYOC_ORCH_{field.upper()}: {error['msg']} (got {error.get('input')!r}) — "
                f"fix the environment variable, env file or --{field.replace('_', '-')} flag"
            )
        raise SettingsError("\n".join(lines)) from None
    generic_host = os.environ.get("DOCKER_HOST")
    if generic_host and "docker_host" not in settings.model_fields_set:
        settings = settings.model_copy(update={"docker_host": generic_host})
    return settings


def _env_file_from_environment() -> Path | None:
    value = os.environ.get("BYOC_ORCH_ENV_FILE")
    return Path(value) if value else None
