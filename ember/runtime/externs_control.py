"""The `control` extern: If, Scan and Loop whose bodies ember compiled into programs of
their own (ember/ir/ops/control_flow.py lowers them; codegen puts their programs in the
step's params). `prepare` makes an executor of each body's program once; a run executes
the branch taken, or the body once per scan step or loop iteration, on those kernels,
with the values the bodies read from the enclosing graph passed in as inputs. Loop's
scan outputs have a length only the run tells: the extern allocates them and returns
every output (the executor binds their sizes)."""

from __future__ import annotations

import numpy as np

from ..errors import ExecutionError
from ._torch import array as _array
from .externs import extern, prepare


@prepare("control")
def prepare_control(params, constants):
    from .executor import Executor

    return {**params, "executors": [Executor(program) for program in params["programs"]]}


def _store(y: np.ndarray, value, where: str, what: str) -> None:
    value = np.asarray(value)
    if value.shape != y.shape:
        raise ExecutionError(f"{where}: {what} has shape {list(value.shape)}, the output's type says {list(y.shape)}")
    np.copyto(y, value, casting="unsafe")


def _numpy(t):
    """A numpy view of an argument: the executor hands this extern numpy arrays where it
    has them (plan code 5), torch tensors otherwise; None stays None."""
    if t is None or isinstance(t, np.ndarray):
        return t
    return _array(t)


def _always(params) -> bool:
    return True


@extern("control", arrays=_always)  # (where it sizes no output: `Executor._numpy_extern`)
def control(params, *args):
    n_in = len(args) - params["num_outputs"]
    if params["kind"] == "if":  # only the condition, the taken branch's reads and the outputs as numpy
        _run_if(params, args[:n_in], [_numpy(t) for t in args[n_in:]])
        return
    arrays = [_numpy(t) for t in args]
    ins, outs = arrays[:n_in], arrays[n_in:]
    if params["kind"] == "scan":
        _run_scan(params, ins, outs)
    else:
        return _run_loop(params, ins, outs, args[n_in:])


def _run_if(params, ins, outs):
    """`ins`: the condition and the scope, as torch tensors."""
    cond, scope = _numpy(ins[0]), ins[1:]  # (numpy's indexing: ~4x torch's)
    if cond is None or cond.size != 1:
        raise ExecutionError(f"{params['where']}: the condition must hold one element")
    taken = 0 if bool(cond.reshape(-1)[0]) else 1
    reads = [_numpy(scope[i]) for i in params["reads"][taken]]
    through = (params.get("passthrough") or [None, None])[taken]
    if through is not None:  # the branch hands its reads through: copied, no run of its program
        for k, (y, i) in enumerate(zip(outs, through)):
            _store(y, reads[i], params["where"], f"output {k} of the {('then', 'else')[taken]} branch")
        return
    body = params["executors"][taken]
    results = body.run(reads, out=_writable(body, outs))
    for k, (y, value) in enumerate(zip(outs, results)):
        if value is not y:
            _store(y, value, params["where"], f"output {k} of the {('then', 'else')[taken]} branch")


def _writable(body, outs: list) -> list:
    """The outputs a body's kernels may write directly (no copy after the run): those of
    its output's dtype, C-contiguous, not aliasing each other."""
    dtypes = body.output_dtypes
    chosen, seen = [], set()
    for y, dtype in zip(outs, dtypes):
        ok = y is not None and y.dtype == dtype and y.flags.c_contiguous and y.size
        if ok and len(outs) > 1:  # (one output aliases nothing)
            address = y.__array_interface__["data"][0]
            ok = address not in seen
            seen.add(address)
        chosen.append(y if ok else None)
    return chosen


def _run_scan(params, ins, outs):
    num_state, num_scan_in = params["num_state"], params["num_scan_in"]
    state = ins[:num_state]
    xs = []
    for x, axis, reverse in zip(ins[num_state:num_state + num_scan_in], params["in_axes"], params["in_dirs"]):
        x = np.moveaxis(x, axis % x.ndim, 0)
        xs.append(x[::-1] if reverse else x)
    scope = ins[num_state + num_scan_in:]
    lengths = {x.shape[0] for x in xs}
    if len(lengths) > 1:
        raise ExecutionError(f"{params['where']}: scan inputs differ in length {sorted(lengths)}")
    steps = lengths.pop() if lengths else 0
    ys = []
    for y, axis, reverse in zip(outs[num_state:], params["out_axes"], params["out_dirs"]):
        y = np.moveaxis(y, axis % y.ndim, 0)
        ys.append(y[::-1] if reverse else y)
    body = params["executors"][0]
    if steps and (final := _scan_direct(params, body, state, xs, scope, ys, steps)) is not None:
        state = final
        steps = 0
    for t in range(steps):
        rows = [y[t, ...] for y in ys]
        results = body.run([*state, *(np.ascontiguousarray(x[t]) for x in xs), *scope],
                           out=[None] * num_state + _writable_rows(body, num_state, rows))
        state = results[:num_state]
        for k, (y, value) in enumerate(zip(rows, results[num_state:])):
            if value is not y:
                _store(y, value, params["where"], f"scan output {k} at step {t}")
    for k, (y, value) in enumerate(zip(outs[:num_state], state)):
        _store(y, value, params["where"], f"final state {k}")


def _scan_direct(params, body, state, xs, scope, ys, steps: int):
    """Scan's steps on the body's generated code alone (`Executor.direct`), where its
    program is all kernels at these sizes, each state keeps its shape and dtype, and
    every value has the body's dtype: the state written into two buffers in turn, scan
    rows and outputs that are not C-contiguous through one of their own. Returns the
    final state, or None where the run must go step by step through `Executor.run`."""
    num_state, ins = len(state), [*state, *(x[0, ...] for x in xs), *scope]
    dtypes, out_dtypes = body.input_dtypes, body.output_dtypes
    if any(a is None or a.dtype != d for a, d in zip(ins, dtypes)) or any(y.dtype != d for y, d in
                                                                         zip(ys, out_dtypes[num_state:])):
        return None
    runner = body.direct([a.shape for a in ins])
    if runner is None or [tuple(s) for s in runner.output_shapes[:num_state]] != [a.shape for a in state]:
        return None
    rows = [np.empty(y.shape[1:], y.dtype) if not y[0, ...].flags.c_contiguous else None for y in ys]
    frames = [np.empty(x.shape[1:], x.dtype) if not x[0, ...].flags.c_contiguous else None for x in xs]
    buffers = [[_c_order(a) for a in state], [np.empty_like(a) for a in state], [np.empty_like(a) for a in state]]
    scope = [_c_order(a) for a in scope]
    # each step's addresses: a scan input's or output's row moves by its stride (or is a
    # buffer of its own, copied), the state alternates between buffers 1 and 2
    addresses = [*(0 for _ in state), *(_data(x) if f is None else _data(f) for x, f in zip(xs, frames)),
                 *(_data(a) for a in scope), *(0 for _ in state), *(_data(y) if r is None else _data(r)
                                                                    for y, r in zip(ys, rows))]
    state_data = [[_data(a) for a in group] for group in buffers]
    moving = [(num_state + i, x.strides[0]) for i, (x, f) in enumerate(zip(xs, frames)) if f is None] + \
             [(len(addresses) - len(ys) + i, y.strides[0]) for i, (y, r) in enumerate(zip(ys, rows)) if r is None]
    starts = [addresses[i] for i, _ in moving]
    out_at = num_state + len(xs) + len(scope)
    with body.lock:
        for t in range(steps):
            addresses[:num_state] = state_data[0 if t == 0 else 2 - t % 2]
            addresses[out_at:out_at + num_state] = state_data[1 + t % 2]
            for (i, stride), start in zip(moving, starts):
                addresses[i] = start + t * stride
            for x, f in zip(xs, frames):
                if f is not None:
                    np.copyto(f, x[t, ...])
            runner(addresses)
            for y, r in zip(ys, rows):
                if r is not None:
                    y[t, ...] = r
    return buffers[1 + (steps - 1) % 2]


def _data(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _c_order(a: np.ndarray) -> np.ndarray:
    """a, or a C-contiguous copy of it (np.ascontiguousarray makes a 0-d array 1-d)."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def _copied(into: np.ndarray, value: np.ndarray) -> np.ndarray:
    np.copyto(into, value)
    return into


def _writable_rows(body, num_state: int, rows: list) -> list:
    """The scan outputs' rows a body's kernels may write directly (the state outputs are
    fed back, so they are never written over)."""
    dtypes = body.output_dtypes[num_state:]
    return [y if y.dtype == dtype and y.flags.c_contiguous and y.size else None for y, dtype in zip(rows, dtypes)]


def _run_loop(params, ins, outs, given):
    import torch

    from ..ir.ops.control_flow import _empty_scan_output

    num_carried = params["num_carried"]
    max_trip, cond, state, scope = ins[0], ins[1], list(ins[2:2 + num_carried]), ins[2 + num_carried:]
    limit = None if max_trip is None else int(max_trip.reshape(-1)[0])
    going = True if cond is None else bool(cond.reshape(-1)[0])
    body = params["executors"][0]
    scans: list[list] = [[] for _ in range(len(outs) - num_carried)]
    i = 0
    while going and (limit is None or i < limit):
        results = body.run([np.array(i, np.int64), np.array(going), *state, *scope])
        going = bool(np.asarray(results[0]).reshape(-1)[0])
        state = results[1:1 + num_carried]
        for acc, item in zip(scans, results[1 + num_carried:]):
            acc.append(np.array(item))  # a copy: the body's next run may reuse its output
        i += 1
    body_outputs = params["bodies"][0].outputs
    values = [*state, *(np.stack(acc) if acc else _empty_scan_output(body_outputs[1 + num_carried + k])
                        for k, acc in enumerate(scans))]
    returned = []
    for k, (y, tensor, value) in enumerate(zip(outs, given, values)):
        if y is not None:  # a size known before the run: written in place
            _store(y, value, params["where"], f"loop output {k}")
            returned.append(tensor)
        else:
            returned.append(torch.from_numpy(np.ascontiguousarray(value)))
    return returned
