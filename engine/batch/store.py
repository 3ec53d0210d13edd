"""The output and errors files: the job's only state, and how exactly-once survives kill -9.

Invariant: a custom_id is done iff a complete line (ending in a newline) for it is in the
output file or the errors file. Each finished record is appended as one whole line by a
single `write(2)` on an `O_APPEND` descriptor, straight to the kernel (no user-space buffer
to lose), so killing the process at any instant leaves every earlier record complete and at
most the last line torn. On open, a torn tail (bytes after the last newline) is truncated
away and its request runs again; then both files are read to learn which ids are done, and
the runner skips them. An exclusive `flock` on each file stops a second process from
appending to the same job at the same time (the lock dies with its process, even on kill -9).

Durability: a written line survives the process dying as soon as `write` returns (it is in
the page cache). Surviving a power loss needs `fsync`; with `fsync=True` the files are
synced at most once per `fsync_interval_s` and at close, so a crash of the machine loses at
most that last interval of records, which are then simply run again on resume. New files
are also made durable by an fsync of their directory (else the file itself may vanish).

A failed write (disk full, file-size limit, I/O error) cuts the file back to its length before
that write, so no torn fragment is left to be glued onto a later record, and raises
`StoreWriteError`: the runner stops the job, and the same command resumes it later.

Every record also carries `request_digest`, the digest of what its input line asked (see
`engine.batch.inputs`), so a resume can tell an edited input from the one it answered.

`--retry-failed` (`retry_failed=True`): the ids whose only record is in the errors file are
not done; they are sent again, and their old errors lines leave the file only once they have
ended again: at close, the errors file is rewritten (a new file, then an atomic rename)
without the lines of ids that have a later line or a line in the output. A run killed before
that leaves such pairs; the next open finds them and rewrites the file the same way.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Self

import orjson

from engine.errors import APIStatusError, ConfigError, EngineError, StreamError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from engine.batch.inputs import BadLine
    from engine.result import StreamResult

TAIL_CHUNK: Final = 64 * 1024
INVALID_REQUEST: Final = "invalid_request"  # error code of a bad input line
# What to do about a failed write, by errno; then "run the same command to resume".
WRITE_ADVICE: Final = {
    errno.ENOSPC: "free disk space",
    errno.EDQUOT: "free space within your disk quota",
    errno.EFBIG: "raise the file-size limit (ulimit -f)",
}


class StoreWriteError(EngineError):
    """A record could not be written: the job must stop (every record before it is whole).

    `args` are (path, OSError) so the error pickles (a Ray actor sends it back to the driver).
    """

    def __init__(self, path: Path, error: OSError) -> None:
        self.path = path
        self.error = error
        super().__init__(str(self))
        self.args = (path, error)

    def __str__(self) -> str:
        err = self.error
        name = errno.errorcode.get(err.errno or 0, "")
        reason = f"{err.strerror} ({name})" if err.strerror and name else str(err)
        advice = WRITE_ADVICE.get(err.errno or 0, "fix the disk or file system")
        return (
            f"cannot write {self.path}: {reason}; the job stopped (finished records are "
            f"saved); {advice}, then run the same command to resume"
        )


def record_id(custom_id: str) -> str:
    """A stable `batch_req_…` id: the same job writes the same ids on every run."""
    return "batch_req_" + hashlib.blake2b(custom_id.encode(), digest_size=12).hexdigest()


def success_line(custom_id: str, result: StreamResult, digest: str = "") -> bytes:
    """An output line in the OpenAI Batch format; `body` is the assembled final response."""
    return orjson.dumps(
        {
            "id": record_id(custom_id),
            "custom_id": custom_id,
            "response": {
                "status_code": result.http_status,
                "request_id": result.request_id,
                "body": result.response,
            },
            "error": None,
            "request_digest": digest,
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )


def failure_line(custom_id: str, exc: EngineError, digest: str = "") -> bytes:
    """An errors-file line: the last HTTP status and body when there was one."""
    response: dict[str, Any] | None = None
    if isinstance(exc, APIStatusError):
        response = {"status_code": exc.status, "request_id": exc.request_id, "body": exc.body}
    elif isinstance(exc, StreamError) and exc.data is not None:
        # response.failed carries the final response object: keep it for tooling.
        data = exc.data
        body = data.get("response", data) if isinstance(data, dict) else data
        response = {"status_code": 200, "request_id": exc.request_id, "body": body}
    return orjson.dumps(
        {
            "id": record_id(custom_id),
            "custom_id": custom_id,
            "response": response,
            "error": {"code": exc.kind, "message": exc.message},
            "request_digest": digest,
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )


def bad_line_line(bad: BadLine) -> bytes:
    """An errors-file line for an input line that could not be sent."""
    return orjson.dumps(
        {
            "id": record_id(bad.custom_id),
            "custom_id": bad.custom_id,
            "response": None,
            "error": {"code": INVALID_REQUEST, "message": bad.message, "line": bad.line},
            "request_digest": bad.digest,
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )


@dataclass(slots=True)
class ResumeState:
    """What the files held when the job (re)started."""

    done: set[str] = field(default_factory=set)
    succeeded: int = 0  # lines in the output file
    failed: int = 0  # lines in the errors file (of ids still done: see `retrying`)
    repaired_bytes: int = 0  # torn-tail bytes truncated away
    # Ids found twice: an interrupted --retry-failed run (see the module); never otherwise.
    duplicates: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # done id -> what it asked
    retrying: set[str] = field(default_factory=set)  # --retry-failed: errors-only ids, to do


def sync_directory(path: Path) -> None:
    """fsync a directory: a file created in it survives a crash only once its entry is synced."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: this file system cannot sync a directory
            raise
    finally:
        os.close(fd)


class _AppendFile:
    """One locked O_APPEND file: whole-line writes, optional periodic fsync."""

    __slots__ = ("fd", "fsync_interval_s", "last_sync", "path", "size", "unsynced")

    def __init__(self, path: Path, fsync_interval_s: float | None) -> None:
        self.path = path
        self.fsync_interval_s = fsync_interval_s
        self.unsynced = False
        self.last_sync = time.monotonic()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise ConfigError(f"{path} is locked: another batch process is writing it") from None
        # The length up to the last whole record: the lock keeps every other writer out.
        self.size = os.fstat(self.fd).st_size

    def repair_tail(self) -> int:
        """Truncate bytes after the last newline (a line torn by a kill); return how many."""
        size = os.fstat(self.fd).st_size
        end = size
        while end > 0:
            start = max(0, end - TAIL_CHUNK)
            chunk = os.pread(self.fd, end - start, start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end < size:
            os.ftruncate(self.fd, end)
        self.size = end
        return size - end

    def write(self, line: bytes) -> None:
        """Append one whole record, or raise StoreWriteError with the file cut back."""
        try:
            view = memoryview(line)
            while view:  # one write for a regular file; a short write (disk full) loops
                view = view[os.write(self.fd, view) :]
            if self.fsync_interval_s is not None:
                self.unsynced = True
                now = time.monotonic()
                if now - self.last_sync >= self.fsync_interval_s:
                    self.sync(now)
        except OSError as exc:
            # Cut back to the last whole record. Should even this fail, the torn tail is
            # cut on resume (repair_tail) before anything else is appended.
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            raise StoreWriteError(self.path, exc) from exc
        self.size += len(line)

    def sync(self, now: float) -> None:
        if self.unsynced:
            os.fsync(self.fd)
            self.unsynced = False
        self.last_sync = now

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            if self.fsync_interval_s is not None:
                self.sync(time.monotonic())
        except OSError as exc:
            raise StoreWriteError(self.path, exc) from exc
        finally:
            os.close(self.fd)  # also releases the lock
            self.fd = -1


def _records(path: Path) -> Iterator[tuple[str, str, bytes]]:
    """(custom_id, request_digest or "", the line) of every complete line of an output or
    errors file (a torn tail is not one)."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                break
            try:
                record = orjson.loads(raw)
                cid = str(record["custom_id"])
                digest = str(record.get("request_digest") or "")
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise ConfigError(
                    f"{path} line {number} is not a batch record; refusing to "
                    "resume into a file this job did not write"
                ) from None
            yield cid, digest, raw


def read_state(
    output: Path, errors: Path, state: ResumeState | None = None, *, retry_failed: bool = False
) -> ResumeState:
    """Which custom_ids the files hold. Read-only: a dry run may call it on a live job.

    With `retry_failed`, an id whose only record is in the errors file is not done."""
    state = ResumeState() if state is None else state
    done, digests = state.done, state.digests
    for cid, digest, _ in _records(output):
        state.succeeded += 1
        if cid in done:
            state.duplicates.append(cid)
        done.add(cid)
        if digest:
            digests[cid] = digest
    succeeded = set(done) if retry_failed else done
    for cid, digest, _ in _records(errors):
        if cid in done:
            state.duplicates.append(cid)  # a retried id: its last record wins (see compact)
        if cid in succeeded:
            continue
        state.failed += 1
        done.add(cid)
        if digest:
            digests[cid] = digest
    if retry_failed:
        state.retrying = done - succeeded
        state.failed = 0  # every errors line left is a retrying id's
        done -= state.retrying
        for cid in state.retrying:
            digests.pop(cid, None)  # sent again with the line as it is now
    return state


def compacted_errors(output: Path, errors: Path) -> list[bytes]:
    """The errors file's lines without those an id's later line or output record replaced."""
    succeeded = {cid for cid, _, _ in _records(output)}
    last: dict[str, bytes] = {}
    for cid, _, raw in _records(errors):
        if cid not in succeeded:
            last.pop(cid, None)  # keep the file's order: a re-ended id moves to its new place
            last[cid] = raw
    return list(last.values())


class ResultStore:
    """The output and errors files of one job, opened for resume and appended line by line."""

    def __init__(
        self,
        output: Path,
        errors: Path,
        *,
        fsync: bool = False,
        fsync_interval_s: float = 1.0,
        retry_failed: bool = False,
    ) -> None:
        if output.resolve() == errors.resolve():
            raise ConfigError("the output and errors files must differ")
        self.output_path = output
        self.errors_path = errors
        self.retry_failed = retry_failed
        self._interval = fsync_interval_s if fsync else None
        self._output: _AppendFile | None = None
        self._errors: _AppendFile | None = None
        self._retrying: set[str] = set()
        self._replaced = False  # a retried id ended again: its old errors line must go

    def open(self) -> ResumeState:
        """Lock both files, repair torn tails and read which custom_ids are done."""
        state = ResumeState()
        self._output = _AppendFile(self.output_path, self._interval)
        try:
            self._errors = _AppendFile(self.errors_path, self._interval)
            if self._interval is not None:  # the files may be new: make their entries durable
                for directory in {
                    p.absolute().parent for p in (self.output_path, self.errors_path)
                }:
                    sync_directory(directory)
        except BaseException:
            self.close()
            raise
        for handle in (self._output, self._errors):
            state.repaired_bytes += handle.repair_tail()
        read_state(self.output_path, self.errors_path, state, retry_failed=self.retry_failed)
        if state.duplicates:  # an interrupted --retry-failed run: finish its rewrite
            self._compact()
            state.duplicates.clear()
        self._retrying = state.retrying
        return state

    def write_success(self, custom_id: str, result: StreamResult, digest: str = "") -> None:
        assert self._output is not None, "open() first"  # noqa: S101 - programming error
        self._output.write(success_line(custom_id, result, digest))
        self._replaced = self._replaced or custom_id in self._retrying

    def write_failure(self, custom_id: str, exc: EngineError, digest: str = "") -> None:
        assert self._errors is not None, "open() first"  # noqa: S101 - programming error
        self._errors.write(failure_line(custom_id, exc, digest))
        self._replaced = self._replaced or custom_id in self._retrying

    def _compact(self, *, reopen: bool = True) -> None:
        """Rewrite the errors file without replaced lines: a new file renamed over the old
        one (atomic: a kill leaves the old or the new, both whole), then locked again."""
        assert self._errors is not None  # noqa: S101 - open
        path = self.errors_path
        tmp = path.with_name(f".{path.name}.compact")
        try:
            with tmp.open("wb") as f:
                f.writelines(compacted_errors(self.output_path, path))
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(path)
            if self._interval is not None:
                sync_directory(path.absolute().parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StoreWriteError(path, exc) from exc
        self._errors.close()
        self._errors = _AppendFile(path, self._interval) if reopen else None

    def write_bad_line(self, bad: BadLine) -> None:
        assert self._errors is not None, "open() first"  # noqa: S101 - programming error
        self._errors.write(bad_line_line(bad))

    def close(self) -> None:
        """Close (and with fsync, sync) both files; raises the first StoreWriteError."""
        error: StoreWriteError | None = None
        if self._replaced and self._errors is not None:
            self._replaced = False
            try:
                self._compact(reopen=False)
            except StoreWriteError as exc:
                error = exc
        handles = (self._output, self._errors)
        self._output = self._errors = None
        for handle in handles:
            if handle is not None:
                try:
                    handle.close()
                except StoreWriteError as exc:
                    error = error or exc
        if error is not None:
            raise error

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(StoreWriteError):  # the error already raised says more
            self.close()
