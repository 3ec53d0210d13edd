"""What each request of a load is: its messages, the lengths it asks for, the system prompt it
shares, the conversation it is a turn of, and whether the client will cancel it.

Everything follows from the configuration, the seed and the request's number, never from
which process sends it: N workers (or Ray actors) together send exactly the one-process
load. A *session* is one conversation: `--turns 1` (the default) makes every session one
request, numbered as before; with more turns, request number `session x turns + turn` carries
the system prompt, every earlier turn and every answer the server gave, so its context grows
turn by turn and a server's prefix cache can serve all of it but the newest turn.

Lengths: a turn's new user message is `input_tokens` long as the mock counts prompts (words
plus the template overhead, `engine.loadtest.prompts`), or in true tokens with `--tokenizer`;
the request's `asked_input` is its whole prompt counted the same way (system prompt, history
and all), so the report can set it beside the usage the server returned.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.loadtest.config import MIN_PRIME_TOKENS
from engine.loadtest.datasets import Conversation, Corpus, load_dataset, pick
from engine.loadtest.lengths import LengthSpec, length_for, parse_lengths, request_random
from engine.loadtest.prompts import (
    TEMPLATE_OVERHEAD,
    load_bodies,
    make_body,
    synthetic_text,
    user,
)
from engine.loadtest.tokens import TokenCounter, fit, load_tokenizer, template_tokens, word_counter

if TYPE_CHECKING:
    from engine.loadtest.config import LoadConfig

# Salts of the seeded draws (`request_random`), so a request's input length, output length
# and cancellation, and a prefix group's system prompt, are independent of each other.
INPUT_SALT, OUTPUT_SALT, CANCEL_SALT, PREFIX_SALT = 1, 2, 3, 4


@dataclass(slots=True)
class Planned:
    """One request the workload means to send, and what it asks for."""

    body: dict[str, Any]
    asked_input: int | None = None  # the whole prompt, in the workload's count
    asked_output: int | None = None  # the output length asked for (the cap)
    prefix_group: int | None = None  # the shared system prompt it starts with
    cancel_after_s: float | None = None  # the client cancels it this long after sending


class Workload:
    """The load's requests by number: deterministic for a seed, so workers share one plan."""

    __slots__ = (
        "_bodies",
        "_config",
        "_conversations",
        "_corpus",
        "_counter",
        "_inputs",
        "_outputs",
        "_systems",
    )

    def __init__(self, config: LoadConfig) -> None:
        self._config = config
        self._bodies = (
            load_bodies(config.prompts_file, config.model) if config.prompts_file else None
        )
        self._inputs = _lengths(config.input_lengths)
        self._outputs = _lengths(config.output_lengths)
        # Words as the mock counts them, or a model's true tokens.
        self._counter: TokenCounter = (
            load_tokenizer(config.tokenizer) if config.tokenizer else word_counter()
        )
        self._conversations: list[Conversation] | None = None
        self._corpus: Corpus | None = None
        if config.dataset:
            found = load_dataset(config.dataset)
            if isinstance(found, list):
                self._conversations = found
            else:
                self._corpus = found
        self._systems: dict[int, str] = {}

    def body(self, index: int) -> dict[str, Any]:
        """The body of request `index` (a session's first turn): the probe's and tests'."""
        return self.session(index).plan(0).body

    def primer(self, index: int) -> dict[str, Any]:
        """A short request that only opens a connection (warm-up)."""
        return make_body(self._config, [user(f"warm-up {index}")], MIN_PRIME_TOKENS)

    def session(
        self, index: int, input_tokens: int | None = None, output_tokens: int | None = None
    ) -> Session:
        """Conversation `index`; a trace's row gives its lengths (`input_tokens`,
        `output_tokens`), else the configured ones."""
        return Session(self, index, input_tokens, output_tokens)

    # --- the parts of a request --------------------------------------------------------

    def turns_of(self, conversation: Conversation | None) -> int:
        """A session's turns (request bodies have none: the configuration refuses --turns)."""
        if conversation is not None:  # a dataset's conversation has as many as it recorded
            return max(1, min(self._config.turns, len(conversation.turns)))
        return self._config.turns

    def conversation(self, index: int) -> Conversation | None:
        if self._conversations is None:
            return None
        return pick(self._conversations, self._config.seed, index)

    def file_body(self, index: int) -> dict[str, Any] | None:
        return None if self._bodies is None else self._bodies[index % len(self._bodies)]

    def input_length(self, number: int, given: int | None) -> int:
        if given is not None:
            return given
        if self._inputs is not None:
            return length_for(self._inputs, self._config.seed, number, INPUT_SALT)
        return self._config.input_tokens

    def output_length(self, number: int, given: int | None, recorded: int | None) -> int:
        """A trace's length, else the configured spec, else the dataset's recorded reply
        (vLLM's ShareGPT rule), else the fixed output_tokens."""
        if given is not None:
            return given
        if self._outputs is not None:
            return length_for(self._outputs, self._config.seed, number, OUTPUT_SALT)
        return recorded if recorded is not None else self._config.output_tokens

    def user_text(self, head: str, number: int, tokens: int) -> str:
        """A new user message of `tokens` (a one-message prompt's length, as today), from the
        corpus or synthetic words, cut to true tokens when a tokenizer counts them."""
        # Not `request_random`: this key keeps the synthetic prompts of earlier versions, so a
        # seed sends the same texts it always did.
        rng = random.Random(self._config.seed * 1_000_003 + number)
        words = tokens - TEMPLATE_OVERHEAD
        if self._corpus is not None:
            text = self._corpus.prompt(rng, max(1, words))
        else:
            text = synthetic_text(head, words, rng)
        return text if self._config.tokenizer is None else fit(self._counter, text, max(1, words))

    def system(self, group: int) -> str:
        """Prefix group `group`'s system prompt: the same text in every process."""
        text = self._systems.get(group)
        if text is None:
            config = self._config
            rng = request_random(config.seed, group, PREFIX_SALT)
            text = synthetic_text(f"system-{group}", config.shared_prefix_tokens, rng)
            if config.tokenizer is not None:
                text = fit(self._counter, text, config.shared_prefix_tokens)
            self._systems[group] = text
        return text

    def count(self, text: str) -> int:
        """A text's tokens in the workload's count (words, or the tokenizer's)."""
        return self._counter.count(text)

    def cancel_after(self, number: int) -> float | None:
        config = self._config
        if config.cancel_rate <= 0:
            return None
        draw = request_random(config.seed, number, CANCEL_SALT).random()
        return config.cancel_after_s if draw < config.cancel_rate else None


class Session:
    """One conversation's turns, in order: each carries every turn and answer before it."""

    __slots__ = (
        "_asked",
        "_asked_tokens",
        "_conversation",
        "_history_tokens",
        "_input",
        "_messages",
        "_output",
        "_workload",
        "group",
        "index",
        "turns",
    )

    def __init__(
        self, workload: Workload, index: int, input_tokens: int | None, output_tokens: int | None
    ) -> None:
        self._workload = workload
        self.index = index
        self._input = input_tokens
        self._output = output_tokens
        self._conversation = workload.conversation(index)
        self.turns = workload.turns_of(self._conversation)
        config = workload._config  # noqa: SLF001 - the session is the workload's own part
        self.group: int | None = None
        self._messages: list[dict[str, str]] = []
        self._asked: dict[str, str] | None = None  # the last planned turn's user message
        self._asked_tokens = 0  # ... and its tokens
        system = None
        if config.shared_prefix_tokens and workload.file_body(index) is None:
            self.group = index % config.prefix_groups
            system = workload.system(self.group)
        elif self._conversation is not None and self._conversation.system:
            system = self._conversation.system
        if system is not None:
            self._messages.append({"role": "system", "content": system})
        # The messages' tokens so far, counted once each: a turn adds only its own (a
        # tokenizer's encode of the whole history at every turn would grow with its square).
        self._history_tokens = 0 if system is None else workload.count(system)

    def number(self, turn: int) -> int:
        """The request number of `turn`: unique in the run, `index` itself for one turn."""
        return self.index * self._workload._config.turns + turn  # noqa: SLF001

    def plan(self, turn: int) -> Planned:
        """Turn `turn`'s request (the answers before it given to `answered`)."""
        workload = self._workload
        number = self.number(turn)
        cancel = workload.cancel_after(number)
        body = workload.file_body(self.index)
        if body is not None:
            return Planned(body, cancel_after_s=cancel)
        conversation = self._conversation
        recorded = None
        if conversation is not None:
            text = conversation.turns[turn]
            recorded = conversation.replies[turn] if turn < len(conversation.replies) else None
        else:
            head = f"#{self.index}" if turn == 0 else f"#{self.index}.{turn}"
            text = workload.user_text(head, number, workload.input_length(number, self._input))
        self._asked = user(text)
        self._asked_tokens = workload.count(text)
        messages = [*self._messages, self._asked]
        output = workload.output_length(number, self._output, recorded)
        return Planned(
            make_body(workload._config, messages, output),  # noqa: SLF001
            self._history_tokens + self._asked_tokens + template_tokens(len(messages)),
            output,
            self.group,
            cancel,
        )

    def answered(self, answer: str) -> None:
        """The last planned turn was answered with `answer`: the next turn carries both."""
        if self._asked is not None:
            self._messages += [self._asked, {"role": "assistant", "content": answer}]
            self._history_tokens += self._asked_tokens + self._workload.count(answer)
            self._asked = None


def _lengths(text: str | None) -> LengthSpec | None:
    return None if text is None else parse_lengths(text)
