"""Logging: structlog and stdlib lines share one format, and secrets never reach it."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from byoc_orch.logging import REDACTED, configure_logging, redact_secrets

NOISY = ("urllib3", "docker", "httpx", "httpcore")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy_levels = {name: logging.getLogger(name).level for name in NOISY}
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, noisy_level in noisy_levels.items():
        logging.getLogger(name).setLevel(noisy_level)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_structlog_and_stdlib_lines_are_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    structlog.get_logger("byoc_orch.test").info("worker warm", worker="w1", port=8001)
    logging.getLogger("uvicorn.error").warning("bound to %s:%d", "127.0.0.1", 9935)
    captured = capsys.readouterr()
    assert captured.out == ""
    ours, theirs = json_lines(captured.err)
    assert ours["event"] == "worker warm"
    assert ours["level"] == "info"
    assert ours["logger"] == "byoc_orch.test"
    assert (ours["worker"], ours["port"]) == ("w1", 8001)
    assert ours["timestamp"].endswith("Z")
    assert theirs["event"] == "bound to 127.0.0.1:9935"
    assert theirs["level"] == "warning"
    assert theirs["logger"] == "uvicorn.error"
    assert "timestamp" in theirs


@pytest.mark.parametrize(
    "key", ["token", "orch_secret", "password", "authorization", "Authorization", "auth_config"]
)
def test_secret_keys_are_redacted(key: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    structlog.get_logger("t").info("calling worker", **{key: "hunter2-value"}, model_id="m")
    err = capsys.readouterr().err
    assert "hunter2-value" not in err
    (line,) = json_lines(err)
    assert line[key] == REDACTED
    assert line["model_id"] == "m"


def test_redaction_covers_bound_context(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    log = structlog.get_logger("t").bind(registry_password="pw-value")
    log.info("pulling")
    err = capsys.readouterr().err
    assert "pw-value" not in err
    assert json_lines(err)[0]["registry_password"] == REDACTED


def test_empty_secret_values_are_left_as_they_are() -> None:
    """An empty or missing token is worth seeing: it explains an auth failure."""
    event = {"event": "x", "token": "", "password": None, "secret": "s"}
    assert redact_secrets(None, "info", event) == {
        "event": "x",
        "token": "",
        "password": None,
        "secret": REDACTED,
    }


def test_console_format_renders_key_value(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "console")
    structlog.get_logger("t").info("worker warm", worker="w1", token="tok-value")
    logging.getLogger("stdlib.test").info("plain stdlib line")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 2
    assert "worker warm" in lines[0]
    assert "worker=w1" in lines[0]
    assert f"token={REDACTED}" in lines[0]
    assert "tok-value" not in err
    assert "plain stdlib line" in lines[1]
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])


def test_debug_lines_are_dropped_at_info(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    structlog.get_logger("t").debug("structlog debug")
    logging.getLogger("stdlib.test").debug("stdlib debug")
    structlog.get_logger("t").info("structlog info")
    events = [line["event"] for line in json_lines(capsys.readouterr().err)]
    assert events == ["structlog info"]


def test_debug_level_lets_debug_through(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("debug", "json")
    structlog.get_logger("t").debug("structlog debug")
    logging.getLogger("stdlib.test").debug("stdlib debug")
    events = [line["event"] for line in json_lines(capsys.readouterr().err)]
    assert events == ["structlog debug", "stdlib debug"]


def test_noisy_libraries_stay_at_warning_even_at_debug(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("debug", "json")
    logging.getLogger("urllib3.connectionpool").debug("Starting new HTTP connection")
    logging.getLogger("docker.api").info("chatty")
    logging.getLogger("httpx").warning("worth seeing")
    events = [line["event"] for line in json_lines(capsys.readouterr().err)]
    assert events == ["worth seeing"]


def test_exceptions_are_rendered_into_the_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    try:
        raise RuntimeError("engine went away")
    except RuntimeError:
        structlog.get_logger("t").exception("reconcile failed")
    (line,) = json_lines(capsys.readouterr().err)
    assert line["event"] == "reconcile failed"
    assert line["level"] == "error"
    assert "RuntimeError: engine went away" in line["exception"]


def test_reconfiguring_replaces_the_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    configure_logging("info", "json")
    logging.getLogger("stdlib.test").warning("once")
    assert len(json_lines(capsys.readouterr().err)) == 1


def test_uvicorn_loggers_come_out_as_json_even_after_uvicorns_own_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """uvicorn's default log_config gives its loggers private handlers; ours takes them back."""
    import logging.config

    from uvicorn.config import LOGGING_CONFIG

    logging.config.dictConfig(LOGGING_CONFIG)
    configure_logging("info", "json")
    logging.getLogger("uvicorn.error").info("Uvicorn running on %s", "http://127.0.0.1:9935")
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:51234", "GET", "/workers", "1.1", 200
    )
    logging.getLogger("uvicorn").warning("plain uvicorn line")
    error, access, plain = json_lines(capsys.readouterr().err)
    assert error["event"] == "Uvicorn running on http://127.0.0.1:9935"
    assert error["logger"] == "uvicorn.error"
    assert access["event"] == '127.0.0.1:51234 - "GET /workers HTTP/1.1" 200'
    assert access["logger"] == "uvicorn.access"
    assert (access["method"], access["path"], access["status"]) == ("GET", "/workers", 200)
    assert access["client"] == "127.0.0.1:51234"
    assert plain["event"] == "plain uvicorn line"
    assert "positional_args" not in error
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        assert logging.getLogger(name).handlers == []


def test_worker_lines_carry_the_worker_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    log = structlog.get_logger("byoc_orch.worker").bind(
        pipeline="live-video-to-video",
        model_id="comfyui",
        worker_id="live-video-to-video-comfyui-1a2b3c4d",
        container_id="0123456789ab",
    )
    log.info("worker warm", latency=0.012)
    (line,) = json_lines(capsys.readouterr().err)
    assert line["event"] == "worker warm"
    assert line["pipeline"] == "live-video-to-video"
    assert line["model_id"] == "comfyui"
    assert line["worker_id"] == "live-video-to-video-comfyui-1a2b3c4d"
    assert line["container_id"] == "0123456789ab"


def test_context_vars_reach_foreign_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    with structlog.contextvars.bound_contextvars(worker_id="w1", model_id="m"):
        logging.getLogger("httpx").warning("connection reset")
    (line,) = json_lines(capsys.readouterr().err)
    assert (line["worker_id"], line["model_id"]) == ("w1", "m")


def test_secrets_inside_text_are_masked_in_foreign_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/x?api_token=tok-1&y=2", "1.1", 200
    )
    logging.getLogger("httpx").warning("sent Authorization: Bearer tok-2-long-enough upstream")
    structlog.get_logger("t").info("header was Basic dXNlcjpwYXNz", url="http://h/?secret=tok-3")
    err = capsys.readouterr().err
    for secret in ("tok-1", "tok-2", "tok-3", "dXNlcjpwYXNz"):
        assert secret not in err
    access, httpx_line, ours = json_lines(err)
    assert access["path"] == f"/x?api_token={REDACTED}&y=2"
    assert access["event"].endswith(f'"GET /x?api_token={REDACTED}&y=2 HTTP/1.1" 200')
    assert httpx_line["event"] == f"sent Authorization: Bearer {REDACTED} upstream"
    assert ours["event"] == f"header was Basic {REDACTED}"
    assert ours["url"] == f"http://h/?secret={REDACTED}"


def test_secrets_in_exception_text_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    try:
        raise RuntimeError("registry said no to password=hunter2")
    except RuntimeError:
        logging.getLogger("docker.api").exception("pull failed")
    err = capsys.readouterr().err
    assert "hunter2" not in err
    (line,) = json_lines(err)
    assert f"password={REDACTED}" in line["exception"]


def test_ordinary_text_is_left_alone() -> None:
    event = {"event": "token refused by worker; tokens=3 bearer of news", "n": 1}
    assert redact_secrets(None, "info", event) == event


def test_auto_format_is_json_when_stderr_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "auto")
    structlog.get_logger("t").info("under journald")
    (line,) = json_lines(capsys.readouterr().err)
    assert line["event"] == "under journald"


def test_auto_format_is_console_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    configure_logging("info", "auto")
    structlog.get_logger("t").info("on a terminal", worker="w1")
    err = capsys.readouterr().err
    assert "on a terminal" in err
    assert "worker" in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err.splitlines()[0])
