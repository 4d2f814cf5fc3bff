"""RNN, GRU and LSTM on the `recurrent` extern against the reference (ember's own,
ember/ir/ops/_recurrence.py) and onnxruntime, on random models (hypothesis): every
direction, hidden size, batch, sequence length, sequence_lens, initial states, bias,
peepholes, GRU's linear_before_reset, both layouts (onnxruntime runs layout 0 only),
constant or fed weights and any subset of the outputs. Each compiled model is checked to
run with no node on the reference fallback; the settings the kernel declines fall back
by name and the reference matches onnxruntime on them."""

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import ember
from tests.artifact.zips import runs_the_shipped_kernel
from ember.codegen import cpu
from ember.codegen.lowering import lower_graph
from ember.frontends.onnx import load_onnx
from ember.ir.interpreter import evaluate

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")
SETTINGS = settings(max_examples=15, deadline=None)
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
OUTPUTS = {"RNN": ["Y", "Y_h"], "GRU": ["Y", "Y_h"], "LSTM": ["Y", "Y_h", "Y_c"]}


def _model(op, attrs, arrays: dict, feeds: dict, outputs: list[str], dtype=np.float32):
    """One `op` node over inputs named as ONNX's (X, W, R, B, sequence_lens, initial_h,
    initial_c, P): those in `feeds` are graph inputs, those in `arrays` initializers."""
    order = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"][:8 if op == "LSTM" else 6]
    names = [n if n in arrays or n in feeds else "" for n in order]
    while names[-1] == "":
        names.pop()
    outs = [o if o in outputs else "" for o in OUTPUTS[op]]
    while outs[-1] == "":
        outs.pop()
    node = helper.make_node(op, names, outs, **attrs)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
              for n, a in feeds.items()]
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info(o, elem, None) for o in outs if o],
                              [numpy_helper.from_array(a, n) for n, a in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    model.ir_version = 10
    return model


@st.composite
def recurrent_cases(draw, op, direction):
    """(model, feeds, layout, dtype) of one random recurrent layer."""
    dirs = 2 if direction == "bidirectional" else 1
    hidden, batch, size = draw(st.integers(1, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    seq = draw(st.integers(0, 6))
    layout = draw(st.integers(0, 1))
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float64]))
    gates = GATES[op]
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))

    def normal(*shape, scale=0.7):
        return (rng.standard_normal(shape) * scale).astype(dtype)

    values = {"X": normal(*((batch, seq, size) if layout else (seq, batch, size)), scale=1.0),
              "W": normal(dirs, gates * hidden, size), "R": normal(dirs, gates * hidden, hidden)}
    state = (batch, dirs, hidden) if layout else (dirs, batch, hidden)
    lens_kind = draw(st.sampled_from(["none", "full", "varied"]))
    if lens_kind != "none":
        lens = rng.integers(0, seq + 1, batch) if lens_kind == "varied" else np.full(batch, seq)
        values["sequence_lens"] = lens.astype(np.int32)
    if draw(st.booleans()):
        values["B"] = normal(dirs, 2 * gates * hidden)
    with_state = draw(st.booleans())
    if with_state:
        values["initial_h"] = normal(*state)
        if op == "LSTM" and draw(st.booleans()):
            values["initial_c"] = normal(*state)
    peephole = op == "LSTM" and draw(st.booleans())
    if peephole:
        values["P"] = normal(dirs, 3 * hidden)
    attrs = {"hidden_size": hidden, "direction": direction, "layout": layout}
    lbr = op == "GRU" and draw(st.booleans())
    if op == "GRU":
        attrs["linear_before_reset"] = int(lbr)
    outputs = draw(st.lists(st.sampled_from(OUTPUTS[op]), min_size=1, unique=True))
    constant_weights = draw(st.booleans())
    fed = {"X", "sequence_lens", "initial_h", "initial_c"} | (set() if constant_weights else {"W", "R", "B", "P"})
    feeds = {n: a for n, a in values.items() if n in fed}
    arrays = {n: a for n, a in values.items() if n not in fed}
    event(f"layout {layout}, sequence_lens {lens_kind}, {np.dtype(dtype).name}, "
          f"{'constant' if constant_weights else 'fed'} weights")
    event(f"initial state {with_state}, outputs {sorted(outputs)}")
    if op == "LSTM":
        event(f"peepholes {peephole}")
    if op == "GRU":
        event(f"linear_before_reset {int(lbr)}")
    return _model(op, attrs, arrays, feeds, outputs, dtype), feeds, layout, dtype


def _assert_close(got: dict, want: dict, tol: float, what: str) -> None:
    assert list(got) == list(want), what
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, (what, name)
        np.testing.assert_allclose(got[name], want[name], rtol=tol, atol=tol, err_msg=f"{what}: {name}")


@pytest.mark.parametrize("op", list(GATES))
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@SETTINGS
@given(data=st.data())
def test_recurrent_kernel_matches_the_reference_and_onnxruntime(data, op, direction):
    from ember.runtime.externs_recurrent import STEP_KERNEL_RUNS

    model, feeds, layout, dtype = data.draw(recurrent_cases(op, direction))
    compiled = ember.compile(model)
    assert compiled.stats.fallback_nodes == []
    tol = 2e-5 if dtype == np.float32 else 1e-10
    before = STEP_KERNEL_RUNS[0]
    got = compiled.run(feeds)
    if op == "LSTM":  # small float32 LSTMs of full-length sequences: ember's own step loop
        event(f"LSTM on ember's step kernel: {STEP_KERNEL_RUNS[0] > before}")
    want = evaluate(load_onnx(model), feeds)
    _assert_close(got, want, tol, "kernel vs reference")
    # onnxruntime runs neither layout 1 nor float64 RNNs, and aborts the process on some empty sequences
    if layout == 0 and dtype == np.float32 and feeds["X"].shape[0]:
        theirs = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
        _assert_close(dict(zip(want, theirs)), want, tol, "onnxruntime vs reference")


def test_sequence_lens_zero_the_steps_past_each_length():
    """A sequence of length 2 of 3, one of 0: their Y past the length is 0; Y_h is the
    last valid step (the first, for the reverse direction), 0 for the empty one."""
    rng = np.random.default_rng(1)
    values = {"X": rng.standard_normal((3, 2, 2)).astype(np.float32),
              "W": rng.standard_normal((2, 8, 2)).astype(np.float32),
              "R": rng.standard_normal((2, 8, 2)).astype(np.float32),
              "sequence_lens": np.array([2, 0], np.int32)}
    model = _model("LSTM", {"hidden_size": 2, "direction": "bidirectional"}, {}, values, ["Y", "Y_h"])
    compiled = ember.compile(model)
    assert compiled.stats.fallback_nodes == []
    out = compiled.run(values)
    y, y_h = out["Y"], out["Y_h"]
    assert not y[2, :, 0].any() and not y[:, :, 1].any() and not y_h[:, 1].any()
    np.testing.assert_array_equal(y_h[0, 0], y[1, 0, 0])  # forward: its step 1
    np.testing.assert_array_equal(y_h[1, 0], y[0, 1, 0])  # reverse: its step 0


def test_sequence_lens_out_of_range_is_an_error():
    values = {"X": np.zeros((2, 1, 1), np.float32), "W": np.zeros((1, 1, 1), np.float32),
              "R": np.zeros((1, 1, 1), np.float32), "sequence_lens": np.array([3], np.int32)}
    compiled = ember.compile(_model("RNN", {"hidden_size": 1}, {}, values, ["Y"]))
    with pytest.raises(ember.ExecutionError, match="sequence_lens"):
        compiled.run(values)


@pytest.mark.parametrize("op, attrs, why", [
    ("LSTM", {"clip": 0.5}, "clip"),
    ("LSTM", {"input_forget": 1}, "input_forget"),
    ("LSTM", {"activations": ["HardSigmoid", "Tanh", "Relu"], "activation_alpha": [0.3], "activation_beta": [0.4]},
     "activations"),
    ("GRU", {"activations": ["Sigmoid", "LeakyRelu"], "activation_alpha": [0.2]}, "activations"),
    ("RNN", {"activations": ["ScaledTanh"], "activation_alpha": [1.5], "activation_beta": [0.5]}, "activations"),
    ("RNN", {"clip": 0.3, "activations": ["Relu"]}, "activations"),
])
def test_settings_the_kernel_declines_fall_back_by_name_and_match_onnxruntime(op, attrs, why):
    rng = np.random.default_rng(2)
    g = GATES[op]
    values = {"X": rng.standard_normal((4, 2, 3)).astype(np.float32),
              "W": rng.standard_normal((1, g * 3, 3)).astype(np.float32),
              "R": rng.standard_normal((1, g * 3, 3)).astype(np.float32),
              "sequence_lens": np.array([4, 2], np.int32)}
    model = _model(op, {"hidden_size": 3, **attrs}, {}, values, OUTPUTS[op])
    graph = load_onnx(model)
    reasons = lower_graph(graph).fallback_reasons
    assert why in reasons[graph.nodes[0].name]
    compiled = ember.compile(model)
    assert compiled.stats.fallback_nodes == [graph.nodes[0].name]
    theirs = ort.InferenceSession(model.SerializeToString()).run(None, values)
    _assert_close(compiled.run(values), dict(zip(OUTPUTS[op], theirs)), 1e-5, "fallback vs onnxruntime")


def test_torch_exported_lstm_runs_on_the_kernel(tmp_path):
    """torch.nn.LSTM (2 layers, bidirectional, batch first) as torch exports it."""
    import torch

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 8, num_layers=2, bidirectional=True, batch_first=True).eval()
    x = torch.randn(2, 7, 5)
    path = tmp_path / "lstm.onnx"
    torch.onnx.export(lstm, (x,), str(path), input_names=["x"], output_names=["y", "h", "c"],
                      dynamic_axes={"x": {0: "batch", 1: "seq"}}, dynamo=False)
    compiled = ember.compile(str(path))
    assert compiled.stats.fallback_nodes == []
    for shape in ((2, 7, 5), (3, 4, 5)):
        x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            y, (h, c) = lstm(torch.from_numpy(x))
        want = [y.numpy(), h.numpy(), c.numpy()]
        got = compiled.run({"x": x})
        assert list(got) == ["y", "h", "c"]
        for g, w in zip(got.values(), want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), direction=st.sampled_from(["forward", "reverse", "bidirectional"]))
def test_small_lstms_run_on_the_step_kernel_and_match_onnxruntime(data, direction):
    """A float32 LSTM with constant weights, full-length sequences and a small batch and
    hidden size runs on ember's C++ step loop (runtime/native/lstm.py), every time, and matches
    the reference and onnxruntime: any direction, hidden size across SIMD widths, initial
    states or none, any outputs, the input projections made by torch's GEMM or (small
    ones) by the kernel."""
    from ember.runtime.externs_recurrent import STEP_KERNEL_RUNS

    dirs = 2 if direction == "bidirectional" else 1
    hidden, batch = data.draw(st.integers(1, 70)), data.draw(st.integers(1, 8))
    seq, size = data.draw(st.integers(1, 20)), data.draw(st.integers(1, 40))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))

    def normal(*shape, scale=0.5):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    arrays = {"W": normal(dirs, 4 * hidden, size), "R": normal(dirs, 4 * hidden, hidden),
              "B": normal(dirs, 8 * hidden)}
    feeds = {"X": normal(seq, batch, size, scale=1.0)}
    if data.draw(st.booleans()):
        feeds["initial_h"] = normal(dirs, batch, hidden)
        feeds["initial_c"] = normal(dirs, batch, hidden)
    outputs = data.draw(st.lists(st.sampled_from(OUTPUTS["LSTM"]), min_size=1, unique=True))
    model = _model("LSTM", {"hidden_size": hidden, "direction": direction}, arrays, feeds, outputs, np.float32)
    compiled = ember.compile(model)
    before = STEP_KERNEL_RUNS[0]
    got = compiled.run(feeds)
    assert STEP_KERNEL_RUNS[0] == before + 1
    event(f"hidden {'<16' if hidden < 16 else '16-63' if hidden < 64 else '64+'}, batch {'1' if batch == 1 else '2+'}")
    from ember.runtime.externs_recurrent import _KERNEL_PROJECTS_MACS

    event(f"inputs projected in the kernel: {dirs * seq * batch * size * 4 * hidden <= _KERNEL_PROJECTS_MACS}")
    want = evaluate(load_onnx(model), feeds)
    _assert_close(got, want, 2e-5, "step kernel vs reference")
    theirs = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    _assert_close(dict(zip(want, theirs)), want, 2e-5, "onnxruntime vs reference")


def test_an_artifact_ships_the_lstm_step_loop(tmp_path, monkeypatch):
    """Saved, a model with a small LSTM carries the C++ step loop's source and library:
    loaded with an empty kernel cache, nothing is compiled, and the shipped kernel runs."""
    from ember.runtime.native import lstm as kernel

    rng = np.random.default_rng(7)
    arrays = {"W": rng.standard_normal((2, 12, 4)).astype(np.float32),
              "R": rng.standard_normal((2, 12, 3)).astype(np.float32)}
    feeds = {"X": rng.standard_normal((5, 2, 4)).astype(np.float32)}
    compiled = ember.compile(_model("LSTM", {"hidden_size": 3, "direction": "bidirectional"}, arrays, feeds,
                                    ["Y", "Y_h"], np.float32))
    runs_the_shipped_kernel(compiled, feeds, kernel, "lstm", tmp_path, monkeypatch)


@pytest.mark.parametrize("seq, batch, size, hidden", [(16, 1, 96, 64), (20, 8, 40, 70)])
def test_the_step_kernel_projects_small_inputs_itself_and_large_ones_on_a_gemm(seq, batch, size, hidden):
    """hey_mycroft's 2 x 16 x 96 -> 256 projection (786K multiply-adds) the step kernel makes
    itself; a larger one (3.6M) is one batched GEMM before it. Both as onnxruntime computes."""
    from ember.runtime import externs_recurrent

    rng = np.random.default_rng(seq)
    arrays = {"W": (rng.standard_normal((2, 4 * hidden, size)) * 0.3).astype(np.float32),
              "R": (rng.standard_normal((2, 4 * hidden, hidden)) * 0.3).astype(np.float32),
              "B": (rng.standard_normal((2, 8 * hidden)) * 0.3).astype(np.float32)}
    feeds = {"X": rng.standard_normal((seq, batch, size)).astype(np.float32)}
    model = _model("LSTM", {"hidden_size": hidden, "direction": "bidirectional"}, arrays, feeds, ["Y", "Y_h"],
                   np.float32)
    in_kernel = 2 * seq * batch * size * 4 * hidden <= externs_recurrent._KERNEL_PROJECTS_MACS
    assert in_kernel == (batch == 1)
    before = externs_recurrent.STEP_KERNEL_RUNS[0]
    got = ember.compile(model).run(feeds)
    assert externs_recurrent.STEP_KERNEL_RUNS[0] == before + 1
    theirs = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    _assert_close(got, dict(zip(got, theirs)), 2e-5, "step kernel vs onnxruntime")
