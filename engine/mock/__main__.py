"""`python -m engine.mock`: the same flags as `stream-engine mock`."""

from engine.mock.command import main

raise SystemExit(main())
