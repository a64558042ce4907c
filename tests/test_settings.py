"""Settings: defaults, sources and their precedence, the Docker endpoint, and error wording."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from docker.context import ContextAPI

from byoc_orch.settings import DEFAULT_DOCKER_HOST, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No BYOC_ORCH_*/DOCKER_HOST from the developer's shell, and a HOME without Docker config."""
    for name in list(os.environ):
        if name.startswith("BYOC_ORCH_") or name in ("DOCKER_HOST", "DOCKER_CONTEXT"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)


def write_env_file(path: Path, **values: str) -> Path:
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return path


def test_defaults() -> None:
    settings = load_settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 9935
    assert settings.instance == "default"
    assert settings.docker_host == DEFAULT_DOCKER_HOST == "unix:///var/run/docker.sock"
    assert settings.models_path == Path("/etc/byoc-orch/aiModels.json")
    assert settings.log_level == "info"
    assert settings.log_format == "auto"
    assert settings.docker_config is None


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOC_ORCH_HOST", "0.0.0.0")
    monkeypatch.setenv("BYOC_ORCH_PORT", "8100")
    monkeypatch.setenv("BYOC_ORCH_INSTANCE", "gpu-box.2")
    monkeypatch.setenv("BYOC_ORCH_MODELS_PATH", "/srv/aiModels.json")
    monkeypatch.setenv("BYOC_ORCH_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("BYOC_ORCH_LOG_FORMAT", "json")
    monkeypatch.setenv("BYOC_ORCH_PULL_PROGRESS_INTERVAL", "2.5")
    settings = load_settings()
    assert settings.host == "0.0.0.0"
    assert settings.port == 8100
    assert settings.instance == "gpu-box.2"
    assert settings.models_path == Path("/srv/aiModels.json")
    assert settings.log_level == "debug"
    assert settings.log_format == "json"
    assert settings.pull_progress_interval == 2.5


def test_env_file_argument_is_read(tmp_path: Path) -> None:
    env_file = write_env_file(
        tmp_path / "byoc.env", BYOC_ORCH_PORT="8200", BYOC_ORCH_INSTANCE="from-file"
    )
    settings = load_settings(env_file=env_file)
    assert settings.port == 8200
    assert settings.instance == "from-file"


def test_env_file_named_by_environment_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = write_env_file(tmp_path / "byoc.env", BYOC_ORCH_PORT="8300")
    monkeypatch.setenv("BYOC_ORCH_ENV_FILE", str(env_file))
    assert load_settings().port == 8300


def test_env_file_argument_beats_env_file_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = write_env_file(tmp_path / "named.env", BYOC_ORCH_PORT="8301")
    given = write_env_file(tmp_path / "given.env", BYOC_ORCH_PORT="8302")
    monkeypatch.setenv("BYOC_ORCH_ENV_FILE", str(named))
    assert load_settings(env_file=given).port == 8302


def test_precedence_flags_over_env_over_file_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = write_env_file(
        tmp_path / "byoc.env",
        BYOC_ORCH_PORT="1001",
        BYOC_ORCH_INSTANCE="file",
        BYOC_ORCH_HOST="10.0.0.1",
    )
    monkeypatch.setenv("BYOC_ORCH_PORT", "1002")
    monkeypatch.setenv("BYOC_ORCH_INSTANCE", "env")
    settings = load_settings(env_file=env_file, port=1003)
    assert settings.port == 1003  # flag beats env and file
    assert settings.instance == "env"  # env beats file
    assert settings.host == "10.0.0.1"  # file beats default
    assert settings.log_level == "info"  # default where nothing is set


def test_none_overrides_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = write_env_file(tmp_path / "byoc.env", BYOC_ORCH_INSTANCE="file")
    monkeypatch.setenv("BYOC_ORCH_PORT", "1002")
    settings = load_settings(env_file=env_file, port=None, instance=None, host=None)
    assert settings.port == 1002
    assert settings.instance == "file"
    assert settings.host == "127.0.0.1"


def test_docker_host_variable_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.1.2.3:2375")
    assert load_settings().docker_host == "tcp://10.1.2.3:2375"


def test_byoc_orch_docker_host_beats_docker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.1.2.3:2375")
    monkeypatch.setenv("BYOC_ORCH_DOCKER_HOST", "unix:///run/byoc/docker.sock")
    assert load_settings().docker_host == "unix:///run/byoc/docker.sock"


def test_docker_host_flag_beats_both_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.1.2.3:2375")
    monkeypatch.setenv("BYOC_ORCH_DOCKER_HOST", "unix:///run/byoc/docker.sock")
    assert load_settings(docker_host="unix:///flag.sock").docker_host == "unix:///flag.sock"


def test_docker_host_from_env_file(tmp_path: Path) -> None:
    env_file = write_env_file(tmp_path / "byoc.env", BYOC_ORCH_DOCKER_HOST="tcp://file:2375")
    assert load_settings(env_file=env_file).docker_host == "tcp://file:2375"


def test_byoc_orch_docker_host_in_env_file_beats_generic_docker_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = write_env_file(tmp_path / "byoc.env", BYOC_ORCH_DOCKER_HOST="tcp://file:2375")
    monkeypatch.setenv("DOCKER_HOST", "tcp://shell:2375")
    assert load_settings(env_file=env_file).docker_host == "tcp://file:2375"


def test_docker_cli_context_is_not_followed(tmp_path: Path) -> None:
    """docker-py 7.2 would follow the CLI's current context; the daemon must not."""
    docker_dir = Path(os.environ["HOME"]) / ".docker"
    docker_dir.mkdir()
    (docker_dir / "config.json").write_text(json.dumps({"currentContext": "remote"}))
    # The CLI stores a context's meta under contexts/meta/<sha256 of its name>/meta.json.
    meta_dir = docker_dir / "contexts" / "meta" / hashlib.sha256(b"remote").hexdigest()
    meta_dir.mkdir(parents=True)
    (meta_dir / "meta.json").write_text(
        json.dumps(
            {
                "Name": "remote",
                "Metadata": {},
                "Endpoints": {"docker": {"Host": "tcp://remote.example:2376"}},
            }
        )
    )
    # The fake context is real enough for docker-py to follow it ...
    assert ContextAPI.get_current_context().Host == "tcp://remote.example:2376"
    # ... and the daemon's setting still names the local socket.
    assert load_settings().docker_host == "unix:///var/run/docker.sock"


@pytest.mark.parametrize(
    ("overrides", "variable", "flag"),
    [
        ({"instance": "Has Spaces"}, "BYOC_ORCH_INSTANCE", "--instance"),
        ({"instance": "x" * 33}, "BYOC_ORCH_INSTANCE", "--instance"),
        ({"instance": "-leading-dash"}, "BYOC_ORCH_INSTANCE", "--instance"),
        ({"port": 0}, "BYOC_ORCH_PORT", "--port"),
        ({"port": 70000}, "BYOC_ORCH_PORT", "--port"),
        ({"log_level": "verbose"}, "BYOC_ORCH_LOG_LEVEL", "--log-level"),
    ],
)
def test_bad_values_name_the_variable_and_the_fix(
    overrides: dict[str, object], variable: str, flag: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    message = str(caught.value)
    assert message.startswith(f"{variable}:")
    assert "fix the environment variable, env file or" in message
    assert flag in message
    assert repr(next(iter(overrides.values()))) in message


def test_bad_environment_value_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOC_ORCH_PORT", "not-a-port")
    with pytest.raises(SettingsError, match=r"^BYOC_ORCH_PORT: .*'not-a-port'"):
        load_settings()


def test_every_bad_value_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOC_ORCH_PORT", "0")
    monkeypatch.setenv("BYOC_ORCH_LOG_LEVEL", "loud")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    lines = str(caught.value).splitlines()
    assert sorted(line.split(":")[0] for line in lines) == [
        "BYOC_ORCH_LOG_LEVEL",
        "BYOC_ORCH_PORT",
    ]


def test_bad_value_in_env_file_is_reported(tmp_path: Path) -> None:
    env_file = write_env_file(tmp_path / "byoc.env", BYOC_ORCH_INSTANCE="UPPER")
    with pytest.raises(SettingsError, match=r"^BYOC_ORCH_INSTANCE: "):
        load_settings(env_file=env_file)


def test_missing_env_file_argument(tmp_path: Path) -> None:
    missing = tmp_path / "absent.env"
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=missing)
    message = str(caught.value)
    assert str(missing) in message
    assert "not found" in message
    assert "BYOC_ORCH_ENV_FILE" in message


def test_missing_env_file_from_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "absent.env"
    monkeypatch.setenv("BYOC_ORCH_ENV_FILE", str(missing))
    with pytest.raises(SettingsError, match="not found"):
        load_settings()


def test_docker_config_directory_resolves_to_its_config_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert load_settings(docker_config=tmp_path).docker_config == tmp_path / "config.json"


def test_missing_docker_config_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^BYOC_ORCH_DOCKER_CONFIG: .*does not exist"):
        load_settings(docker_config=tmp_path / "nope.json")


def test_a_reachable_address_needs_an_api_token() -> None:
    from byoc_orch.settings import require_token_off_loopback

    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        require_token_off_loopback(load_settings(host=host))
    with pytest.raises(SettingsError) as refused:
        require_token_off_loopback(load_settings(host="0.0.0.0"))
    assert "BYOC_ORCH_API_TOKEN" in str(refused.value)
    require_token_off_loopback(load_settings(host="0.0.0.0", api_token="long-random"))


def test_secret_settings_are_never_echoed_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOC_ORCH_ORCH_URL", "not a url")
    with pytest.raises(SettingsError) as refused:
        load_settings(orch_secret=["hunter2-secret"], api_token={"t": "hunter3-token"})
    message = str(refused.value)
    assert "BYOC_ORCH_ORCH_URL" in message
    assert "BYOC_ORCH_ORCH_SECRET" in message
    assert "BYOC_ORCH_API_TOKEN" in message
    assert "hunter" not in message


def test_gpu_pool_is_unset_by_default() -> None:
    settings = load_settings()
    assert settings.gpus is None
    assert settings.gpu_pool_setting is None


def test_gpu_pool_from_the_environment_keeps_the_operators_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BYOC_ORCH_GPUS", " 2, 0 ,GPU-6f2a-uuid,01")
    settings = load_settings()
    assert settings.gpu_pool_setting == ("2", "0", "GPU-6f2a-uuid", "1")


def test_empty_gpu_pool_in_an_env_file_means_unset(tmp_path: Path) -> None:
    env_file = write_env_file(tmp_path / "byoc.env", BYOC_ORCH_GPUS="")
    assert load_settings(env_file=env_file).gpu_pool_setting is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("0,,1", "has an empty member"),
        ("0,", "has an empty member"),
        ("0 1", "separate GPUs with commas"),
        ("0,1,0", "lists GPU 0 twice"),
        ("1,01", "lists GPU 1 twice"),
        ("GPU-ab,gpu-AB", "lists GPU GPU-ab twice"),
    ],
)
def test_bad_gpu_pools_name_the_variable_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, value: str, reason: str
) -> None:
    monkeypatch.setenv("BYOC_ORCH_GPUS", value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("BYOC_ORCH_GPUS: ")
    assert reason in message
    assert repr(value) in message


@pytest.mark.parametrize(
    ("field", "variable"),
    [("api_token", "BYOC_ORCH_API_TOKEN"), ("orch_secret", "BYOC_ORCH_ORCH_SECRET")],
)
@pytest.mark.parametrize("blank", [" ", "\t", "  \n"])
def test_whitespace_only_secrets_are_refused(
    monkeypatch: pytest.MonkeyPatch, field: str, variable: str, blank: str
) -> None:
    monkeypatch.setenv(variable, blank)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"{variable}: ")
    assert "is only whitespace" in message
    assert "(got ***)" in message


@pytest.mark.parametrize("variable", ["BYOC_ORCH_API_TOKEN", "BYOC_ORCH_ORCH_SECRET"])
def test_an_empty_secret_still_means_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    env_file = write_env_file(tmp_path / "byoc.env", **{variable: ""})
    monkeypatch.setenv(variable, "")
    for settings in (load_settings(), load_settings(env_file=env_file)):
        secret = settings.api_token if variable.endswith("API_TOKEN") else settings.orch_secret
        assert secret is None or secret.get_secret_value() == ""


def test_an_empty_api_token_does_not_guard_a_reachable_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from byoc_orch.settings import require_token_off_loopback

    monkeypatch.setenv("BYOC_ORCH_API_TOKEN", "")
    with pytest.raises(SettingsError, match="BYOC_ORCH_API_TOKEN is not set"):
        require_token_off_loopback(load_settings(host="0.0.0.0"))


def test_a_secret_with_surrounding_spaces_is_kept_as_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BYOC_ORCH_API_TOKEN", " long-random ")
    settings = load_settings()
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == " long-random "
