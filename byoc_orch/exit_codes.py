"""The process exit codes every `byoc-orch` command uses (README documents them)."""

EXIT_OK = 0
EXIT_INVALID = 1
"""Bad input: aiModels.json, settings, or a refusal such as a second daemon for one instance."""
EXIT_UNAVAILABLE = 2
"""Something needed is out of reach: the Docker engine, the running daemon, the API port."""
EXIT_DEGRADED = 3
"""`status`: an entry that should be warm is not (or the daemon is not ready): for monitoring."""
