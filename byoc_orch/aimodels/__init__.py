"""aiModels.json: the model of one entry, loading the file, and every check on it.

The same file feeds go-livepeer (core/ai.go ``AIModelConfig``), so its fields are accepted
unchanged and typed the way Go's ``json.Unmarshal`` reads them: anything byoc-orch accepts,
go-livepeer accepts too. byoc-orch's own fields are ones go-livepeer ignores. Loading never
stops at the first mistake: every problem is reported with the entry index (as ``jq '.[N]'``
counts), its model_id, the field and the fix.

One module per concern, in the data's order: `limits` (bounds and fixed names), `problems`,
`wording` (how values and errors are told), `fields` (each field's type), `host_access`,
`ports`, `entry` (the model and its cross-field rules), `devices` (which GPU an id names),
`reading` (the file, safely), `json_text` (the decoder and its syntax hints), `entry_checks`
(one entry as the file holds it), `checks` (across entries), `placement` (replicas on GPUs and
ports), `load` (all of it, for a file) and `host` (the file as placed on this host).
"""

from __future__ import annotations

from functools import partial

from byoc_orch.aimodels.entry import GpuRequest, ModelEntry, loopback_port, worker_id
from byoc_orch.aimodels.fields import (
    CapAdd,
    EnvMap,
    FlagMap,
    FlagValue,
    GpuSpec,
    Memory,
    NonEmptyStr,
    PixelsPerUnit,
    Price,
    Replicas,
    ShmSize,
    Volume,
)
from byoc_orch.aimodels.limits import (
    CAPABILITIES,
    CONTAINER_ONLY_FIELDS,
    DEFAULT_CONTAINER_PORT,
    DROPPED_CAPABILITIES,
    ENV_SET_BY_BYOC_ORCH,
    GO_LIVEPEER_FIELDS,
    LOOPBACK_HOSTS,
    MAX_CAPACITY,
    MAX_CPUS,
    MAX_ENTRIES,
    MAX_FILE_BYTES,
    MAX_GPU_COUNT,
    MAX_JSON_DEPTH,
    MAX_NUMBER_CHARS,
    MAX_PORT,
    MAX_REPLICAS,
    MAX_REPLICAS_PER_GPU,
    MAX_SIZE_BYTES,
    MAX_STARTUP_TIMEOUT,
    MAX_VOLUMES,
    MIN_MEMORY,
)
from byoc_orch.aimodels.load import ModelsFile, load_models, parse_models
from byoc_orch.aimodels.problems import Loc, ModelsFileError, Problem, UnreadableModelsFileError
from byoc_orch.redact import MASK, display_url

redact_url = partial(display_url, mask=MASK)
"""`display_url` as validate and aiModels.json problems show a url: ``***@`` for credentials."""

__all__ = [
    "CAPABILITIES",
    "CONTAINER_ONLY_FIELDS",
    "DEFAULT_CONTAINER_PORT",
    "DROPPED_CAPABILITIES",
    "ENV_SET_BY_BYOC_ORCH",
    "GO_LIVEPEER_FIELDS",
    "LOOPBACK_HOSTS",
    "MAX_CAPACITY",
    "MAX_CPUS",
    "MAX_ENTRIES",
    "MAX_FILE_BYTES",
    "MAX_GPU_COUNT",
    "MAX_JSON_DEPTH",
    "MAX_NUMBER_CHARS",
    "MAX_PORT",
    "MAX_REPLICAS",
    "MAX_REPLICAS_PER_GPU",
    "MAX_SIZE_BYTES",
    "MAX_STARTUP_TIMEOUT",
    "MAX_VOLUMES",
    "MIN_MEMORY",
    "CapAdd",
    "EnvMap",
    "FlagMap",
    "FlagValue",
    "GpuRequest",
    "GpuSpec",
    "Loc",
    "Memory",
    "ModelEntry",
    "ModelsFile",
    "ModelsFileError",
    "NonEmptyStr",
    "PixelsPerUnit",
    "Price",
    "Problem",
    "Replicas",
    "ShmSize",
    "UnreadableModelsFileError",
    "Volume",
    "load_models",
    "loopback_port",
    "parse_models",
    "redact_url",
    "worker_id",
]
