"""KVBlockPool on its own: ref counts, eviction order, hash-chained prefix hits."""

import pytest

from ember.errors import InputError
from ember.runtime.kv_pool import KVBlockPool


def test_allocate_grows_a_table_and_free_returns_every_block():
    pool = KVBlockPool(8, block_size=4)
    assert pool.allocate("a", list(range(6)), 6)
    assert pool.block_table("a") == [0, 1]
    assert pool.allocate("a", list(range(9)), 9)          # grows by one block
    assert pool.block_table("a") == [0, 1, 2]
    assert (pool.num_free_blocks, pool.usage) == (5, 3 / 8)
    assert [b.ref_count for b in pool.blocks[:4]] == [1, 1, 1, 0]
    pool.check()
    pool.free("a")
    pool.free("a")                                        # a second free is a no-op
    assert pool.num_free_blocks == 8 and pool.block_table("a") == []
    pool.check()


def test_allocate_that_does_not_fit_changes_nothing():
    pool = KVBlockPool(3, block_size=4)
    assert pool.allocate("a", list(range(8)), 8)
    assert not pool.allocate("b", list(range(9)), 9)
    assert pool.block_table("b") == [] and pool.num_free_blocks == 1
    assert not pool.allocate("a", list(range(13)), 13)
    assert pool.block_table("a") == [0, 1]
    pool.check()


def test_free_blocks_are_evicted_lru_tail_blocks_first_and_partial_blocks_before_all():
    pool = KVBlockPool(6, block_size=2)
    assert pool.allocate("a", [1, 2, 3, 4, 5], 5)    # blocks 0, 1 full (hashed), 2 partial
    assert pool.allocate("b", [7, 8], 2)             # block 3
    pool.free("b")                                   # 3 -> tail
    pool.free("a")                                   # 1, 0 -> tail (reverse order); 2 -> head (worthless)
    assert list(pool._free) == [2, 4, 5, 3, 1, 0]
    assert pool.allocate("c", [9] * 10, 10)          # takes the head in order
    assert pool.block_table("c") == [2, 4, 5, 3, 1]
    pool.check()


def test_freed_block_keeps_its_hash_until_it_is_reallocated():
    pool = KVBlockPool(4, block_size=2)
    prompt = [1, 2, 3, 4, 5]
    assert pool.allocate("a", prompt, 5)
    pool.free("a")
    hits = pool.cached_prefix(prompt)
    assert hits == [0, 1]
    assert pool.allocate("b", prompt, 5, cached=hits)    # revives 0 and 1 from the free queue
    assert pool.block_table("b")[:2] == [0, 1] and pool.num_free_blocks == 1
    pool.check()
    pool.free("b")
    assert pool.allocate("c", [9] * 8, 8)                # evicts everything: the hashes go
    assert pool.cached_prefix(prompt) == []
    pool.check()


def test_hashes_chain_so_hits_need_the_whole_prefix_equal():
    pool = KVBlockPool(8, block_size=2)
    assert pool.allocate("a", [1, 2, 3, 4, 5, 6], 6)
    assert pool.cached_prefix([1, 2, 3, 4, 5, 6]) == [0, 1, 2]
    assert pool.cached_prefix([1, 2, 3, 4, 9, 9]) == [0, 1]
    assert pool.cached_prefix([9, 9, 3, 4, 5, 6]) == []          # same later blocks, other prefix
    assert pool.cached_prefix([3, 4, 5, 6]) == []                # a block's tokens, at another position
    assert pool.cached_prefix([1, 2, 3]) == [0]                  # only full blocks


def test_blocks_are_shared_in_the_step_that_fills_them():
    pool = KVBlockPool(8, block_size=4)
    prompt = list(range(10))
    assert pool.allocate("a", prompt, 10)                        # not computed yet, but in the map
    hits = pool.cached_prefix(prompt[:-1])
    assert hits == pool.block_table("a")[:2]
    assert pool.allocate("b", prompt, 10, cached=hits)
    assert [pool.blocks[b].ref_count for b in hits] == [2, 2]
    assert pool.block_table("b")[2] != pool.block_table("a")[2]  # the partial block is its own
    pool.check()
    pool.free("a")
    assert [pool.blocks[b].ref_count for b in hits] == [1, 1]
    pool.free("b")
    assert pool.num_free_blocks == 8
    pool.check()


def test_equal_blocks_filled_apart_keep_the_first_in_the_map():
    pool = KVBlockPool(8, block_size=2)
    assert pool.allocate("a", [1, 2, 3], 3)
    assert pool.allocate("b", [1, 2, 3], 3)            # no lookup: two copies of [1, 2]
    a0, b0 = pool.block_table("a")[0], pool.block_table("b")[0]
    assert pool.cached_prefix([1, 2]) == [a0] and pool.blocks[b0].hash == pool.blocks[a0].hash
    pool.free("b")
    assert list(pool._free)[0] == b0                    # unreachable, so evicted first
    pool.check()


def test_prefix_caching_off_never_hits():
    pool = KVBlockPool(4, block_size=2, enable_prefix_caching=False)
    assert pool.allocate("a", [1, 2, 3, 4], 4)
    pool.free("a")
    assert pool.cached_prefix([1, 2, 3, 4]) == []
    assert all(b.hash is None for b in pool.blocks)
    pool.check()


def test_check_catches_broken_bookkeeping():
    pool = KVBlockPool(4, block_size=2)
    assert pool.allocate("a", [1, 2, 3], 3)
    pool.blocks[0].ref_count += 1
    with pytest.raises(AssertionError, match="block 0: ref count 2, 1 holders"):
        pool.check()
    pool.blocks[0].ref_count -= 1
    pool._free[1] = None
    with pytest.raises(AssertionError, match="block 1"):
        pool.check()
    del pool._free[1]
    pool.blocks[0].hash = b"x"
    with pytest.raises(AssertionError, match="hash map"):
        pool.check()


def test_bad_sizes_are_input_errors():
    with pytest.raises(InputError, match="num_blocks >= 1"):
        KVBlockPool(0)
