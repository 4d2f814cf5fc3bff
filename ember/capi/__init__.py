"""onnxruntime's `capi` package, as far as programs reach into it: its exception classes
(`onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument`, ...), so that
`import ember as ort` keeps their `except` clauses working. See
`onnxruntime_pybind11_state`."""

from . import onnxruntime_pybind11_state  # noqa: F401 - reached as an attribute, as onnxruntime's
