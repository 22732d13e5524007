"""``python -m cli``: Relay's command line."""

import os
import sys

# Before Prefect reads its settings: a background task run (a task worker's) belongs to no
# flow run, so Prefect cannot send its log lines to the API and warned so on every run (the
# lines still reach the process's output).
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

from cli.main import main  # after the environment it reads

sys.exit(main())
