"""byoc-orch: supervise Livepeer BYOC worker containers and advertise only the warm ones."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("byoc-orch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
