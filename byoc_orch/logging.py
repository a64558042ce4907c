"""Logging setup: one structlog pipeline for our lines and for the standard library's.

JSON lines when stderr is not a terminal (journald, files) or when asked; readable key=value
lines on a terminal. Under systemd's journal (`JOURNAL_STREAM` is set) each line starts with
its syslog priority, `<4>` for a warning and so on, which journald strips and records, so
`journalctl -p warning -u byoc-orch` and priority-based alerts see byoc-orch's failures.
uvicorn's loggers are pointed at the same handler, so its error and access
lines are JSON too. Redaction is the last step before rendering, for our lines and foreign
ones alike: values under secret-looking keys are replaced, and credentials embedded in text
(`Bearer …`, `token=…` in a query string) are masked, so a secret handed to a log call by
mistake still never reaches the journal.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SECRET_KEY = re.compile(r"token|secret|password|passwd|authorization|auth_config|credential", re.I)
REDACTED = "[redacted]"
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
_SECRET_IN_TEXT = re.compile(
    r"(?P<scheme>\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|(?P<param>\b[\w.-]*(?:token|secret|password|passwd|api[_-]?key)=)[^&\s\"']+"
    r"|(?P<userinfo>\b[a-z][a-z0-9+.-]*://)[^/@\s\"']+@",
    re.I,
)


def redact_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    return {key: _redacted(key, value) for key, value in event.items()}


def _redacted(key: str, value: Any) -> Any:
    if SECRET_KEY.search(key) and value not in (None, ""):
        return REDACTED
    if isinstance(value, dict):
        return {k: _redacted(str(k), v) for k, v in value.items()}
    if isinstance(value, str):
        return _SECRET_IN_TEXT.sub(_mask, value)
    return value


def _mask(match: re.Match[str]) -> str:
    if match.group("userinfo"):
        return match.group("userinfo") + REDACTED + "@"
    return (match.group("scheme") or match.group("param")) + REDACTED


UNFINISHED_RESPONSE = "ASGI callable returned without completing response."


class _DropUnfinishedResponse(logging.Filter):
    """uvicorn's error line for a response the app did not finish. byoc-orch leaves a response
    unfinished on purpose when a worker breaks off a streamed answer (so the client sees an
    error, not a short 200), and logs that itself with the worker named."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != UNFINISHED_RESPONSE


SYSLOG_PRIORITY = {
    "critical": 2,
    "error": 3,
    "exception": 3,
    "warning": 4,
    "warn": 4,
    "info": 6,
    "debug": 7,
    "notset": 7,
}


def _with_priority(renderer: Any) -> Any:
    """The renderer, its lines prefixed with their syslog priority for journald."""

    def render(logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        level = str(event.get("level") or method).lower()
        return f"<{SYSLOG_PRIORITY.get(level, 6)}>{renderer(logger, method, event)}"

    return render


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Route structlog and stdlib logging (uvicorn, docker, httpx) to stderr in one format."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    if os.environ.get("JOURNAL_STREAM"):
        renderer = _with_priority(renderer)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, _access_fields],
            pass_foreign_args=True,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if as_json else _identity,
                redact_secrets,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("urllib3", "docker", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    for name in UVICORN_LOGGERS:
        # uvicorn's own dictConfig (when log_config is not None) gives these loggers private
        # handlers and stops propagation, which would bypass the JSON renderer and redaction.
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
        uvicorn_logger.setLevel(logging.NOTSET)
    server_errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropUnfinishedResponse) for f in server_errors.filters):
        server_errors.addFilter(_DropUnfinishedResponse())


def _access_fields(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """Give uvicorn's access lines queryable fields as well as their formatted text."""
    args = event.pop("positional_args", None)
    record = event.get("_record")
    if (
        getattr(record, "name", None) == "uvicorn.access"
        and isinstance(args, tuple)
        and len(args) == 5
    ):
        client, method, path, _version, status = args
        event.update(client=client, method=method, path=path, status=status)
    return event


def _identity(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    return event
