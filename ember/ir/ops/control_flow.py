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
        return (*state, *[_stack(acc, _empty_scan(node, num_carried + k)) for k, acc in enumerate(scans)])

    return run


def _empty_scan(node: Node, index: int):
    body_out = node.attrs["body"].outputs[1 + index]
    t = body_out.type
    dtype = t.dtype.numpy if t is not None and hasattr(t, "dtype") else np.float32
    shape = (0,) + tuple(d if isinstance(d, int) else 0 for d in (t.shape or ())) if t is not None and hasattr(t, "shape") else (0,)
    return np.zeros(shape, dtype=dtype)


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
        for acc, ax, d in zip(outs, out_axes, out_dirs):
            y = np.stack(acc) if acc else np.zeros((0,), np.float32)
            if d:
                y = y[::-1]
            results.append(np.moveaxis(y, 0, ax % y.ndim))
        return (*state, *results)

    return run


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
standard_op("Loop", reference=_loop)
standard_op("Scan", reference=_scan)
standard_op("SequenceMap", reference=_sequence_map)
