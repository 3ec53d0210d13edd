"""`python -m engine.loadtest ...`: `stream-engine bench`, flags and all."""

import sys

from engine.cli import main

raise SystemExit(main(["bench", *sys.argv[1:]]))
