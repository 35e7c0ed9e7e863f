"""`python -m taskqueue`: the `taskqueue` command (bin/taskqueue runs a checkout this way)."""
import sys

from taskqueue.cli.main import main

sys.exit(main())
