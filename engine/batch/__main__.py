"""`python -m engine.batch INPUT.jsonl -o OUTPUT.jsonl` (same flags as `stream-engine batch`)."""

from engine.batch.command import main

raise SystemExit(main())
