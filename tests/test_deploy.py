"""The deploy/ kit: the dashboard asks for metrics that exist and provisions from a file, the unit
and the sysusers file are what systemd accepts, the compose file is what Compose v2 accepts and
starts a go-livepeer orchestrator byoc-orch registers with, and every setting named anywhere in
the kit is one byoc-orch reads.

The checks that need a tool (systemd-analyze, systemd-sysusers, docker compose v2) fail under
CI=true when it is missing; scripts/test-env.sh installs them."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from byoc_orch.gpu import GpuCollector, GpuReader
from byoc_orch.metrics import Metrics
from byoc_orch.settings import Settings
from tests.test_gpu import two_gpus

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
METRIC = re.compile(r"\bbyoc_orch_[a-z_]+\b")
SETTING = re.compile(r"\bBYOC_ORCH_[A-Z_]+\b")
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "info": ("_info",),
    "gauge": ("",),
}


def exportable_names() -> set[str]:
    """Every sample name /metrics can carry, labelled series or not yet, GPU gauges included."""
    metrics = Metrics()
    metrics.add_worker("live-video-to-video", "comfyui", 1)
    metrics.register(GpuCollector(GpuReader(two_gpus())))
    names = set()
    for family in metrics.registry.collect():
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana-dashboard.json").read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [panel for panel in found if panel["type"] != "row"]


def queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]
    exprs += [
        variable["definition"]
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    ]
    return exprs


def requires_tool(available: bool, what: str) -> None:
    """Skip a check whose tool is missing, except under CI, where that is a failure."""
    if available:
        return
    message = f"{what} is missing: bash scripts/test-env.sh installs it"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def datasource_variable(dashboard: dict[str, Any]) -> str:
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    return str(variable["name"])


def datasource_references(dashboard: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every data source a panel, a target or a query variable names."""
    for panel in dashboard["panels"]:
        for each in (panel, *panel.get("panels", [])):
            if each["type"] != "row" or "datasource" in each:
                yield each["title"], each.get("datasource")
            for target in each.get("targets", []):
                yield f"{each['title']} {target['refId']}", target.get("datasource")
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"${variable['name']}", variable.get("datasource")


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for each in value.values():
            yield from strings(each)
    elif isinstance(value, list):
        for each in value:
            yield from strings(each)


def test_dashboard_is_a_provisionable_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    """File provisioning does no import: no __inputs to fill in, the data source is a variable."""
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] == "byoc-orch"
    assert dashboard["title"]
    assert dashboard["id"] is None, "a provisioned dashboard gets its id from Grafana"
    assert "__inputs" not in dashboard, "provisioning never fills in __inputs placeholders"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variable = datasource_variable(dashboard)
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names[0] == variable, "the data source variable comes first: the others query it"
    for panel in panels(dashboard):
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    references = list(datasource_references(dashboard))
    assert len(references) > len(panels(dashboard))
    for where, source in references:
        assert source == {"type": "prometheus", "uid": f"${{{variable}}}"}, where


def test_every_dashboard_placeholder_is_a_variable_it_defines(dashboard: dict[str, Any]) -> None:
    """No ${DS_PROMETHEUS} or other import-time placeholder left dangling."""
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    used = {
        match.group(1) or match.group(2)
        for text in strings(dashboard)
        for match in re.finditer(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", text)
    }
    assert used, "the dashboard uses no variable at all"
    assert {name for name in used if not name.startswith("__")} <= defined


GRAFANA = DEPLOY / "grafana" / "provisioning"


def test_grafana_provisioning_example_points_at_the_dashboard(dashboard: dict[str, Any]) -> None:
    providers = yaml.safe_load((GRAFANA / "dashboards" / "byoc-orch.yaml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    sources = yaml.safe_load((GRAFANA / "datasources" / "prometheus.yaml").read_text())
    assert sources["apiVersion"] == 1
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus", "what the dashboard's data source variable lists"
    assert urlsplit(source["url"]).scheme in ("http", "https")
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    assert source["jsonData"]["timeInterval"] == job["scrape_interval"]


def test_every_dashboard_query_names_a_metric_that_exists(dashboard: dict[str, Any]) -> None:
    known = exportable_names()
    used = {name for expr in queries(dashboard) for name in METRIC.findall(expr)}
    assert used, "the dashboard queries no byoc_orch metric at all"
    assert used - known == set()


def test_every_panel_queries_byoc_orch(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        for target in panel["targets"]:
            assert METRIC.search(target["expr"]), f"{panel['title']}: {target['expr']}"


def test_dashboard_covers_what_operators_watch(dashboard: dict[str, Any]) -> None:
    used = {name for expr in queries(dashboard) for name in METRIC.findall(expr)}
    assert {
        "byoc_orch_worker_state",
        "byoc_orch_capabilities_warm",
        "byoc_orch_container_restarts_total",
        "byoc_orch_health_probe_duration_seconds_bucket",
        "byoc_orch_health_probe_failures_total",
        "byoc_orch_sessions_active",
        "byoc_orch_sessions_started_total",
        "byoc_orch_sessions_ended_total",
        "byoc_orch_proxy_request_duration_seconds_bucket",
        "byoc_orch_image_pulls_total",
        "byoc_orch_config_reloads_total",
        "byoc_orch_gpu_utilization_ratio",
        "byoc_orch_gpu_memory_used_bytes",
    } <= used


def test_the_name_check_would_catch_a_typo() -> None:
    known = exportable_names()
    assert "byoc_orch_gpu_utilization_ratio" in known
    assert "byoc_orch_advertiser_calls_total" in known, "unlabelled counters count too"
    assert "byoc_orch_gpu_utilisation_ratio" not in known
    assert "byoc_orch_worker_states" not in known


def unit_settings(text: str) -> dict[str, list[str]]:
    """[Service]-and-friends as systemd reads them: a key may repeat, later lines add."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


UNIT = DEPLOY / "byoc-orch.service"


def test_unit_is_a_notify_service_with_reload_and_watchdog() -> None:
    unit = unit_settings(UNIT.read_text())
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert unit["ExecStart"] == ["/usr/local/bin/byoc-orch run"]
    # Synchronous: exits non-zero when the daemon rejects the file, so `systemctl reload` fails.
    assert unit["ExecReload"] == ["/usr/local/bin/byoc-orch reload"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["EnvironmentFile"] == ["-/etc/byoc-orch/byoc-orch.env"]
    assert int(unit["WatchdogSec"][0]) >= 10
    assert int(unit["TimeoutStartSec"][0]) >= 60
    for key in ("Wants", "After"):
        assert set(unit[key][0].split()) >= {"docker.service", "network-online.target"}
    assert unit["User"] == ["byoc-orch"]
    assert unit["SupplementaryGroups"] == ["docker"]


def test_unit_has_room_for_connections_and_waits_for_the_nvidia_driver() -> None:
    unit = unit_settings(UNIT.read_text())
    assert int(unit["LimitNOFILE"][0]) >= 65536
    after = {name for line in unit["After"] for name in line.split()}
    wants = {name for line in unit["Wants"] for name in line.split()}
    assert "nvidia-persistenced.service" in after
    assert "nvidia-persistenced.service" not in wants, "absent on hosts without the driver"
    assert "Requires" not in unit


def test_unit_is_hardened_without_hiding_the_gpus() -> None:
    unit = unit_settings(UNIT.read_text())
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "ReadOnlyPaths": "/etc/byoc-orch",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }.items():
        assert unit.get(key) == [value], key
    assert unit.get("PrivateDevices", ["no"]) == ["no"], "PrivateDevices=yes hides /dev/nvidia*"
    assert "char-nvidia* rw" in unit["DeviceAllow"]
    assert "ProcSubset" not in unit, "ProcSubset=pid hides /proc/driver/nvidia from NVML"


def verify_unit(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of the unit with ExecStart=/ExecReload= pointing at a stub:
    verify checks that the commands exist, and byoc-orch is not installed at
    /usr/local/bin here. It needs no running systemd (no PID 1, no D-Bus)."""
    requires_tool(shutil.which("systemd-analyze") is not None, "systemd-analyze (systemd)")
    stub = tmp_path / "byoc-orch"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copy = tmp_path / "byoc-orch.service"
    copy.write_text(text.replace("/usr/local/bin/byoc-orch", str(stub)))
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """Verified as shipped, except ExecStart pointing at a binary that exists here."""
    result = verify_unit(tmp_path, UNIT.read_text())
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "Unknown" not in report, report
    assert "ignoring" not in report, report


def test_systemd_analyze_verify_accepts_the_socket_beside_the_service(tmp_path: Path) -> None:
    """The socket unit as shipped, verified together with the service it activates."""
    verify_unit(tmp_path, UNIT.read_text())  # writes the service copy beside the socket
    socket_unit = tmp_path / "byoc-orch.socket"
    socket_unit.write_text((ROOT / "deploy" / "byoc-orch.socket").read_text())
    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            str(socket_unit),
            str(tmp_path / "byoc-orch.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "Unknown" not in report and "ignoring" not in report, report
    text = socket_unit.read_text()
    for line in ("ListenStream=127.0.0.1:9935", "Accept=no", "NoDelay=true"):
        assert f"\n{line}\n" in text, line
    # A restart of the service propagated to the socket would close it under waiting calls.
    directives = [line.split("=", 1)[0] for line in text.splitlines() if "=" in line]
    assert not {"PartOf", "BindsTo", "Requires"} & {d for d in directives if d[:1] != "#"}


def test_systemd_analyze_verify_would_catch_a_typo(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert "\nLimitNOFILE=65536\n" in text
    broken = text.replace("\nLimitNOFILE=65536\n", "\nLimitNOFILE=lots\nRestartSecs=2\n")
    result = verify_unit(tmp_path, broken)
    report = result.stdout + result.stderr
    assert "Unknown key 'RestartSecs'" in report, report
    assert "Failed to parse resource value, ignoring: lots" in report, report


SYSUSERS = DEPLOY / "byoc-orch.sysusers.conf"


def test_sysusers_file_creates_the_unit_user_in_the_docker_group(tmp_path: Path) -> None:
    """systemd-sysusers applied to an empty root, as on a fresh host."""
    requires_tool(shutil.which("systemd-sysusers") is not None, "systemd-sysusers (systemd)")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    result = subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    unit = unit_settings(UNIT.read_text())
    passwd = {
        fields[0]: fields
        for fields in (line.split(":") for line in (root / "etc/passwd").read_text().splitlines())
    }
    groups = {
        fields[0]: fields
        for fields in (line.split(":") for line in (root / "etc/group").read_text().splitlines())
    }
    user = passwd[unit["User"][0]]
    uid, gid, home, shell = int(user[2]), user[3], user[5], user[6]
    assert uid < 1000, "a system user"
    assert groups[unit["Group"][0]][2] == gid, "its primary group is the unit's Group="
    assert not home.startswith("/home/"), "ProtectHome=yes hides /home"
    assert shell == "/usr/sbin/nologin"
    assert unit["User"][0] in groups[unit["SupplementaryGroups"][0]][3].split(",")


COMPOSE = DEPLOY / "docker-compose.yml"
# What an operator's .env holds (the compose file's header lists it).
COMPOSE_ENV = {"DOCKER_GID": "999", "ORCH_SERVICE_ADDR": "orch.example.com:8935"}
INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_]\w*))"
)
GO_BOOL_FLAGS = {"orchestrator", "transcoder", "gateway", "aiWorker", "monitor", "httpIngest"}
TAG_NOT_PINNED = {"", "latest", "master", "main", "stable", "nightly", "edge"}


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $$."""
    if isinstance(value, dict):
        return {key: interpolate(each, env) for key, each in value.items()}
    if isinstance(value, list):
        return [interpolate(each, env) for each in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name, op, arg = match["name"] or match["bare"], match["op"], match["arg"]
        have = env.get(name)
        unset = have is None or (have == "" and op is not None and op.startswith(":"))
        if op is not None and op.endswith("?") and unset:
            raise LookupError(f"required variable {name} is missing: {arg}")
        if op is not None and op.endswith("-") and unset:
            return str(arg)
        return have or ""

    return INTERPOLATION.sub(one, value)


def compose_variables(text: str) -> set[str]:
    return {
        match["name"] or match["bare"]
        for match in INTERPOLATION.finditer(text)
        if not match["escaped"]
    }


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    resolved = interpolate(loaded, COMPOSE_ENV if env is None else env)
    assert isinstance(resolved, dict)
    return resolved


def go_flags(command: str | list[str]) -> dict[str, str]:
    """go-livepeer's command line as Go's flag package reads it: -name=value, -name value, and
    bare boolean flags."""
    words = shlex.split(command) if isinstance(command, str) else list(command)
    flags: dict[str, str] = {}
    while words:
        word = words.pop(0)
        assert word.startswith("-"), f"not a flag: {word!r}"
        name, sep, value = word.lstrip("-").partition("=")
        if not sep:
            if name in GO_BOOL_FLAGS:
                value = "true"
            else:
                assert words and not words[0].startswith("-"), f"-{name} has no value"
                value = words.pop(0)
        assert name not in flags, f"-{name} given twice"
        flags[name] = value
    return flags


def image_tag(image: str) -> str:
    if "@sha256:" in image:
        return image.rsplit("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.partition(":")[2]


def test_compose_is_a_compose_v2_file_with_pinned_images() -> None:
    text = COMPOSE.read_text()
    header = text.split("\nname:", 1)[0]
    assert "Compose v2" in header and "docker compose" in header
    project = compose()
    assert "version" not in project, "Compose v2 reads no top-level version: (and warns on it)"
    for name, service in project["services"].items():
        if "build" in service:
            continue
        tag = image_tag(service["image"])
        assert tag.lower() not in TAG_NOT_PINNED, f"{name}: {service['image']} is not pinned"
    go = project["services"]["go-livepeer"]
    assert re.fullmatch(r"livepeer/go-livepeer:v\d+\.\d+\.\d+", go["image"]), go["image"]
    assert "releases" in text, "a comment says where to check the current release"
    for variable in compose_variables(text):
        assert variable in header, f"${{{variable}}} is not explained in the header"


def test_compose_starts_go_livepeer_as_an_orchestrator_byoc_orch_registers_with() -> None:
    project = compose()
    services = project["services"]
    flags = go_flags(services["go-livepeer"]["command"])
    assert flags["orchestrator"] == "true"
    for required in ("orchSecret", "serviceAddr", "pricePerUnit"):
        assert flags.get(required), f"go-livepeer needs -{required}"
    assert int(flags["pricePerUnit"]) >= 0
    if flags.get("network", "offchain") != "offchain":
        assert flags.get("ethPassword") and flags.get("ethUrl"), "on-chain needs an account"
    assert "-ethPassword" in COMPOSE.read_text(), "a comment says what on-chain needs"
    # go-livepeer listens on -httpAddr, else on -serviceAddr's port on every interface.
    listen = flags.get("httpAddr") or ":" + flags["serviceAddr"].rsplit(":", 1)[1]
    listen_host, _, listen_port = listen.rpartition(":")
    environment = services["byoc-orch"]["environment"]
    orch_url = urlsplit(environment["BYOC_ORCH_ORCH_URL"])
    assert orch_url.scheme == "https", "go-livepeer serves its orchestrator API over TLS only"
    assert str(orch_url.port) == listen_port
    assert orch_url.hostname == "127.0.0.1"
    assert listen_host in ("", "0.0.0.0", "127.0.0.1")
    assert {services[s].get("network_mode") for s in ("byoc-orch", "go-livepeer")} == {"host"}
    # One secret, read by both: go-livepeer as -orchSecret=<file>, byoc-orch into ORCH_SECRET.
    secret = flags["orchSecret"]
    assert secret.startswith("/run/secrets/"), "the secret stays off the command line"
    name = secret.removeprefix("/run/secrets/")
    assert name in project["secrets"]
    assert name in services["go-livepeer"]["secrets"]
    assert name in services["byoc-orch"]["secrets"]
    assert "BYOC_ORCH_ORCH_SECRET" not in environment, "not in `docker inspect`"
    entrypoint = " ".join(services["byoc-orch"]["entrypoint"])
    assert f'BYOC_ORCH_ORCH_SECRET="$(cat {secret})"' in entrypoint
    assert entrypoint.endswith("exec byoc-orch run"), "byoc-orch is PID 1: it gets the signals"
    assert environment["BYOC_ORCH_PUBLIC_URL"].endswith(":" + environment["BYOC_ORCH_PORT"])


def test_compose_volumes_ports_and_secrets_are_well_formed() -> None:
    project = compose()
    named = set(project.get("volumes") or {})
    for name, service in project["services"].items():
        for volume in service.get("volumes", []):
            assert isinstance(volume, str), f"{name}: use the short syntax like the rest"
            source, target, *mode = volume.split(":")
            assert len(mode) <= 1, volume
            assert target.startswith("/"), volume
            assert set(mode) <= {"ro", "rw"}, volume
            if not source.startswith(("/", "./", "../")):
                assert source in named, f"{name}: volume {source} is not declared"
        if service.get("network_mode") == "host":
            assert "ports" not in service, f"{name}: host networking publishes nothing"
        for port in service.get("ports", []):
            assert re.fullmatch(r"(\d{1,3}(\.\d{1,3}){3}:)?\d+:\d+(/(tcp|udp))?", str(port))
        for secret in service.get("secrets", []):
            assert secret in project["secrets"], f"{name}: secret {secret} is not declared"
    for secret in project["secrets"].values():
        assert secret["file"].startswith("./"), "next to the compose file, as the header says"
    with pytest.raises(LookupError, match="DOCKER_GID"):
        compose({"ORCH_SERVICE_ADDR": "orch.example.com:8935"})
    with pytest.raises(LookupError, match="ORCH_SERVICE_ADDR"):
        compose({"DOCKER_GID": "999"})


def compose_v2() -> list[str] | None:
    """The Compose v2 (Go) command here: the docker CLI plugin, or a standalone binary."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        try:
            result = subprocess.run(
                [*command, "version", "--short"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        major = result.stdout.strip().removeprefix("v").split(".")[0]
        if result.returncode == 0 and major.isdigit() and int(major) >= 2:
            return command
    return None


def test_docker_compose_v2_accepts_the_file() -> None:
    """Compose v2 itself resolves the file (`config` reaches no engine) and agrees with the
    reading above; without the .env variables it refuses, naming them."""
    command = compose_v2()
    requires_tool(command is not None, "Docker Compose v2 (docker compose)")
    assert command is not None
    env = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME")}

    def run(*args: str, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, "-f", str(COMPOSE), "--project-directory", str(DEPLOY), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**env, **extra},
        )

    checked = run("config", "-q", extra=COMPOSE_ENV)
    assert checked.returncode == 0, checked.stderr
    resolved = run("config", "--format", "json", extra=COMPOSE_ENV)
    assert resolved.returncode == 0, resolved.stderr
    # Compose prints a file it could read back: `$$` stays escaped there.
    theirs = interpolate(json.loads(resolved.stdout), {})["services"]
    ours = compose()["services"]
    assert set(theirs) == set(ours)
    for name, service in ours.items():
        for key in ("image", "command", "entrypoint", "environment", "network_mode"):
            assert theirs[name].get(key) == service.get(key), (name, key)
        mounts = {volume["target"]: volume for volume in theirs[name].get("volumes", [])}
        for volume in service.get("volumes", []):
            source, target, *mode = volume.split(":")
            assert mounts[target].get("read_only", False) == (mode == ["ro"]), volume
            if source.startswith("./"):
                assert mounts[target]["source"] == str(DEPLOY / source), volume
    missing = run("config", "-q", extra={"DOCKER_GID": "999"})
    assert missing.returncode != 0
    assert "ORCH_SERVICE_ADDR" in missing.stderr


def test_compose_runs_byoc_orch_on_the_host_network_beside_go_livepeer() -> None:
    text = COMPOSE.read_text()
    assert "\t" not in text, "YAML forbids tabs"
    assert re.search(r"^services:\n  byoc-orch:\n", text, re.M)
    assert re.search(r"^  go-livepeer:\n", text, re.M)
    assert text.count("network_mode: host") == 2
    assert "- /var/run/docker.sock:/var/run/docker.sock\n" in text
    assert "- ./config:/etc/byoc-orch:ro\n" in text
    for setting in ("BYOC_ORCH_ORCH_URL", "BYOC_ORCH_ORCH_SECRET", "BYOC_ORCH_PUBLIC_URL"):
        assert setting in text
    assert "- -orchSecret=/run/secrets/orch_secret\n" in text
    assert "dockerfile: deploy/Dockerfile\n" in text


def test_dockerfile_context_lets_through_what_it_copies() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    copied = [
        source
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    ]
    assert copied == ["pyproject.toml", "README.md", "byoc_orch"]
    for source in copied:
        assert f"!{source}" in ignore or f"!{source}/" in ignore, source
    assert 'ENTRYPOINT ["byoc-orch"]' in dockerfile


def test_prometheus_snippet_scrapes_the_default_port() -> None:
    text = (DEPLOY / "prometheus.yml").read_text()
    assert "metrics_path: /metrics" in text
    assert f'targets: ["127.0.0.1:{Settings.model_fields["port"].default}"]' in text


KIT = [
    ROOT / "config" / "byoc-orch.env.example",
    UNIT,
    COMPOSE,
    DEPLOY / "Dockerfile",
    DEPLOY / "prometheus.yml",
    DEPLOY / "README.md",
]


@pytest.mark.parametrize("path", KIT, ids=lambda path: path.name)
def test_every_setting_named_in_the_kit_exists(path: Path) -> None:
    known = {f"BYOC_ORCH_{name.upper()}" for name in Settings.model_fields} | {"BYOC_ORCH_ENV_FILE"}
    named = set(SETTING.findall(path.read_text())) if path.exists() else set()
    assert named - known == set()


def test_env_example_documents_every_setting() -> None:
    text = (ROOT / "config" / "byoc-orch.env.example").read_text()
    missing = [name for name in Settings.model_fields if f"BYOC_ORCH_{name.upper()}=" not in text]
    assert missing == []
