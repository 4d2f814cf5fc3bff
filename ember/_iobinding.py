"""onnxruntime's `OrtValue` and `IOBinding`, over numpy arrays on the CPU.

An `OrtValue` holds a numpy array (never a copy of one it was given: `data_ptr()` is the
array's), or, for a sequence or optional output of `run_with_ort_values`, a list or None.
An `IOBinding` names the arrays a run reads and writes: an output bound to an array (a
preallocated buffer, an OrtValue) is written there by the program's kernels, with no copy
(`CompiledModel.run(out=)`); one bound without a buffer gets an array of the run's own.
ember runs on the CPU only: any other device is an UnsupportedError naming it.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import numpy as np

from .errors import InputError, UnsupportedError
from .ir.dtypes import DType


def numpy_dtype(element_type: Any) -> np.dtype:
    """onnxruntime's `element_type` argument: a numpy type (np.float32) or an ONNX
    TensorProto element type code (1 for float)."""
    if isinstance(element_type, (int, np.integer)) and not isinstance(element_type, bool):
        try:
            return DType.from_onnx(int(element_type)).numpy
        except ValueError:
            raise InputError(f"element type {element_type} is not an ONNX tensor element type") from None
    try:
        dtype = np.dtype(element_type)
        DType.from_numpy(dtype)
    except (TypeError, ValueError):
        raise InputError(f"element type {element_type!r} is neither a numpy dtype ember computes in "
                         "nor an ONNX element type code") from None
    return dtype


def check_device(device_type: str, device_id: int = 0, what: str = "") -> None:
    if str(device_type).lower() != "cpu" or device_id not in (0, None):
        raise UnsupportedError(f"{what + ': ' if what else ''}device {device_type!r} (id {device_id}) "
                               "is not available in ember, which runs on the CPU only ('cpu', id 0)")


def _shape(shape: Any, what: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise InputError(f"{what}: shape must be a list of integers, got {shape!r}") from None
    if any(d < 0 for d in dims):
        raise InputError(f"{what}: shape {list(dims)} has a negative dim")
    return dims


def array_at(buffer_ptr: int, element_type: Any, shape: Any, what: str) -> np.ndarray:
    """A numpy view of `shape` elements of `element_type` at address `buffer_ptr` (the
    caller's memory: nothing is copied, and it must outlive the view's use)."""
    dtype, dims = numpy_dtype(element_type), _shape(shape, what)
    if dtype.kind in "OSU":
        raise InputError(f"{what}: string tensors cannot be bound by address")
    nbytes = math.prod(dims) * dtype.itemsize
    if nbytes == 0:
        return np.empty(dims, dtype)
    if not isinstance(buffer_ptr, int) or buffer_ptr <= 0:
        raise InputError(f"{what}: buffer_ptr must be a memory address (an int), got {buffer_ptr!r}")
    return np.frombuffer((ctypes.c_byte * nbytes).from_address(buffer_ptr), dtype=dtype).reshape(dims)


class OrtValue:
    """A value a session reads or returns: on ember, a numpy array on the CPU."""

    __slots__ = ("_value",)

    def __init__(self, value: Any):
        self._value = value

    @classmethod
    def ortvalue_from_numpy(cls, numpy_obj: np.ndarray, device_type: str = "cpu", device_id: int = 0,
                            vendor_id: int = -1) -> OrtValue:
        """The array itself, not a copy (as onnxruntime on the CPU): writes to either show
        in both. A non-contiguous array is made contiguous (a copy)."""
        check_device(device_type, device_id, "OrtValue.ortvalue_from_numpy")
        if not isinstance(numpy_obj, np.ndarray):
            raise InputError(f"OrtValue.ortvalue_from_numpy takes a numpy array, got {type(numpy_obj).__name__}")
        return cls(np.ascontiguousarray(numpy_obj))

    @classmethod
    def ortvalue_from_shape_and_type(cls, shape: Any, element_type: Any, device_type: str = "cpu",
                                     device_id: int = 0, vendor_id: int = -1) -> OrtValue:
        """A new tensor of `shape` and `element_type` (uninitialised, as onnxruntime's)."""
        check_device(device_type, device_id, "OrtValue.ortvalue_from_shape_and_type")
        return cls(np.empty(_shape(shape, "OrtValue.ortvalue_from_shape_and_type"), numpy_dtype(element_type)))

    @classmethod
    def ortvalue_from_numpy_with_onnx_type(cls, data: np.ndarray, onnx_element_type: int) -> OrtValue:
        """The array's memory read as the ONNX element type `onnx_element_type` (an
        element of the same size: uint8 bytes as float8, uint16 as bfloat16), not a copy."""
        if not isinstance(data, np.ndarray):
            raise InputError(f"OrtValue.ortvalue_from_numpy_with_onnx_type takes a numpy array, "
                             f"got {type(data).__name__}")
        dtype = numpy_dtype(onnx_element_type) if isinstance(onnx_element_type, (int, np.integer)) else None
        if dtype is None or dtype.itemsize != data.dtype.itemsize or dtype.kind in "OSU":
            raise InputError(f"OrtValue.ortvalue_from_numpy_with_onnx_type: element type {onnx_element_type!r} "
                             f"is not an ONNX numeric type of {data.dtype.itemsize} byte(s), as {data.dtype} is")
        return cls(np.ascontiguousarray(data).view(dtype))

    @classmethod
    def from_dlpack(cls, data: Any) -> OrtValue:
        """An OrtValue sharing the memory of a DLPack tensor (a torch tensor, a numpy or JAX
        array: anything with `__dlpack__`, or a raw DLPack capsule) on the CPU; no copy."""
        source = _Capsule(data) if type(data).__name__ == "PyCapsule" else data
        if not hasattr(source, "__dlpack__"):
            raise InputError(f"OrtValue.from_dlpack takes a DLPack tensor (with __dlpack__) or capsule, "
                             f"got {type(data).__name__}")
        device = getattr(source, "__dlpack_device__", lambda: (1, 0))()
        if int(device[0]) != 1:  # kDLCPU
            raise UnsupportedError(f"OrtValue.from_dlpack: the tensor is on DLPack device {tuple(device)}; "
                                   "ember runs on the CPU only")
        try:
            return cls(np.from_dlpack(source))
        except (TypeError, ValueError, BufferError, RuntimeError) as e:
            raise InputError(f"OrtValue.from_dlpack: {type(e).__name__}: {e}") from None

    def __dlpack__(self, *args: Any, **kwargs: Any):
        return self._tensor("__dlpack__").__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._tensor("__dlpack_device__").__dlpack_device__()

    def _tensor(self, what: str) -> np.ndarray:
        if not isinstance(self._value, np.ndarray):
            kind = "an empty optional" if self._value is None else "a sequence of tensors"
            raise InputError(f"OrtValue.{what}: this value is {kind}, not a tensor")
        return self._value

    def numpy(self) -> Any:
        """The tensor's array (shared, not copied); a sequence's list of arrays."""
        if isinstance(self._value, list):
            return self._value
        return self._tensor("numpy")

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self._tensor("__array__")
        if dtype is not None and np.dtype(dtype) != array.dtype:
            return array.astype(dtype)
        return array.copy() if copy else array

    def shape(self) -> list[int]:
        return list(self._tensor("shape").shape)

    def data_type(self) -> str:
        """onnxruntime's spelling: `tensor(float)`, `tensor(int64)`, `seq(tensor(float))`."""
        if isinstance(self._value, list):
            inner = OrtValue(self._value[0]).data_type() if self._value else "tensor(float)"
            return f"seq({inner})"
        from ._signature import _ONNX_TYPE_NAMES  # sympy: loaded on first use, not with `import ember`

        dtype = DType.from_numpy(self._tensor("data_type").dtype)
        return f"tensor({_ONNX_TYPE_NAMES.get(dtype, dtype.name)})"

    def element_type(self) -> int:
        """The ONNX TensorProto element type code (1: float, 7: int64, ...)."""
        return DType.from_numpy(self._tensor("element_type").dtype).onnx_code

    def device_name(self) -> str:
        return "cpu"

    def data_ptr(self) -> int:
        return self._tensor("data_ptr").ctypes.data

    def tensor_size_in_bytes(self) -> int:
        return self._tensor("tensor_size_in_bytes").nbytes

    def is_tensor(self) -> bool:
        return isinstance(self._value, np.ndarray)

    def is_tensor_sequence(self) -> bool:
        return isinstance(self._value, list)

    def is_sparse_tensor(self) -> bool:
        return False

    def has_value(self) -> bool:
        return self._value is not None

    def update_inplace(self, data: Any) -> None:
        """Copy `data` (an array or OrtValue of this shape and type) into this tensor."""
        array = self._tensor("update_inplace")
        source = data._tensor("update_inplace") if isinstance(data, OrtValue) else np.asarray(data)
        if source.shape != array.shape or source.dtype != array.dtype:
            raise InputError(f"OrtValue.update_inplace: got {source.dtype}{list(source.shape)}, "
                             f"this value is {array.dtype}{list(array.shape)}")
        np.copyto(array, source)

    def __repr__(self) -> str:
        if isinstance(self._value, np.ndarray):
            return f"<OrtValue {self.data_type()} {self.shape()} on cpu>"
        return f"<OrtValue {'None' if self._value is None else f'sequence of {len(self._value)}'}>"


class _Capsule:
    """A raw DLPack capsule as numpy's from_dlpack takes one (an object with __dlpack__)."""

    def __init__(self, capsule: Any):
        self._capsule = capsule

    def __dlpack__(self, *args: Any, **kwargs: Any):
        return self._capsule

    def __dlpack_device__(self):
        return (1, 0)


def unwrap(value: Any) -> Any:
    return value._value if isinstance(value, OrtValue) else value


class IOBinding:
    """The inputs and outputs of `session.run_with_iobinding(binding)`, bound by name.
    Outputs come back in the order they were bound (as onnxruntime's)."""

    def __init__(self, session):
        self._session = session
        self._inputs: dict[str, np.ndarray] = {}
        self._outputs: dict[str, np.ndarray | None] = {}  # name -> the buffer to write, or None
        self._results: list[OrtValue] = []
        self._targets: list | None = None  # the bound buffers, checked, in output order (made on the next run)
        self.copied_outputs: list[str] = []  # outputs of the last run copied into their buffer

    # -- inputs ---------------------------------------------------------------------------
    def _input_name(self, name: str) -> str:
        names = [i.name for i in self._session.get_inputs()]
        if name not in names:
            raise InputError(f"cannot bind input {name!r}: the model's inputs are {', '.join(names)}")
        return name

    def bind_cpu_input(self, name: str, arr_on_cpu: np.ndarray) -> None:
        """Bind an input to a numpy array, read as it is when the run starts (no copy)."""
        if not isinstance(arr_on_cpu, np.ndarray):
            raise InputError(f"input {name!r}: bind_cpu_input takes a numpy array, got {type(arr_on_cpu).__name__}")
        self._inputs[self._input_name(name)] = arr_on_cpu

    def bind_input(self, name: str, device_type: str, device_id: int, element_type: Any, shape: Any,
                   buffer_ptr: int) -> None:
        """Bind an input to the memory at `buffer_ptr` (read in place when the run starts)."""
        check_device(device_type, device_id, f"input {name!r}")
        self._inputs[self._input_name(name)] = array_at(buffer_ptr, element_type, shape, f"input {name!r}")

    def bind_ortvalue_input(self, name: str, ortvalue: OrtValue) -> None:
        if not isinstance(ortvalue, OrtValue):
            raise InputError(f"input {name!r}: bind_ortvalue_input takes an OrtValue, got {type(ortvalue).__name__}")
        self._inputs[self._input_name(name)] = ortvalue._tensor("bind_ortvalue_input")

    # -- outputs --------------------------------------------------------------------------
    def _output_name(self, name: str) -> str:
        names = [o.name for o in self._session.get_outputs()]
        if name not in names:
            raise InputError(f"cannot bind output {name!r}: the model's outputs are {', '.join(names)}")
        return name

    def bind_output(self, name: str, device_type: str = "cpu", device_id: int = 0, element_type: Any = None,
                    shape: Any = None, buffer_ptr: int | None = None) -> None:
        """Bind an output: to the memory at `buffer_ptr` (written in place), or, without
        one, to an array each run allocates."""
        check_device(device_type, device_id, f"output {name!r}")
        name = self._output_name(name)
        self._targets = None
        if buffer_ptr is None:
            self._outputs[name] = None
            return
        if element_type is None or shape is None:
            raise InputError(f"output {name!r}: element_type and shape are needed with a buffer_ptr")
        self._outputs[name] = array_at(buffer_ptr, element_type, shape, f"output {name!r}")

    def bind_ortvalue_output(self, name: str, ortvalue: OrtValue) -> None:
        """Bind an output to an OrtValue's array (written in place)."""
        if not isinstance(ortvalue, OrtValue):
            raise InputError(f"output {name!r}: bind_ortvalue_output takes an OrtValue, got {type(ortvalue).__name__}")
        self._outputs[self._output_name(name)] = ortvalue._tensor("bind_ortvalue_output")
        self._targets = None

    def clear_binding_inputs(self) -> None:
        self._inputs.clear()

    def clear_binding_outputs(self) -> None:
        self._outputs.clear()
        self._results = []
        self._targets = None

    def synchronize_inputs(self) -> None:  # CPU memory: nothing to wait for
        pass

    def synchronize_outputs(self) -> None:
        pass

    # -- results --------------------------------------------------------------------------
    def get_outputs(self) -> list[OrtValue]:
        """The last run's outputs, in the order they were bound; a bound buffer's OrtValue
        is that buffer."""
        return list(self._results)

    def copy_outputs_to_cpu(self) -> list[Any]:
        """The last run's outputs as arrays of their own (copies: the next run overwrites
        the bound buffers)."""
        return [np.array(v._value, copy=True) if isinstance(v._value, np.ndarray) else v._value
                for v in self._results]

    def _run(self, model) -> None:
        """Run `model` (a CompiledModel) on the bound inputs into the bound outputs."""
        if not self._outputs:
            raise InputError("run_with_iobinding: no output is bound (bind_output at least one)")
        from ._signature import check_out

        if self._targets is None:  # checked once per set of bound buffers, not every run
            buffers = {name: b for name, b in self._outputs.items() if b is not None}
            self._targets = check_out(model.outputs, buffers) if buffers else []
        # the program's kernels write into each buffer; where they could not (a size only
        # the run tells, the whole-graph interpreter), the output was copied in once
        results, self.copied_outputs = model._run_into(dict(self._inputs), self._targets or None)
        self._results = [OrtValue(results[name]) for name in self._outputs]
