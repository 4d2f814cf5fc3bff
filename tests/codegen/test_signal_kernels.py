"""DFT, STFT, window and mel filter bank externs against their reference implementations,
on random signals, lengths, axes and sizes."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ember.codegen import cpu

from .image_kernel_check import SETTINGS, check_kernel

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")


def _signal(data, shape, dtype):
    return data.draw(hnp.arrays(dtype, shape, elements=st.floats(-10, 10, width=32)))


@SETTINGS
@given(data=st.data(), inverse=st.booleans(), onesided=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]),
       complex_input=st.booleans(), with_length=st.booleans())
def test_dft(data, inverse, onesided, dtype, complex_input, with_length):
    if inverse and not onesided and dtype == np.float32:
        dtype = np.float64  # float32 complex inverse DFTs stay on the reference (see spectral.py)
    rank = data.draw(st.integers(2, 4))
    shape = [data.draw(st.integers(1, 6)) for _ in range(rank - 1)]
    axis = data.draw(st.integers(-rank, rank - 2))
    if axis == -1:
        axis = -2
    if inverse and onesided:
        complex_input = True
    x = _signal(data, (*shape, 2 if complex_input else 1), dtype)
    length = np.array(data.draw(st.integers(1, 8)), np.int64) if with_length else None
    if inverse and onesided and length is None and x.shape[axis] < 2:
        length = np.array(2, np.int64)
    inputs = [("x", x), ("dft_length", length), ("axis", np.array(axis, np.int64))]
    check_kernel("DFT", inputs, {"inverse": int(inverse), "onesided": int(onesided)}, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(data=st.data(), onesided=st.booleans(), with_window=st.booleans(), complex_input=st.booleans())
def test_stft(data, onesided, with_window, complex_input):
    if complex_input:
        onesided = False  # the definition's one-sided STFT is of a real signal
    batch, length = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 24))
    frame = data.draw(st.integers(1, length))
    x = _signal(data, (batch, length, 2 if complex_input else 1), np.float32)
    step = np.array(data.draw(st.integers(1, 5)), np.int64)
    window = _signal(data, (frame,), np.float32) if with_window else None
    inputs = [("x", x), ("step", step), ("window", window), ("length", np.array(frame, np.int64))]
    check_kernel("STFT", inputs, {"onesided": int(onesided)}, rtol=1e-4, atol=1e-3)


@SETTINGS
@given(op=st.sampled_from(["HannWindow", "HammingWindow", "BlackmanWindow"]), size=st.integers(2, 40),
       periodic=st.booleans(), dtype=st.sampled_from([1, 11]))
def test_windows(op, size, periodic, dtype):
    inputs = [("size", np.array(size, np.int32))]
    check_kernel(op, inputs, {"periodic": int(periodic), "output_datatype": dtype}, rtol=1e-5, atol=1e-6)


@SETTINGS
@given(data=st.data())
def test_mel_weight_matrix(data):
    bins, length = data.draw(st.integers(1, 10)), data.draw(st.sampled_from([16, 32, 64, 128]))
    rate = data.draw(st.sampled_from([8000, 16000]))
    low = data.draw(st.sampled_from([0.0, 20.0, 100.0]))
    high = data.draw(st.sampled_from([rate / 2, rate / 4]))
    inputs = [("bins", np.array(bins, np.int32)), ("length", np.array(length, np.int32)),
              ("rate", np.array(rate, np.int32)), ("low", np.array(low, np.float32)),
              ("high", np.array(high, np.float32))]
    check_kernel("MelWeightMatrix", inputs, {}, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("length", [16, 12, 20])  # as long as the frames, shorter (cut), longer (zero-padded)
@pytest.mark.parametrize("onesided", [0, 1])
def test_a_real_dft_of_constant_length_is_a_product_with_the_dft_matrix(length, onesided):
    """wespeaker's DFT: real frames [batch, frames, 16, 1] of a symbolic count, a constant
    length and axis. Its output is typed from the input (the frame count carried through,
    not left to a name no input binds) and it runs as a GEMM with the DFT matrix (no
    `dft` extern, no fallback), matching the reference's FFT at two frame counts."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("DFT", ["x", "n", "axis"], ["y"], onesided=onesided)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 16, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("n", TensorProto.INT64, [], [length]),
         helper.make_tensor("axis", TensorProto.INT64, [], [-2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    import ember

    compiled = ember.compile(model)
    reference = ember.compile(model, codegen=False)
    assert compiled.stats.fallback_nodes == []
    assert [step.name for _, _, step in compiled._executor._steps if step.kind == "extern"] in ([], ["linear"])
    bins = length // 2 + 1 if onesided else length
    assert [str(d) for d in compiled.outputs[0].shape] == ["b", "t", str(bins), "2"]
    rng = np.random.default_rng(length)
    for batch, frames in ((1, 9), (2, 3)):
        x = rng.standard_normal((batch, frames, 16, 1)).astype(np.float32)
        got, want = compiled.run({"x": x})["y"], reference.run({"x": x})["y"]
        assert got.shape == (batch, frames, bins, 2)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
