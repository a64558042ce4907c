"""The process exit codes every `byoc-orch` command uses (README documents them)."""

EXIT_OK = 0
EXIT_INVALID = 1
"""Bad input: aiModels.json, settings, or a refusal such as a second daemon for one instance."""
EXIT_UNAVAILABLE = 2
"""Something needed is out of reach: the Docker engine, the running daemon, the API port."""
EXIT_DEGRADED = 3
"""`status`: an entry failed (DOWN or DEGRADED; `starting`, `drained` and `cold` do not count) or
the daemon is not ready: for monitoring. `--wait` (restart, drain, withdraw): the wait ran out
before what it waited for happened."""
