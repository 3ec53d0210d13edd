"""`python -m engine.batch INPUT.jsonl -o OUTPUT.jsonl`: `stream-engine batch`, flags and all."""

import sys

from engine.cli import main

raise SystemExit(main(["batch", *sys.argv[1:]]))
