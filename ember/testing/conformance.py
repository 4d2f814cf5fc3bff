"""ONNX conformance: the onnx package's node test cases, run through any backend, with
outputs compared the way onnx's own backend runner does (each case's rtol/atol, exact
for integers, strings and bools)."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import onnx
from onnx import numpy_helper


@functools.cache
def node_cases() -> dict:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return {case.name: case for case in collect_testcases()}


def to_value(x):
    if isinstance(x, onnx.TensorProto):
        return numpy_helper.to_array(x)
    if isinstance(x, onnx.SequenceProto):
        return numpy_helper.to_list(x)
    if isinstance(x, onnx.OptionalProto):
        return numpy_helper.to_optional(x)
    return x


def assert_close(expected, actual, rtol: float, atol: float, where: str = "") -> None:
    if isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)), f"{where}: expected a sequence, got {type(actual).__name__}"
        assert len(expected) == len(actual), f"{where}: sequence length {len(actual)} != {len(expected)}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_close(e, a, rtol, atol, f"{where}[{i}]")
        return
    if expected is None:
        assert actual is None, f"{where}: expected None"
        return
    expected, actual = np.asarray(expected), np.asarray(actual)
    assert expected.shape == actual.shape, f"{where}: shape {actual.shape} != {expected.shape}"
    if expected.dtype == object or expected.dtype.kind in "SU":
        assert expected.tolist() == actual.tolist(), f"{where}: strings differ"
        return
    assert expected.dtype == actual.dtype, f"{where}: dtype {actual.dtype} != {expected.dtype}"
    if expected.dtype.kind in "fc" or "float" in expected.dtype.name:
        kind = "c" if expected.dtype.kind == "c" else "f"
        e = expected.astype(np.complex128 if kind == "c" else np.float64)
        a = actual.astype(np.complex128 if kind == "c" else np.float64)
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=where)
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=where)


def case_feeds(case, inputs) -> dict:
    """The feeds of one data set of `case`, by graph input name."""
    return {v.name: to_value(x) for v, x in zip(case.model.graph.input, inputs)}


def check_case(case, run) -> None:
    """Run every data set of `case` through `run(model_proto, feeds) -> list of outputs`
    and assert each output matches; raises AssertionError (or the backend's error)."""
    for inputs, expected in case.data_sets:
        got = run(case.model, case_feeds(case, inputs))
        assert len(got) == len(expected), f"{len(got)} outputs, expected {len(expected)}"
        for i, (e, a) in enumerate(zip(expected, got)):
            assert_close(to_value(e), a, case.rtol, case.atol, f"output {i}")
