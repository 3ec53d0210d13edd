"""stream-engine: an async streaming engine for OpenAI-compatible endpoints."""

from engine import errors

__all__ = ["errors"]
