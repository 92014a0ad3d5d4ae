"""`python -m benchmarks PROFILE` runs a benchmark profile."""

import sys

from benchmarks.cli import main

sys.exit(main())
