"""From a request to its answer: length, seeds, and which parts the request asks for.

The parts are chosen by the body fields the real API has (`tools` of type `function` or
`custom` + `tool_choice`, chat's legacy `functions` + `function_call`, `n`, `logprobs` /
`top_logprobs` / `include`, Responses `reasoning`, chat `modalities: ["audio"]`,
`web_search_options`, `prediction`, `service_tier`, `input_audio` parts) and, where the API has
no natural trigger, by `x-mock-*` headers (`x-mock-output`, `x-mock-tool-calls`,
`x-mock-reasoning-tokens`, `x-mock-reasoning-field`, `x-mock-reasoning-summary`,
`x-mock-cached-tokens`, `x-mock-annotations`); the config sets defaults for reasoning.

Length: the request's token limit is a cap on the whole output, reasoning included (as OpenAI
counts it), never a length: a text answer ends at the mock's own length (`finish_reason: stop`)
unless the cap is lower (`length`), as a model stops when its answer ends. A request that asks
for its length, as vLLM takes it (`ignore_eos: true`, or `min_tokens` up to the cap), gets
exactly the cap (`length`); `min_tokens` below the cap only lengthens a shorter answer. A
refusal or a tool call has its own length and is cut only by a smaller cap. A fault ending
halves whatever the answer would have been.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from engine.mock.parts import audio_segment, call_segment, reasoning_segment, refusal_segment
from engine.mock.text import (
    Choice,
    Generation,
    Segment,
    generate_tokens,
    message_texts,
    prompt_of,
    prompt_runs,
    text_seed,
)

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable, Mapping, Sequence

    from engine.mock.config import MockConfig
    from engine.mock.prefix_cache import PrefixCache

    Runs = Iterable[Sequence[Hashable]]  # a prompt's tokens (`prompt_runs`, or token ids)

Dialect = Literal["chat", "responses", "completions"]
Output = Literal["text", "refusal", "tool_calls", "audio"]
OUTPUTS: tuple[Output, ...] = ("text", "refusal", "tool_calls", "audio")
Call = tuple[str, Any, str]  # (name, parameters, "function" | "custom" | legacy "function_call")
REASONING_FIELDS = ("reasoning_content", "reasoning")
DEFAULT_REASONING_TOKENS = 8  # a Responses `reasoning` request on a mock configured with none
CHOICE_STRIDE = 7919  # choice i's seed is the request's + i * this: its own text
MAX_CHOICES = 128  # the real API's cap on `n`
MAX_TOP_LOGPROBS = 20
MAX_TOOL_CALLS = 128
MAX_LEGACY_LOGPROBS = 5  # the legacy endpoint's cap on `logprobs`
MAX_ANNOTATIONS = 16
AUDIO_PART_TOKENS = 16  # what one `input_audio` part of the prompt counts
LOGPROBS_INCLUDE = "message.output_text.logprobs"


class BadRequest(Exception):
    """A 400 with OpenAI's error fields."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def header_ms(headers: Mapping[str, str], name: str, default: float) -> float:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"header {name} must be a number of milliseconds") from None
    if value < 0:
        raise BadRequest(f"header {name} must be >= 0")
    return value


def header_int(
    headers: Mapping[str, str], name: str, default: int, low: int = 0, high: int | None = None
) -> int:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"header {name} must be an integer", name) from None
    if value < low or (high is not None and value > high):
        raise BadRequest(f"header {name} must be in [{low}, {high or 'any'}]", name)
    return value


def header_choice(headers: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    raw = headers.get(name)
    if raw is not None and raw not in allowed:
        raise BadRequest(f"header {name} must be one of {', '.join(allowed)}", name)
    return raw


def body_int(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(
            f"Invalid '{name}': expected an integer in [{low}, {high}].", name, "invalid_value"
        )
    return value


def token_limit(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequest(f"Invalid '{name}': expected an integer >= 1.", name, "invalid_value")
        return value
    return None


@dataclass(frozen=True, slots=True)
class Budget:
    """What a request says about its answer's length: the cap (`max_output_tokens` and its
    kin) and, as vLLM takes them, whether it asks for the length itself (`ignore_eos`, the
    floor `min_tokens`)."""

    cap: int | None = None
    floor: int = 0
    ignore_eos: bool = False

    @classmethod
    def of(cls, body: dict[str, Any], cap: int | None) -> Budget:
        """The budget of `body` under `cap`; a bad `ignore_eos` or `min_tokens` is a 400."""
        ignore_eos = body.get("ignore_eos", False)
        if not isinstance(ignore_eos, bool):
            raise BadRequest(
                "Invalid 'ignore_eos': expected a boolean.", "ignore_eos", "invalid_value"
            )
        floor = body_int(body, "min_tokens", 0, 0, 1 << 31)
        if cap is not None and floor > cap:  # vLLM refuses it too
            raise BadRequest(
                f"Invalid 'min_tokens': {floor} is more than the token limit {cap}.",
                "min_tokens",
                "invalid_value",
            )
        return cls(cap, floor, ignore_eos)

    def length(self, natural: int) -> tuple[int, bool]:
        """(tokens, whether the cap ended the answer) for an answer whose model would stop
        after `natural` tokens. Without a cap, `ignore_eos` has nothing to reach."""
        if self.cap is not None and (
            self.ignore_eos or self.floor >= self.cap or natural > self.cap
        ):
            return self.cap, True
        return max(natural, self.floor), False


@dataclass(frozen=True, slots=True)
class Asked:
    """The parts one request asks for."""

    output: Output = "text"
    calls: tuple[Call, ...] = ()  # each call, in order
    reasoning: int = 0  # reasoning tokens before the answer
    summary: bool = False  # Responses: the reasoning as a summary
    field: str = "reasoning_content"  # chat: the reasoning delta's field
    n: int = 1
    top_logprobs: int | None = None  # None: no logprobs
    annotations: int = 0  # url_citation annotations on the text


def _tools(body: dict[str, Any], chat: bool) -> list[Call]:
    """The request's function and custom tools, in order."""
    tools = body.get("tools")
    found: list[Call] = []
    for tool in tools if isinstance(tools, list) else []:
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in ("function", "custom"):
            continue
        spec = tool.get(kind) if chat else tool
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            found.append((spec["name"], spec.get("parameters"), kind))
    return found


def _legacy_functions(body: dict[str, Any]) -> list[Call]:
    """Chat's legacy `functions` (before `tools`)."""
    functions = body.get("functions")
    return [
        (f["name"], f.get("parameters"), "function_call")
        for f in (functions if isinstance(functions, list) else [])
        if isinstance(f, dict) and isinstance(f.get("name"), str)
    ]


def _named(choice: Any, chat: bool) -> str | None:
    """The tool a `tool_choice` (or legacy `function_call`) names, if any."""
    if not isinstance(choice, dict):
        return None
    kind = choice.get("type")
    spec = choice.get(kind) if chat and isinstance(kind, str) else choice
    name = spec.get("name") if isinstance(spec, dict) else None
    return name if isinstance(name, str) else None


def _tool_calls(
    body: dict[str, Any], headers: Mapping[str, str], chat: bool, forced: str | None
) -> tuple[Call, ...]:
    """The calls the answer makes: none, or `x-mock-tool-calls` of them (one when
    `parallel_tool_calls` is false, or for the legacy `functions`), to the named tool or to
    the listed ones in turn."""
    choice = body.get("tool_choice")
    tools = _tools(body, chat)
    if chat and not tools and "functions" in body:  # legacy: `function_call` chooses
        choice = body.get("function_call")
        tools = _legacy_functions(body)
    named = _named(choice, chat)
    wanted = forced == "tool_calls" or (
        forced is None and (choice == "required" or named is not None)
    )
    if not wanted:
        return ()
    if not tools:
        raise BadRequest("A tool call needs at least one function tool in 'tools'.", "tools")
    if named is not None:
        tools = [tool for tool in tools if tool[0] == named]
        if not tools:
            raise BadRequest(
                f"Invalid value for 'tool_choice': no tool named {named!r} in 'tools'.",
                "tool_choice",
                "invalid_value",
            )
    count = header_int(headers, "x-mock-tool-calls", 1, 1, MAX_TOOL_CALLS)
    if body.get("parallel_tool_calls") is False or tools[0][2] == "function_call":
        count = 1
    return tuple(tools[i % len(tools)] for i in range(count))


def _reasoning(
    config: MockConfig, body: dict[str, Any], headers: Mapping[str, str], dialect: Dialect
) -> tuple[int, bool]:
    """(reasoning tokens, as a summary): header, else config, else a Responses `reasoning`
    (whose `effort: "none"` asks for none). The legacy endpoint never reasons."""
    if dialect == "completions":
        return 0, False
    asked = body.get("reasoning") if dialect == "responses" else None
    asked = asked if isinstance(asked, dict) and asked.get("effort") != "none" else None
    tokens = config.reasoning_tokens
    if asked is not None and tokens == 0:
        tokens = DEFAULT_REASONING_TOKENS
    tokens = header_int(headers, "x-mock-reasoning-tokens", tokens)
    summary = config.reasoning_summary or (asked is not None and asked.get("summary") is not None)
    flag = header_choice(headers, "x-mock-reasoning-summary", ("0", "1"))
    return tokens, summary if flag is None else flag == "1"


def _top_logprobs(body: dict[str, Any], dialect: Dialect) -> int | None:
    if dialect == "completions":  # the legacy `logprobs: k`
        if body.get("logprobs") is None:
            return None
        return body_int(body, "logprobs", 0, 0, MAX_LEGACY_LOGPROBS)
    top = body_int(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    if dialect == "chat":
        if body.get("logprobs") is True:
            return top
        if body.get("top_logprobs") is not None:
            raise BadRequest(
                "'top_logprobs' needs 'logprobs' set to true.", "top_logprobs", "invalid_value"
            )
    if dialect == "responses":
        include = body.get("include")
        wanted = isinstance(include, list) and LOGPROBS_INCLUDE in include
        if wanted or body.get("top_logprobs") is not None:
            return top
    return None


def asked_parts(
    config: MockConfig, body: dict[str, Any], headers: Mapping[str, str], dialect: Dialect
) -> Asked:
    """Read (and validate) what the request asks for beyond plain text."""
    forced = header_choice(headers, "x-mock-output", OUTPUTS)
    output: Output = "text"
    calls: tuple[Call, ...] = ()
    annotations = 0
    if dialect != "completions":  # the legacy endpoint only ever writes text
        calls = _tool_calls(body, headers, dialect == "chat", forced)
        modalities = body.get("modalities") if dialect == "chat" else None
        spoken = isinstance(modalities, list) and "audio" in modalities
        if calls:
            output = "tool_calls"
        elif forced == "refusal":
            output = "refusal"
        elif forced == "audio" or (spoken and forced is None):
            output = "audio"
        searched = dialect == "chat" and isinstance(body.get("web_search_options"), dict)
        annotations = header_int(headers, "x-mock-annotations", int(searched), 0, MAX_ANNOTATIONS)
    reasoning, summary = _reasoning(config, body, headers, dialect)
    field = header_choice(headers, "x-mock-reasoning-field", REASONING_FIELDS)
    return Asked(
        output=output,
        calls=calls,
        reasoning=reasoning,
        summary=summary,
        field=field or config.reasoning_field,
        n=body_int(body, "n", 1, 1, MAX_CHOICES) if dialect != "responses" else 1,
        top_logprobs=_top_logprobs(body, dialect),
        annotations=annotations,
    )


def _cut(segments: list[Segment], keep: int) -> list[Segment]:
    """The first `keep` tokens of the answer, without the segments that got none."""
    kept = []
    for segment in segments:
        if keep <= 0:
            break
        if segment.pieces:
            kept.append(segment.first(keep))
            keep -= len(segment.pieces)
    if not kept:  # nothing said at all: an empty answer (never a call without its name)
        answer = segments[-1]
        kept = [answer.first(0) if answer.kind != "tool_call" else Segment("text", [], [])]
    return kept


def _choice(
    config: MockConfig, asked: Asked, seed: int, budget: Budget, ending: str | None
) -> Choice:
    segments = [reasoning_segment(seed, asked.reasoning)] if asked.reasoning else []
    limit = budget.cap
    stopped = False
    if asked.output == "tool_calls":
        segments += [
            call_segment(name, parameters, seed, index, kind)
            for index, (name, parameters, kind) in enumerate(asked.calls)
        ]
    elif asked.output == "refusal":
        segments.append(refusal_segment())
    else:
        length, stopped = budget.length(asked.reasoning + config.output_length(seed))
        tokens = generate_tokens(seed, max(0, length - asked.reasoning))
        segments.append(
            audio_segment(tokens) if asked.output == "audio" else Segment.of_tokens("text", tokens)
        )
    total = sum(len(segment.pieces) for segment in segments)
    keep = total if limit is None else min(total, limit)
    if ending is not None:
        keep //= 2  # the error / failure / cut-off arrives mid-answer
    stopped = stopped or (limit is not None and total > limit)
    return Choice(_cut(segments, keep), stopped)


def _prompts(body: dict[str, Any], dialect: Dialect) -> tuple[list[str], list[Runs], int | None]:
    """(the texts seeds derive from, one per prompt; each prompt's tokens; the token cap)."""
    if dialect == "chat":
        texts = message_texts(body["messages"])
        return (
            [prompt_of(texts)],
            [prompt_runs(texts)],
            token_limit(body, "max_completion_tokens", "max_tokens"),
        )
    if dialect == "responses":
        texts = message_texts(body["input"])
        if isinstance(body.get("instructions"), str):
            texts.insert(0, [body["instructions"]])
        return [prompt_of(texts)], [prompt_runs(texts)], token_limit(body, "max_output_tokens")
    prompts = _completion_prompts(body["prompt"])
    # Tokens of the legacy endpoint: the words of each prompt, or its token ids.
    return (
        [p if isinstance(p, str) else " ".join(map(str, p)) for p in prompts],
        [[p.split()] if isinstance(p, str) else [p] for p in prompts],
        token_limit(body, "max_tokens"),
    )


def _is_token_array(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def _completion_prompts(prompt: Any) -> list[str | list[int]]:
    """A legacy `prompt`: a string, token ids, or a list of either (one choice each)."""
    if isinstance(prompt, str) or _is_token_array(prompt):
        return [prompt]
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(p, str) or _is_token_array(p) for p in prompt)
    ):
        return prompt
    raise BadRequest(
        "Invalid 'prompt': a string, a list of strings, or token arrays.", "prompt", "invalid_value"
    )


def plan(
    config: MockConfig,
    body: dict[str, Any],
    headers: Mapping[str, str],
    dialect: Dialect,
    ending: str | None,
    cache: PrefixCache | None = None,
) -> Generation:
    """The whole answer to `body` in `dialect`, with its accounting; with a `cache`, the
    prompt's cached prefix is looked up and the request's blocks remembered."""
    prompts, made, limit = _prompts(body, dialect)
    kept: list[list[Sequence[Hashable]]] = []
    if cache is None:  # counted as they are made, each run freed at once: no cost
        input_tokens = sum([sum(map(len, runs)) for runs in made])
    else:  # kept for the cache
        kept = [list(runs) for runs in made]
        input_tokens = sum([sum(map(len, runs)) for runs in kept])
    budget = Budget.of(body, limit)
    asked = asked_parts(config, body, headers, dialect)
    request_seed = headers.get("x-mock-seed", body.get("seed"))
    seeds = [
        text_seed(config.seed, request_seed, prompt) + i * CHOICE_STRIDE
        for prompt in prompts
        for i in range(asked.n)
    ]
    options = body.get("stream_options")
    choices = [_choice(config, asked, seed, budget, ending) for seed in seeds]
    forced_cached = header_int(headers, "x-mock-cached-tokens", -1)  # -1: not sent
    cached = 0
    if cache is not None:  # last: a request refused above (400) leaves the cache as it was
        cached = _admit(cache, kept, choices, asked.n)
    return Generation(
        model=body["model"],
        input_tokens=input_tokens,
        created=int(time.time()),
        choices=choices,
        ending=ending,
        max_output_tokens=limit,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        cached_tokens=min(input_tokens, cached if forced_cached < 0 else forced_cached),
        top_logprobs=asked.top_logprobs,
        reasoning_field=asked.field,
        reasoning_summary=asked.summary,
        echo=_echo(body) if dialect == "responses" else {},
        annotations=asked.annotations,
        service_tier=_service_tier(body),
        prompt_audio_tokens=AUDIO_PART_TOKENS * _audio_parts(body.get("messages")),
        prediction_tokens=_prediction_words(body.get("prediction")) if dialect == "chat" else 0,
    )


def _admit(
    cache: PrefixCache, prompts: list[list[Sequence[Hashable]]], choices: list[Choice], n: int
) -> int:
    """The cached tokens of every prompt; each is remembered with its first choice's text,
    which a conversation sends back as the answer's message (tool calls and audio have no
    text: the prompt alone)."""
    return sum(
        cache.admit(runs, (choices[i * n].joined("text") or "").split())
        for i, runs in enumerate(prompts)
    )


def _service_tier(body: dict[str, Any]) -> str:
    """The tier the response reports: the request's, `auto` served as `default`."""
    tier = body.get("service_tier")
    return tier if isinstance(tier, str) and tier != "auto" else "default"


def _audio_parts(messages: Any) -> int:
    """The `input_audio` parts of a chat prompt."""
    return sum(
        1
        for m in (messages if isinstance(messages, list) else [])
        if isinstance(m, dict) and isinstance(m.get("content"), list)
        for part in m["content"]
        if isinstance(part, dict) and part.get("type") == "input_audio"
    )


def _prediction_words(prediction: Any) -> int:
    """The words of a chat `prediction` (`{"type": "content", "content": ...}`)."""
    content = prediction.get("content") if isinstance(prediction, dict) else None
    texts = [content] if isinstance(content, str) else message_texts([{"content": content}])[0]
    return sum(len(text.split()) for text in texts)


def _echo(body: dict[str, Any]) -> dict[str, Any]:
    """Request fields the Responses object repeats, as the real API does."""
    echo: dict[str, Any] = {}
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        echo["reasoning"] = {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}
    for name, kind in (
        ("parallel_tool_calls", bool),
        ("tool_choice", (str, dict)),
        ("tools", list),
        ("top_logprobs", int),
    ):
        if isinstance(body.get(name), kind):
            echo[name] = body[name]
    return echo
