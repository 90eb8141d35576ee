"""`python -m cli`: the same as the `dlm-triage` console script."""

import sys

from cli.main import main

sys.exit(main())
