"""The former supervision benchmark, now part of the suite: healthy → listed, crash →
withdrawn (with go-livepeer's policy beside it) and restart with adoption.

`python -m tests.bench.supervision [--trials N] [--json PATH]` is kept working as
`python -m tests.bench --only healthy,crash,restart`; see tests/bench/__main__.py.
"""

from __future__ import annotations

import sys

from tests.bench.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["--only", "healthy,crash,restart", *sys.argv[1:]]))
