"""How the pool reaches the endpoint: TLS (a private CA, a client certificate, or no
verification) and a proxy.

`Engine(ssl=…)` takes an `SSLContext` (used as it is), a path to a CA bundle (PEM: trusted
for this engine only, instead of the system's), `False` (no verification: the CLI's
`--insecure`, which warns loudly) or `None` (the system's trust store, which also honours
`SSL_CERT_FILE`). The CLI builds its context from `--ca-bundle`, `--client-cert` and
`--client-key` with `tls_context`; the paths are what crosses to worker processes (a context
does not pickle): `NetworkOptions` carries them, and the proxy URL.
"""

from __future__ import annotations

import os
import ssl
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from engine.errors import ConfigError

if TYPE_CHECKING:
    from os import PathLike

__all__ = ["NetworkOptions", "SSLOption", "env_proxy", "pool_ssl", "tls_context"]

SSLOption = ssl.SSLContext | str | os.PathLike[str] | bool | None


def env_proxy(url: str) -> str | None:
    """The environment's proxy for `url` (`HTTP_PROXY`, `HTTPS_PROXY`, lower case too), or
    None when there is none or `NO_PROXY` names its host: the rules curl and openai-python
    follow. Looked up once per engine (its base URL's host is fixed): aiohttp's `trust_env`
    would look it up, and `.netrc`, on a worker thread for every request, which cost
    ~1 µs per event of a 500-token stream here, and a thread hop before each request."""
    parts = urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme) or None


def pool_ssl(value: SSLOption) -> ssl.SSLContext | bool:
    """What the pool's connector takes: True verifies against the system's trust store."""
    if value is None or value is True:
        return True
    if value is False or isinstance(value, ssl.SSLContext):
        return value
    return tls_context(ca_bundle=value)


def tls_context(
    *,
    ca_bundle: str | PathLike[str] | None = None,
    client_cert: str | PathLike[str] | None = None,
    client_key: str | PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A verifying context trusting `ca_bundle` (else the system's CAs), presenting
    `client_cert` (with `client_key`, unless the key is in the certificate's file)."""
    try:
        context = ssl.create_default_context(
            cafile=None if ca_bundle is None else os.fspath(ca_bundle)
        )
    except (OSError, ssl.SSLError) as exc:
        where = os.fspath(ca_bundle or "")
        raise ConfigError(f"cannot read the CA bundle {where}: {exc}") from None
    if client_key is not None and client_cert is None:
        raise ConfigError("a client key needs its certificate (--client-cert)")
    if client_cert is not None:
        try:
            context.load_cert_chain(
                os.fspath(client_cert), None if client_key is None else os.fspath(client_key)
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the client certificate {os.fspath(client_cert)}: {exc}"
            ) from None
    return context


@dataclass(frozen=True, slots=True)
class NetworkOptions:
    """The commands' `--proxy`, `--ca-bundle`, `--client-cert`, `--client-key`, `--insecure`:
    plain values, so a job's options cross to worker processes and Ray actors."""

    proxy: str | None = field(default=None, repr=False)  # may hold a password
    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    insecure: bool = False

    def engine_options(self) -> dict[str, Any]:
        """`Engine(**options.engine_options())`."""
        tls: SSLOption = None
        if self.insecure:
            tls = False
        elif self.ca_bundle or self.client_cert or self.client_key:
            tls = tls_context(
                ca_bundle=self.ca_bundle, client_cert=self.client_cert, client_key=self.client_key
            )
        return {"proxy": self.proxy, "ssl": tls}
