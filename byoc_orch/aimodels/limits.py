"""What aiModels.json may hold: the bounds that keep any input within reach of the parser and
the host, and the fixed names entries are checked against (go-livepeer's fields, capabilities)."""

from __future__ import annotations

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
        "headroom",
        "scale_down_after",
        "vram_mb",
        "cap_add",
        "memory",
        "cpus",
    }
)
ENV_SET_BY_BYOC_ORCH = ("PIPELINE", "MODEL_ID")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost"})
MAX_REPLICAS = 64
MAX_REPLICAS_PER_GPU = 16
DEFAULT_HEADROOM = 1
DEFAULT_SCALE_DOWN_AFTER = 300.0
MAX_SCALE_DOWN_AFTER = 7 * 24 * 3600
MAX_VRAM_MB = 16 * 1024 * 1024  # 16 TiB: past any GPU
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
