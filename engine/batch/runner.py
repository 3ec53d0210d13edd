"""Dispatch: the input's requests through limits and engines into the result store.

Per request, in this order: a concurrency slot (AIMD, halved on 429), then a rate-limit grant
(RPM/TPM on an estimate, settled with the real usage afterwards), then the least-loaded
engine, then one task that streams it and appends its record. The slot is taken before the
grant so a grant's time is the time the request goes out, which is what the server counts.

Retries go through the engine's one retry mechanism: the runner hands `Engine.run` a
`before_retry` hook, awaited after the backoff and just before each retry is sent, where it
takes that HTTP request's own rate-limit grant (every request the server receives is granted),
counts the retry and halves concurrency on a 429. The engines run with
`RetryPolicy(mid_stream=True)`: a stream that broke *after* its first event (dropped
connection, body cut short, a malformed event, the server going idle or sending no token in
time) is sent again too, within `max_retries`. Nothing of it has reached the output yet (the
record is written only once the whole answer is in), so sending it again duplicates nothing.
An answer the server meant (an error event, `response.failed`, a 4xx) stays final.

The requests in flight run in one TaskGroup with the dispatcher, so the first exception a
record raises (a failed write: `StoreWriteError`; a `JobFailed`; or a bug) cancels the
dispatcher where it waits and every request in flight: nothing more is sent (a flag covers
the tasks already due to start), and `run` raises that exception.

Failures of the job are not the records': the first request goes alone (`engine.preflight`)
and a 401/403/404 or no connection on it ends the job with `JobFailed`, its record unwritten.
Later, such a failure is held back rather than written: a success in the meantime writes the
held ones to the errors file (they were the records' own), while `JOB_BURST` of them in a row
stop the job with `JobFailed`, and the held records stay to do for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from engine.batch.inputs import BadLine, InputScan, Request, Shard, iter_lines, scan_input
from engine.batch.store import INVALID_REQUEST, ResultStore, read_state
from engine.batch.summary import BatchSummary
from engine.client import DEFAULT_BASE_URL, Engine, RetryPolicy, StreamResult, Timeouts
from engine.config import env_api_key, env_base_url
from engine.errors import ConfigError, EngineError, JobFailed, RateLimitError
from engine.limits import AdaptiveConcurrency, RateLimiter, Reservation
from engine.network import NetworkOptions
from engine.preflight import job_failed, wait_open

if TYPE_CHECKING:
    from collections.abc import Sequence

    from engine.batch.progress import ProgressDisplay
    from engine.batch.store import ResumeState

# Job-level failures (wrong key, path or host) in a row, with no success between, that stop
# the job: enough that a few requests refused on their own merits do not, few enough that a
# server gone away costs seconds, not the whole input.
JOB_BURST = 8


class ChangedInputError(ConfigError):
    """The input asks something else than what the finished records answered: resuming
    would keep old answers for new questions (or forget records whose line is gone)."""


def check_unchanged(scan: InputScan, output: Path, retry_failed: bool) -> None:
    """Refuse, in one line naming the first custom_ids and the counts, an edited input."""
    parts = []
    if scan.changed_count:
        ids = ", ".join(repr(c) for c in scan.changed)
        parts.append(f"{scan.changed_count} finished records asked something else ({ids})")
    if scan.removed_count:
        ids = ", ".join(repr(c) for c in scan.removed)
        parts.append(f"{scan.removed_count} finished records have no line any more ({ids})")
    if parts:
        hint = "" if retry_failed else "; --retry-failed sends failed records again as they are"
        raise ChangedInputError(
            f"the input changed since {output} was written: {'; '.join(parts)}; "
            f"pass --allow-changed-input to keep the old records, or write to a new output" + hint
        )


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One base URL and the key to use there (the key is never shown in a repr)."""

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    label: str = ""  # how the summary names it (default: the base URL); never the key

    @property
    def name(self) -> str:
        return self.label or self.base_url


def default_endpoints() -> list[Endpoint]:
    """`OPENAI_BASE_URL` (or the OpenAI API) with `OPENAI_API_KEY`."""
    return [Endpoint(env_base_url() or DEFAULT_BASE_URL, env_api_key())]


def errors_path_for(output: Path) -> Path:
    """`out.jsonl` -> `out.errors.jsonl`: the default errors file sits next to the output."""
    return output.with_name(f"{output.stem}.errors{output.suffix or '.jsonl'}")


@dataclass(slots=True)
class BatchConfig:
    """One batch job. Limits are for the whole job, across every endpoint."""

    input_path: Path
    output_path: Path
    errors_path: Path | None = None  # default: errors_path_for(output_path)
    endpoints: Sequence[Endpoint] = field(default_factory=default_endpoints)
    concurrency: int = 256
    rpm: float | None = None
    tpm: float | None = None
    adaptive: bool = True  # halve concurrency on 429 (once per cooldown), recover on success
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeouts: Timeouts = field(default_factory=Timeouts)
    shard: Shard = field(default_factory=Shard)
    default_output_tokens: int = 1024  # TPM estimate for a body without an output cap
    dry_run: bool = False
    fsync: bool = False
    progress: bool = False
    retry_failed: bool = False  # send the errors file's records again
    allow_changed_input: bool = False  # resume although finished records' lines changed
    network: NetworkOptions = field(default_factory=NetworkOptions)  # proxy, TLS

    def __post_init__(self) -> None:
        self.input_path = Path(self.input_path)
        self.output_path = Path(self.output_path)
        self.errors_path = Path(self.errors_path or errors_path_for(self.output_path))
        if self.concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        if not self.endpoints:
            raise ConfigError("at least one endpoint (base URL) is needed")


class _Slot:
    """One (base URL, key) engine and its requests in flight."""

    __slots__ = ("active", "engine", "label")

    def __init__(self, engine: Engine, label: str) -> None:
        self.engine = engine
        self.label = label
        self.active = 0


class BatchRunner:
    """Runs one BatchConfig; `limiter` and `gate` may be injected (tests use a fake clock)."""

    def __init__(
        self,
        config: BatchConfig,
        *,
        limiter: RateLimiter | None = None,
        gate: AdaptiveConcurrency | None = None,
    ) -> None:
        self.config = config
        self.summary = BatchSummary(
            dry_run=config.dry_run,
            output_path=str(config.output_path),
            errors_path=str(config.errors_path),
            concurrency=config.concurrency,
            shard=(f"{config.shard.index}/{config.shard.count}" if config.shard.count > 1 else ""),
            concurrency_min=config.concurrency,
        )
        if limiter is None and (config.rpm is not None or config.tpm is not None):
            limiter = RateLimiter(config.rpm, config.tpm)
        self.limiter = limiter
        n = config.concurrency
        self.gate = gate or AdaptiveConcurrency(n, minimum=1 if config.adaptive else n, maximum=n)
        self._slots: list[_Slot] = []
        self._turn = itertools.count()
        self._stopping = False  # an exception ended a record: the job is stopping
        # Job-level failures, unwritten: (the endpoint it went to, the request, its error).
        self._held: list[tuple[_Slot, Request, EngineError]] = []
        self._dispatched = 0  # requests started so far
        # Requests started by the time the first held failure came back: only a success of a
        # later one shows the job works (an earlier one was under way before it failed).
        self._held_mark = 0
        self._reserved: frozenset[str] = frozenset()
        self._bad_ids: set[str] = set()

    async def run(self) -> BatchSummary:
        cfg = self.config
        summary = self.summary
        assert cfg.errors_path is not None  # noqa: S101 - set by BatchConfig.__post_init__
        if cfg.dry_run:
            state = read_state(cfg.output_path, cfg.errors_path, retry_failed=cfg.retry_failed)
            self._count_done(state, self._scan(state))
            summary.wall_s = time.monotonic() - summary.started_s
            return summary
        # Read-only first: an input refused (duplicates, edited since) leaves no file behind.
        shard_ids = self._scan(
            read_state(cfg.output_path, cfg.errors_path, retry_failed=cfg.retry_failed)
        )
        store = ResultStore(
            cfg.output_path, cfg.errors_path, fsync=cfg.fsync, retry_failed=cfg.retry_failed
        )
        with store:
            state = store.open()
            self._count_done(state, shard_ids)
            summary.repaired_bytes = state.repaired_bytes
            reserved = self._reserved
            del shard_ids  # the id set is not needed any more: free it before the long part
            retry = replace(cfg.retry, mid_stream=True)  # see the module docstring
            network = cfg.network.engine_options()
            async with contextlib.AsyncExitStack() as stack:
                for endpoint in cfg.endpoints:
                    engine = Engine(
                        endpoint.base_url,
                        endpoint.api_key or "",
                        max_connections=cfg.concurrency,
                        timeouts=cfg.timeouts,
                        retry=retry,
                        **network,
                    )
                    self._slots.append(
                        _Slot(await stack.enter_async_context(engine), endpoint.name)
                    )
                if cfg.progress:
                    display = _progress_display(summary)
                    if display is not None:
                        await stack.enter_async_context(display)
                await self._dispatch(store, state.done, reserved)
        summary.wall_s = time.monotonic() - summary.started_s
        return summary

    def _scan(self, state: ResumeState) -> set[str]:
        """Read and check the input against the records written; returns the shard's ids."""
        cfg = self.config
        summary = self.summary
        done = None if cfg.allow_changed_input else state.digests
        scan = scan_input(cfg.input_path, cfg.shard, cfg.default_output_tokens, done)
        check_unchanged(scan, cfg.output_path, cfg.retry_failed)
        summary.lines, summary.requests, summary.invalid = scan.lines, scan.requests, scan.bad
        summary.estimated_tokens = scan.estimated_tokens
        summary.problems = [bad.message for bad in scan.problems]
        summary.retried_failed = len(state.retrying & scan.ids)
        self._reserved = scan.reserved  # names the stand-in ids again in the second pass
        self._bad_ids = scan.bad_ids
        return scan.ids

    def _count_done(self, state: ResumeState, shard_ids: set[str]) -> None:
        summary = self.summary
        summary.already_done = len(state.done & shard_ids)
        summary.resumed_failed = state.failed
        summary.to_do = summary.requests + summary.invalid - summary.already_done
        summary.to_send = summary.to_do - len(self._bad_ids - state.done)

    async def _dispatch(self, store: ResultStore, done: set[str], reserved: frozenset[str]) -> None:
        """Start one task per request; the first exception anywhere stops them all. The first
        request goes alone until its headers are in (see the module docstring)."""
        cfg = self.config
        first = True
        try:
            async with asyncio.TaskGroup() as group:
                for item in iter_lines(
                    cfg.input_path, cfg.shard, cfg.default_output_tokens, done, reserved
                ):
                    if isinstance(item, BadLine):
                        store.write_bad_line(item)
                        self.summary.invalid_written += 1
                        self.summary.errors_by_kind[INVALID_REQUEST] += 1
                        continue
                    await self.gate.acquire()
                    try:
                        reservation = await self._grant(item)
                    except BaseException:
                        self.gate.release()
                        raise
                    opened = asyncio.Event() if first else None
                    self._dispatched += 1
                    task = group.create_task(
                        self._one(store, self._pick(), item, reservation, opened, self._dispatched)
                    )
                    if opened is not None:
                        first = False
                        await wait_open(task, opened)
        except BaseExceptionGroup as group_error:
            # The first error stopped the job; the others (if any) raced it in the same tick.
            raise group_error.exceptions[0] from None
        self._write_held(store)  # a few such failures, not a burst: the records' own

    def _pick(self) -> _Slot:
        """The least-loaded engine; ties go round-robin so equal engines share evenly."""
        slots = self._slots
        if len(slots) == 1:
            return slots[0]
        start = next(self._turn) % len(slots)
        order = slots[start:] + slots[:start]
        return min(order, key=lambda s: s.active)

    async def _grant(self, req: Request) -> Reservation | None:
        """A rate-limit grant for one HTTP request (first attempt or retry)."""
        if self.limiter is None:
            return None
        tpm = self.config.tpm
        if tpm is not None and req.estimated_tokens > tpm:  # granted alone, in an empty minute
            self.summary.oversize_requests += 1
        return await self.limiter.acquire(req.estimated_tokens)

    def _rate_limited(self) -> None:
        self.gate.on_rate_limited()
        self.summary.concurrency_min = min(self.summary.concurrency_min, self.gate.limit)

    async def _send(
        self,
        slot: _Slot,
        req: Request,
        reservation: Reservation | None,
        opened: asyncio.Event | None,
    ) -> tuple[StreamResult, Reservation | None]:
        """Send until success or a final error; returns the result and the grant it used.

        A failed attempt's grant stays booked at its estimate: the provider may have counted it.
        The first request (`opened` set) ends the job at once on a job-level failure.
        """
        summary = self.summary
        grant = [reservation]

        async def before_retry(error: EngineError, attempt: int) -> None:  # noqa: ARG001
            if self._stopping:  # another record failed to be written: send nothing more
                raise asyncio.CancelledError
            if opened is not None and not opened.is_set():
                failed = job_failed(error, slot.engine.url_for(req.body, req.endpoint)[0])
                if failed is not None:  # e.g. a refused connection: not worth the retries
                    self._hold(slot, req, error, failed, first=True)
            if isinstance(error, RateLimitError):
                self._rate_limited()  # every 429 is a signal, not only final ones
            summary.retries += 1
            summary.retries_by_kind[error.kind] += 1
            grant[0] = await self._grant(req)  # after the backoff: granted when sent

        if self._stopping:
            raise asyncio.CancelledError
        result = await slot.engine.run(
            req.body,
            endpoint=req.endpoint,
            custom_id=req.custom_id,
            before_retry=before_retry,
            on_open=None if opened is None else opened.set,
        )
        return result, grant[0]

    async def _one(
        self,
        store: ResultStore,
        slot: _Slot,
        req: Request,
        reservation: Reservation | None,
        opened: asyncio.Event | None = None,
        seq: int = 0,
    ) -> None:
        slot.active += 1
        self.summary.requests_by_endpoint[slot.label] += 1
        try:
            await self._record(store, slot, req, reservation, opened, seq)
        except BaseException:
            # The job stops. The TaskGroup cancels the other tasks at its next step, but a task
            # whose first step is due before that would still send: `_send` checks this flag.
            self._stopping = True
            raise
        finally:
            slot.active -= 1
            self.gate.release()

    async def _record(
        self,
        store: ResultStore,
        slot: _Slot,
        req: Request,
        reservation: Reservation | None,
        opened: asyncio.Event | None,
        seq: int,
    ) -> None:
        """Send one request and append its record to the output or the errors file."""
        summary = self.summary
        try:
            result, reservation = await self._send(slot, req, reservation, opened)
        except JobFailed:
            raise
        except EngineError as exc:  # a final answer; any other exception stops the job
            failed = job_failed(exc, slot.engine.url_for(req.body, req.endpoint)[0])
            if failed is not None:
                self._hold(slot, req, exc, failed, first=opened is not None)
                return
            store.write_failure(req.custom_id, exc, req.digest)
            self._count_failure(exc)
        else:
            store.write_success(req.custom_id, result, req.digest)
            # The job works if this request started after the held ones failed, or went to
            # another endpoint (one bad key among several is those records' failure).
            if seq > self._held_mark or any(s is not slot for s, _, _ in self._held):
                self._write_held(store)  # the held failures were the records' own
            summary.succeeded += 1
            summary.attempts += result.attempts
            usage = result.usage
            if usage is not None:
                summary.input_tokens += usage.input_tokens
                summary.output_tokens += usage.output_tokens
                summary.total_tokens += usage.total_tokens
                if reservation is not None:
                    reservation.settle(usage.total_tokens)
            self.gate.on_success()

    def _count_failure(self, exc: EngineError) -> None:
        self.summary.failed += 1
        self.summary.errors_by_kind[exc.kind] += 1
        if isinstance(exc, RateLimitError):
            self._rate_limited()  # any other failure says nothing about the rate limit

    def _hold(
        self, slot: _Slot, req: Request, exc: EngineError, failed: JobFailed, *, first: bool
    ) -> None:
        """Keep a job-level failure unwritten; the first request's, or a burst, ends the job."""
        if not self._held:
            self._held_mark = self._dispatched
        self._held.append((slot, req, exc))
        if first or len(self._held) >= JOB_BURST:
            held = len(self._held)
            failed.message += (
                " (the first request: nothing else was sent)"
                if first
                else f" ({held} requests in a row failed this way)"
            )
            failed.args = (failed.message,)
            raise failed

    def _write_held(self, store: ResultStore) -> None:
        held, self._held = self._held, []
        for _, req, exc in held:
            store.write_failure(req.custom_id, exc, req.digest)
            self._count_failure(exc)


def _progress_display(summary: BatchSummary) -> ProgressDisplay | None:
    """The live display, from the `cli` extra (rich); without it, one line and none."""
    try:
        from engine.batch.progress import ProgressDisplay  # noqa: PLC0415 - rich: slow, optional
    except ImportError:
        sys.stderr.write(
            "stream-engine batch: no live progress display: pip install 'stream-engine[cli]'\n"
        )
        return None
    return ProgressDisplay(summary)


async def run_batch(
    config: BatchConfig,
    *,
    limiter: RateLimiter | None = None,
    gate: AdaptiveConcurrency | None = None,
) -> BatchSummary:
    """Run (or resume) a batch job to completion and return its summary."""
    return await BatchRunner(config, limiter=limiter, gate=gate).run()
