"""Command-line options that `run`, `batch` and `bench` share: the phases' time limits, and
how to reach the endpoint (proxy, TLS).

The time limits' defaults are `engine.config.COMMAND_TIMEOUTS`: a dead stream ends within
minutes, whatever it does.
"""

from __future__ import annotations

import argparse
import sys

from engine.config import COMMAND_TIMEOUTS, RetryPolicy, Timeouts
from engine.network import NetworkOptions

__all__ = [
    "DEFAULT_MODEL",
    "add_key_argument",
    "add_network_arguments",
    "add_timeout_arguments",
    "header",
    "network_from",
    "retry_from",
    "seconds",
    "timeouts_from",
]

DEFAULT_MODEL = "gpt-4.1-mini"  # what `run` and `bench` ask for when --model is not given
DEFAULTS = COMMAND_TIMEOUTS  # the commands' limits (engine.config)


def seconds(text: str) -> float | None:
    """A limit in seconds; 0 or 'none' for no limit."""
    if text.lower() in ("none", "off"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or 'none', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a time limit cannot be negative")
    return value or None


def add_timeout_arguments(parser: argparse.ArgumentParser, *, retries: bool = True) -> None:
    """The five phase limits (seconds; 'none' for no limit) and, optionally, --max-retries."""
    group = parser.add_argument_group("time limits (seconds per attempt; 'none' for no limit)")
    for flag, name, help_text in (
        ("--connect-timeout", "connect_s", "one TCP connect"),
        ("--first-byte-timeout", "first_byte_s", "request sent to response headers"),
        (
            "--first-token-timeout",
            "first_token_s",
            "request sent to the first token of any kind (reasoning, tool call, text)",
        ),
        (
            "--idle-timeout",
            "idle_s",
            "longest wait between two events (comments and keep-alives do not count)",
        ),
        ("--total-timeout", "total_s", "the whole attempt"),
    ):
        default = getattr(DEFAULTS, name)
        group.add_argument(
            flag,
            dest=name,
            type=seconds,
            default=default,
            metavar="S",
            help=f"{help_text} (default: {default or 'none'})",
        )
    if retries:
        group.add_argument(
            "--max-retries",
            type=int,
            default=RetryPolicy().max_retries,
            help="retries of a request that failed before its first event (default: %(default)s)",
        )


def timeouts_from(args: argparse.Namespace) -> Timeouts:
    return Timeouts(
        connect_s=args.connect_s,
        first_byte_s=args.first_byte_s,
        first_token_s=args.first_token_s,
        idle_s=args.idle_s,
        total_s=args.total_s,
    )


def retry_from(args: argparse.Namespace) -> RetryPolicy:
    return RetryPolicy(max_retries=args.max_retries)


def add_key_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--api-key, on every verb that sends: accepted, discouraged (argv shows in `ps`)."""
    parser.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="bearer token (default: $OPENAI_API_KEY; prefer the variable: a flag's value "
        "shows in the process list)",
    )


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    """--proxy, --ca-bundle, --client-cert, --client-key, --insecure."""
    group = parser.add_argument_group(
        "network (HTTP_PROXY, HTTPS_PROXY, NO_PROXY and SSL_CERT_FILE are honoured too)"
    )
    group.add_argument(
        "--proxy",
        default=None,
        metavar="URL",
        help="send through this HTTP proxy, e.g. http://user:password@proxy:3128 "
        "(default: the environment's; its password is never shown)",
    )
    group.add_argument(
        "--ca-bundle",
        default=None,
        metavar="PEM",
        help="trust the CAs in this file (a private CA) instead of the system's",
    )
    group.add_argument(
        "--client-cert", default=None, metavar="PEM", help="present this client certificate"
    )
    group.add_argument(
        "--client-key",
        default=None,
        metavar="PEM",
        help="the client certificate's private key (if not in --client-cert's file)",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the server's certificate (anyone on the path can read the key)",
    )


def network_from(args: argparse.Namespace, command: str) -> NetworkOptions:
    """The options as a value; `--insecure` is said loudly on stderr, once."""
    if args.insecure:
        sys.stderr.write(
            f"stream-engine {command}: WARNING: --insecure: the server's TLS certificate is "
            "not verified; the API key can be read by anyone between you and it\n"
        )
    return NetworkOptions(
        proxy=args.proxy,
        ca_bundle=args.ca_bundle,
        client_cert=args.client_cert,
        client_key=args.client_key,
        insecure=args.insecure,
    )


def header(value: str) -> tuple[str, str]:
    """An `--header 'Name: value'` flag's value."""
    name, sep, val = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {value!r}")
    return name.strip(), val.strip()
