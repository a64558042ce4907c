"""byoc-orch: supervise Livepeer BYOC worker containers and advertise only the warm ones."""

# The one place the version is written (pyproject.toml reads it from here); a constant
# rather than importlib.metadata, which costs ~40 ms of every start-up.
__version__ = "0.1.0"
