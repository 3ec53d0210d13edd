"""`python -m engine.loadtest ...`: the `bench` verb without the main CLI."""

from engine.loadtest.command import main

raise SystemExit(main())
