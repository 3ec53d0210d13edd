"""The final object of a stream equals what the official `openai` SDK assembles from the same
bytes (docs/sdk-parity.md): `Engine.run`'s `response`, the batch body (`success_line`) and what
the CLI's `run` prints, for every part of every stream.

Each case's bytes come from the mock (recorded once) or are written here in the shapes of
openai-python's types, and are served by `tests/canned.py` to the engine and to the SDK's
`responses.stream(...).get_final_response()` / `chat.completions.stream(...)
.get_final_completion()` alike. The objects are compared as JSON, where null and absent are the
same (the SDK's models fill every field they know with null) and the SDK's own `parsed` /
`parsed_arguments` are left out. Where the engine deliberately differs (it keeps a result the
SDK raises on), the test says which difference of docs/sdk-parity.md it holds.
"""

from __future__ import annotations

import asyncio
import base64
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
from openai import APIError, AsyncOpenAI, LengthFinishReasonError

from engine.assembly import NO_TERMINAL_EVENT, ToolCall
from engine.batch.store import failure_line, success_line
from engine.client import Engine, RetryPolicy, StreamResult, Timeouts
from engine.errors import ErrorEvent, FirstTokenTimeout
from engine.mock import MockConfig
from tests.canned import DONE, CannedServer, data, typed

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.conftest import MockFactory

MESSAGES: Any = [{"role": "user", "content": "What is the weather?"}]
CHAT_BODY: dict[str, Any] = {"model": "m", "messages": MESSAGES}
RESPONSES_BODY: dict[str, Any] = {"model": "m", "input": "What is the weather?"}
SDK_ONLY = frozenset({"parsed", "parsed_arguments"})


@pytest.fixture
async def canned() -> AsyncIterator[CannedServer]:
    async with CannedServer() as server:
        yield server


def plain(value: Any) -> Any:
    """JSON as compared: null-valued keys and the SDK's own keys left out."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if v is not None and k not in SDK_ONLY}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def sdk(url: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=url, api_key="x", max_retries=0)


async def sdk_response(url: str) -> dict[str, Any]:
    async with sdk(url) as client, client.responses.stream(**RESPONSES_BODY) as stream:
        final = await stream.get_final_response()
    return final.to_dict()


async def sdk_completion(url: str, *, snapshot: bool = False) -> dict[str, Any]:
    """The SDK's final chat.completion; `snapshot`: the one it raises on (a length cut)."""
    async with sdk(url) as client, client.chat.completions.stream(**CHAT_BODY) as stream:
        async for _ in stream:
            pass
        if snapshot:
            return stream.current_completion_snapshot.to_dict()
        final = await stream.get_final_completion()
    return final.to_dict()


async def engine_run(url: str, body: dict[str, Any], **options: Any) -> StreamResult:
    async with Engine(base_url=url, api_key="x", retry=RetryPolicy(max_retries=0)) as eng:
        return await eng.run(body, **options)


def batch_body(result: StreamResult) -> Any:
    return orjson.loads(success_line("c1", result))["response"]["body"]


async def assert_parity(result: StreamResult, theirs: dict[str, Any]) -> None:
    """The run's object and the batch body equal the SDK's."""
    assert plain(result.response) == plain(theirs)
    assert plain(batch_body(result)) == plain(theirs)


async def record(base_url: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    """The mock's stream for one request, byte for byte."""
    async with httpx.AsyncClient() as client:
        resp = await client.post(
            base_url + path, json={**body, "stream": True}, headers={"x-mock-seed": "3", **headers}
        )
    return resp.content


# --- the mock's streams: every part it sends -----------------------------------------------

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
}
CHAT_TOOLS: Any = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
        },
    },
]
RESPONSE_TOOLS: Any = [
    {"type": "function", "strict": False, **tool["function"]} for tool in CHAT_TOOLS
]
CHAT_CASES = [
    pytest.param({}, {}, id="text"),
    pytest.param(
        {"tools": CHAT_TOOLS, "tool_choice": "required"},
        {"x-mock-tool-calls": "3"},
        id="parallel-tool-calls",
    ),
    pytest.param({}, {"x-mock-reasoning-tokens": "5"}, id="reasoning_content"),
    pytest.param(
        {}, {"x-mock-reasoning-tokens": "5", "x-mock-reasoning-field": "reasoning"}, id="reasoning"
    ),
    pytest.param({}, {"x-mock-output": "refusal"}, id="refusal"),
    pytest.param({"n": 3}, {}, id="three-choices"),
    pytest.param({"logprobs": True, "top_logprobs": 2}, {}, id="logprobs"),
    pytest.param(
        {"tools": [{"type": "custom", "custom": {"name": "sql"}}], "tool_choice": "required"},
        {},
        id="custom-tool-call",
    ),
    pytest.param(
        {
            "functions": [{"name": "get_weather", "parameters": WEATHER}],
            "function_call": {"name": "get_weather"},
        },
        {},
        id="legacy-function-call",
    ),
    pytest.param(
        {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"}},
        {},
        id="audio",
    ),
    pytest.param(
        {
            "web_search_options": {},
            "service_tier": "flex",
            "prediction": {"type": "content", "content": "The weather is fine today"},
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is the weather?"},
                        {"type": "input_audio", "input_audio": {"data": "AAA=", "format": "wav"}},
                    ],
                }
            ],
        },
        {"x-mock-annotations": "2"},
        id="annotations-tier-prediction-audio-input",
    ),
    pytest.param(
        {"max_tokens": 5},
        {"x-mock-reasoning-tokens": "2", "x-mock-cached-tokens": "4"},
        id="length-cut-with-usage-details",
    ),
]


# Where the SDK's `get_final_completion` raises, its snapshot is the object (docs/sdk-parity.md):
# on a length cut (LengthFinishReasonError), and on a custom tool call (AttributeError: it
# reads the streamed call as a model; were it read, it would drop the call with a warning).
SDK_RAISES: dict[str, type[Exception]] = {
    "length-cut-with-usage-details": LengthFinishReasonError,
    "custom-tool-call": AttributeError,
}


@pytest.mark.parametrize(("extra", "headers"), CHAT_CASES)
async def test_chat_equals_the_sdks_final_completion(
    base_url: str,
    canned: CannedServer,
    request: pytest.FixtureRequest,
    extra: dict[str, Any],
    headers: dict[str, str],
) -> None:
    body = {**CHAT_BODY, **extra, "stream_options": {"include_usage": True}}
    url = canned.url(await record(base_url, "/chat/completions", body, headers))
    raises = SDK_RAISES.get(request.node.callspec.id.partition("-")[2])
    if raises is not None:
        with pytest.raises(raises):
            await sdk_completion(url)
    theirs = await sdk_completion(url, snapshot=raises is not None)
    result = await engine_run(url, body)
    await assert_parity(result, theirs)
    assert result.text == (theirs["choices"][0]["message"]["content"] or "")
    assert result.status == ("incomplete" if "max_tokens" in extra else "completed")
    assert result.ttft_s is not None
    calls = theirs["choices"][0]["message"].get("tool_calls") or []
    legacy = theirs["choices"][0]["message"].get("function_call")
    assert [(c.id, c.type) for c in result.tool_calls] == [(c["id"], c["type"]) for c in calls] + (
        [(None, "function_call")] if legacy else []
    )


RESPONSES_CASES = [
    pytest.param({}, {}, id="text"),
    pytest.param(
        {"tools": RESPONSE_TOOLS, "tool_choice": "required"},
        {"x-mock-tool-calls": "2"},
        id="function-calls",
    ),
    pytest.param(
        {"reasoning": {"effort": "low"}}, {"x-mock-reasoning-tokens": "6"}, id="reasoning-text"
    ),
    pytest.param(
        {"reasoning": {"effort": "low", "summary": "auto"}},
        {"x-mock-reasoning-tokens": "4"},
        id="reasoning-summary",
    ),
    pytest.param({}, {"x-mock-output": "refusal"}, id="refusal"),
    pytest.param({"top_logprobs": 2}, {}, id="logprobs"),
    pytest.param(
        {"tools": [{"type": "custom", "name": "sql"}], "tool_choice": "required"},
        {},
        id="custom-tool-call",
    ),
    pytest.param({"service_tier": "priority"}, {"x-mock-annotations": "2"}, id="annotations"),
    pytest.param({}, {"x-mock-output": "audio"}, id="audio"),
]


@pytest.mark.parametrize(("extra", "headers"), RESPONSES_CASES)
async def test_responses_equal_the_sdks_final_response(
    base_url: str, canned: CannedServer, extra: dict[str, Any], headers: dict[str, str]
) -> None:
    body = {**RESPONSES_BODY, **extra}
    url = canned.url(await record(base_url, "/responses", body, headers))
    theirs = await sdk_response(url)
    result = await engine_run(url, body)
    await assert_parity(result, theirs)
    assert result.text == "".join(
        part["text"]
        for item in theirs["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )
    calls = [item for item in theirs["output"] if item["type"].endswith("_call")]
    assert [(c.id, c.name, c.arguments, c.type) for c in result.tool_calls] == [
        (c["call_id"], c["name"], c.get("arguments", c.get("input")), c["type"]) for c in calls
    ]
    assert result.finish_reason == ("tool_calls" if calls else "stop")
    usage = result.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.reasoning_tokens) == (
        theirs["usage"]["input_tokens"],
        theirs["usage"]["output_tokens"],
        theirs["usage"]["output_tokens_details"]["reasoning_tokens"],
    )


# --- canned streams in the shapes of openai-python's types ---------------------------------

R_USAGE = {
    "input_tokens": 5,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 4,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 9,
}


def response(status: str = "completed", **fields: Any) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "status": status,
        "model": "m",
        "output": [],
        "usage": R_USAGE if status != "in_progress" else None,
        **fields,
    }


CREATED = {"type": "response.created", "response": response("in_progress")}


def item_events(index: int, item: dict[str, Any], *middle: dict[str, Any]) -> list[dict[str, Any]]:
    """An item added (in progress, input empty), its deltas, then done."""
    added = {**item, "status": "in_progress"}
    for field in ("input", "arguments"):
        if field in added:
            added[field] = ""
    return [
        {"type": "response.output_item.added", "output_index": index, "item": added},
        *middle,
        {"type": "response.output_item.done", "output_index": index, "item": item},
    ]


CUSTOM = {
    "id": "ctc_1",
    "type": "custom_tool_call",
    "status": "completed",
    "call_id": "call_c",
    "name": "sql",
    "input": "SELECT 1",
}
CUSTOM_EVENTS = [
    CREATED,
    *item_events(
        0,
        CUSTOM,
        *(
            {
                "type": "response.custom_tool_call_input.delta",
                "output_index": 0,
                "item_id": "ctc_1",
                "delta": d,
            }
            for d in ("SELECT", " 1")
        ),
        {
            "type": "response.custom_tool_call_input.done",
            "output_index": 0,
            "item_id": "ctc_1",
            "input": "SELECT 1",
        },
    ),
    {"type": "response.completed", "response": response(output=[CUSTOM])},
]
SHELL = {
    "id": "sh_1",
    "type": "shell_call",
    "status": "completed",
    "call_id": "call_s",
    "action": {"commands": ["ls -la"], "timeout_ms": 1000, "max_output_length": None},
}
SHELL_EVENTS = [
    CREATED,
    *item_events(
        0,
        {**SHELL, "action": {**SHELL["action"], "commands": []}},
        {
            "type": "response.shell_call_command.added",
            "output_index": 0,
            "command_index": 0,
            "command": "",
        },
        *(
            {
                "type": "response.shell_call_command.delta",
                "output_index": 0,
                "command_index": 0,
                "delta": d,
            }
            for d in ("ls", " -la")
        ),
        {
            "type": "response.shell_call_command.done",
            "output_index": 0,
            "command_index": 0,
            "command": "ls -la",
        },
    )[:-1],
    {"type": "response.output_item.done", "output_index": 0, "item": SHELL},
    {"type": "response.completed", "response": response(output=[SHELL])},
]


@pytest.mark.parametrize(
    ("events", "call"),
    [
        pytest.param(
            CUSTOM_EVENTS, ToolCall("call_c", "sql", "SELECT 1", "custom_tool_call"), id="custom"
        ),
        pytest.param(
            SHELL_EVENTS,
            ToolCall(
                "call_s",
                "shell",
                '{"commands":["ls -la"],"timeout_ms":1000,"max_output_length":null}',
                "shell_call",
            ),
            id="shell",
        ),
    ],
)
async def test_tool_calls_of_every_kind_are_calls_and_tokens(
    canned: CannedServer, events: list[dict[str, Any]], call: ToolCall
) -> None:
    url = canned.url(typed(*events))
    theirs = await sdk_response(url)
    result = await engine_run(url, RESPONSES_BODY)
    await assert_parity(result, theirs)
    assert result.tool_calls == [call]
    assert result.finish_reason == "tool_calls"
    assert result.ttft_s is not None
    named = call.type == "custom_tool_call"  # announced with its name: a token, as in chat
    assert len(result.token_times_ns) == (3 if named else 2)  # and two fragments each


async def test_a_custom_tool_call_meets_a_first_token_limit(canned: CannedServer) -> None:
    """Its input is a token: a stream that writes it slowly is not 'no token' (was
    FirstTokenTimeout, as if nothing had come)."""
    raw = typed(*CUSTOM_EVENTS)
    cut = raw.index(b"event: response.custom_tool_call_input.done")
    url = canned.url([raw[:cut], 0.6, raw[cut:]])
    result = await engine_run(url, RESPONSES_BODY, timeouts=Timeouts(first_token_s=0.3))
    assert result.tool_calls[0].arguments == "SELECT 1"
    silent = canned.url([typed(CREATED), 0.6, raw[cut:]])
    with pytest.raises(FirstTokenTimeout):
        await engine_run(silent, RESPONSES_BODY, timeouts=Timeouts(first_token_s=0.3))


CHAT_ENVELOPE = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "service_tier": "priority",
    "system_fingerprint": "fp_1",
}


def chunk(delta: dict[str, Any] | None, finish: str | None = None, **fields: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    if choices and "logprobs" in fields:
        choices[0]["logprobs"] = fields.pop("logprobs")
    return {**CHAT_ENVELOPE, "choices": choices, **fields}


LEGACY = [
    chunk({"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": ""}}),
    chunk({"function_call": {"arguments": '{"a":'}}),
    chunk({"function_call": {"arguments": "1}"}}),
    chunk({}, "function_call"),
]


async def test_a_legacy_function_call_is_a_call_and_a_token(canned: CannedServer) -> None:
    url = canned.url(data(*LEGACY) + DONE)
    theirs = await sdk_completion(url)
    result = await engine_run(url, CHAT_BODY)
    await assert_parity(result, theirs)
    assert result.response["choices"][0]["message"]["content"] is None  # as the SDK: null
    assert result.tool_calls == [ToolCall(None, "f", '{"a":1}', "function_call")]
    assert result.finish_reason == "function_call"
    assert len(result.token_times_ns) == 3


DETAILED_USAGE = {
    "prompt_tokens": 9,
    "completion_tokens": 6,
    "total_tokens": 15,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 3},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 5,
        "accepted_prediction_tokens": 1,
        "rejected_prediction_tokens": 2,
    },
}
URL_CITATION = {
    "type": "url_citation",
    "url_citation": {"url": "https://example.com", "title": "Ex", "start_index": 0, "end_index": 5},
}
LOGPROB = {"token": "No", "logprob": -0.1, "bytes": [78, 111], "top_logprobs": []}
CHAT_STREAMS = {
    "audio-annotations-details": [
        chunk({"role": "assistant", "content": None, "refusal": None}, logprobs=None),
        chunk({"audio": {"id": "audio_1", "transcript": "Hel", "data": "AAA=", "expires_at": 9}}),
        chunk({"audio": {"transcript": "lo", "data": "BBB="}}),
        chunk({"annotations": [URL_CITATION]}),
        chunk({}, "stop"),
        chunk(None, usage=DETAILED_USAGE),
    ],
    "usage-without-details": [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hi"}),
        chunk({}, "stop"),
        chunk(None, usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}),
    ],
    "refusal-logprobs": [
        chunk({"role": "assistant", "content": None, "refusal": ""}, logprobs=None),
        chunk({"refusal": "No"}, logprobs={"content": None, "refusal": [LOGPROB]}),
        chunk({"refusal": "pe"}, logprobs={"content": None, "refusal": [LOGPROB]}),
        chunk({}, "stop"),
    ],
    "every-reasoning-name": [
        chunk({"role": "assistant", "content": ""}),
        chunk(
            {
                "reasoning": "Hm",
                "reasoning_content": "Hm",
                "reasoning_details": [{"type": "reasoning.text", "text": "Hm", "index": 0}],
            }
        ),
        chunk({"reasoning": ".", "reasoning_details": [{"text": ".", "index": 0}]}),
        chunk({"content": "Yes", "gateway_extra": {"k": 1}}),
        chunk({}, "stop", provider="gateway"),  # a later chunk's envelope: neither keeps it
    ],
}


@pytest.mark.parametrize("name", sorted(CHAT_STREAMS))
async def test_a_chat_body_keeps_every_field_the_sdk_keeps(canned: CannedServer, name: str) -> None:
    url = canned.url(data(*CHAT_STREAMS[name]) + DONE)
    theirs = await sdk_completion(url)
    result = await engine_run(url, CHAT_BODY)
    await assert_parity(result, theirs)
    body = result.response
    assert (body["service_tier"], body["system_fingerprint"]) == ("priority", "fp_1")
    assert body["usage"] == CHAT_STREAMS[name][-1].get("usage")  # as sent: nothing invented
    assert result.ttft_s is not None


def test_audio_and_annotations_are_where_the_sdk_puts_them() -> None:
    """The values asserted, not only compared: content null, audio merged, annotations."""
    from engine.assembly import ResponseAssembler  # noqa: PLC0415
    from engine.events import Dialect, EventDecoder  # noqa: PLC0415
    from engine.sse import SSEParser  # noqa: PLC0415

    asm, decoder = ResponseAssembler(Dialect.CHAT), EventDecoder()
    raw = data(*CHAT_STREAMS["audio-annotations-details"])
    for event in decoder.decode(SSEParser().feed(raw), 1):
        asm(event)
    message = asm.response()["choices"][0]["message"]
    assert message["content"] is None
    assert message["audio"] == {
        "id": "audio_1",
        "transcript": "Hello",
        "data": "AAA=BBB=",
        "expires_at": 9,
    }
    assert message["annotations"] == [URL_CITATION]
    assert list(asm.token_times_ns) == [1, 1]


ERROR_CHUNK = {
    "id": "gen-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "error": {"code": 502, "message": "Provider disconnected"},
    "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
}
GATEWAY_ERROR = data(chunk({"role": "assistant", "content": "Hel"}), ERROR_CHUNK) + DONE


async def test_an_error_inside_a_chat_chunk_is_an_error(canned: CannedServer) -> None:
    url = canned.url(GATEWAY_ERROR)
    with pytest.raises(APIError, match="Provider disconnected"):
        await sdk_completion(url)
    with pytest.raises(ErrorEvent, match="Provider disconnected") as info:
        await engine_run(url, CHAT_BODY, custom_id="c9")
    exc = info.value
    assert (exc.server_message, exc.code, exc.status, exc.custom_id) == (
        "Provider disconnected",
        "502",
        200,
        "c9",
    )
    line = orjson.loads(failure_line("c9", exc))
    assert line["error"]["code"] == "ErrorEvent"
    assert line["response"]["body"]["error"] == ERROR_CHUNK["error"]
    seen: list[Any] = []

    async def consume() -> None:
        async with Engine(base_url=url, api_key="x", retry=RetryPolicy(max_retries=0)) as eng:
            async for event in eng.stream(CHAT_BODY):
                seen.append(event)  # noqa: PERF401 - kept as they come: the error follows

    with pytest.raises(ErrorEvent):
        await consume()
    assert seen[-1].data["error"] == ERROR_CHUNK["error"]  # yielded, then raised


@pytest.mark.parametrize("server", ["openrouter-bytes", "mock"])
async def test_a_gateway_error_chunk_lands_in_the_errors_file(
    canned: CannedServer, mock_factory: MockFactory, tmp_path: Path, server: str
) -> None:
    from engine.batch import BatchConfig, Endpoint, run_batch  # noqa: PLC0415

    if server == "mock":  # the mock's own error chunk, for every request
        url = str(mock_factory(MockConfig(faults={"error-chunk": 1.0})).base_url)
    else:
        url = canned.url(GATEWAY_ERROR)
    records = [
        {"custom_id": c, "method": "POST", "url": "/v1/chat/completions", "body": CHAT_BODY}
        for c in ("a", "b")
    ]
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    summary = await run_batch(
        BatchConfig(
            input_path=tmp_path / "in.jsonl",
            output_path=tmp_path / "out.jsonl",
            endpoints=[Endpoint(url, api_key="x")],
            concurrency=1,
        )
    )
    assert (summary.succeeded, summary.failed) == (0, 2)
    errors = [orjson.loads(x) for x in (tmp_path / "out.errors.jsonl").read_bytes().splitlines()]
    assert sorted((e["custom_id"], e["error"]["code"]) for e in errors) == [
        ("a", "ErrorEvent"),
        ("b", "ErrorEvent"),
    ]
    assert all(e["response"]["body"]["error"]["code"] == 502 for e in errors)
    assert not (tmp_path / "out.jsonl").read_bytes()


async def cli_run(*argv: str) -> int:
    """`stream-engine run ARGV` in a thread: the CLI runs its own loop."""
    from engine.cli import main  # noqa: PLC0415 - the CLI only where a test runs a verb

    return await asyncio.to_thread(main, ["run", *argv, "hi"])


async def test_the_cli_run_exits_1_on_a_gateway_error_chunk(
    canned: CannedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await cli_run("--base-url", canned.url(GATEWAY_ERROR), "--endpoint", "chat")
    err = capsys.readouterr().err
    assert code == 1
    assert "ErrorEvent" in err
    assert "Provider disconnected" in err
    assert "ended: completed" not in err


@pytest.mark.parametrize(
    ("events", "shown"),
    [
        pytest.param(CUSTOM_EVENTS, "tool call call_c: sql(SELECT 1)", id="custom"),
        pytest.param(SHELL_EVENTS, "tool call call_s: shell(", id="shell"),
    ],
)
async def test_the_cli_run_shows_every_kind_of_call(
    canned: CannedServer,
    capsys: pytest.CaptureFixture[str],
    events: list[dict[str, Any]],
    shown: str,
) -> None:
    assert await cli_run("--base-url", canned.url(typed(*events))) == 0
    out = capsys.readouterr()
    assert shown in out.out
    assert "ended: completed (tool_calls)" in out.err
    assert "time to first token: n/a" not in out.err


async def test_the_cli_run_shows_a_legacy_function_call(
    canned: CannedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = canned.url(data(*LEGACY) + DONE)
    assert await cli_run("--base-url", url, "--endpoint", "chat") == 0
    out = capsys.readouterr()
    assert 'tool call None: f({"a":1})' in out.out
    assert "ended: completed (function_call)" in out.err


FC = {
    "id": "fc_1",
    "type": "function_call",
    "status": "completed",
    "call_id": "call_w",
    "name": "get_weather",
    "arguments": '{"city":"Paris"}',
}
NO_OUTPUT = [
    CREATED,
    *item_events(
        0,
        FC,
        {
            "type": "response.function_call_arguments.delta",
            "output_index": 0,
            "item_id": "fc_1",
            "delta": '{"city":"Paris"}',
        },
    ),
    {
        "type": "response.completed",
        "response": {k: v for k, v in response().items() if k != "output"},
    },
]


async def test_a_completed_response_without_output_is_rebuilt_from_its_items(
    canned: CannedServer,
) -> None:
    url = canned.url(typed(*NO_OUTPUT))
    theirs = await sdk_response(url)
    result = await engine_run(url, RESPONSES_BODY)
    await assert_parity(result, theirs)
    assert batch_body(result)["output"] == [FC]
    assert result.tool_calls == [
        ToolCall("call_w", "get_weather", FC["arguments"], "function_call")
    ]
    assert result.finish_reason == "tool_calls"


async def test_an_item_never_done_is_filled_where_the_sdk_raises(canned: CannedServer) -> None:
    """`response.completed` without `output`, and an item whose `output_item.done` never came."""
    url = canned.url(typed(*[e for e in NO_OUTPUT if e["type"] != "response.output_item.done"]))
    with pytest.raises(RuntimeError, match="unfinished output items"):
        await sdk_response(url)
    result = await engine_run(url, RESPONSES_BODY)
    assert result.response["output"] == [{**FC, "status": "in_progress"}]
    assert result.finish_reason == "tool_calls"


async def test_a_choice_key_sent_after_the_first_chunk_is_carried(canned: CannedServer) -> None:
    """OpenRouter's `native_finish_reason` comes with the finish: the SDK keeps only the first
    chunk's keys of a choice; the engine merges the later ones in."""
    finish = chunk({}, "stop")
    finish["choices"][0]["native_finish_reason"] = "STOP"
    url = canned.url(data(chunk({"role": "assistant", "content": "Hi"}), finish) + DONE)
    theirs = await sdk_completion(url)
    result = await engine_run(url, CHAT_BODY)
    assert "native_finish_reason" not in theirs["choices"][0]
    assert result.response["choices"][0].pop("native_finish_reason") == "STOP"
    assert plain(result.response) == plain(theirs)


SUMMARY_ITEM = {
    "id": "rs_1",
    "type": "reasoning",
    "summary": [
        {"type": "summary_text", "text": "**Plan**\n\nLook it up."},
        {"type": "summary_text", "text": "**Answer**\n\nSay it."},
    ],
    "content": [],
}


async def test_several_summary_parts_are_kept_apart(canned: CannedServer) -> None:
    deltas = [
        {
            "type": "response.reasoning_summary_text.delta",
            "output_index": 0,
            "item_id": "rs_1",
            "summary_index": i,
            "delta": part["text"],
        }
        for i, part in enumerate(SUMMARY_ITEM["summary"])
    ]
    events = [
        CREATED,
        *item_events(0, SUMMARY_ITEM, *deltas),
        {"type": "response.completed", "response": response(output=[SUMMARY_ITEM])},
    ]
    url = canned.url(typed(*events))
    theirs = await sdk_response(url)
    result = await engine_run(url, RESPONSES_BODY)
    await assert_parity(result, theirs)
    assert result.choices[0].reasoning_summary == "**Plan**\n\nLook it up.\n\n**Answer**\n\nSay it."
    partial = await engine_run(canned.url(typed(*events[:-2]) + DONE), RESPONSES_BODY)
    assert partial.choices[0].reasoning_summary == result.choices[0].reasoning_summary


MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "status": "completed",
    "role": "assistant",
    "content": [{"type": "output_text", "text": "See example.", "annotations": [], "logprobs": []}],
}


async def test_a_message_that_arrives_whole_is_text_and_a_token(canned: CannedServer) -> None:
    """created -> output_item.done(message) -> completed, no delta at all."""
    events = [
        CREATED,
        {"type": "response.output_item.done", "output_index": 0, "item": MESSAGE},
        {"type": "response.completed", "response": response(output=[MESSAGE])},
    ]
    url = canned.url(typed(*events))
    theirs = await sdk_response(url)
    result = await engine_run(url, RESPONSES_BODY)
    await assert_parity(result, theirs)
    assert result.text == "See example."
    assert result.ttft_s is not None
    assert result.ttft_text_s is not None


ANNOTATION = {"type": "url_citation", "url": "https://example.com", "title": "Ex", "start_index": 0}
PARTIAL = [
    CREATED,
    {
        "type": "response.output_item.added",
        "output_index": 0,
        "item": {**MESSAGE, "status": "in_progress", "content": []},
    },
    {
        "type": "response.content_part.added",
        "output_index": 0,
        "item_id": "msg_1",
        "content_index": 0,
        "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
    },
    *(
        {
            "type": "response.output_text.delta",
            "output_index": 0,
            "item_id": "msg_1",
            "content_index": 0,
            "delta": d,
        }
        for d in ("See", " example.")
    ),
    {
        "type": "response.output_text.annotation.added",
        "output_index": 0,
        "item_id": "msg_1",
        "content_index": 0,
        "annotation_index": 0,
        "annotation": ANNOTATION,
    },
]


async def test_a_stream_without_its_final_event_is_kept_and_says_so(
    canned: CannedServer,
) -> None:
    """Tokens, then [DONE] and no `response.completed`: the SDK raises; the engine keeps the
    items it was given (ids, annotations) and its status says the stream never ended."""
    url = canned.url(typed(*PARTIAL) + DONE)
    with pytest.raises(RuntimeError, match=r"response\.completed"):
        await sdk_response(url)
    result = await engine_run(url, RESPONSES_BODY)
    assert (result.status, result.incomplete_reason) == ("incomplete", NO_TERMINAL_EVENT)
    assert result.text == "See example."
    body = batch_body(result)
    assert (body["id"], body["status"], body["usage"]) == ("resp_1", "in_progress", None)
    assert body["output"] == [
        {
            **MESSAGE,
            "status": "in_progress",
            "content": [
                {
                    "type": "output_text",
                    "text": "See example.",
                    "annotations": [ANNOTATION],
                    "logprobs": [],
                }
            ],
        }
    ]


async def test_built_in_tools_without_a_final_event_are_no_empty_answer(
    canned: CannedServer,
) -> None:
    """A web search's items, then [DONE]: kept as such a stream, not 'no content'."""
    search = {
        "id": "ws_1",
        "type": "web_search_call",
        "status": "completed",
        "action": {"type": "search", "query": "weather Paris"},
    }
    url = canned.url(typed(CREATED, *item_events(0, search)) + DONE)
    result = await engine_run(url, RESPONSES_BODY)
    assert (result.status, result.incomplete_reason) == ("incomplete", NO_TERMINAL_EVENT)
    assert result.tool_calls == [
        ToolCall("ws_1", "web_search", orjson.dumps(search["action"]).decode(), "web_search_call")
    ]
    assert result.finish_reason is None  # the model's turn never ended
    assert result.ttft_s is not None


async def test_audio_deltas_are_tokens(canned: CannedServer) -> None:
    events = [
        CREATED,
        {"type": "response.audio.transcript.delta", "delta": "Hel"},
        {"type": "response.audio.delta", "delta": base64.b64encode(b"\x00\x01").decode()},
        {"type": "response.audio.transcript.delta", "delta": "lo"},
        {"type": "response.audio.delta", "delta": base64.b64encode(b"\x02\x03").decode()},
        {"type": "response.audio.done"},
        {"type": "response.audio.transcript.done"},
        {"type": "response.completed", "response": response()},
    ]
    url = canned.url(typed(*events))
    theirs = await sdk_response(url)
    result = await engine_run(url, RESPONSES_BODY)
    await assert_parity(result, theirs)
    assert result.ttft_s is not None
    assert len(result.token_times_ns) == 4


async def test_tool_calls_without_an_index_stay_apart(canned: CannedServer) -> None:
    """Each whole call in its own chunk, no `index` (some gateways): the SDK raises; the
    engine keeps two calls (was one, arguments `{...}{}`)."""
    calls = [
        chunk(
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "a",
                        "type": "function",
                        "function": {"name": "x", "arguments": '{"q":1}'},
                    }
                ],
            }
        ),
        chunk({"tool_calls": [{"id": "b", "type": "function", "function": {"name": "y"}}]}),
        chunk({"tool_calls": [{"function": {"arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
    ]
    url = canned.url(data(*calls) + DONE)
    with pytest.raises(TypeError):
        await sdk_completion(url)
    result = await engine_run(url, CHAT_BODY)
    assert result.tool_calls == [
        ToolCall("a", "x", '{"q":1}', "function"),
        ToolCall("b", "y", "{}", "function"),
    ]


async def test_legacy_completions_logprobs_are_merged(base_url: str, canned: CannedServer) -> None:
    """No SDK helper assembles a legacy stream: the oracle is the mock's non-streaming answer
    to the same request (the same seed, the same choices)."""
    body = {
        "model": "m",
        "prompt": "Once",
        "logprobs": 2,
        "max_tokens": 4,
        "stream_options": {"include_usage": True},
    }
    raw = await record(base_url, "/completions", body, {})
    async with httpx.AsyncClient() as client:
        whole = (
            await client.post(base_url + "/completions", json=body, headers={"x-mock-seed": "3"})
        ).json()
    result = await engine_run(canned.url(raw), body)
    assert result.response["choices"] == whole["choices"]
    assert result.response["usage"] == whole["usage"]
    assert len(whole["choices"][0]["logprobs"]["tokens"]) == 4
