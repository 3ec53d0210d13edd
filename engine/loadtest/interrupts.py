"""How a load ends before its time and still keeps what it measured.

Two things end a load early: a signal (SIGINT from Ctrl-C, SIGTERM from a supervisor) and a
job-level failure (`engine.retry.job_failure`: a wrong key, path or host) that every request
has met for JOB_FAILURE_WINDOW_S with no success between. Either way sending stops, the
requests in flight get `--grace` to end, and the result is kept, marked with a `Halt` that
says why. A second signal cuts the requests in flight off at once.

A signal reaches the load through a `Stop`: the command (and each worker process) says it,
every part of the run that must act on it listens. A signal that no part listens to comes
before the load began: the command's task is cancelled, and `Interrupted` says that nothing
was measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

from engine.errors import EngineError, JobFailed
from engine.preflight import job_failed
from engine.redaction import redact
from engine.retry import job_failure

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterator, Sequence

__all__ = [
    "JOB_FAILURE",
    "JOB_FAILURE_WINDOW_S",
    "FailureWatch",
    "Halt",
    "Interrupted",
    "Stop",
    "on_signals",
    "redacted_job_failure",
    "signals_saying",
    "unless_stopped",
]

T = TypeVar("T")
# How long every request must have failed with the same job-level failure, with no success,
# before the load stops: long enough that a server restarting under the load is waited for,
# short enough that a revoked key is not hammered for the whole run.
JOB_FAILURE_WINDOW_S: Final = 2.0
JOB_FAILURE: Final = "job failure"  # `Halt.by` when the server refused the whole job
JOB_FAILURE_EXIT: Final = 2  # the command's status for a job failure (as JobFailed's)


@dataclass(frozen=True, slots=True)
class Halt:
    """Why a load ended before its time: `by` a signal's name or JOB_FAILURE; `message` is
    the one line the console shows. Plain data: it crosses processes."""

    by: str
    message: str

    @classmethod
    def signal(cls, sig: signal.Signals) -> Halt:
        return cls(sig.name, f"{sig.name} received: sending stopped, requests in flight ended")

    @property
    def exit_status(self) -> int:
        """128 + the signal's number, as a shell reports a process ended by it (130, 143)."""
        sig = signal.Signals.__members__.get(self.by)
        return JOB_FAILURE_EXIT if sig is None else 128 + sig.value

    def document(self) -> dict[str, str]:
        return {"by": self.by, "message": self.message}


class Interrupted(EngineError):
    """A signal came before the load measured anything: there is nothing to keep."""

    def __init__(self, halt: Halt) -> None:
        super().__init__(f"{halt.by} received before the load began: nothing measured")
        self.halt = halt


StopHook = Callable[[Halt, int], None]  # (why, how many times the stop was said: 2 = cut off)


class Stop:
    """A stop said by whoever notices (a signal handler) and heard by every part of the run
    that must act on it. Thread-safe: the workers' relay listens from a thread."""

    def __init__(self) -> None:
        self.halt: Halt | None = None
        self.times = 0
        self._hooks: list[StopHook] = []
        self._lock = threading.Lock()

    def __call__(self, halt: Halt) -> None:
        with self._lock:
            self.times += 1
            self.halt = self.halt or halt
            hooks, first, times = list(self._hooks), self.halt, self.times
        for hook in hooks:
            hook(first, times)

    @property
    def heard(self) -> bool:
        return bool(self._hooks)

    def held(self) -> contextlib.AbstractContextManager[None]:
        """While the block runs, a stop never cancels the task (see `on_signals`): the parts
        of the run that must act on it listen for it themselves."""
        return self.listening(_nothing)

    @contextlib.contextmanager
    def listening(self, hook: StopHook) -> Iterator[None]:
        """`hook` hears every stop while the block runs, one already said at once."""
        with self._lock:
            self._hooks.append(hook)
            halt, times = self.halt, self.times
        if halt is not None:
            hook(halt, times)
        try:
            yield
        finally:
            with self._lock:
                self._hooks.remove(hook)


def _nothing(_halt: Halt, _times: int) -> None:
    return None


@contextlib.contextmanager
def on_signals(stop: Stop, signals: Sequence[signal.Signals]) -> Iterator[None]:
    """While the block runs on the loop, each of `signals` says `stop`. One that nothing
    hears cancels the block's task, which then raises `Interrupted`: no traceback. Off the
    main thread (a caller's own thread) nothing changes: signals only reach the main one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def received(sig: signal.Signals) -> None:
        if not stop.heard and task is not None:
            task.cancel()
        stop(Halt.signal(sig))

    for sig in signals:
        loop.add_signal_handler(sig, received, sig)
    try:
        yield
    except asyncio.CancelledError:
        if stop.halt is None or task is None or task.uncancel():
            raise  # someone else's cancellation
        raise Interrupted(stop.halt) from None
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


@contextlib.contextmanager
def signals_saying(stop: Stop, signals: Sequence[signal.Signals]) -> Iterator[None]:
    """`on_signals` for a caller that blocks instead of running a loop (the Ray driver, which
    looks at `stop` between short waits): each of `signals` says `stop`, nothing is
    cancelled. Off the main thread nothing changes: signals only reach the main one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def received(signum: int, _frame: object) -> None:
        stop(Halt.signal(signal.Signals(signum)))

    previous = {sig: signal.signal(sig, received) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def unless_stopped(stop: Stop, work: Awaitable[T]) -> T:
    """`work`, cancelled when `stop` is said: then `Interrupted` (nothing of it is kept)."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()

    def cancel(_halt: Halt, _times: int) -> None:
        loop.call_soon_threadsafe(task.cancel)

    with stop.listening(cancel):
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if stop.halt is None or (current is not None and current.cancelling()):
                raise
            raise Interrupted(stop.halt) from None


def redacted_job_failure(exc: object, url: str, secrets: tuple[str, ...]) -> JobFailed | None:
    """`engine.preflight.job_failed` with the server's words cleared of `secrets` (a server
    may echo the key it refused); None for a request's own failure."""
    if isinstance(exc, JobFailed):
        return exc
    if not isinstance(exc, EngineError):
        return None
    failed = job_failed(exc, url)
    if failed is not None:
        failed.message = redact(failed.message, secrets)
        failed.args = (failed.message,)
    return failed


class FailureWatch:
    """Notices when every request has met the same job-level failure for
    JOB_FAILURE_WINDOW_S with no success between: a revoked key or a server gone mid-run
    would otherwise be hammered until the window ends, thousands of requests a second."""

    __slots__ = ("_cause", "_since_ns", "secrets", "url")

    def __init__(self, url: str, secrets: tuple[str, ...]) -> None:
        self.url = url
        self.secrets = secrets
        self._cause: str | None = None
        self._since_ns = 0

    def success(self) -> None:
        self._cause = None

    def failure(self, exc: BaseException, now_ns: int) -> Halt | None:
        """A Halt when `exc` completes the window, else None."""
        cause = job_failure(exc) if isinstance(exc, EngineError) else None
        if cause is None or cause != self._cause:
            self._cause, self._since_ns = cause, now_ns
            return None
        if now_ns - self._since_ns < JOB_FAILURE_WINDOW_S * 1e9:
            return None
        failed = redacted_job_failure(exc, self.url, self.secrets)
        return Halt(JOB_FAILURE, f"every request failed for {JOB_FAILURE_WINDOW_S:g} s: {failed}")
