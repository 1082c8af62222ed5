"""`python -m arlon.cli ...`, as `accelerate launch -m arlon.cli train ...` runs it."""

import sys

from arlon.cli import main

sys.exit(main())
