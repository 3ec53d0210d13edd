"""A prefix cache as vLLM's automatic prefix caching keeps one, for the mock's TTFT and usage.

The prompt's tokens (`text.prompt_tokens`) are cut into blocks of `BLOCK_TOKENS`; a block is
known by a chained hash, of the previous block's hash and its own tokens, so a block matches
only after the very same prefix (the same text at another position is another block). A
request's cached tokens are its leading run of blocks already seen; then its blocks, and those
of its answer, are remembered. Only full blocks count, as on vLLM. An LRU of block hashes
holds `capacity_tokens`; a request's blocks are touched last to first, so its first blocks,
the ones a later prompt can share, are evicted last (vLLM frees a request's blocks in the same
reverse order). A block counts as cached from the moment its request is planned, as vLLM
shares a running request's blocks with the requests scheduled after it.

Cost, only with the cache on: one `hash()` of a tuple of 16 strings per block, and the LRU's
bookkeeping (docs/mock.md has the figures).
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import chain
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Hashable, Sequence

BLOCK_TOKENS = 16  # vLLM's default block size
ROOT_HASH = 0  # the "previous block" of a prompt's first block


class PrefixCache:
    """An LRU of chained block hashes, `capacity_tokens` (whole blocks) big."""

    __slots__ = ("_blocks", "_capacity", "evicted_blocks")

    def __init__(self, capacity_tokens: int) -> None:
        self._capacity = max(1, capacity_tokens // BLOCK_TOKENS)
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self.evicted_blocks = 0

    def __len__(self) -> int:
        """Blocks held now."""
        return len(self._blocks)

    def admit(self, prompt: Sequence[Sequence[Hashable]], answer: Sequence[Hashable] = ()) -> int:
        """The tokens of the cached prefix of `prompt` (its tokens in runs, as
        `text.prompt_runs` gives them); then the prompt and the `answer` are remembered.

        The answer's blocks count because a server keeps the generated tokens' blocks too: a
        conversation's next turn (this prompt, the answer, a new message) hits both.
        """
        blocks = self._blocks
        hashes: list[int] = []
        previous = ROOT_HASH
        # zip over one iterator: the tokens 16 at a time, across runs, without slicing.
        for block in zip(*[chain(*prompt, answer)] * BLOCK_TOKENS, strict=False):
            previous = hash((previous, block))
            hashes.append(previous)
        hit = 0
        prompt_blocks = sum(map(len, prompt)) // BLOCK_TOKENS
        while hit < prompt_blocks and hashes[hit] in blocks:
            hit += 1
        for block_hash in reversed(hashes):  # the first block last: the most recently used
            if block_hash in blocks:
                blocks.move_to_end(block_hash)
            else:
                blocks[block_hash] = None
        for _ in range(len(blocks) - self._capacity):
            blocks.popitem(last=False)
            self.evicted_blocks += 1
        return hit * BLOCK_TOKENS
