"""The KV cache's bookkeeping: which fixed-size blocks each request holds, and which
blocks hold KV that another request can reuse. No tensors here: the engine owns the
cache arrays (sizing `num_blocks` from its memory budget), and the model runner writes
the KV of a request's token at position p into slot
`block_ids[p // block_size] * block_size + p % block_size`.

Design notes:

1. A block is free when no request holds it (ref count 0). Free blocks wait in one
   queue in eviction order: allocation takes the head. A request's freed blocks go to
   the tail in reverse table order, so its last blocks are evicted before the prefix
   blocks more likely shared with others; a freed block that no lookup can find (a
   partial block) goes to the head instead, as it is worth nothing.
2. A full block is named by a hash chained through its parent's:
   sha256(parent hash ‖ its token ids), so equal hashes mean equal token prefixes, not
   just equal blocks. A new request reuses the longest run of its leading full blocks
   found in the hash map (a prefix hit).
3. A freed block keeps its hash and stays in the map until it is reallocated: a later
   request can still hit it, which takes it out of the free queue (O(1): the queue is
   an OrderedDict).
4. A block enters the map as soon as it is allocated for a step whose tokens fill it,
   before its KV is written (vLLM v1): the forward pass writes every token's KV before
   attention reads any, so a second request scheduled in the same step can share it.
   That is how identical prompts sent together, and the n samples of one prompt, share.
5. Hits are whole blocks and never cover a request's last token (the model must
   compute at least one token to give logits), so a request only ever writes into
   blocks it alone holds: a shared block is written once, by the request that filled it.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InputError


@dataclass(eq=False, slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: bytes | None = None   # set while the block is full of known tokens (note 2)


def block_hash(parent: bytes, token_ids: Sequence[int]) -> bytes:
    """The chained hash of a full block (note 2); the first block's parent is b""."""
    return hashlib.sha256(parent + array("q", token_ids).tobytes()).digest()


class KVBlockPool:
    """`num_blocks` blocks of `block_size` token slots, their ref counts, the free queue,
    the prefix-cache map and each request's block table (see the module doc)."""

    def __init__(self, num_blocks: int, block_size: int = 16, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise InputError(f"KVBlockPool needs num_blocks >= 1 and block_size >= 1, "
                             f"got {num_blocks} and {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # head = next evicted
        self._cached: dict[bytes, int] = {}         # block hash -> block id
        self._tables: dict[str, list[int]] = {}     # request id -> its block ids, in token order
        self._num_hashed: dict[str, int] = {}       # request id -> leading blocks of its table in the map

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by requests (free blocks that keep a hash count as free)."""
        return 1 - len(self._free) / self.num_blocks

    def block_table(self, request_id: str) -> list[int]:
        """The request's block ids in token order (empty if it holds none). Do not mutate."""
        return self._tables.get(request_id, [])

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def cached_prefix(self, token_ids: Sequence[int]) -> list[int]:
        """Block ids of the longest run of cached full blocks that `token_ids` starts
        with. Changes nothing; pass the result to `allocate` to take the blocks."""
        hits: list[int] = []
        if not self.enable_prefix_caching:
            return hits
        parent, size = b"", self.block_size
        for start in range(0, len(token_ids) - size + 1, size):
            parent = block_hash(parent, token_ids[start:start + size])
            block_id = self._cached.get(parent)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def allocate(self, request_id: str, token_ids: Sequence[int], num_tokens: int,
                 cached: Sequence[int] = ()) -> bool:
        """Grow the request's table to cover its first `num_tokens` tokens, starting a new
        table with the `cached` hit blocks, and enter the blocks those tokens fill into
        the map (`token_ids` must hold at least `num_tokens` tokens). Returns False, and
        changes nothing, when too few blocks are free."""
        table = self._tables.get(request_id, [])
        if cached and table:
            raise ValueError(f"request {request_id!r} already holds blocks; prefix hits are for a new table")
        num_new = max(0, self.num_blocks_for(num_tokens) - len(table) - len(cached))
        num_revived = sum(self.blocks[b].ref_count == 0 for b in cached)
        if num_new + num_revived > len(self._free):
            return False
        if request_id not in self._tables:
            self._tables[request_id] = table
            self._num_hashed[request_id] = len(cached)
        for block_id in cached:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._free[block_id]
            block.ref_count += 1
            table.append(block_id)
        for _ in range(num_new):
            table.append(self._take_free())
        self._register(request_id, token_ids, num_tokens)
        return True

    def free(self, request_id: str) -> None:
        """Release every block the request holds (unknown ids are ignored)."""
        self._num_hashed.pop(request_id, None)
        for block_id in reversed(self._tables.pop(request_id, [])):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
                if self._cached.get(block.hash) != block_id:   # no lookup can find it
                    self._free.move_to_end(block_id, last=False)

    def _take_free(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None and self._cached.get(block.hash) == block_id:
            del self._cached[block.hash]
        block.hash, block.ref_count = None, 1
        return block_id

    def _register(self, request_id: str, token_ids: Sequence[int], num_tokens: int) -> None:
        if not self.enable_prefix_caching:
            return
        table, done, size = self._tables[request_id], self._num_hashed[request_id], self.block_size
        parent = self.blocks[table[done - 1]].hash if done else b""
        for i in range(done, num_tokens // size):
            parent = block_hash(parent, token_ids[i * size:(i + 1) * size])
            block = self.blocks[table[i]]
            block.hash = parent
            # Two requests can fill equal blocks apart (their outputs agree): the map
            # keeps the first, the second keeps its hash so its own children chain on.
            self._cached.setdefault(parent, block.block_id)
        self._num_hashed[request_id] = max(done, num_tokens // size)

    def check(self) -> None:
        """Raise AssertionError if any invariant of the pool is broken."""
        holders = Counter(b for table in self._tables.values() for b in table)
        for block in self.blocks:
            b = block.block_id
            _expect(block.ref_count == holders[b], f"block {b}: ref count {block.ref_count}, {holders[b]} holders")
            _expect((block.ref_count == 0) == (b in self._free), f"block {b}: ref count {block.ref_count}, "
                    f"{'in' if b in self._free else 'not in'} the free queue")
        _expect(len(self._free) == sum(block.ref_count == 0 for block in self.blocks), "free queue has duplicates")
        for h, b in self._cached.items():
            _expect(self.blocks[b].hash == h, f"block {b} is in the hash map under a hash it does not have")
        _expect(self._tables.keys() == self._num_hashed.keys(), "block tables and hash counts disagree")
        for request_id, table in self._tables.items():
            _expect(len(set(table)) == len(table), f"request {request_id!r} holds a block twice: {table}")
            done = self._num_hashed[request_id]
            _expect(done <= len(table) and all(self.blocks[b].hash is not None for b in table[:done]),
                    f"request {request_id!r}: its first {done} blocks should be hashed")
        if not self.enable_prefix_caching:
            _expect(not self._cached, "prefix caching is off but the hash map is not empty")


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)
