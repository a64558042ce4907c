"""`python -m byoc_orch` is the same as the `byoc-orch` command."""

import sys

from byoc_orch.cli import main

sys.exit(main())
