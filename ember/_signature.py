"""A compiled model's symbolic signature, and the checking of feeds against it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError
from .ir.dtypes import DType
from .ir.graph import Value
from .ir.sizes import evaluate, free_symbols, is_symbol
from .ir.types import Dim, OptionalType, SequenceType, TensorType, Type

_ONNX_TYPE_NAMES = {
    DType.float32: "float", DType.float64: "double", DType.float16: "float16",
    DType.bool: "bool", DType.string: "string",
}


@dataclass(frozen=True)
class TensorInfo:
    """One input or output: its name, element type and symbolic shape."""

    name: str
    type: Type | None

    @property
    def dtype(self) -> DType | None:
        return self.type.dtype if isinstance(self.type, TensorType) else None

    @property
    def shape(self) -> tuple[Dim, ...] | None:
        return self.type.shape if isinstance(self.type, TensorType) else None

    @property
    def onnx_type(self) -> str:
        """onnxruntime's spelling: `tensor(float)`, `seq(tensor(int64))`."""
        return _onnx_type_name(self.type)

    def __str__(self) -> str:
        return f"{self.name}: {self.type if self.type is not None else '?'}"


def _onnx_type_name(t: Type | None) -> str:
    if isinstance(t, TensorType):
        return f"tensor({_ONNX_TYPE_NAMES.get(t.dtype, t.dtype.name)})"
    if isinstance(t, SequenceType):
        return f"seq({_onnx_type_name(t.elem)})"
    if isinstance(t, OptionalType):
        return f"optional({_onnx_type_name(t.elem)})"
    return "unknown"


def describe_array(x: Any) -> str:
    if isinstance(x, np.ndarray):
        try:
            short = DType.from_numpy(x.dtype).short
        except ValueError:
            short = str(x.dtype)
        return f"{short}[{', '.join(map(str, x.shape))}]"
    if isinstance(x, list):
        return f"list of {len(x)}"
    return type(x).__name__


class _FeedPlan:
    """What checking feeds against `inputs` needs, worked out once: per input its name,
    numpy dtype, rank, fixed dims and symbol dims; None where some input needs the
    general check (an optional, a sequence, an expression dim, an unknown shape). A
    small model's run takes 10-20 us: the general check cost a third of it."""

    __slots__ = ("inputs", "names", "entries")

    def __init__(self, inputs: list[Value]):
        self.inputs = inputs
        self.names = frozenset(v.name for v in inputs)
        self.entries = []
        for v in inputs:
            t = v.type
            if not isinstance(t, TensorType) or t.shape is None:
                self.entries = None
                return
            fixed, symbols = [], []
            for axis, d in enumerate(t.shape):
                if isinstance(d, int):
                    fixed.append((axis, d))
                elif is_symbol(d):
                    symbols.append((axis, d))
                else:
                    self.entries = None
                    return
            self.entries.append((v.name, t.dtype.numpy, len(t.shape), tuple(fixed), tuple(symbols)))

    def check(self, feeds) -> list | None:
        """The feeds in input order where they pass every check, else None (the general
        check then says what is wrong)."""
        if type(feeds) is not dict or len(feeds) != len(self.entries) or not self.names.issuperset(feeds):
            return None
        ordered, bound = [], {}
        for name, dtype, rank, fixed, symbols in self.entries:
            data = feeds[name]
            if type(data) is not np.ndarray or data.dtype != dtype or data.ndim != rank:
                return None
            shape = data.shape
            for axis, size in fixed:
                if shape[axis] != size:
                    return None
            for axis, symbol in symbols:
                if bound.setdefault(symbol, shape[axis]) != shape[axis]:
                    return None
            ordered.append(data)
        return ordered


_PLANS: dict[int, _FeedPlan] = {}  # by id of the inputs list (each plan keeps its list alive)


def check_feeds(inputs: list[Value], feeds: Any) -> list[Any]:
    """Validate `feeds` against the graph inputs; return them in input order.

    Every symbol in the input shapes is bound by the first dim that uses it; each later
    use (and each dim that is an expression of bound symbols) must agree."""
    plan = _PLANS.get(id(inputs))
    if plan is None or plan.inputs is not inputs:
        if len(_PLANS) > 256:
            _PLANS.clear()
        plan = _PLANS[id(inputs)] = _FeedPlan(inputs)
    if plan.entries is not None:
        ordered = plan.check(feeds)
        if ordered is not None:
            return ordered
    if not isinstance(feeds, Mapping):
        raise InputError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
    expected = {v.name: v for v in inputs}
    unknown = [name for name in feeds if name not in expected]
    if unknown:
        raise InputError(f"unknown input {unknown[0]!r}; the model's inputs are: "
                         f"{', '.join(f'{v.name}: {v.type}' for v in inputs)}")
    bindings: dict[Any, tuple[int, str]] = {}  # size symbol -> (its value, who set it)
    ordered = []
    for value in inputs:
        if value.name not in feeds:
            if isinstance(value.type, OptionalType):
                ordered.append(None)
                continue
            raise InputError(f"missing input {value.name!r} (expected {value.type})")
        ordered.append(_check_one(value, feeds[value.name], bindings))
    _check_expressions(inputs, ordered, bindings)
    return ordered


def _check_one(value: Value, data: Any, bindings) -> Any:
    t = value.type
    if isinstance(t, OptionalType):
        if data is None:
            return None
        t = t.elem
    if isinstance(t, SequenceType):
        if not isinstance(data, (list, tuple)):
            raise InputError(f"input {value.name!r}: expected a sequence ({t}), got {describe_array(data)}")
        return [np.asarray(x) for x in data]
    if not isinstance(t, TensorType):
        return data
    if not isinstance(data, np.ndarray):
        if isinstance(data, (list, tuple, int, float, bool, np.generic)):
            data = np.asarray(data)
        else:
            raise InputError(f"input {value.name!r}: expected a numpy array ({t}), got {type(data).__name__}")
    if data.dtype != t.dtype.numpy:  # (the common case costs one comparison: runs take 0.1 ms)
        try:
            dtype_ok = DType.from_numpy(data.dtype) is t.dtype
        except ValueError:
            dtype_ok = False
        if not dtype_ok:
            raise InputError(f"input {value.name!r}: expected {t}, got {describe_array(data)} (wrong dtype)")
    if t.shape is None:
        return data
    got = describe_array(data) if data.ndim != len(t.shape) else None
    if data.ndim != len(t.shape):
        raise InputError(f"input {value.name!r}: expected {t}, got {got} (rank {data.ndim}, not {len(t.shape)})")
    for axis, (dim, size) in enumerate(zip(t.shape, data.shape)):
        if isinstance(dim, int):
            if dim != size:
                raise InputError(f"input {value.name!r}: expected {t}, got {describe_array(data)} "
                                 f"(dim {axis} must be {dim})")
        elif is_symbol(dim):
            if dim in bindings and bindings[dim][0] != size:
                bound, where = bindings[dim]
                raise InputError(f"input {value.name!r}: expected {t}, got {describe_array(data)} (dim {axis} is "
                                 f"{dim}, which {where} set to {bound})")
            bindings.setdefault(dim, (size, f"input {value.name!r}"))
    return data


def _check_expressions(inputs, ordered, bindings) -> None:
    values = {sym: size for sym, (size, _) in bindings.items()}
    for value, data in zip(inputs, ordered):
        t = value.type
        if not isinstance(t, TensorType) or t.shape is None or data is None:
            continue
        for axis, dim in enumerate(t.shape):
            if not isinstance(dim, int) and not is_symbol(dim):
                if free_symbols(dim) <= values.keys():
                    want = evaluate(dim, values)
                    if want != data.shape[axis]:
                        raise InputError(f"input {value.name!r}: expected {t}, got {describe_array(data)} "
                                         f"(dim {axis} = {dim} = {want})")


def check_out(outputs: list[TensorInfo], out: Any) -> list[np.ndarray | None]:
    """Validate preallocated output arrays (output name -> array); return them in output
    order, None where none was given. Each must be a writeable C-contiguous array of the
    output's dtype, whose fixed dims agree (symbolic ones are checked by the run)."""
    if not isinstance(out, Mapping):
        raise InputError(f"out must be a dict of output name -> array, got {type(out).__name__}")
    known = {info.name: info for info in outputs}
    unknown = [name for name in out if name not in known]
    if unknown:
        raise InputError(f"unknown output {unknown[0]!r}; the model's outputs are: {', '.join(known)}")
    for name, array in out.items():
        info = known[name]
        where = f"output {name!r}"
        if info.dtype is None:
            raise InputError(f"{where} is not a tensor ({info.type}): it cannot be written into an array")
        if not isinstance(array, np.ndarray):
            raise InputError(f"{where}: expected a numpy array to write into, got {type(array).__name__}")
        if array.dtype != info.dtype.numpy:
            raise InputError(f"{where}: the array given is {describe_array(array)}, the output is {info.type}")
        if not (array.flags.c_contiguous and array.flags.writeable):
            raise InputError(f"{where}: the array given must be C-contiguous and writeable")
        if info.shape is not None and (len(info.shape) != array.ndim or any(
                isinstance(d, int) and d != n for d, n in zip(info.shape, array.shape))):
            raise InputError(f"{where}: the array given is {describe_array(array)}, the output is {info.type}")
    return [out.get(info.name) for info in outputs]


def place_output(name: str, result: Any, target: np.ndarray) -> np.ndarray:
    """Copy the output `result` into the caller's array `target` (check_out's), for a run
    that could not write it there in place."""
    if not isinstance(result, np.ndarray) or result.shape != target.shape:
        raise InputError(f"output {name!r}: this run computed {describe_array(result)}, "
                         f"the array given for it is {describe_array(target)}")
    np.copyto(target, result)
    return target
