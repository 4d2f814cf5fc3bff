"""The model runner: one engine step's `SchedulerOutput` -> the flattened batch of the
LLM's compiled forward graph -> the logits the sampler needs.

It owns the KV cache: every graph input that is not one of the step's `FEEDS` is a
cache array ([num_blocks, block_size, Hkv, D] for each layer's k and v, written in place
by ember.PagedAttention), allocated here from its declared type with the `num_blocks`
the engine sized. It is the one place that builds the graph's feeds: the new tokens of every scheduled request, in the scheduler's order, flattened;
their positions; their cache slots (block_ids[pos // block_size] * block_size +
pos % block_size); the block tables padded to the longest; the query start offsets and
sequence lengths; and the rows whose logits are wanted (each request's last token when
it samples, every new prompt token when it asked for prompt logprobs).

It calls the compiled model's executor directly (never `CompiledModel.run`, whose checks
and copies a step does not need). On a device target (`run_device`: the cuda target's
executor) the caches are tensors on the device, given to every step as they are (the
paged-attention kernels write them in place); a step's inputs are built on the host (a
few small integer arrays) and copied over; the logits stay on the device, where the
sampler reads them. On the cpu target the caches are numpy arrays and the logits come
back as a tensor over the executor's array.

Decode steps on a device target run on static plans (DeviceExecutor.plan): one per batch
size bucket (1, 2, 4, ... up to max_num_seqs), the batch padded to its bucket (padding
rows write no cache slot and their logits are dropped), the block tables as wide as
max_model_len allows, so every step of a bucket has the same shapes, buffers and kernel
arguments; its inputs are views of one device buffer, written by one asynchronous copy
from a pinned host buffer (`_Staging`). On a GPU each plan is captured in a CUDA graph at
start-up (`capture`, the smallest buckets first, within a time budget; a bucket not
captured in time is planned and captured when first used) and a decode step is one input
copy and one replay; in Triton's interpreter the plans run their kernels one by one.
`enforce_eager` runs every step op by op.
"""

from __future__ import annotations

import logging
import mmap
import time
from dataclasses import dataclass

import numpy as np

from ..ir.forward import FEEDS
from ._torch import tensor, torch, torch_dtype
from .request import SchedulerOutput

log = logging.getLogger("ember.runtime")


@dataclass
class RunnerOutput:
    """Logits [N, vocab] (a tensor, on the model's device) and, per scheduled request (by
    id), its rows of them: `sample` the row of its last token (or None), `prompt` the rows
    of the prompt tokens this step computed (for prompt logprobs; empty unless asked for)
    and the position of the first."""

    logits: torch.Tensor
    sample_rows: dict[str, int]
    prompt_rows: dict[str, tuple[int, list[int]]]


def _resident_zeros(shape: tuple, dtype) -> np.ndarray:
    """Zeros whose pages are all resident now. np.zeros' pages are faulted in as they are
    first written: the pool hands out never-used blocks before it evicts cached prefixes,
    so resident memory climbed toward the cache budget under traffic (2.05 -> 2.69 GB over
    500 of SmolLM2's requests of random lengths, and on). As vLLM and llama.cpp do with
    their caches, the memory the budget names is taken at the start, where a machine that
    lacks it fails before it serves anyone: an anonymous mapping the kernel populates
    (0.55 s for 2 GiB on a 2-core VM, where writing the zeros took 1.3 s)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes and hasattr(mmap, "MAP_POPULATE"):
        try:
            mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
            return np.frombuffer(mapping, dtype).reshape(shape)  # (the array keeps the mapping)
        except (OSError, ValueError):
            pass
    cache = np.empty(shape, dtype)
    cache.fill(0)
    return cache


_DECODE_FEEDS = ("input_ids", "positions", "slot_mapping", "seq_lens", "logit_indices", "query_start_loc",
                 "block_tables")  # a decode step's inputs, in their staging buffer's order


class _Staging:
    """A decode bucket's step inputs as views of one int64 tensor on the device, written
    from one host buffer of the same layout (pinned on a GPU) by one asynchronous copy a
    step. (The host buffer is safe to rewrite at the next step: a step ends reading the
    sampled tokens back, after the copy.)"""

    def __init__(self, bucket: int, width: int, device):
        sizes = [bucket] * 5 + [bucket + 1, bucket * width]
        total = sum(sizes)
        self.bucket, self.device = bucket, torch.zeros(total, dtype=torch.int64, device=device)
        self.host = torch.zeros(total, dtype=torch.int64)
        if self.device.is_cuda:
            self.host = self.host.pin_memory()
        flat = self.host.numpy()
        self.views, self.device_views, at = {}, {}, 0
        for name, size in zip(_DECODE_FEEDS, sizes):
            self.views[name], self.device_views[name] = flat[at:at + size], self.device[at:at + size]
            at += size
        self.views["block_tables"] = self.views["block_tables"].reshape(bucket, width)
        self.device_views["block_tables"] = self.device_views["block_tables"].view(bucket, width)
        self.views["query_start_loc"][:] = np.arange(bucket + 1)  # every row one token
        self.views["logit_indices"][:] = np.arange(bucket)

    def write(self, scheduled, block_size: int) -> dict[str, int]:
        """The step's rows into the host buffer (a padding row: a one-token sequence of its
        own that writes no slot, its logits not read); each request's row."""
        v = self.views
        v["input_ids"][:], v["positions"][:], v["slot_mapping"][:], v["seq_lens"][:] = 0, 0, -1, 1
        v["block_tables"][:] = 0
        sample_rows = {}
        for row, s in enumerate(scheduled):
            pos, blocks = s.start, s.block_ids
            v["input_ids"][row], v["positions"][row], v["seq_lens"][row] = s.token_ids[0], pos, pos + 1
            v["block_tables"][row, :len(blocks)] = blocks
            v["slot_mapping"][row] = blocks[pos // block_size] * block_size + pos % block_size
            sample_rows[s.request.request_id] = row
        return sample_rows

    def copy(self) -> None:
        self.device.copy_(self.host, non_blocking=True)


class ModelRunner:
    """Runs `compiled` (an LLM's forward graph) over a KV cache of `num_blocks` blocks."""

    def __init__(self, compiled, num_blocks: int, *, max_num_seqs: int = 64, max_model_len: int | None = None,
                 enforce_eager: bool = False, group=None):
        self.compiled, self.caches = compiled, {}
        self.group = group  # rank 0 of a tensor-parallel group (distributed.Group): each step goes to the workers too
        self.executor = compiled.executor
        self.device = getattr(self.executor, "device", None) if hasattr(self.executor, "run_device") else None
        self._order = [info.name for info in compiled.inputs]
        for info in compiled.inputs:
            if info.name not in FEEDS:
                shape = tuple(num_blocks if i == 0 else int(d) for i, d in enumerate(info.shape))
                if self.device is None:
                    self.caches[info.name] = _resident_zeros(shape, info.dtype.numpy)
                else:
                    self.caches[info.name] = torch.zeros(shape, dtype=torch_dtype(info.dtype.numpy), device=self.device)
        if not self.caches:
            raise ValueError("the compiled graph has no KV-cache inputs: it is not an LLM forward graph")
        self.block_size = next(iter(self.caches.values())).shape[1]
        # decode steps on static plans, by batch-size bucket (a device target's only)
        self.buckets = [] if self.device is None or enforce_eager or group is not None else \
            sorted({1 << i for i in range(max_num_seqs.bit_length()) if 1 << i < max_num_seqs} | {max_num_seqs})
        max_len = max_model_len or num_blocks * self.block_size
        self._width = -(-max_len // self.block_size)  # block-table columns of a planned step
        self._plans: dict[int, object] = {}
        self._pool = None  # the CUDA graphs' shared memory pool
        # plans are captured in CUDA graphs on a GPU (in Triton's interpreter, run kernel by kernel)
        self._graphs = bool(self.buckets) and str(self.device).startswith("cuda") and torch.cuda.is_available()
        self.plan_stats = {"planned": 0, "captured": 0, "static_steps": 0, "eager_steps": 0}

    @staticmethod
    def bytes_per_block(compiled) -> int:
        """The cache memory one block takes, over every layer's k and v."""
        return sum(int(np.prod([int(d) for d in info.shape[1:]])) * info.dtype.numpy.itemsize
                   for info in compiled.inputs if info.name not in FEEDS)

    @property
    def cache_bytes(self) -> int:
        return sum(c.numel() * c.element_size() if isinstance(c, torch.Tensor) else c.nbytes
                   for c in self.caches.values())

    def feeds(self, out: SchedulerOutput) -> tuple[dict[str, np.ndarray], dict[str, int], dict]:
        """The graph's feeds for `out`, and where each request's logits will be (the
        `sample_rows` and `prompt_rows` of RunnerOutput)."""
        bs, n = self.block_size, len(out.scheduled)
        lengths = np.array([len(s.token_ids) for s in out.scheduled], np.int64)
        starts = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=starts[1:])
        ids = np.fromiter((t for s in out.scheduled for t in s.token_ids), np.int64, int(starts[-1]))
        first = np.array([s.start for s in out.scheduled], np.int64)
        positions = np.arange(starts[-1], dtype=np.int64) - np.repeat(starts[:-1] - first, lengths)
        width = max(len(s.block_ids) for s in out.scheduled)
        tables = np.zeros((n, width), np.int64)
        for row, s in enumerate(out.scheduled):
            tables[row, :len(s.block_ids)] = s.block_ids
        seq_rows = np.repeat(np.arange(n), lengths)
        slots = tables[seq_rows, positions // bs] * bs + positions % bs
        wanted: list[int] = []
        sample_rows, prompt_rows = {}, {}
        for row, s in enumerate(out.scheduled):
            request, begin = s.request, int(starts[row])
            if request.sampling_params.prompt_logprobs is not None and s.start < request.num_prompt_tokens:
                # logits of tokens start.. predict tokens start+1..; the prompt's own ones end at its last
                count = min(len(s.token_ids), request.num_prompt_tokens - s.start)
                prompt_rows[request.request_id] = (s.start, list(range(len(wanted), len(wanted) + count)))
                wanted += range(begin, begin + count)
            if s.sample:
                last = begin + len(s.token_ids) - 1
                if wanted and wanted[-1] == last:
                    sample_rows[request.request_id] = len(wanted) - 1
                else:
                    sample_rows[request.request_id] = len(wanted)
                    wanted.append(last)
        feeds = {"input_ids": ids, "positions": positions, "slot_mapping": slots, "block_tables": tables,
                 "query_start_loc": starts, "seq_lens": first + lengths,
                 "logit_indices": np.array(wanted, np.int64)}
        return feeds, sample_rows, prompt_rows

    # -- decode steps on static plans -----------------------------------------------------
    def capture(self, budget_s: float = 30.0) -> list[int]:
        """On a GPU: plan and capture a CUDA graph for each bucket, smallest first, until
        `budget_s` has passed; the buckets captured."""
        if not self._graphs:
            return []
        start = time.perf_counter()
        for bucket in self.buckets:
            if time.perf_counter() - start > budget_s:
                log.info("ember: CUDA graphs captured for batches up to %d in %.1f s (the budget); larger ones "
                         "are captured when first used", max(self._plans), budget_s)
                break
            if self._plan(bucket) is None:
                break
        return sorted(b for b, (plan, _) in self._plans.items() if plan.graph is not None)

    def _plan(self, bucket: int):
        """(the static plan, its staging buffer) of `bucket` decode rows (made, and on a GPU
        captured, now if there are none); None where the program cannot be planned (the
        buckets are dropped)."""
        decode = self._plans.get(bucket)
        if decode is not None:
            return decode
        from ..errors import UnsupportedError

        staging = _Staging(bucket, self._width, self.device)
        try:
            plan = self.executor.plan([self.caches[name] if name in self.caches else staging.device_views[name]
                                       for name in self._order])
        except UnsupportedError as e:
            log.warning("ember: decode steps run op by op: %s", e)
            self.buckets = []
            return None
        staging.write([], self.block_size)  # (valid indices for the warm-up run)
        staging.copy()
        if self._graphs:
            if self._pool is None:  # one memory pool for every bucket's graph (they never run at once)
                self._pool = torch.cuda.graph_pool_handle()
            plan.capture(pool=self._pool)
            self.plan_stats["captured"] += 1
        self.plan_stats["planned"] += 1
        self._plans[bucket] = decode = (plan, staging)
        return decode

    def _bucket(self, out: SchedulerOutput) -> int | None:
        """The bucket of a decode step (every request one new token that samples, none
        asking for prompt logprobs); None for any other step."""
        n = len(out.scheduled)
        if not self.buckets or n > self.buckets[-1]:
            return None
        for s in out.scheduled:
            request = s.request
            if len(s.token_ids) != 1 or not s.sample or len(s.block_ids) > self._width or (
                    request.sampling_params.prompt_logprobs is not None and s.start < request.num_prompt_tokens):
                return None
        return next(b for b in self.buckets if b >= n)

    def execute(self, out: SchedulerOutput) -> RunnerOutput:
        """Run one step. A step whose requests want no logits still runs (it fills the cache)."""
        bucket = self._bucket(out)
        decode = None if bucket is None else self._plan(bucket)
        if decode is not None:
            plan, staging = decode
            sample_rows = staging.write(out.scheduled, self.block_size)
            staging.copy()
            logits = plan.run()[0][:len(out.scheduled)]
            self.plan_stats["static_steps"] += 1
            return RunnerOutput(logits, sample_rows, {})
        self.plan_stats["eager_steps"] += 1
        feeds, sample_rows, prompt_rows = self.feeds(out)
        if self.group is None:
            return RunnerOutput(self.run(feeds), sample_rows, prompt_rows)
        try:
            self.group.send_step(feeds)
            logits = self.run(feeds)
        except Exception as e:  # a worker died or hung: the group is broken for good
            raise self.group.fail(e) from e
        return RunnerOutput(logits, sample_rows, prompt_rows)

    def run(self, feeds: dict) -> torch.Tensor:
        """The logits of one step of `feeds` (the step's inputs, numpy or on the device; the
        caches are the runner's)."""
        if self.device is not None:
            feeds = {name: torch.from_numpy(a).to(self.device, non_blocking=True) for name, a in feeds.items()}
        inputs = [feeds[name] if name in feeds else self.caches[name] for name in self._order]
        if self.device is not None:
            return self.executor.run_device(inputs)[0]
        return tensor(np.ascontiguousarray(self.executor.run(inputs)[0]))  # (bfloat16 through its bits)
