"""What the commands share about the process they run in: the event loop they pick, the
optional Ray extra, child processes that announce they are ready, and the environment's
OpenAI defaults (which `Engine` reads too). Importing it changes nothing: the loop is chosen
only by the commands that call `run_async`."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import select
import subprocess
import time
from typing import TYPE_CHECKING, Any, TypeVar

from engine.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Mapping, Sequence

__all__ = [
    "env_api_key",
    "env_base_url",
    "loop_factory",
    "require_ray",
    "run_async",
    "start_ready_process",
]

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop where it is installed (it is a dependency off Windows), else asyncio's loop."""
    try:
        import uvloop  # noqa: PLC0415 - optional: not on Windows
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on the commands' loop (`loop_factory`)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)


def require_ray(flag: str = "--ray") -> None:
    """Fail with a clear message, before any work, when the `ray` extra is missing."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(f"{flag} needs the ray extra: pip install 'stream-engine[ray]'")


def env_base_url() -> str | None:
    """`OPENAI_BASE_URL`, the convention every OpenAI client follows (None when unset)."""
    return os.environ.get("OPENAI_BASE_URL") or None


def env_api_key() -> str | None:
    """`OPENAI_API_KEY` (None when unset). Prefer it to a flag: argv shows in `ps`."""
    return os.environ.get("OPENAI_API_KEY") or None


def start_ready_process(
    argv: Sequence[str],
    ready_prefix: str,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    *,
    stdin_pipe: bool = False,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a child that prints `ready_prefix…` on stdout once it serves; return it and the
    rest of that line. A child that dies or stays silent for `timeout_s` is killed and the
    error says so: a server that never comes up must not hang its caller."""
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        argv,
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE if stdin_pipe else None,
        env=None if env is None else dict(env),
    )
    assert proc.stdout is not None  # noqa: S101 - stdout=PIPE
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([proc.stdout], [], [], left)
        if not readable:
            break
        line = proc.stdout.readline().decode()
        if line.startswith(ready_prefix):
            return proc, line[len(ready_prefix) :].strip()
        if not line:  # EOF: the child died before it was ready
            break
    proc.kill()
    proc.wait(timeout=10)
    raise RuntimeError(
        f"{argv[0]} … did not become ready within {timeout_s} s (exit status {proc.returncode})"
    )
