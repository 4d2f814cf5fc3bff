"""Control flow: If, Loop, Scan, SequenceMap. Their bodies are ember Graphs, so their
reference implementations run the bodies with ember's own interpreter, reading
outer-scope values from the enclosing graph's environment."""

from __future__ import annotations

import numpy as np

from ...errors import ExecutionError
from ..graph import Node
from ..interpreter import Interpreter
from .onnx_standard import standard_op


def _scoped(fn):
    fn.needs_scope = True
    return fn


def _if(node: Node):
    then_branch = Interpreter(node.attrs["then_branch"])
    else_branch = Interpreter(node.attrs["else_branch"])

    @_scoped
    def run(cond, *, scope):
        branch = then_branch if bool(np.asarray(cond).reshape(-1)[0]) else else_branch
        return tuple(branch.run([], scope))

    return run


def _stack(items: list, like) -> np.ndarray:
    if items:
        return np.stack([np.asarray(x) for x in items])
    return np.zeros((0,), dtype=np.float32) if like is None else like


def _loop(node: Node):
    body = Interpreter(node.attrs["body"])
    num_carried = len(node.inputs) - 2

    @_scoped
    def run(max_trip, cond, *carried, scope):
        trip_limit = None if max_trip is None else int(np.asarray(max_trip).reshape(-1)[0])
        keep_going = True if cond is None else bool(np.asarray(cond).reshape(-1)[0])
        state = list(carried)
        scans: list[list] | None = None
        i = 0
        while keep_going and (trip_limit is None or i < trip_limit):
            out = body.run([np.array(i, dtype=np.int64), np.array(keep_going), *state], scope)
            keep_going = bool(np.asarray(out[0]).reshape(-1)[0])
            state = out[1:1 + num_carried]
            if scans is None:
                scans = [[] for _ in out[1 + num_carried:]]
            for acc, item in zip(scans, out[1 + num_carried:]):
                acc.append(item)
            i += 1
        num_scan = len(node.outputs) - num_carried
        if scans is None:
            scans = [[] for _ in range(num_scan)]
        return (*state, *[_stack(acc, _empty_scan_output(node.attrs["body"].outputs[1 + num_carried + k])) for k, acc in enumerate(scans)])

    return run



def _scan(node: Node):
    graph = node.attrs["body"]
    body = Interpreter(graph)
    num_scan_in = node.attrs["num_scan_inputs"]
    num_state = len(node.inputs) - num_scan_in
    num_scan_out = len(graph.outputs) - num_state
    in_axes = node.attrs.get("scan_input_axes") or [0] * num_scan_in
    in_dirs = node.attrs.get("scan_input_directions") or [0] * num_scan_in
    out_axes = node.attrs.get("scan_output_axes") or [0] * num_scan_out
    out_dirs = node.attrs.get("scan_output_directions") or [0] * num_scan_out

    @_scoped
    def run(*inputs, scope):
        state = list(inputs[:num_state])
        xs = [np.moveaxis(np.asarray(x), ax % np.ndim(x), 0) for x, ax in zip(inputs[num_state:], in_axes)]
        xs = [x[::-1] if d else x for x, d in zip(xs, in_dirs)]
        lengths = {x.shape[0] for x in xs}
        if len(lengths) > 1:
            raise ExecutionError(f"{node.describe()}: scan inputs differ in length {sorted(lengths)}")
        steps = lengths.pop() if lengths else 0
        outs: list[list] = [[] for _ in range(num_scan_out)]
        for t in range(steps):
            res = body.run([*state, *[x[t] for x in xs]], scope)
            state = res[:num_state]
            for acc, y in zip(outs, res[num_state:]):
                acc.append(np.asarray(y))
        results = []
        for k, (acc, ax, d) in enumerate(zip(outs, out_axes, out_dirs)):
            y = np.stack(acc) if acc else _empty_scan_output(graph.outputs[num_state + k])
            if d:
                y = y[::-1]
            results.append(np.moveaxis(y, 0, ax % y.ndim))
        return (*state, *results)

    return run


def _empty_scan_output(body_out) -> np.ndarray:
    """A scan output (Scan's or Loop's) after no steps: [0, *the body output's shape], a
    dim its type does not fix counted 0; [0] float32 where it has no tensor type."""
    t = body_out.type
    dtype = t.dtype.numpy if t is not None and hasattr(t, "dtype") else np.float32
    shape = getattr(t, "shape", None) or ()
    return np.zeros((0, *(d if isinstance(d, int) else 0 for d in shape)), dtype=dtype)


def _sequence_map(node: Node):
    body = Interpreter(node.attrs["body"])

    @_scoped
    def run(seq, *extra, scope):
        outs: list[list] = [[] for _ in node.outputs]
        for i in range(len(seq)):
            args = [seq[i], *[e[i] if isinstance(e, list) else e for e in extra]]
            for acc, y in zip(outs, body.run(args, scope)):
                acc.append(y)
        return tuple(outs)

    return run


standard_op("If", reference=_if)
def _loop_infer(node: Node, ins: list) -> list:
    """Carried values typed as their initial values; scan outputs as the body's outputs
    after a leading count of iterations only the run tells."""
    from ..types import TensorType, fresh_symbol
    from ._symbolic import shape_of, tensor

    body = node.attrs["body"]
    num_carried = len(node.inputs) - 2
    outs = []
    for i, v in enumerate(body.outputs[1:]):
        t = v.type
        if not isinstance(t, TensorType):
            outs.append(None)
        elif i < num_carried:
            given = shape_of(ins[2 + i]) if 2 + i < len(ins) else None
            outs.append(tensor(t.dtype, given if given is not None else t.shape))
        else:
            outs.append(tensor(t.dtype, None if t.shape is None else (fresh_symbol(), *t.shape)))
    return outs


standard_op("Loop", reference=_loop, infer=_loop_infer)
def _scan_infer(node: Node, ins: list) -> list:
    """Final states typed as the initial states; scan outputs as the body's outputs with the
    scan length (the scan inputs' length along their axis) inserted at their axis."""
    from ..types import TensorType, fresh_symbol
    from ._symbolic import shape_of, tensor

    body = node.attrs["body"]
    num_scan_in = node.attrs["num_scan_inputs"]
    num_state = len(node.inputs) - num_scan_in
    in_axes = node.attrs.get("scan_input_axes") or [0] * num_scan_in
    out_axes = node.attrs.get("scan_output_axes") or [0] * (len(body.outputs) - num_state)
    first = shape_of(ins[num_state]) if num_scan_in and len(ins) > num_state else None
    length = first[in_axes[0] % len(first)] if first else fresh_symbol()
    outs = []
    for i, v in enumerate(body.outputs):
        t = v.type
        if not isinstance(t, TensorType):
            outs.append(None)
        elif i < num_state:
            given = shape_of(ins[i]) if i < len(ins) else None
            outs.append(tensor(t.dtype, given if given is not None else t.shape))
        elif t.shape is None:
            outs.append(tensor(t.dtype, None))
        else:
            shape = list(t.shape)
            shape.insert(out_axes[i - num_state] % (len(shape) + 1), length)
            outs.append(tensor(t.dtype, shape))
    return outs


standard_op("Scan", reference=_scan, infer=_scan_infer)
standard_op("SequenceMap", reference=_sequence_map)


# -- kernels: bodies compiled as programs of their own --------------------------------
# If and Scan run on kernels when every node of their bodies does: each body becomes a
# standalone graph (its outer-scope reads turned into inputs), optimized and lowered like
# a model, and the `control` extern runs its compiled program once per branch taken or
# per scan step, or per loop iteration (Loop's scan outputs have a length only the run
# tells: the extern allocates them and the executor binds their sizes).

def _outer_reads(body) -> list:
    """The outer-scope values `body` reads at run time: every free value but the enclosing
    graphs' constants, which its standalone copy keeps as constants of its own (a Scan body
    that slices by outer constant indices then slices on a kernel, not an extern reading
    them each step)."""
    return [v for v in body.free_values() if v.const is None]


def _standalone(body, free: list, input_types: list | None = None):
    """A copy of subgraph `body` whose outer-scope reads `free` are extra inputs (after its
    own) and whose outer constants are its own, with its own inputs typed `input_types`
    where it declares no shape."""
    import copy

    from ..graph import Value
    from ..types import TensorType

    memo = {id(v): Value(v.name, v.type) for v in free}
    constants = [v for v in body.free_values() if v.const is not None]
    for v in constants:
        memo[id(v)] = Value(v.name, v.type, v.const)
    # every value copied up front (constants' data shared, read-only): deepcopy would
    # otherwise follow value -> producer -> input -> producer ... and recurse as deep as the
    # body is long (a 100-node branch passed Python's recursion limit)
    for g in [body, *body.all_subgraphs()]:
        for v in g.values():
            memo.setdefault(id(v), Value(v.name, v.type, v.const))
    graph = copy.deepcopy(body, memo)
    for node in graph.walk():
        for out in node.outputs:
            out.producer = node
    for i, t in enumerate(input_types or []):
        v = graph.inputs[i]
        if t is not None and not (isinstance(v.type, TensorType) and v.type.shape is not None):
            v.type = t
    graph.inputs = [*graph.inputs, *(memo[id(v)] for v in free)]
    graph.constants.extend(memo[id(v)] for v in constants)
    return graph


def _compiled_body(ctx, body, free: list, input_types: list | None, where: str):
    """The optimized standalone copy of `body`, if every node of it lowers to kernels
    (`ctx.compile_body`: codegen lowers it, optimized already by the caller's pipeline;
    NotLowerable otherwise)."""
    return ctx.compile_body(_standalone(body, free, input_types), where)


def _scan_slice_type(t, axis: int):
    from ..types import TensorType

    if not isinstance(t, TensorType) or t.shape is None or not t.shape:
        return None
    shape = list(t.shape)
    del shape[axis % len(shape)]
    return TensorType(t.dtype, tuple(shape))


def _lower_if(ctx, node, ins):
    from ._lowering import out_type

    branches = [node.attrs["then_branch"], node.attrs["else_branch"]]
    free = [_outer_reads(b) for b in branches]
    graphs = [_compiled_body(ctx, b, f, None, f"the {name} branch") for b, f, name in zip(branches, free, ("then", "else"))]
    scope = list({id(v): v for f in free for v in f}.values())
    index = {id(v): i for i, v in enumerate(scope)}
    outer = _outer_refs(ctx, scope)
    return ctx.extern("control", [ins[0], *outer], [out_type(node, i) for i in range(len(node.outputs))],
                      kind="if", num_outputs=len(node.outputs), bodies=graphs, reads=[[index[id(v)] for v in f] for f in free],
                      passthrough=[_passthrough(g) for g in graphs], where=node.describe())


def _passthrough(graph) -> list[int] | None:
    """For a branch that only hands values through (every output one of its inputs, as
    an Identity branch is once optimized), the input each output is; else None. The
    branch then runs as copies, without a run of its program (openwakeword's hey_jarvis
    takes such a branch on nearly every frame: ~15 us of its 40)."""
    position = {id(v): i for i, v in enumerate(graph.inputs)}
    through = []
    for v in graph.outputs:
        while v.producer is not None and v.producer.op == "Identity":  # (kept to name an output)
            v = v.producer.inputs[0]
        through.append(position.get(id(v)))
    return None if any(i is None for i in through) else through


def _lower_scan(ctx, node, ins):
    from ._lowering import out_type

    body = node.attrs["body"]
    num_scan_in = node.attrs["num_scan_inputs"]
    num_state = len(node.inputs) - num_scan_in
    num_scan_out = len(body.outputs) - num_state
    in_axes = list(node.attrs.get("scan_input_axes") or [0] * num_scan_in)
    types = [v.type for v in node.inputs[:num_state]]
    types += [_scan_slice_type(v.type, ax) for v, ax in zip(node.inputs[num_state:], in_axes)]
    free = _outer_reads(body)
    graph = _compiled_body(ctx, body, free, types, "the scan body")
    outer = _outer_refs(ctx, free)
    return ctx.extern("control", [*ins, *outer], [out_type(node, i) for i in range(len(node.outputs))],
                      kind="scan", num_outputs=len(node.outputs), bodies=[graph], num_state=num_state, num_scan_in=num_scan_in,
                      in_axes=in_axes, in_dirs=list(node.attrs.get("scan_input_directions") or [0] * num_scan_in),
                      out_axes=list(node.attrs.get("scan_output_axes") or [0] * num_scan_out),
                      out_dirs=list(node.attrs.get("scan_output_directions") or [0] * num_scan_out),
                      where=node.describe())


def _lower_loop(ctx, node, ins):
    from ..dtypes import DType
    from ..types import TensorType
    from ._lowering import out_type

    body = node.attrs["body"]
    num_carried = len(node.inputs) - 2
    types = [TensorType(DType.int64, ()), TensorType(DType.bool, ()), *(v.type for v in node.inputs[2:])]
    free = _outer_reads(body)
    graph = _compiled_body(ctx, body, free, types, "the loop body")
    outer = _outer_refs(ctx, free)
    return ctx.extern("control", [*ins, *outer], [out_type(node, i) for i in range(len(node.outputs))],
                      kind="loop", num_outputs=len(node.outputs), bodies=[graph], num_carried=num_carried,
                      where=node.describe())


def _outer_refs(ctx, values: list) -> list:
    from ._lowering import NotLowerable

    missing = [v.name for v in values if id(v) not in ctx.refs]
    if missing:
        raise NotLowerable(f"a body reads {missing[0]!r} from a scope beyond the enclosing graph")
    return [ctx.refs[id(v)] for v in values]


def _register_lowerings():
    from ._lowering import register_lowering

    for op, fn in (("If", _lower_if), ("Scan", _lower_scan), ("Loop", _lower_loop)):
        register_lowering(op, sizes_outputs=op == "Loop")(fn)
        fn.handles_subgraphs = True


_register_lowerings()
