"""Graph IR -> Kernel IR.

Each op's lowering sits with the op (`OpDef.lower`, set in its family file) and has the
signature `lower(ctx, node, inputs) -> outputs`, where inputs and outputs are `TensorRef`s:
either a realized buffer or a *lazy* pointwise function `fn(body, index) -> temp`. A
consumer that loads from a lazy ref inlines its producer at the consumer's index — that
is the whole of pointwise fusion, prologues of reductions included. A lazy value is
realized (gets a buffer and a kernel of its own) when more than one node reads it, when
the graph returns it, when its body grows too big, or when a consumer needs memory (an
extern, a fallback). A node whose op has no lowering, or whose lowering declines
(`NotLowerable`), runs its reference implementation on the CPU: a fallback, counted.

Sizes are symbols bound when the program runs: the inputs' dims, and the sizes an
extern (`extern`, for outputs no earlier step could size) or a fallback tells from its
result. A kernel may use only sizes bound before it runs (`bound`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import sympy

from ..ir.dtypes import DType
from ..ir.graph import Graph, Node, Value
from ..ir.ops._lowering import FLOATS, NotLowerable
from ..ir.registry import get_op
from ..ir.shape_inference import infer_types
from ..ir.types import TensorType
from ..ir.kernel import Body, Buffer, Kernel, Stage, TensorRef, loop_vars

MAX_INLINE_OPS = 48  # a lazy value whose body has more ops than this is realized
# dtypes the C++ renderer has types for (ember/codegen/cpu_dtypes.py); other values fall back
KERNEL_DTYPES = {DType.float32, DType.float64, DType.float16, DType.bfloat16, DType.int64, DType.int32,
                 DType.int16, DType.int8, DType.uint8, DType.uint16, DType.uint32, DType.uint64, DType.bool,
                 DType.float8e4m3fn, DType.float8e4m3fnuz, DType.float8e5m2, DType.float8e5m2fnuz,
                 DType.float8e8m0, DType.float4e2m1, DType.int4, DType.uint4, DType.int2, DType.uint2}

# dtypes externs take (the executor hands them torch views of the buffers; float8e4m3fn: a KV
# cache's, which only ember.PagedAttention's lowering accepts)
EXTERN_DTYPES = {DType.float32, DType.float64, DType.float16, DType.bfloat16, DType.int64, DType.int32, DType.int16,
                 DType.int8, DType.uint8, DType.uint16, DType.uint32, DType.uint64, DType.bool, DType.float8e4m3fn}


@dataclass
class Lowered:
    """What lowering produced: buffers, kernels in run order, and what fell back."""

    buffers: dict[str, Buffer]
    kernels: list[Kernel]
    inputs: list[str]
    outputs: list[str]
    constants: dict[str, np.ndarray]
    fallbacks: list[str] = field(default_factory=list)
    fused_nodes: int = 0
    fallback_reasons: dict[str, str] = field(default_factory=dict)  # node name -> why it fell back
    index_bounds: dict[str, tuple[int, str]] = field(default_factory=dict)  # input buffer -> (extent, reader)


class LoweringContext:
    """Lowers one graph to Kernel IR: the context every op's lowering is given (it
    implements `ember.ir.ops._lowering.LoweringContext`, the protocol lowerings see)."""

    def __init__(self, graph: Graph, target=None):
        self.graph = graph
        self.target = target  # a codegen.target.Target (None: the CPU's kernels and every extern)
        self.kernel_dtypes = KERNEL_DTYPES if target is None else target.kernel_dtypes
        self.extern_floats = FLOATS if target is None else target.extern_floats
        self.known = infer_types(graph)
        self.buffers: dict[str, Buffer] = {}
        self.kernels: list[Kernel] = []
        self.constants: dict[str, np.ndarray] = {}
        self.refs: dict[int, TensorRef] = {}
        self._realized: list[tuple[TensorRef, Callable, int]] = []  # (ref, its fn, its cost) in the order realized
        self.counter = [0]  # SSA temps, shared by every body so names never clash
        self.readers: dict[int, int] = {}
        for node in graph.nodes:
            reads = [v for v in node.inputs if v is not None]
            for sub in node.subgraphs():
                reads += sub.free_values()
            for v in reads:
                self.readers[id(v)] = self.readers.get(id(v), 0) + 1
        self.returned = {id(v) for v in graph.outputs}
        self.fallbacks: list[str] = []
        self.fallback_reasons: dict[str, str] = {}
        self.index_bounds: dict[str, tuple[int, str]] = {}
        self._node: Node | None = None
        # sizes known before a kernel runs: the inputs' dims, then what fallbacks' results tell
        self.bound: set[sympy.Symbol] = set()
        for v in graph.inputs:
            if isinstance(v.type, TensorType) and v.type.shape is not None:
                self.bound |= {d for d in v.type.shape if isinstance(d, sympy.Symbol)}

    def index_input(self, ref: TensorRef, extent, where: str) -> None:
        buf = ref.buffer
        if buf is not None and buf.kind == "input" and isinstance(extent, (int, np.integer)) \
                and (buf.name not in self.index_bounds or extent < self.index_bounds[buf.name][0]):
            self.index_bounds[buf.name] = (int(extent), where)

    # -- buffers ------------------------------------------------------------------
    def new_buffer(self, hint: str, dtype: DType, shape, kind: str = "temp", **extra) -> Buffer:
        name = f"buf{len(self.buffers)}"
        buf = Buffer(name, dtype, tuple(shape), kind, **extra)
        self.buffers[name] = buf
        return buf

    def constant(self, hint: str, dtype: DType, array: np.ndarray) -> Buffer:
        """A constant buffer holding `array` (a weight laid out for a generated kernel)."""
        buf = self.new_buffer(hint, dtype, array.shape, "constant")
        self.constants[buf.name] = array
        return buf

    def add_kernel(self, kernel: Kernel) -> Kernel:
        kernel.name = f"k{len(self.kernels)}_{kernel.name}"
        if self._node is not None and not kernel.nodes:
            kernel.nodes = (self._node.name,)
        self.kernels.append(kernel)
        return kernel

    def body(self) -> Body:
        return Body(self.counter)

    # -- refs ---------------------------------------------------------------------
    def pointwise(self, shape, dtype: DType, fn: Callable[[Body, tuple], str], cost: int = 1) -> TensorRef:
        return TensorRef(dtype, tuple(shape), fn=fn, cost=cost)

    def realize(self, ref: TensorRef, kind: str = "temp") -> Buffer:
        """Give `ref` a buffer (writing a pointwise kernel for a lazy one)."""
        if ref.buffer is not None:
            return ref.buffer
        buf = self.new_buffer("pw", ref.dtype, ref.shape, kind)
        body = self.body()
        index = loop_vars(len(ref.shape))
        body.store(buf, index, ref.fn(body, index))
        self.add_kernel(Kernel("pointwise", "pointwise", ranges=ref.shape, body=body))
        self._realized.append((ref, ref.fn, ref.cost))
        # a load from now on: a consumer that took the computation's cost for its own
        # realized itself too (a HardSwish after a generated convolution: a pass of its own)
        ref.buffer, ref.fn, ref.cost = buf, None, 0
        return buf

    def alias(self, ref: TensorRef, shape) -> TensorRef:
        """`ref`'s elements (realized) under another shape of the same size: no kernel."""
        buf = self.realize(ref)
        view = self.new_buffer("view", ref.dtype, shape, view_of=buf.name)
        return TensorRef(ref.dtype, tuple(shape), buffer=view)

    def broadcast(self, ref: TensorRef, index, out_shape) -> tuple:
        """`index` into `out_shape`, mapped onto `ref` by numpy broadcasting. A dim that is
        not the output's and not 1 before it runs (a size an extern or fallback binds) may
        still be 1 when it runs: the index is clamped to it."""
        rank = len(ref.shape)
        tail = tuple(index)[len(out_shape) - rank:] if rank else ()
        out_tail = tuple(out_shape)[len(out_shape) - rank:] if rank else ()
        return tuple(0 if d == 1 else i if sympy.sympify(d) == sympy.sympify(o) else sympy.Min(i, d - 1)
                     for i, d, o in zip(tail, ref.shape, out_tail))

    def reduction(self, name: str, outer, inner, stages: list[Stage]) -> Kernel:
        return self.add_kernel(Kernel(name, "reduction", ranges=tuple(outer), reduction=tuple(inner),
                                      stages=stages))

    def extern(self, name: str, inputs: list[TensorRef | None], outputs: list[tuple[DType, tuple]],
               **params) -> list[TensorRef]:
        """A library kernel over realized inputs (None: an absent optional input).

        An output with a size known only when it runs (a symbol nothing has bound yet)
        is allocated by the extern itself: it returns its outputs, and the executor binds
        those symbols from their shapes, as it does for a fallback's result, so the
        kernels after it run with those sizes."""
        if self.target is not None and self.target.externs is not None and name not in self.target.externs:
            raise NotLowerable(f"no {name} kernel on the {self.target.name} target")
        dtypes = {r.dtype for r in inputs if r is not None} | {dtype for dtype, _ in outputs}
        if not dtypes <= EXTERN_DTYPES:
            raise NotLowerable(f"dtype {min(d.name for d in dtypes - EXTERN_DTYPES)} in an extern (torch has no view of it)")
        unbound = set()
        for _, shape in outputs:
            for d in shape:
                free = sympy.sympify(d).free_symbols - self.bound
                if free and not isinstance(d, sympy.Symbol):
                    raise NotLowerable(f"an output size {d} known only when it runs, and not a size of its own")
                unbound |= free
        args = [self.realize(r).name if r is not None else "" for r in inputs]
        outs = [self.new_buffer(name, dtype, shape) for dtype, shape in outputs]
        if unbound:
            params["sizes_outputs"] = True
            self.bound |= unbound
        self.add_kernel(Kernel(name, "extern", extern=name, args=(*args, *(b.name for b in outs)),
                               params={"num_inputs": len(args), **params}))
        return [TensorRef(b.dtype, b.shape, buffer=b) for b in outs]

    def small_path(self, out: TensorRef, build: Callable[[Buffer], TensorRef | None], elements: int) -> None:
        """Generated kernels that compute the extern just added (`out`: its output)
        instead of it where that output has at most `elements` elements, as the executor
        finds for each set of input shapes: a library call costs more than such small
        work (10-70 us a oneDNN convolution or GEMM before any work), and with a symbolic
        batch or image size the work is not known before the run. `build(buffer)` returns
        the value, lazy or realized into `buffer`, or None (no such path). It may add
        kernels of its own (a padded copy): they run only on the small path, so they may
        write only buffers it makes."""
        ext = self.kernels[-1]
        assert ext.kind == "extern" and out.buffer is not None and out.buffer.name in ext.args, \
            "small_path: not the last extern's output"
        kernels, buffers = len(self.kernels), set(self.buffers)
        ref = build(out.buffer)
        if ref is None:
            del self.kernels[kernels:]
            return
        if ref.buffer is not out.buffer:
            source = ref if ref.lazy else TensorRef(ref.dtype, ref.shape, fn=lambda b, i, r=ref: r.load(b, i))
            body, index = self.body(), loop_vars(len(out.shape))
            body.store(out.buffer, index, source.fn(body, index))
            self.add_kernel(Kernel("pointwise", "pointwise", ranges=out.shape, body=body))
        for k in self.kernels[kernels:]:
            assert k.writes() <= (set(self.buffers) - buffers) | {out.buffer.name}, \
                "small_path: a kernel writes outside it"
            k.small_for = ext.name
        ext.params["small"] = {"elements": int(elements)}

    def knows(self, shape) -> bool:
        """Whether every size of `shape` is known before the kernel that computes it runs."""
        return all(sympy.sympify(d).free_symbols <= self.bound for d in shape)

    def known_contents(self, value: Value):
        known = self.known.get(id(value))
        return None if known is None else known.value

    def compile_body(self, graph: Graph, where: str) -> Graph:
        """A control-flow body (standalone: its outer reads as extra inputs; optimized
        already, by the caller's pipeline: passes/manager.py), if every node of it lowers
        to kernels (NotLowerable otherwise: sequences crossing its boundary, or nodes on
        the fallback)."""
        lowered = lower_graph(graph, self.target)
        if lowered.fallbacks:
            raise NotLowerable(f"{where} has nodes on the fallback ({', '.join(lowered.fallbacks[:3])})")
        return graph

    # -- driving --------------------------------------------------------------------
    def _ref_for_source(self, value: Value, kind: str) -> TensorRef:
        t = value.type
        if not isinstance(t, TensorType) or t.shape is None:
            raise NotLowerable(f"graph input {value.name!r} is not a tensor of known rank")
        if kind == "constant":
            buf = self.new_buffer(value.name, t.dtype, value.const.shape, "constant")
            self.constants[buf.name] = value.const
        else:
            buf = self.new_buffer(value.name, t.dtype, t.shape, kind)
        return TensorRef(buf.dtype, buf.shape, buffer=buf)

    def _shape_valued(self, value: Value) -> TensorRef | None:
        """A small integer tensor whose contents are size expressions: filled at bind time."""
        t, contents = value.type, self.known_contents(value)
        if contents is None or not isinstance(t, TensorType) or t.shape is None:
            return None
        fill = [sympy.sympify(c) for c in np.asarray(contents, dtype=object).reshape(-1).tolist()]
        if not all(isinstance(d, int) for d in t.shape) or any(not f.free_symbols <= self.bound for f in fill):
            return None
        buf = self.new_buffer(value.name, t.dtype, t.shape, "fill", fill=fill)
        return TensorRef(buf.dtype, buf.shape, buffer=buf)

    def lower(self) -> Lowered:
        g = self.graph
        for v in g.inputs:
            self.refs[id(v)] = self._ref_for_source(v, "input")
        for v in g.constants:
            self.refs[id(v)] = self._ref_for_source(v, "constant")
        for node in g.nodes:
            self._node = node
            self._lower_in_order([node])
        self._node = None
        outputs = []
        for v in g.outputs:
            ref = self.refs[id(v)]
            if ref.buffer is not None and ref.buffer.kind == "dynamic":
                raise NotLowerable(f"graph output {v.name!r} is not a tensor of known rank")
            buf = self.realize(ref)
            if buf.kind != "temp" or buf.view_of is not None or buf.name in outputs:
                # an input, constant, alias or repeated output: copy it into a buffer of its own
                buf = self.realize(TensorRef(ref.dtype, ref.shape, fn=lambda b, i, r=ref: r.load(b, i)))
            buf.kind = "output"
            outputs.append(buf.name)
        kernels_nodes = {n for k in self.kernels for n in k.nodes}
        return Lowered(self.buffers, self.kernels, [self.refs[id(v)].buffer.name for v in g.inputs],
                       outputs, self.constants, self.fallbacks,
                       fused_nodes=sum(1 for n in g.nodes if n.name not in kernels_nodes and n.name not in self.fallbacks),
                       fallback_reasons=self.fallback_reasons, index_bounds=self.index_bounds)

    def _lower_in_order(self, nodes: list[Node]) -> None:
        for node in nodes:
            outs = None
            if all(self.known_contents(v) is not None for v in node.outputs) and not node.has_subgraphs:
                outs = [self._shape_valued(v) for v in node.outputs]
                outs = outs if all(o is not None for o in outs) else None
            if outs is None:
                outs = self._lower_node(node)
            for value, ref in zip(node.outputs, outs):
                if ref is None:
                    continue
                if ref.lazy and (self.readers.get(id(value), 0) != 1 or id(value) in self.returned
                                 or ref.cost > MAX_INLINE_OPS):
                    self.realize(ref)
                self.refs[id(value)] = ref

    def _lower_node(self, node: Node) -> list[TensorRef | None]:
        ins = [self.refs[id(v)] if v is not None else None for v in node.inputs]
        lower = getattr(get_op(node.op), "lower", None)
        reason = (self._why_not_lowerable(node, subgraphs=getattr(lower, "handles_subgraphs", False),
                                          sizes_outputs=getattr(lower, "sizes_outputs", False),
                                          extern_only=getattr(lower, "extern_only", False))
                  if lower is not None else "no lowering")
        if reason is None:
            state = self._checkpoint()
            try:
                outs = lower(self, node, ins)
                if outs is not None and self._unbound(outs):
                    raise NotLowerable("a size known only when it runs")
                if outs is not None:
                    return list(outs)
                reason = "lowering declined"
            except NotLowerable as e:
                reason = str(e) or "not lowerable"
            except Exception as e:  # noqa: BLE001 - a node its lowering cannot read (a malformed model)
                # runs its reference, which names what is wrong with it if anything is
                reason = f"its lowering failed: {type(e).__name__}: {e}"
            self._rollback(state)  # what the lowering added before it declined
        if not node.has_subgraphs:
            outs, why = self._expand(node, ins)
            if outs is not None:
                return outs
            reason += f"; function body: {why}" if why else ""
        self.fallback_reasons[node.name] = reason
        return self._fallback(node, ins)

    def _expand(self, node: Node, ins: list[TensorRef | None]) -> tuple[list[TensorRef | None] | None, str]:
        """`node` lowered through its op's expansion or ONNX function body; or None (nothing changed)
        and why, when there is none or some node of it would fall back."""
        from .expand import expansion_nodes, function_nodes

        if get_op(node.op).expand is not None:
            used = [self.readers.get(id(v), 0) > 0 or id(v) in self.returned for v in node.outputs]
            built = expansion_nodes(node, used)
        else:
            built = function_nodes(node)
        if built is None:
            return None, ""
        nodes, outs, constants = built
        for r in ins:
            if r is not None:
                self.realize(r)  # read by several nodes of the body, maybe
        state = self._checkpoint()
        for v in constants:
            self.refs[id(v)] = self._ref_for_source(v, "constant")
        for n in nodes:
            for v in n.inputs:
                if v is not None:
                    self.readers[id(v)] = self.readers.get(id(v), 0) + 1
        for v in outs:
            if v is not None:
                self.readers[id(v)] = self.readers.get(id(v), 0) + 1
        outer = self.known
        self.known = infer_types(Graph(f"{node.name}/body", nodes=nodes, constants=constants), outer)
        try:
            self._lower_in_order(nodes)
        finally:
            self.known = outer
        if len(self.fallbacks) == state[3] and all(v is None or id(v) in self.refs for v in outs):
            return [self.refs[id(v)] if v is not None else None for v in outs][:len(node.outputs)], ""
        inner = self.fallbacks[state[3]:]
        why = next((f"{n.op} {self.fallback_reasons.get(n.name, '')}" for n in nodes if n.name in inner), "outputs")
        self._rollback(state)
        return None, why

    def _checkpoint(self) -> tuple:
        return (len(self.kernels), list(self.buffers), list(self.constants), len(self.fallbacks),
                dict(self.fallback_reasons), set(self.bound), self.known, len(self._realized))

    def _rollback(self, state: tuple) -> None:
        """Forget the kernels, buffers and bound sizes added since `_checkpoint`. Values
        realized since are lazy again: the inputs a declining lowering realized, and the
        outer values a subgraph reads (If/Loop/Scan's), which are no node input, so no
        ref may keep a buffer that is gone."""
        kernels, buffers, constants_before, fallbacks, reasons, bound, _, realized = state
        for ref, fn, cost in reversed(self._realized[realized:]):
            ref.buffer, ref.fn, ref.cost = None, fn, cost
        del self._realized[realized:]
        del self.kernels[kernels:]
        self.buffers = {name: self.buffers[name] for name in buffers}
        self.constants = {name: self.constants[name] for name in constants_before}
        del self.fallbacks[fallbacks:]
        self.fallback_reasons, self.bound = reasons, bound

    def _unbound(self, refs: list[TensorRef | None]) -> bool:
        """Whether some of `refs` has a size no input, extern or fallback has bound."""
        return any(r is not None and not self.knows(r.shape) for r in refs)

    def _why_not_lowerable(self, node: Node, subgraphs: bool = False, sizes_outputs: bool = False,
                           extern_only: bool = False) -> str | None:
        """Why no kernel can compute `node` whatever its op, or None. A node with subgraphs
        needs an op whose lowering takes them (`subgraphs`); a lowering that `sizes_outputs`
        (an extern that allocates them) may have outputs of sizes known only when it runs;
        one that is `extern_only`, values of the types externs take (EXTERN_DTYPES)."""
        if node.has_subgraphs and not subgraphs:
            return "has subgraphs"
        inputs = [v for v in node.inputs if v is not None]
        for v in [*node.outputs, *inputs]:
            t = v.type
            if not isinstance(t, TensorType) or t.shape is None:
                return "a value that is not a tensor of known rank"
            if t.dtype not in self.kernel_dtypes and not (extern_only and t.dtype in EXTERN_DTYPES):
                return f"dtype {t.dtype.name}"
        for v in [*([] if sizes_outputs else node.outputs), *inputs]:
            if not self.knows(v.type.shape):
                return "a size known only when it runs"
        return None

    def _fallback(self, node: Node, ins: list[TensorRef | None]) -> list[TensorRef | None]:
        args = [self.realize(r).name if r is not None else "" for r in ins]
        scope = []  # (outer value, its buffer): what the subgraphs read from outside
        for sub in node.subgraphs():
            for v in sub.free_values():
                if id(v) in self.refs:
                    scope.append((v, self.realize(self.refs[id(v)]).name))
        outs = []
        for v in node.outputs:
            t = v.type
            if isinstance(t, TensorType) and t.shape is not None:
                outs.append(self.new_buffer(v.name, t.dtype, t.shape))
                self.bound |= {d for d in t.shape if isinstance(d, sympy.Symbol)}
            else:
                outs.append(self.new_buffer(v.name, t.dtype if isinstance(t, TensorType) else None, (),
                                            "dynamic"))
        self.fallbacks.append(node.name)
        self.add_kernel(Kernel("fallback", "fallback", args=(*args, *(b.name for b in outs)),
                               params={"num_inputs": len(args), "node": node, "scope": scope}))
        return [TensorRef(b.dtype, b.shape, buffer=b) for b in outs]


def lower_graph(graph: Graph, target=None) -> Lowered:
    """`graph` as Kernel IR for `target` (a codegen.target.Target; None: the CPU's)."""
    return LoweringContext(graph, target).lower()
