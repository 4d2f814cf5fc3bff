"""onnxruntime's exception classes, each the ember error that stands for the same failure,
so that a program's `except ort.capi.onnxruntime_pybind11_state.InvalidArgument:` catches
what ember raises where onnxruntime raised that:

| onnxruntime | ember |
|---|---|
| `InvalidArgument` (feeds of the wrong type or shape) | `InputError` |
| `NoSuchFile`, `InvalidProtobuf`, `InvalidGraph`, `NoModel`, `ModelLoaded` (the model cannot be read) | `ModelError` (one class: `except NoSuchFile` also catches a corrupt model) |
| `NotImplemented` (an op or option it lacks) | `UnsupportedError` |
| `RuntimeException`, `EPFail`, `EngineError` (a run that fails) | `ExecutionError` |
| `Fail`, `NotFound` (anything else) | `EmberError`, the base of every ember error |
"""

from ..errors import EmberError, ExecutionError, InputError, ModelError, UnsupportedError

InvalidArgument = InputError
NoSuchFile = InvalidProtobuf = InvalidGraph = NoModel = ModelLoaded = ModelError
NotImplemented = UnsupportedError  # noqa: A001 - onnxruntime's name
RuntimeException = EPFail = EngineError = ExecutionError
Fail = NotFound = EmberError
