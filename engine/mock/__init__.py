"""The mock endpoint: a fast, faithful emulator of the Responses, Chat Completions and legacy
Completions streams, with every part a real stream has (tool calls, reasoning, refusal, several
choices, logprobs, usage details).

It writes SSE with its own few lines and never imports `engine.sse`, `engine.events` or
`engine.client`, so the server and the client under test cannot share a bug.
"""

from engine.mock.config import MockConfig
from engine.mock.runners import MockProcess, MockServer, MockServerThread
from engine.mock.server import create_app
from engine.mock.stats import MockStats

__all__ = ["MockConfig", "MockProcess", "MockServer", "MockServerThread", "MockStats", "create_app"]
