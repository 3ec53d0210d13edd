"""Record real servers' streams, wire-exact, for the replay tests.

    python tests/real_servers/record.py --base-url http://127.0.0.1:8080/v1 --name llama-server
    python tests/real_servers/record.py --base-url http://127.0.0.1:8081/v1 --name llama-server \
        --reasoning    # the server of `setup.sh start-reasoning`

For each request below, one raw HTTP/1.1 exchange over a plain socket: the response's bytes
exactly as they arrived (status line, headers, chunked framing, SSE), each read stamped with
its offset from the send, and whether the server closed the connection after the response
although the request asked to keep it alive. `tests/replay.py` serves them back.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

HERE = Path(__file__).resolve().parent / "recordings"
PROMPT = "Write a short story about a lighthouse."
LINGER_S = 1.0  # after the body's end: does the server close the connection by itself?


def requests(model: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (path under the base URL, body): both wire formats, capped by a token limit."""
    return {
        "responses": (
            "/responses",
            {
                "model": model,
                "input": PROMPT,
                "max_output_tokens": 16,
                "temperature": 0,
                "stream": True,
            },
        ),
        "chat": (
            "/chat/completions",
            {
                "model": model,
                "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": 16,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ),
    }


# A tool call, for servers started with tool calling on (vLLM: --enable-auto-tool-choice
# --tool-call-parser hermes): `tool_choice: required` constrains even a random model to one.
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def tool_requests(model: str) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        "chat-tools": (
            "/chat/completions",
            {
                "model": model,
                "messages": [{"role": "user", "content": "Weather in Paris?"}],
                "tools": TOOLS,
                "tool_choice": "required",
                "max_tokens": 64,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
    }


# Reasoning, then text, for llama-server started by `setup.sh start-reasoning` (its template opens
# a <think> block; --reasoning-format deepseek streams what is inside it as reasoning). A random
# model would think to its cap: this GBNF grammar (llama-server's own request field) makes it
# write a few words, close the block, then a line of text, and stop.
THINK_GRAMMAR = r'root ::= [a-z ]{20,40} "\n</think>\n\n" [a-zA-Z ,.]{20,60}'


def reasoning_requests(model: str) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        "chat-reasoning": (
            "/chat/completions",
            {
                "model": model,
                "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": 64,
                "temperature": 0,
                "grammar": THINK_GRAMMAR,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ),
        "responses-reasoning": (
            "/responses",
            {
                "model": model,
                "input": PROMPT,
                "max_output_tokens": 64,
                "temperature": 0,
                "grammar": THINK_GRAMMAR,
                "stream": True,
            },
        ),
    }


def exchange(base_url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    url = urlsplit(base_url)
    payload = orjson.dumps(body)
    head = (
        f"POST {url.path}{path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Connection: keep-alive\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    chunks: list[tuple[float, bytes]] = []
    with socket.create_connection((url.hostname, url.port or 80), timeout=60) as sock:
        t0 = time.perf_counter()
        sock.sendall(head + payload)
        data = b""
        while not data.endswith(b"\r\n0\r\n\r\n"):  # the chunked body's last chunk
            got = sock.recv(65536)
            if not got:
                break
            chunks.append((time.perf_counter() - t0, got))
            data += got
        sock.settimeout(LINGER_S)
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
    return {
        "path": path,
        "request": body,
        "closed_after_response": closed,
        "reads": [[round(t, 6), base64.b64encode(b).decode()] for t, b in chunks],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--name", required=True, help="server label, e.g. llama-server or vllm")
    ap.add_argument("--model", default="tiny-random-llama")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--tools", action="store_true", help="record a tool-calling chat stream")
    mode.add_argument(
        "--reasoning",
        action="store_true",
        help="record reasoning streams, chat and Responses (setup.sh start-reasoning)",
    )
    args = ap.parse_args()
    HERE.mkdir(exist_ok=True)
    if args.tools:
        todo = tool_requests(args.model)
    elif args.reasoning:
        todo = reasoning_requests(args.model)
    else:
        todo = requests(args.model)
    for endpoint, (path, body) in todo.items():
        today = dt.datetime.now(dt.UTC).date().isoformat()
        record = {
            "server": args.name,
            "endpoint": endpoint,
            "recorded": today,
            **exchange(args.base_url, path, body),
        }
        out = HERE / f"{args.name}-{endpoint}.json"
        out.write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2) + b"\n")
        print(
            f"{out}: {len(record['reads'])} reads, closed after response: "
            f"{record['closed_after_response']}"
        )


if __name__ == "__main__":
    main()
