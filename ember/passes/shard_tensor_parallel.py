"""shard_tensor_parallel: one rank's shard of a model, Megatron-style.

Given the number of ranks, this rank, and a plan — which weight (a glob over constant
names) is split how — each planned weight is replaced by this rank's slice of it and
explicit collectives join the ranks' partial results:

    column    ember.Linear / QuantizedLinear(x, w, b): this rank's output features (and
              bias); its output stays split (what a row-parallel layer reads)
    heads/D   the same, in whole heads of D features, the attention's query heads or its
              KV heads (by their count): the KV heads split evenly where they divide among
              the ranks, unevenly where they do not (rank r keeps KV heads
              [r*kv//N, (r+1)*kv//N)), and where the ranks outnumber them each rank keeps the
              one its query heads read; the query heads follow their KV heads' groups
    row       Linear(x, w, b): this rank's input features; its partial sums are summed by
              ember.AllReduce and the bias added after it, once
    row/D     the same, its input features the attention's heads of D (as heads/D splits them)
    vocab     an embedding lookup Gather(w, ids, axis=0) / QuantizedGather: this rank's
              ceil(V/N) rows; ids outside them read 0 and ember.AllReduce sums the lookups.
              A head Linear(x, w): those rows' logits, joined by ember.AllGather

A mixture of experts sums its experts' partial results before its one ember.AllReduce
(the collective moved past the sums, and past scalings by what every rank holds alike).

ember.PagedAttention then runs this rank's heads (its num_heads and kv_num_heads as
heads/D splits them) over caches of its KV heads: the pass rewrites those attributes and the cache
inputs' types, nothing else — a graph whose reshapes name no head count (`[0, -1, D]`)
needs no other change. Every rank's graph has the same nodes in the same order (a bias is
added after the collective on every rank, a vocabulary padded to equal shards), so every
rank runs the same collectives in the same order.

A planned weight read by anything else, or a size that does not divide, is an error that
names it: a silently replicated weight would give wrong sums.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np

from ..errors import ModelError
from ..ir.dtypes import DType
from ..ir.graph import Graph, Value
from ..ir.quant_formats import block_format
from ..ir.shape_inference import infer_types
from ..ir.types import TensorType
from .base import Pass, PassResult
from .registry import register_pass
from .rewriter import Rewrite, apply_rewrites

KINDS = ("column", "row", "vocab", "heads")
ATTENTION = ("ember.PagedAttention", "ember.Attention")  # ops whose heads attributes the pass splits


@dataclass(frozen=True)
class Spec:
    kind: str
    head_dim: int = 0

    @classmethod
    def parse(cls, text: str, where: str) -> "Spec":
        kind, _, dim = text.partition("/")
        if kind not in KINDS or (kind == "heads" and not dim) or kind in ("column", "vocab") and dim or (
                dim and not dim.isdigit()):
            raise ModelError(f"tensor-parallel plan: {where}: {text!r} is not a split; the splits are column, row, "
                             "row/D, vocab and heads/D (in heads of D features)")
        return cls(kind, int(dim or 0))


def kv_range(kv: int, size: int, rank: int) -> tuple[int, int]:
    """The KV heads [begin, end) rank `rank` of `size` keeps of `kv`."""
    if kv >= size:  # evenly where they divide; else rank 0 (which also schedules) keeps the fewer
        return rank * kv // size, (rank + 1) * kv // size
    if size % kv == 0:  # more ranks than KV heads: each keeps the one its query heads read
        h = rank * kv // size
        return h, h + 1
    raise ModelError(f"tensor parallelism: the attention's {kv} KV heads cannot be shared by {size} ranks (the ranks "
                     "must be a multiple of the KV heads where they outnumber them)")


def head_ranges(heads: int, kv: int, size: int, rank: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(query heads, KV heads) [begin, end) rank `rank` of `size` keeps of an attention's
    `heads` query heads over `kv` KV heads."""
    if heads % kv:
        raise ModelError(f"tensor parallelism: attention with {heads} query heads over {kv} KV heads")
    b, e = kv_range(kv, size, rank)
    if kv >= size:
        group = heads // kv
        return (b * group, e * group), (b, e)
    if heads % size:
        raise ModelError(f"tensor parallelism: the attention's {heads} query heads do not divide among {size} ranks")
    per = heads // size
    return (rank * per, (rank + 1) * per), (b, e)


def even_range(n: int, size: int, rank: int, what: str) -> tuple[int, int]:
    if n % size:
        raise ModelError(f"tensor parallelism: {what} has {n} features, which do not divide among {size} ranks")
    per = n // size
    return rank * per, (rank + 1) * per


class ShardTensorParallel(Pass):
    """Rank `rank`'s shard of a model over `size` ranks (see the module docstring).
    `plan`: {glob over weight names: "column" | "row" | "row/D" | "vocab" | "heads/D"}; the first
    glob that matches a weight's name decides."""

    name = "shard_tensor_parallel"

    def __init__(self, size: int = 1, rank: int = 0, plan: dict[str, str] | None = None):
        if not (isinstance(size, int) and size >= 1 and isinstance(rank, int) and 0 <= rank < size):
            raise ModelError(f"tensor parallelism: rank {rank} of {size} ranks")
        self.size, self.rank = size, rank
        self.plan = [(glob, Spec.parse(text, glob)) for glob, text in (plan or {}).items()]
        self._made: set[int] = set()  # ids of the values this pass made (not to be sharded again)
        self._whole: set[int] = set()  # ids of planned constants a shard reads whole (a row split's bias)
        self._heads: tuple[int, int] | None = None  # the attention's (query heads, KV heads)
        self.report = None

    def spec(self, value: Value | None) -> Spec | None:
        if value is None or value.const is None or id(value) in self._made:
            return None
        return next((s for glob, s in self.plan if fnmatch.fnmatchcase(value.name, glob)), None)

    def layer_spec(self, w: Value, b: Value | None) -> Spec | None:
        """A linear layer's split: its weight's, else its bias's (an ONNX exporter may give
        the weight an opaque name, "onnx::MatMul_884", and the bias the layer's)."""
        return self.spec(w) or self.spec(b)

    # -- slices -------------------------------------------------------------------------
    def _const(self, graph: Graph, like: Value, data: np.ndarray) -> Value:
        data = np.ascontiguousarray(data)
        data.flags.writeable = False
        value = graph.add_constant(f"{like.name}[tp {self.rank}/{self.size}]", data)
        self._made.add(id(value))
        return value

    def _head_range(self, n: int, head_dim: int, what: str) -> tuple[int, int]:
        """This rank's features of `n` that are the attention's query or KV heads of `head_dim`."""
        if self._heads is None:
            raise ModelError(f"tensor parallelism: {what} is split in heads, but the graph has no attention "
                             f"({', '.join(ATTENTION)}) whose heads it could follow")
        heads, kv = self._heads
        if n % head_dim or n // head_dim not in (heads, kv):
            raise ModelError(f"tensor parallelism: {what} has {n} features, not the attention's {heads} query or "
                             f"{kv} KV heads of {head_dim}")
        q_range, kv_range_ = head_ranges(heads, kv, self.size, self.rank)
        begin, end = q_range if n // head_dim == heads else kv_range_
        return begin * head_dim, end * head_dim

    def _out_range(self, spec: Spec, n: int, what: str) -> tuple[int, int]:
        if spec.head_dim:
            return self._head_range(n, spec.head_dim, what)
        return even_range(n, self.size, self.rank, what)

    def vocab_rows(self, v: int) -> tuple[int, int, int]:
        """(first row, rows present, rows per rank) of this rank's vocabulary shard."""
        per = -(-v // self.size)
        begin = min(self.rank * per, v)
        return begin, min(per, v - begin), per

    def _vocab(self, data: np.ndarray, axis: int) -> np.ndarray:
        """This rank's rows of a vocabulary along `axis`, zero-padded to ceil(V/N)."""
        begin, count, per = self.vocab_rows(data.shape[axis])
        part = np.take(data, np.arange(begin, begin + count), axis=axis)
        if count < per:
            pad = [(0, 0)] * data.ndim
            pad[axis] = (0, per - count)
            part = np.pad(part, pad)
        return part

    # -- the rewrites ---------------------------------------------------------------------
    def rewrites(self, graph: Graph) -> list[Rewrite]:
        world = self.size

        def linear_check(kinds):
            def check(m):
                spec = self.layer_spec(m["w"], m.bindings.get("b"))
                if spec is None or spec.kind not in kinds:
                    return "not a planned weight of this split"
                return None
            return check

        def column(op, x, w, b=None, fmt=None, act=None):
            spec = self.layer_spec(w, b)
            if fmt is None:  # ember.Linear: w [K, N]
                begin, end = self._out_range(spec, w.const.shape[1], w.name)
                ws = self._const(graph, w, w.const[:, begin:end])
            else:  # QuantizedLinear: w [N, row_bytes]
                begin, end = self._out_range(spec, w.const.shape[0], w.name)
                ws = self._const(graph, w, w.const[begin:end])
            bs = None if b is None else self._const(graph, b, b.const[begin:end])
            if fmt is None:
                return op("ember.Linear", x, ws, bs, activation=act)
            return op("ember.QuantizedLinear", x, ws, bs, format=fmt, activation=act)

        def row(op, x, w, b=None, fmt=None, act=None):
            if act:
                raise ModelError(f"tensor parallelism: {w.name} is row-split but its layer applies {act} to the "
                                 "whole sum")
            spec = self.layer_spec(w, b)
            if fmt is None:
                begin, end = self._out_range(spec, w.const.shape[0], w.name)
                ws = self._const(graph, w, w.const[begin:end])
                y = op("ember.Linear", x, ws)
            else:
                f = block_format(fmt)
                k = w.const.shape[1] // f.block_bytes * f.elements
                begin, end = self._out_range(spec, k, w.name)
                if begin % f.elements or end % f.elements:
                    raise ModelError(f"tensor parallelism: {w.name} keeps {fmt} blocks of {f.elements} weights; "
                                     f"its {k} input features split at {begin}:{end}, not whole blocks "
                                     "(use quantization='none' or another tensor_parallel_size)")
                ws = self._const(graph, w, w.const[:, f.row_bytes(begin):f.row_bytes(end)])
                y = op("ember.QuantizedLinear", x, ws, format=fmt)
            y = op("ember.AllReduce", y, world_size=world)
            if b is None:
                return y
            self._whole.add(id(b))
            return op.Add(y, b)

        def head(op, x, w, fmt=None):
            if fmt is None:  # [K, V]
                v = w.const.shape[1]
                y = op("ember.Linear", x, self._const(graph, w, self._vocab(w.const, 1)))
            else:
                v = w.const.shape[0]
                y = op("ember.QuantizedLinear", x, self._const(graph, w, self._vocab(w.const, 0)), format=fmt)
            y = op("ember.AllGather", y, world_size=world, axis=-1)
            if -(-v // world) * world != v:
                y = op.Slice(y, op.constant(np.array([0], np.int64)), op.constant(np.array([v], np.int64)),
                             op.constant(np.array([-1], np.int64)))
            return y

        def lookup(op, w, ids, fmt=None):
            begin, _, per = self.vocab_rows(w.const.shape[0])
            table = self._const(graph, w, self._vocab(w.const, 0))
            local = op.Sub(ids, op.constant(np.array(begin, np.int64)))
            inside = op.And(op.GreaterOrEqual(local, op.constant(np.array(0, np.int64))),
                            op.Less(local, op.constant(np.array(per, np.int64))))
            index = op.Where(inside, local, op.constant(np.array(0, np.int64)))
            rows = op.Gather(table, index, axis=0) if fmt is None else op("ember.QuantizedGather", table, index,
                                                                          format=fmt)
            dtype = DType.float32 if fmt is not None else DType.from_numpy(w.const.dtype)
            rows = op.Where(op.Unsqueeze(inside, op.constant(np.array([-1], np.int64))), rows,
                            op.constant(np.zeros((), dtype.numpy)))
            return op("ember.AllReduce", rows, world_size=world)

        def attention(m):
            return "sharded already" if id(m.root.outputs[0]) in self._made else None

        def dense(op, q, k, v, bias, h, kv, scale, causal):
            if bias is not None and len(bias.type.shape) == 4 and bias.type.shape[1] != 1:
                raise ModelError(f"tensor parallelism: the attention bias {bias.name} differs by head "
                                 f"({list(bias.type.shape)}); only a bias shared by the heads is kept whole")
            (qb, qe), (b, e) = head_ranges(h, kv or h, world, self.rank)
            y = op("ember.Attention", q, k, v, bias, num_heads=qe - qb, kv_num_heads=e - b, scale=scale,
                   causal=causal)
            self._made.add(id(y))
            return y

        def paged(op, q, k, v, kc, vc, slots, tables, starts, lens, h, kv, scale, window):
            (qb, qe), (b, e) = head_ranges(h, kv or h, world, self.rank)
            y = op("ember.PagedAttention", q, k, v, kc, vc, slots, tables, starts, lens, num_heads=qe - qb,
                   kv_num_heads=e - b, scale=scale, sliding_window=window)
            self._made.add(id(y))
            return y

        def lin(op_name, *, bias, quantized):
            def pattern(op, x, w, b, fmt, act):
                inputs = (x, w, b) if bias else (x, w)
                attrs = {"activation": act, **({"format": fmt} if quantized else {})}
                return op(op_name, *inputs, **attrs)
            return pattern

        rewrites = []
        for quantized in (False, True):
            name = "ember.QuantizedLinear" if quantized else "ember.Linear"
            for bias in (False, True):
                rewrites.append(Rewrite(f"column_{name}", lin(name, bias=bias, quantized=quantized), column,
                                        linear_check(("column", "heads"))))
                rewrites.append(Rewrite(f"row_{name}", lin(name, bias=bias, quantized=quantized), row,
                                        linear_check(("row",))))
            rewrites.append(Rewrite(f"vocab_head_{name}", lin(name, bias=False, quantized=quantized),
                                    lambda op, x, w, b, fmt, act: head(op, x, w, fmt),
                                    lambda m: linear_check(("vocab",))(m) or (
                                        f"the head applies {m['act']}" if m["act"] else None)))
        rewrites.append(Rewrite("vocab_lookup", lambda op, w, ids: op.Gather(w, ids, axis=0),
                                lambda op, w, ids: lookup(op, w, ids), linear_check(("vocab",))))
        rewrites.append(Rewrite("vocab_lookup_quantized",
                                lambda op, w, ids, fmt: op("ember.QuantizedGather", w, ids, format=fmt),
                                lambda op, w, ids, fmt: lookup(op, w, ids, fmt), linear_check(("vocab",))))
        rewrites.append(Rewrite(
            "attention_heads",
            lambda op, q, k, v, kc, vc, slots, tables, starts, lens, h, kv, scale, window: op(
                "ember.PagedAttention", q, k, v, kc, vc, slots, tables, starts, lens, num_heads=h,
                kv_num_heads=kv, scale=scale, sliding_window=window),
            paged, attention))
        def dense_pattern(with_bias: bool):
            def pattern(op, q, k, v, bias, h, kv, scale, causal):
                inputs = (q, k, v, bias) if with_bias else (q, k, v)
                return op("ember.Attention", *inputs, num_heads=h, kv_num_heads=kv, scale=scale, causal=causal)
            return pattern

        for with_bias in (False, True):
            rewrites.append(Rewrite("attention_heads", dense_pattern(with_bias), dense, attention))
        return rewrites

    def sinking(self, graph: Graph, made: set[int]) -> list[Rewrite]:
        """Rewrites that move ember.AllReduce past the sums and scalings of partial sums, so
        a mixture of experts sums its experts' partial results once, not once each:

            AllReduce(a) + AllReduce(b)   -> AllReduce(a + b)
            AllReduce(a) * s              -> AllReduce(a * s)     s the same on every rank

        `made`: ids of the constants the shard holds (what differs by rank, with whatever
        is computed from them before a collective)."""
        split = set(made)
        for node in graph.nodes:  # (in order: producers first)
            if node.op not in ("ember.AllReduce", "ember.AllGather") and any(
                    v is not None and id(v) in split for v in node.inputs):
                split.update(id(v) for v in node.outputs)

        def same_everywhere(m):
            return "the factor differs by rank" if id(m["s"]) in split else None

        def reduce(op, x, w):
            return op("ember.AllReduce", x, world_size=w)

        return [
            Rewrite("sum_partial_sums", lambda op, a, b, w: op.Add(reduce(op, a, w), reduce(op, b, w)),
                    lambda op, a, b, w: reduce(op, op.Add(a, b), w)),
            Rewrite("scale_partial_sum", lambda op, a, s, w: op.Mul(reduce(op, a, w), s),
                    lambda op, a, s, w: reduce(op, op.Mul(a, s), w), same_everywhere, commute=True),
        ]

    def run(self, graph: Graph) -> PassResult:
        if self.size == 1:
            return PassResult(graph, False)
        planned = {id(c) for c in graph.constants if self.spec(c) is not None}
        counts = set()
        for node in graph.walk():
            if node.op in ATTENTION:
                heads = node.attrs["num_heads"]
                counts.add((heads, node.attrs.get("kv_num_heads") or heads))
        if len(counts) > 1:
            raise ModelError(f"tensor parallelism: attention layers with different head counts {sorted(counts)}")
        self._heads = next(iter(counts), None)
        if not planned:
            raise ModelError(f"tensor parallelism: the plan ({', '.join(g for g, _ in self.plan)}) names no weight "
                             f"of {graph.name}")
        before = {id(c) for c in graph.constants}
        self.report = apply_rewrites(graph, self.rewrites(graph), max_rounds=2)
        sunk = apply_rewrites(graph, self.sinking(graph, {id(c) for c in graph.constants} - before))
        self.report.applied.update(sunk.applied)
        left = [(n, v) for n in graph.walk() for v in n.inputs
                if v is not None and id(v) in planned and id(v) not in self._whole]
        if left:
            node, value = left[0]
            spec = self.spec(value)
            raise ModelError(f"tensor parallelism: weight {value.name} ({spec.kind} split) is read by "
                             f"{node.describe()}, which the sharding pass cannot split")
        for node in graph.walk():
            if node.op == "ember.PagedAttention":
                kv = node.attrs["kv_num_heads"]
                for cache in node.inputs[3:5]:
                    t = cache.type
                    cache.type = TensorType(t.dtype, (*t.shape[:2], kv, *t.shape[3:]))
        infer_types(graph)  # (the whole weights, read no more, went with the rewrites' dead-code sweep)
        return PassResult(graph, True)


def with_sharding(pipeline: list[Pass], sharding: ShardTensorParallel) -> list[Pass]:
    """`pipeline` with `sharding` after the attention fusion (whose heads it splits), before
    the fusions that pack weights together (fuse_qkv) or into epilogues; first in a pipeline
    without fusions."""
    names = [p.name for p in pipeline]
    at = names.index("fuse_attention") + 1 if "fuse_attention" in names else 0
    return [*pipeline[:at], sharding, *pipeline[at:]]


register_pass(ShardTensorParallel)
