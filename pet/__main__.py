"""`python -m pet` runs the command line."""

import sys

from pet.cli import main

sys.exit(main())
