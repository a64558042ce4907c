"""``byoc-orch validate``: exit codes and what the operator reads."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from byoc_orch.gpu import GpuInfo, GpuUnavailableError
from byoc_orch.validate_cmd import run_validate

ROOT = Path(__file__).resolve().parent.parent
DIGEST = "sha256:" + "0" * 64
HOST_GPUS = [
    GpuInfo(0, "GPU-6f2a0000-0000-0000-0000-000000000000", "NVIDIA H100", 80 << 30),
    GpuInfo(1, "GPU-1", "NVIDIA L4", 24 << 30),
]


def run(path: Path, **kwargs: Any) -> tuple[int, list[str], list[str]]:
    """Validate with GPU checking off unless a test hands in an inventory."""
    out, err = io.StringIO(), io.StringIO()
    kwargs.setdefault("gpu_inventory", None)
    code = run_validate(path, out=out, err=err, **kwargs)
    return code, out.getvalue().splitlines(), err.getvalue().splitlines()


def no_nvml() -> list[GpuInfo]:
    raise GpuUnavailableError("NVML unavailable: NVML Shared Library Not Found")


def write(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "aiModels.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    return path


def test_valid_file_lists_each_entry_and_a_summary(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            {
                "pipeline": "live-video-to-video",
                "model_id": "comfyui",
                "container": "livepeer/comfystream:latest",
                "url": "http://127.0.0.1:8001",
                "warm": True,
            },
            {
                "pipeline": "text-to-image",
                "model_id": "sd",
                "container": f"127.0.0.1:5000/x/y:1@{DIGEST}",
                "url": "http://localhost:8002",
                "container_port": 9000,
                "gpus": [0, "GPU-1"],
            },
            {"pipeline": "llm", "model_id": "remote", "url": "http://10.0.0.5:9000", "warm": True},
        ],
    )
    code, out, err = run(path)
    assert code == 0
    assert err == []
    assert out == [
        "entry 0 live-video-to-video/comfyui: managed, warm, "
        "image=docker.io/livepeer/comfystream:latest, host port 8001→8000, gpus=all",
        f"entry 1 text-to-image/sd: managed, cold, image=127.0.0.1:5000/x/y:1@{DIGEST}, "
        "host port 8002→9000, gpus=[0,GPU-1]",
        "entry 2 llm/remote: external, warm, url=http://10.0.0.5:9000",
        "3 entries: 2 managed, 1 external; 2 warm",
    ]


def test_warnings_come_before_the_summary(tmp_path: Path) -> None:
    entry = {"pipeline": "p", "model_id": "m", "url": "http://10.0.0.5:1", "gpu": 1}
    code, out, _ = run(write(tmp_path, [entry]))
    assert code == 0
    assert out == [
        "entry 0 p/m: external, cold, url=http://10.0.0.5:1",
        'warning: entry 0 (m): gpu: unknown field, ignored — did you mean "gpus"?',
        "1 entry: 0 managed, 1 external; 0 warm",
    ]


def test_example_file_is_valid() -> None:
    code, out, err = run(ROOT / "aiModels.example.json")
    assert code == 0, err
    assert not any(line.startswith("warning:") for line in out)
    assert out[-1] == "4 entries: 3 managed, 1 external; 3 warm"


def test_invalid_file_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    base = {"pipeline": "p", "container": "busybox", "warm": True}
    path = write(
        tmp_path,
        [
            {**base, "model_id": "a", "url": "http://127.0.0.1:8001", "warm": "true"},
            {**base, "model_id": "b", "url": "http://127.0.0.1:9935", "contianer_port": 1},
            {**base, "model_id": "c", "url": "http://127.0.0.1:8003", "gpus": "two"},
        ],
    )
    code, out, err = run(path, reserved_ports={9935: "byoc-orch's own HTTP API (BYOC_ORCH_PORT)"})
    assert code == 1
    assert out == []
    assert err == [
        "warning: entry 1 (b): contianer_port: unknown field, ignored — did you mean "
        '"container_port"?',
        'error: entry 0 (a): warm: expected true or false, got string "true" — remove the '
        "quotes: write true",
        "error: entry 1 (b): url: port 9935 is taken by byoc-orch's own HTTP API "
        "(BYOC_ORCH_PORT) — choose another port for this entry's url",
        'error: entry 2 (c): gpus: unknown gpus value string "two" — use "all", a count such '
        'as 2, a list of device indexes or UUIDs such as [0], or "none"',
        "aiModels.json is invalid: 3 problems; byoc-orch will start nothing from it",
    ]


def test_trailing_comma_reports_line_and_column(tmp_path: Path) -> None:
    text = (
        "[\n"
        '  {"pipeline": "p", "model_id": "a", "url": "http://10.0.0.5:1"},\n'
        '  {"pipeline": "p", "model_id": "b", "url": "http://10.0.0.5:2"},\n'
        "]\n"
    )
    path = write(tmp_path, text)
    code, out, err = run(path)
    assert code == 1
    assert out == []
    assert err == [
        f"error: {path}: line 3 column 65: trailing comma before ']' — delete this comma; "
        "JSON allows none after the last item",
        "aiModels.json is invalid: 1 problem; byoc-orch will start nothing from it",
    ]


@pytest.mark.parametrize("name", ["missing.json", "."])
def test_unreadable_file_is_one_line(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    code, out, err = run(path)
    assert code == 1
    assert out == []
    assert len(err) == 1
    assert err[0].startswith(f"error: {path}: cannot read the file: ")


def test_defaults_to_the_process_streams(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_validate(write(tmp_path, [])) == 0
    assert capsys.readouterr().out == "0 entries: 0 managed, 0 external; 0 warm\n"


def gpu_entries(*gpus: object) -> list[dict[str, object]]:
    return [
        {
            "pipeline": "p",
            "model_id": f"m{index}",
            "container": "busybox",
            "url": f"http://127.0.0.1:{8001 + index}",
            "gpus": value,
        }
        for index, value in enumerate(gpus)
    ]


def test_gpus_naming_devices_this_host_lacks_are_warnings(tmp_path: Path) -> None:
    path = write(tmp_path, gpu_entries([0, "gpu-6F2A0000-0000-0000-0000-000000000000"], [1, 4], 3))
    code, out, err = run(path, gpu_inventory=lambda: HOST_GPUS)
    assert code == 0
    assert err == []
    assert out[3:] == [
        "warning: entry 1 (m1): gpus: device 4 is not on this host (GPU indexes here: 0, 1) — "
        "use an index or UUID that `nvidia-smi -L` lists",
        "warning: entry 2 (m2): gpus: asks for 3 GPUs but this host has 2 — lower the count, "
        'or use "all"',
        "3 entries: 3 managed, 0 external; 0 warm",
    ]


def test_gpus_that_exist_give_no_warning(tmp_path: Path) -> None:
    code, out, _ = run(
        write(tmp_path, gpu_entries([1, "GPU-1"], 2, "all")), gpu_inventory=lambda: HOST_GPUS
    )
    assert code == 0
    assert not any(line.startswith(("warning:", "note:")) for line in out)


def test_without_nvml_gpu_ids_are_not_checked_and_it_says_so_once(tmp_path: Path) -> None:
    code, out, err = run(write(tmp_path, gpu_entries([7], [8], 9)), gpu_inventory=no_nvml)
    assert code == 0
    assert err == []
    notes = [line for line in out if line.startswith("note:")]
    assert notes == [
        "note: gpus: device ids and counts were not checked against this host's GPUs (NVML "
        "unavailable: NVML Shared Library Not Found; no NVIDIA driver here?) — run validate on "
        "the GPU host to check them"
    ]
    assert not any(line.startswith("warning:") for line in out)


def test_nvml_is_not_asked_when_no_entry_names_gpus(tmp_path: Path) -> None:
    asked: list[bool] = []

    def inventory() -> list[GpuInfo]:
        asked.append(True)
        return []

    external = {"pipeline": "p", "model_id": "ext", "url": "http://10.0.0.5:1", "gpus": [3]}
    code, out, _ = run(
        write(tmp_path, [*gpu_entries("all", "none"), external]), gpu_inventory=inventory
    )
    assert code == 0
    assert asked == []
    assert out[-1] == "3 entries: 2 managed, 1 external; 0 warm"


def test_invalid_file_is_not_checked_for_gpus(tmp_path: Path) -> None:
    entries = gpu_entries([9])
    entries[0]["warm"] = "yes"
    code, out, err = run(write(tmp_path, entries), gpu_inventory=no_nvml)
    assert code == 1
    assert out == []
    assert not any("gpus" in line for line in err)


def test_the_real_nvml_reader_is_the_default(tmp_path: Path) -> None:
    """On this GPU-less machine that means the note; on a GPU host, the real check."""
    out, err = io.StringIO(), io.StringIO()
    code = run_validate(write(tmp_path, gpu_entries([0])), out=out, err=err)
    assert code == 0
    lines = out.getvalue().splitlines()
    assert lines[-1] == "1 entry: 1 managed, 0 external; 0 warm"
    assert len(lines) in (2, 3)
    if len(lines) == 3:
        assert lines[1].startswith("note: gpus: device ids and counts were not checked")


# --------------------------------------------------------------------------- replicas

FOUR_GPUS = [GpuInfo(n, f"GPU-{n}", "NVIDIA L4", 24 << 30) for n in range(4)]


def replicated(model_id: str, port: int, **fields: object) -> dict[str, object]:
    return {
        "pipeline": "live-video-to-video",
        "model_id": model_id,
        "container": "livepeer/comfystream:latest",
        "url": f"http://127.0.0.1:{port}",
        "warm": True,
        **fields,
    }


def test_replicas_are_listed_with_their_ports_and_gpus(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            replicated("x", 8001, replicas=3),
            replicated("y", 8010, gpus=[3]),
            replicated("z", 8020, replicas=2, gpus="none", warm=False),
        ],
    )
    code, out, err = run(path, gpu_inventory=lambda: FOUR_GPUS)
    assert code == 0, err
    image = "docker.io/livepeer/comfystream:latest"
    assert out == [
        f"entry 0 live-video-to-video/x: managed, warm, image={image}, 3 replicas: "
        "#0 127.0.0.1:8001 gpus=[0], #1 127.0.0.1:8002 gpus=[1], #2 127.0.0.1:8003 gpus=[2]",
        f"entry 1 live-video-to-video/y: managed, warm, image={image}, host port 8010→8000, "
        "gpus=[3]",
        f"entry 2 live-video-to-video/z: managed, cold, image={image}, 2 replicas: "
        "#0 127.0.0.1:8020 gpus=none, #1 127.0.0.1:8021 gpus=none",
        "3 entries: 3 managed, 0 external; 2 warm; 6 containers",
    ]


def test_the_configured_pool_places_replicas_without_nvml(tmp_path: Path) -> None:
    path = write(tmp_path, [replicated("x", 8001, replicas="per-gpu")])
    code, out, _ = run(path, gpu_inventory=no_nvml, gpu_pool_setting=("2", "3"))
    assert code == 0
    assert out[0].endswith("2 replicas: #0 127.0.0.1:8001 gpus=[2], #1 127.0.0.1:8002 gpus=[3]")


def test_replicas_with_no_gpu_pool_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, [replicated("x", 8001, replicas=2)])
    code, out, err = run(path, gpu_inventory=no_nvml)
    assert code == 1
    assert out == []
    assert err == [
        "error: entry 0 (x): replicas: no GPU pool to place replicas on: NVML lists no GPUs here "
        "and BYOC_ORCH_GPUS is not set — run on the GPU host, set BYOC_ORCH_GPUS=0,1,…, or use "
        '"gpus": "none"',
        "aiModels.json is invalid: 1 problem; byoc-orch will start nothing from it",
    ]


def test_more_gpus_than_the_pool_has_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, [replicated("x", 8001, gpus=[0]), replicated("y", 8010, replicas=4)])
    code, _, err = run(path, gpu_inventory=lambda: FOUR_GPUS)
    assert code == 1
    assert err[0] == (
        "error: entry 1 (y): replicas: 4 replicas with 1 GPU each need 4 GPUs, but the pool has "
        "3 free of 4 (entry 0 (x) holds 1) — lower replicas, or raise replicas_per_gpu "
        "(replicas sharing a GPU)"
    )


def test_a_gpu_claimed_by_two_entries_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            replicated("x", 8001, gpus=[1]),
            replicated("y", 8002, gpus=["GPU-1"]),
            replicated("z", 8010, replicas=2),
        ],
    )
    code, _, err = run(path, gpu_inventory=lambda: FOUR_GPUS)
    assert code == 1
    assert err[0].startswith(
        "error: entry 1 (y): gpus: GPU GPU-1 is also listed by entry 0 (x) as 1; with replicas "
    )


def test_replica_ports_colliding_with_the_api_port_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, [replicated("x", 9933, replicas=3, gpus="none")])
    code, _, err = run(path, reserved_ports={9935: "byoc-orch's own HTTP API (BYOC_ORCH_PORT)"})
    assert code == 1
    assert err[0] == (
        "error: entry 0 (x): url: replica #2 would listen on host port 9935, taken by byoc-orch's "
        "own HTTP API (BYOC_ORCH_PORT) — move this entry's url port so its replicas' ports "
        "url+0…url+2 are free, e.g. http://127.0.0.1:9936"
    )


def test_a_pool_setting_naming_missing_gpus_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, [replicated("x", 8001)])
    code, out, err = run(path, gpu_inventory=lambda: FOUR_GPUS, gpu_pool_setting=("0", "9"))
    assert code == 1
    assert out == []
    assert err == [
        "error: BYOC_ORCH_GPUS: GPU 9 is not on this host (NVML lists 0, 1, 2, 3) — list GPU "
        "indexes or UUIDs that `nvidia-smi -L` shows",
        "BYOC_ORCH_GPUS does not match this host; nothing would start",
    ]


def test_nvml_is_read_once_for_a_file_with_replicas(tmp_path: Path) -> None:
    asked: list[bool] = []

    def inventory() -> list[GpuInfo]:
        asked.append(True)
        return FOUR_GPUS

    path = write(tmp_path, [replicated("x", 8001, replicas=2), replicated("y", 8010, gpus=[3])])
    code, out, _ = run(path, gpu_inventory=inventory)
    assert code == 0
    assert asked == [True]
    assert out[-1] == "2 entries: 2 managed, 0 external; 2 warm; 3 containers"


# --------------------------------------------------------------------------- hostile input


def run_with_timeout(path: Path, **kwargs: Any) -> tuple[int, list[str], list[str]]:
    """run(), but a hang fails the test instead of blocking the suite."""
    result: list[tuple[int, list[str], list[str]]] = []
    worker = threading.Thread(target=lambda: result.append(run(path, **kwargs)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert result, f"validate {path} did not return within 10 s"
    return result[0]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "aiModels.json"
    os.mkfifo(path)
    code, out, err = run_with_timeout(path)
    assert code == 1
    assert out == []
    assert err == [
        f"error: {path}: cannot read the file: it is a FIFO (named pipe), not a regular file — "
        "give the path of the aiModels.json file itself"
    ]


def test_a_unix_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        code, _, err = run_with_timeout(path)
    assert code == 1
    assert err[0] == (
        f"error: {path}: cannot read the file: it is a socket, not a regular file — give the "
        "path of the aiModels.json file itself"
    )


@pytest.mark.parametrize(
    ("path", "kind"), [(Path("/dev/null"), "a character device"), (Path("/"), "a directory")]
)
def test_devices_and_directories_are_refused(path: Path, kind: str) -> None:
    code, _, err = run_with_timeout(path)
    assert code == 1
    assert err == [
        f"error: {path}: cannot read the file: it is {kind}, not a regular file — give the path "
        "of the aiModels.json file itself"
    ]


def test_a_file_larger_than_16_mib_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "aiModels.json"
    with path.open("wb") as sparse:
        sparse.truncate(17 * 1024 * 1024)
    code, _, err = run(path)
    assert code == 1
    assert err == [
        f"error: {path}: the file is 17 MiB, more than the 16 MiB an aiModels.json may be — "
        "check that this is the right file; a real aiModels.json is a few kilobytes"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[" * 50_000, "line 1 column 65: arrays and objects are nested more than 64 deep"),
        ('[{"capacity": ' + "9" * 5000 + "}]", "line 1 column 15: a number 5000 characters"),
        ('[{"capacity": 1e99999}]', "line 1 column 15: 1e99999 is too large for a number"),
    ],
)
def test_hostile_json_is_one_problem_not_a_traceback(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    code, out, err = run(path)
    assert code == 1
    assert out == []
    assert err[0].startswith(f"error: {path}: {expected}")
    assert err[-1] == "aiModels.json is invalid: 1 problem; byoc-orch will start nothing from it"


def test_credentials_in_urls_never_show(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            {"pipeline": "p", "model_id": "ext", "url": "https://op:hunter2@10.0.0.5:9000/v1"},
            {
                "pipeline": "p",
                "model_id": "run",
                "container": "busybox",
                "url": "http://op:hunter2@127.0.0.1:8001",
            },
        ],
    )
    code, out, err = run(path)
    assert code == 0, err
    assert out[:2] == [
        "entry 0 p/ext: external, cold, url=https://***@10.0.0.5:9000/v1",
        "entry 1 p/run: managed, cold, image=docker.io/library/busybox:latest, "
        "url=http://***@127.0.0.1:8001, host port 8001→8000, gpus=all",
    ]
    assert "hunter2" not in "\n".join(out + err)


def test_container_limits_are_shown(tmp_path: Path) -> None:
    entry = {
        "pipeline": "p",
        "model_id": "m",
        "container": "busybox",
        "url": "http://127.0.0.1:8001",
        "memory": "8g",
        "cpus": 2,
        "cap_add": ["cap_net_raw"],
    }
    code, out, _ = run(write(tmp_path, [entry]))
    assert code == 0
    assert out[0] == (
        "entry 0 p/m: managed, cold, image=docker.io/library/busybox:latest, host port "
        "8001→8000, gpus=all, memory=8 GiB, cpus=2, cap_add=[NET_RAW]"
    )


def test_the_configured_engine_socket_is_checked(tmp_path: Path) -> None:
    engine = tmp_path / "engine.sock"
    engine.write_text("")
    link = tmp_path / "link"
    link.symlink_to(engine)
    entry = {
        "pipeline": "p",
        "model_id": "m",
        "container": "busybox",
        "url": "http://127.0.0.1:8001",
        "volumes": [f"{link}:/var/run/docker.sock"],
    }
    path = write(tmp_path, [entry])
    assert run(path)[0] == 0
    code, _, err = run(path, engine_socket=f"unix://{engine}")
    assert code == 1
    assert err[0].startswith(
        f'error: entry 0 (m): volumes[0]: "{link}" exposes the Docker socket: it resolves to '
        f"{engine}, the Docker engine socket"
    )


def test_unencodable_output_is_escaped_not_a_traceback(tmp_path: Path) -> None:
    text = '[{"pipeline": "p", "model_id": "m", "url": "http://h:1", "\\u00e9": 1}]'
    path = write(tmp_path, text)
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    assert run_validate(path, gpu_inventory=None, out=out, err=io.StringIO()) == 0
    out.flush()
    assert b"warning: entry 0 (m): \\xe9: unknown field" in raw.getvalue()
