"""What the commands share about the process they run in: the event loop they pick, the
optional Ray extra, child processes that announce they are ready and end with their parent,
and the environment's OpenAI defaults (which `Engine` reads too). Importing it changes
nothing: the loop is chosen only by the commands that call `run_async`."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import os
import select
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, TypeVar

from engine.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Mapping, Sequence

__all__ = [
    "PARENT_PID_ENV",
    "end_with_parent",
    "loop_factory",
    "raise_open_files_limit",
    "require_ray",
    "run_async",
    "start_ready_process",
]

T = TypeVar("T")
# Set by `start_ready_process` in its child's environment: the pid the child must not outlive.
PARENT_PID_ENV = "STREAM_ENGINE_PARENT_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


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


def raise_open_files_limit() -> int:
    """Lift this process's soft limit on open files to its hard limit, and return the limit
    in force (`resource.RLIM_INFINITY` for none). Every stream holds a socket, and the soft
    limit (often 1024) is the first wall a load meets, long before the hard one. Children
    started afterwards inherit it. Where there are no such limits (Windows), a large number."""
    try:
        import resource  # noqa: PLC0415 - POSIX only
    except ImportError:  # pragma: no cover - Windows
        return 1 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        # macOS reports an unlimited hard limit that setrlimit refuses: the soft one stays.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def require_ray(flag: str = "--ray") -> None:
    """Fail with a clear message, before any work, when the `ray` extra is missing."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(f"{flag} needs the ray extra: pip install 'stream-engine[ray]'")


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
    error says so: a server that never comes up must not hang its caller.

    The child runs in a process group of its own, so a terminal's Ctrl-C reaches only the
    parent, which ends it in its own time (after the requests in flight). Its environment
    names the parent (`PARENT_PID_ENV`) for `end_with_parent`; the kernel takes the *thread*
    that started it for the parent, so start it from one that outlives it."""
    child_env = dict(os.environ if env is None else env)
    child_env[PARENT_PID_ENV] = str(os.getpid())
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        argv,
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE if stdin_pipe else None,
        env=child_env,
        process_group=0,
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


def end_with_parent(parent_pid: int | None = None, sig: int = signal.SIGTERM) -> None:
    """Have the kernel send `sig` to this process when its parent ends, even by SIGKILL
    (Linux's PR_SET_PDEATHSIG; elsewhere nothing): a bench killed hard leaves no mock or
    worker behind. `parent_pid` (default `$STREAM_ENGINE_PARENT_PID`; unset: not a child
    that must end with its parent) closes the race of a parent that died first: then `sig`
    comes at once."""
    if parent_pid is None:
        named = os.environ.get(PARENT_PID_ENV, "")
        if not named.isdigit():
            return
        parent_pid = int(named)
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return
    if os.getppid() != parent_pid:  # the parent was gone before the kernel watched it
        os.kill(os.getpid(), sig)
