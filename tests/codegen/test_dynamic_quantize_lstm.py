"""com.microsoft.DynamicQuantizeLSTM against onnxruntime, to the bit: the C++ step loop
(ember/codegen/cpu_quantized_lstm.cpp behind the `quantized_lstm` extern) and the
reference (ember/ir/ops/contrib_rnn.py) on random layers (hypothesis): every direction,
int8 and uint8 weights, scales per direction or per column, sequence_lens, initial
states, peepholes, batches that onnxruntime splits over its threads, any subset of the
outputs, constant or fed weights. onnxruntime runs with ember's thread count, which sets
how it groups a batch's rows (ember/ir/quantized_lstm.py's rows_per_group).

MLAS's logistic and tanh (ember/ir/ops/_mlas_math.py) are checked against onnxruntime's
Sigmoid and Tanh, which call the same kernels. All of it holds for onnxruntime on x86-64
with FMA3 and an exact u8s8 GEMM: AVX-512 VNNI or AVX-VNNI. Without VNNI, onnxruntime's
u8s8 GEMM saturates each pair of products at int16 (ember's does not): its sessions here
run with `session.x64quantprecision` (u8u8 on constant weights), and where the weights are
fed on such a host the layers draw 7-bit int8 weights, whose pairs cannot saturate."""

import ctypes

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import ember
from tests.artifact.zips import runs_the_shipped_kernel
from tests.native import cpu_flags
from ember.codegen import cpu, handwritten
from ember.codegen.lowering import lower_graph
from ember.frontends.onnx import load_onnx
from ember.ir.interpreter import evaluate
from ember.ir.ops import _mlas_math
from ember.ir.quantized_lstm import rows_per_group
from ember.runtime.native import integer_gemm
from ember.runtime.native import quantized_lstm as kernel

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")
INPUTS = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P",
          "W_scale", "W_zero_point", "R_scale", "R_zero_point"]


def _u8s8_saturates() -> bool:
    """onnxruntime's int8 GEMM on this host saturates pairs of u8 x s8 products at int16:
    x86-64 without AVX-512 VNNI or AVX-VNNI (MLAS's vpmaddubsw kernels)."""
    flags = cpu_flags()
    return "avx2" in flags and not {"avx512_vnni", "avx_vnni"} & flags


SATURATES = _u8s8_saturates()


def _model(attrs: dict, arrays: dict, feeds: dict, outputs: list[str]):
    """One DynamicQuantizeLSTM node: inputs in `feeds` are graph inputs, those in `arrays`
    initializers."""
    names = [n if n in arrays or n in feeds else "" for n in INPUTS]
    outs = [o if o in outputs else "" for o in ("Y", "Y_h", "Y_c")]
    while outs[-1] == "":
        outs.pop()
    node = helper.make_node("DynamicQuantizeLSTM", names, outs, domain="com.microsoft", **attrs)
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
              for n, a in feeds.items()]
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info(o, 1, None) for o in outs if o],
                              [numpy_helper.from_array(a, n) for n, a in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def _onnxruntime(model, feeds) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # ember's: it sets how a batch's rows are grouped
    options.add_session_config_entry("session.x64quantprecision", "1")  # no int16 saturation without VNNI
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


@st.composite
def layers(draw):
    """(model, feeds) of one random DynamicQuantizeLSTM layer."""
    direction = draw(st.sampled_from(["forward", "reverse", "bidirectional"]))
    dirs = 2 if direction == "bidirectional" else 1
    hidden = draw(st.sampled_from([1, 3, 8, 16, 33, 260]))  # 260: past 256, onnxruntime keeps a small batch whole; 33: an odd row past the 64-column blocks
    batch, size, seq = draw(st.integers(1, 6)), draw(st.integers(1, 12)), draw(st.integers(1, 7))
    signed, per_column = draw(st.booleans()), draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    qtype = np.int8 if signed else np.uint8
    zero = 0 if signed else int(rng.integers(100, 156))  # onnxruntime: int8's zero point 0, uint8's one per tensor
    scale_shape = (dirs, 4 * hidden) if per_column else (dirs,)

    constant_weights = draw(st.booleans())
    seven_bit = signed and not constant_weights and SATURATES

    def weights(k):
        low, high = (-64, 64) if seven_bit else (-127, 128) if signed else (0, 256)
        return rng.integers(low, high, (dirs, k, 4 * hidden)).astype(qtype)

    values = {"X": rng.standard_normal((seq, batch, size)).astype(np.float32) * np.float32(rng.uniform(0.2, 3)),
              "W": weights(size), "R": weights(hidden),
              "W_scale": rng.uniform(0.002, 0.03, scale_shape).astype(np.float32),
              "W_zero_point": np.full(scale_shape, zero, qtype),
              "R_scale": rng.uniform(0.002, 0.03, scale_shape).astype(np.float32),
              "R_zero_point": np.full(scale_shape, zero, qtype)}
    if draw(st.booleans()):
        values["B"] = (rng.standard_normal((dirs, 8 * hidden)) * 0.5).astype(np.float32)
    outputs = draw(st.lists(st.sampled_from(["Y", "Y_h", "Y_c"]), min_size=1, unique=True))
    lens_kind = draw(st.sampled_from(["none", "varied"]))
    if lens_kind == "varied":
        # without Y, onnxruntime quantizes a row it never wrote for an empty sequence
        values["sequence_lens"] = rng.integers(0 if "Y" in outputs else 1, seq + 1, batch).astype(np.int32)
    with_state = draw(st.booleans())
    if with_state:
        values["initial_h"] = rng.standard_normal((dirs, batch, hidden)).astype(np.float32)
        values["initial_c"] = rng.standard_normal((dirs, batch, hidden)).astype(np.float32)
    peephole = draw(st.booleans())
    if peephole:
        values["P"] = (rng.standard_normal((dirs, 3 * hidden)) * 0.5).astype(np.float32)
    fed = {"X", "sequence_lens", "initial_h", "initial_c"} | (set() if constant_weights else set(INPUTS[1:]))
    feeds = {n: a for n, a in values.items() if n in fed}
    arrays = {n: a for n, a in values.items() if n not in fed}
    groups = -(-batch // rows_per_group(batch, hidden, torch.get_num_threads()))
    event(f"{direction}, {'int8' if signed else 'uint8'}, scale per {'column' if per_column else 'direction'}")
    event(f"sequence_lens {lens_kind}, initial state {with_state}, peepholes {peephole}, outputs {sorted(outputs)}")
    event(f"{'constant' if constant_weights else 'fed'}{' 7-bit' if seven_bit else ''} weights, "
          f"h quantized in {min(groups, 2)}{'+' if groups > 2 else ''} group(s) of rows")
    return _model({"hidden_size": hidden, "direction": direction}, arrays, feeds, outputs), feeds


@settings(max_examples=60, deadline=None)
@given(layers())
def test_kernel_and_reference_equal_onnxruntime_to_the_bit(layer):
    model, feeds = layer
    compiled = ember.compile(model)
    assert compiled.stats.fallback_nodes == []
    theirs = _onnxruntime(model, feeds)
    gemms = integer_gemm.RUNS[0]
    got = compiled.run(feeds)
    event(f"X.W on {'the integer GEMM' if integer_gemm.RUNS[0] > gemms else 'torch'}")
    want = evaluate(load_onnx(model), feeds)
    assert list(got) == list(want) == [o.name for o in model.graph.output]
    for (name, ours), reference, onnxruntime in zip(got.items(), want.values(), theirs):
        np.testing.assert_array_equal(np.asarray(ours), onnxruntime, err_msg=f"kernel vs onnxruntime: {name}")
        np.testing.assert_array_equal(reference, onnxruntime, err_msg=f"reference vs onnxruntime: {name}")


@pytest.mark.parametrize("attrs, why", [
    ({"clip": 0.4}, "clip"),
    ({"input_forget": 1}, "input_forget"),
    ({"activations": ["HardSigmoid", "Tanh", "Relu"], "activation_alpha": [0.3], "activation_beta": [0.4]},
     "activations"),
])
def test_settings_the_kernel_declines_fall_back_to_a_reference_equal_to_onnxruntime(attrs, why):
    rng = np.random.default_rng(3)
    arrays = {"W": rng.integers(-127, 128, (1, 5, 16)).astype(np.int8),
              "R": rng.integers(-127, 128, (1, 4, 16)).astype(np.int8),
              "B": rng.standard_normal((1, 32)).astype(np.float32),
              "W_scale": np.array([0.02], np.float32), "W_zero_point": np.array([0], np.int8),
              "R_scale": np.array([0.03], np.float32), "R_zero_point": np.array([0], np.int8)}
    feeds = {"X": rng.standard_normal((6, 3, 5)).astype(np.float32), "sequence_lens": np.array([6, 2, 0], np.int32)}
    model = _model({"hidden_size": 4, **attrs}, arrays, feeds, ["Y", "Y_h", "Y_c"])
    graph = load_onnx(model)
    assert why in lower_graph(graph).fallback_reasons[graph.nodes[0].name]
    compiled = ember.compile(model)
    assert compiled.stats.fallback_nodes == [graph.nodes[0].name]
    for (name, ours), theirs in zip(compiled.run(feeds).items(), _onnxruntime(model, feeds)):
        np.testing.assert_array_equal(np.asarray(ours), theirs, err_msg=name)


def test_a_batch_split_over_threads_is_quantized_by_group():
    """onnxruntime's rule (uni_directional_lstm.cc's SetNumThreads): a batch of more than 4
    rows, or of 2 or more in a layer of at most 256 units, is split over the threads."""
    assert rows_per_group(1, 8, 4) == 1
    assert rows_per_group(3, 8, 2) == 2 and rows_per_group(3, 8, 1) == 3
    assert rows_per_group(3, 300, 4) == 3  # wide and small: one group
    assert rows_per_group(8, 300, 3) == 3
    assert rows_per_group(5, 8, 16) == 1


def test_sequence_lens_past_the_sequence_is_an_execution_error():
    rng = np.random.default_rng(0)
    arrays = {"W": rng.integers(-127, 128, (1, 2, 8)).astype(np.int8),
              "R": rng.integers(-127, 128, (1, 2, 8)).astype(np.int8),
              "W_scale": np.array([0.02], np.float32), "W_zero_point": np.array([0], np.int8),
              "R_scale": np.array([0.02], np.float32), "R_zero_point": np.array([0], np.int8)}
    feeds = {"X": rng.standard_normal((3, 2, 2)).astype(np.float32), "sequence_lens": np.array([3, 4], np.int32)}
    compiled = ember.compile(_model({"hidden_size": 2}, arrays, feeds, ["Y"]))
    with pytest.raises(ember.ExecutionError, match="sequence_lens"):
        compiled.run(feeds)


def _small_int8_lstm(outputs):
    """A 2-unit int8 LSTM over 4 steps of 2 rows, and its feeds."""
    rng = np.random.default_rng(5)
    arrays = {"W": rng.integers(-127, 128, (1, 4, 8)).astype(np.int8),
              "R": rng.integers(-127, 128, (1, 2, 8)).astype(np.int8),
              "W_scale": np.array([0.02], np.float32), "W_zero_point": np.array([0], np.int8),
              "R_scale": np.array([0.03], np.float32), "R_zero_point": np.array([0], np.int8)}
    feeds = {"X": rng.standard_normal((4, 2, 4)).astype(np.float32)}
    return _model({"hidden_size": 2}, arrays, feeds, outputs), feeds


def test_the_kernel_builds_here():
    """The C++ step loop builds here and a compiled model names it: it, not the reference,
    ran the tests above."""
    compiled = ember.compile(_small_int8_lstm(["Y"])[0])
    assert compiled._executor.program.libraries["quantized_lstm"] is not None
    assert kernel.available()


@pytest.mark.parametrize("op, ours", [("Sigmoid", _mlas_math.logistic), ("Tanh", _mlas_math.tanh)])
def test_mlas_logistic_and_tanh_equal_onnxruntime_to_the_bit(op, ours):
    rng = np.random.default_rng(1)
    edges = [0.0, -0.0, 9.0, -9.0, 18.0, -18.0, 1e-30, 40.0]
    x = np.concatenate([rng.standard_normal(100_000) * 4, rng.uniform(-25, 25, 100_000), np.linspace(-1, 1, 20_001),
                        edges]).astype(np.float32)
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", 1, [None])],
                              [helper.make_tensor_value_info("y", 1, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(ours(x), theirs)


def test_without_the_kernel_the_extern_runs_the_reference_equal_to_onnxruntime(monkeypatch):
    """No C++ compiler (or a kernel that did not build): the same arithmetic, in numpy."""
    rng = np.random.default_rng(4)
    arrays = {"W": rng.integers(0, 256, (2, 3, 12)).astype(np.uint8),
              "R": rng.integers(0, 256, (2, 3, 12)).astype(np.uint8),
              "B": rng.standard_normal((2, 24)).astype(np.float32),
              "W_scale": np.array([0.02, 0.01], np.float32), "W_zero_point": np.array([120, 131], np.uint8),
              "R_scale": np.full((2, 12), 0.03, np.float32), "R_zero_point": np.full((2, 12), 128, np.uint8)}
    feeds = {"X": rng.standard_normal((5, 3, 3)).astype(np.float32), "sequence_lens": np.array([5, 2, 0], np.int32)}
    model = _model({"hidden_size": 3, "direction": "bidirectional"}, arrays, feeds, ["Y", "Y_h", "Y_c"])
    compiled = ember.compile(model)
    assert compiled.stats.fallback_nodes == []
    ran = []
    monkeypatch.setattr(kernel, "available", lambda: False)
    monkeypatch.setattr(kernel, "run", lambda *args, **kwargs: ran.append(args))
    for (name, ours), theirs in zip(compiled.run(feeds).items(), _onnxruntime(model, feeds)):
        np.testing.assert_array_equal(np.asarray(ours), theirs, err_msg=name)
    assert ran == []


def test_an_artifact_ships_the_step_loop_built_for_this_machine(tmp_path, monkeypatch):
    """Saved, the model carries the C++ step loop's source and library: loaded with an empty
    kernel cache, nothing is compiled, and the shipped kernel runs."""
    model, feeds = _small_int8_lstm(["Y", "Y_h"])
    compiled = ember.compile(model)
    runs_the_shipped_kernel(compiled, feeds, kernel, "quantized_lstm", tmp_path, monkeypatch)


@pytest.mark.parametrize("name, shape", [("R", (1, 3, 8)), ("W", (1, 2, 12)), ("R_scale", (1, 5)),
                                         ("B", (1, 12)), ("initial_h", (1, 3, 2))])
def test_an_input_of_the_wrong_shape_is_an_execution_error_naming_it(name, shape):
    rng = np.random.default_rng(6)
    values = {"W": rng.integers(-127, 128, (1, 2, 8)).astype(np.int8),
              "R": rng.integers(-127, 128, (1, 2, 8)).astype(np.int8),
              "B": rng.standard_normal((1, 16)).astype(np.float32),
              "initial_h": rng.standard_normal((1, 2, 2)).astype(np.float32),
              "W_scale": np.array([0.02], np.float32), "W_zero_point": np.array([0], np.int8),
              "R_scale": np.array([0.02], np.float32), "R_zero_point": np.array([0], np.int8)}
    dtype = values[name].dtype
    values[name] = np.zeros(shape, dtype)
    feeds = {"X": rng.standard_normal((3, 2, 2)).astype(np.float32), "initial_h": values.pop("initial_h")}
    compiled = ember.compile(_model({"hidden_size": 2}, values, feeds, ["Y"]))
    with pytest.raises(ember.ExecutionError, match=name):
        compiled.run(feeds)


@pytest.mark.parametrize("hidden", [1, 3, 33, 40])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_eight_bit_h_r_products_equal_the_int16_ones_to_the_bit(hidden, dtype):
    """h.R in 8 bits (product_vnni: R as eight_bit_r lays it out, s + a column offset, with
    VNNI's dot products where the build has them, else its portable loop) gives the int16
    path's exact sums: the same outputs, states and all, bit for bit. Hidden sizes leave
    tails of the 128- and 16-column blocks and of 4 rows; zero points per column."""
    from ember.runtime.quantized_lstm import _less_zero_point, eight_bit_r

    lib = ctypes.CDLL(str(cpu.build(handwritten.KERNELS["quantized_lstm"].source())))
    lib.ember_quantized_lstm.argtypes = [ctypes.c_void_p] * 13 + [ctypes.c_int64] * 8
    lib.ember_quantized_lstm_vnni.restype = ctypes.c_int64
    rng = np.random.default_rng(hidden)
    dirs, steps, batch, n4 = 2, 3, 2, 4 * hidden
    info = np.iinfo(dtype)
    r = torch.from_numpy(rng.integers(info.min, info.max + 1, (dirs, hidden, n4)).astype(dtype))
    r_zero = torch.from_numpy(rng.integers(info.min, info.max + 1, (dirs, n4)).astype(dtype))
    r_int = _less_zero_point(r, r_zero)
    r16, (s, offset, colsum) = r_int.to(torch.int16).contiguous(), eight_bit_r(r, r_int)
    xw = torch.from_numpy(rng.standard_normal((dirs, steps, batch, n4)).astype(np.float32) * 4)
    r_scale = torch.from_numpy(rng.uniform(1e-3, 2e-2, (dirs, n4)).astype(np.float32))
    order = torch.arange(steps - 1, -1, -1)[:, None].expand(steps, batch).contiguous()
    h0 = torch.from_numpy(rng.standard_normal((dirs, batch, hidden)).astype(np.float32))
    results = []
    for eight_bit in (False, True):
        h, c = h0.clone(), torch.zeros((dirs, batch, hidden))
        out = torch.zeros((steps, dirs, batch, hidden))
        ptrs = [t.data_ptr() if t is not None else None for t in (
            xw, r16, s if eight_bit else None, offset if eight_bit else None, colsum if eight_bit else None, r_scale,
            None, None, None, order, h, c, out)]
        assert lib.ember_quantized_lstm(*ptrs, dirs, steps, batch, hidden, 0b10, batch, 1, 1) == 0
        results.append((out, h, c))
    for int16, eight in zip(*results):
        assert torch.equal(int16, eight)
    assert results[0][0].abs().sum() > 0
