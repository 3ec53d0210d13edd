"""Credential redaction: the one place that knows which strings are secrets.

A server may reflect a request's headers into an error body, an event or a message; whatever
the engine shows (errors, logs, reports, output files) passes through `redact` first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "REDACTED",
    "SECRET_HEADERS",
    "redact",
    "redact_bytes",
    "secret_values",
    "url_credentials",
]

# Headers whose values are credentials: never shown, even when a server reflects them.
SECRET_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key"})
REDACTED: Final = "[redacted]"


def url_credentials(url: str | None) -> set[str]:
    """The password of a URL's `user:password@` (a proxy's), as written and decoded."""
    if not url:
        return set()
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return set()
    if not password:
        return set()
    raw = parts.netloc.rpartition("@")[0].partition(":")[2]
    return {raw, unquote(raw), password}


def secret_values(
    api_key: str | None, *header_maps: Mapping[str, str], extra: Iterable[str] = ()
) -> tuple[str, ...]:
    """The credential strings of a request (key, auth header values and their tokens, and
    `extra`: a proxy's password)."""
    values = {api_key or "", *extra}
    for headers in header_maps:
        for name, value in headers.items():
            if name.lower() in SECRET_HEADERS:
                values.update((value, value.partition(" ")[2]))  # and the token after "Bearer "
    values.discard("")
    return tuple(sorted(values, key=len, reverse=True))  # a whole value before its token


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with every secret replaced by REDACTED."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def redact_bytes(raw: bytes, secrets: tuple[str, ...]) -> bytes:
    """`redact` for bytes (error bodies, event data)."""
    for secret in secrets:
        raw = raw.replace(secret.encode(), REDACTED.encode())
    return raw
