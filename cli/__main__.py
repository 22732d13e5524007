"""``python -m cli``: Relay's command line."""

import sys

from cli.main import main

sys.exit(main())
