"""`python -m engine.mock`: the same flags as `stream-engine mock`."""

from engine.cli.mock import main

raise SystemExit(main())
