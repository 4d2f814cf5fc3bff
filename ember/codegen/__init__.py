"""Code generation: Graph IR -> Kernel IR (lowering.py) -> C++ (cpu.py) -> a Program.

`generate(graph)` lowers every node it can, groups runs of generated kernels into
segments, renders and builds the library, builds the hand-written kernels its externs may
call (handwritten.py), and returns the `Program` the executor runs (a control-flow step
carries its bodies' programs, generated here too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._deferred import sympy

if TYPE_CHECKING:
    from ..ir.graph import Graph
    from ..ir.kernel import Program


def generate(graph: Graph, target=None) -> Program:
    """The Program of `graph` for `target` (a codegen.target.Target; None: cpu)."""
    from ..ir.kernel import Program, Step
    from . import cpu, handwritten
    from .memory import program_lifetimes
    from .lowering import lower_graph

    triton = target is not None and target.renderer == "triton"
    if not triton:
        store_weights_transposed(graph)  # (a layout for the CPU's GEMM packing)
    lowered = lower_graph(graph, target)
    if triton:  # the device holds every buffer as a torch tensor: none of another type
        from ..ir.ops._lowering import NotLowerable

        # (a value that externs and nothing else touch may be of any type they take, EXTERN_DTYPES,
        # which `extern` has checked: a float8 KV cache)
        touched = [(k.kind == "extern", k.reads() | k.writes()) for k in lowered.kernels]
        by_externs = set().union(*(names for extern, names in touched if extern))
        by_kernels = set().union(*(names for extern, names in touched if not extern))
        odd = sorted({b.dtype.name if b.dtype is not None else b.kind for name, b in lowered.buffers.items()
                      if b.kind == "dynamic" or (b.dtype not in target.kernel_dtypes
                                                 and not (name in by_externs and name not in by_kernels))})
        if odd:
            raise NotLowerable(f"values of type {', '.join(odd)} on the {target.name} target")
    buffers = lowered.buffers
    slots = {name: i for i, name in enumerate(buffers)}
    symbols: set[sympy.Symbol] = set()
    for b in buffers.values():
        for d in (*b.shape, *(b.fill or ())):
            symbols |= getattr(sympy.sympify(d), "free_symbols", set())
    for k in lowered.kernels:
        for r in (*k.ranges, *k.reduction):
            symbols |= sympy.sympify(r).free_symbols
    ordered = sorted((s for s in symbols if not s.name.startswith("$")), key=lambda s: s.name)
    steps: list[Step] = []
    segments: list[list[str]] = []
    generated = []
    small: dict[str, list] = {}  # extern kernel -> the kernels of its small path, run as a segment of their own
    extern_steps: dict[str, Step] = {}
    for k in lowered.kernels:
        if k.small_for is not None:
            generated.append(k)
            small.setdefault(k.small_for, []).append(k)
        elif k.kind in ("pointwise", "reduction"):
            generated.append(k)
            if steps and steps[-1].kind == "segment":
                seg = steps[-1]
                seg.kernels += (k.name,)
                seg.nodes += k.nodes
                seg.args = tuple(sorted(set(seg.args) | k.reads() | k.writes()))
                seg.parts += (frozenset(k.reads() | k.writes()),)
                segments[-1].append(k.name)
            else:
                touched = k.reads() | k.writes()
                steps.append(Step("segment", f"seg{len(segments)}", tuple(sorted(touched)),
                                  kernels=(k.name,), nodes=k.nodes, parts=(frozenset(touched),)))
                segments.append([k.name])
        else:
            params = dict(k.params)
            n = params.pop("num_inputs")
            if k.extern == "control":  # If/Loop/Scan: each body is a program of its own
                params["programs"] = [generate(body, target) for body in params["bodies"]]
            steps.append(Step(k.kind, k.extern or k.nodes[0], k.args, n, params, nodes=k.nodes,
                              parts=((frozenset(k.args) | {b for _, b in params.get("scope", ())}) - {""},)))
            extern_steps[k.name] = steps[-1]
    for name, kernels in small.items():  # the step chooses per input shapes (executor: `_small_steps`)
        step = extern_steps[name]
        step.params["small"] = {**step.params["small"], "segment": f"seg{len(segments)}"}
        step.parts += tuple(frozenset(k.reads() | k.writes()) for k in kernels)
        segments.append([k.name for k in kernels])
    program = Program(buffers, slots, ordered, steps, lowered.inputs, lowered.outputs, lowered.constants,
                      num_kernels=len(lowered.kernels) - len(lowered.fallbacks), fused_nodes=lowered.fused_nodes,
                      fallbacks=lowered.fallbacks, index_bounds=dict(lowered.index_bounds))
    if generated and triton:
        from . import triton as triton_renderer

        try:
            program.source = triton_renderer.render(generated, buffers, ordered)
        except triton_renderer.NotRenderable as e:
            from ..errors import UnsupportedError

            raise UnsupportedError(f"the {target.name} target cannot render a kernel of this model: {e}") from None
        program.library = str(triton_renderer.write(program.source))
    elif generated:
        program.source = cpu.render(generated, buffers, slots, {s: i for i, s in enumerate(ordered)}, segments)
        program.library = str(cpu.build(program.source))
    program.libraries = handwritten.libraries(program, target.renderer if target is not None else "cpp")
    program.lifetimes = program_lifetimes(program)
    return program


def store_weights_transposed(graph: Graph) -> None:
    """Float32 matrix weights that only ember.Linear reads (as its weight, [K, N]) are kept
    in Fortran order: the same array, stored as [N, K]. oneDNN packs a weight from that
    layout; from [K, N] it needs a transposed copy first, which cost ~20 of the ~40 ms of
    MiniLM's preparation on every compile and every artifact load (artifacts keep the
    layout). No generated kernel reads such an array (Linear is always an extern)."""
    import numpy as np

    readers: dict[int, list] = {}
    for node in graph.nodes:
        for i, value in enumerate(node.inputs):
            if value is not None and value.is_constant:
                readers.setdefault(id(value), []).append((node.op, i))
    outputs = {id(v) for v in graph.outputs}
    for value in graph.constants:
        a = value.const
        if (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 2 and min(a.shape) > 1
                and a.flags.c_contiguous and id(value) not in outputs
                and readers.get(id(value)) and all(r == ("ember.Linear", 1) for r in readers[id(value)])):
            value.const = np.asfortranarray(a)
