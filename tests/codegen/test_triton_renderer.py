"""The Triton renderer (ember/codegen/triton.py) on CPU tensors, every kernel in Triton's
interpreter (TRITON_INTERPRET=1): the ONNX node cases whose lowering is all generated
kernels, the math its prelude writes on Triton's core ops against numpy, reductions past
one block, 16-bit floats, and one rendered module serving every size."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.frontends.onnx import load_onnx
from ember.passes import PassManager, build_pipeline
from ember.testing.conformance import check_case, node_cases
from tests.codegen import triton_runner as runner  # (sets TRITON_INTERPRET before triton is imported)
from tests.conformance.onnx_node_xfail import XFAIL

from ember.codegen import triton as renderer  # noqa: E402 - after the runner


def _graph(model):
    graph, _ = PassManager(build_pipeline(2)).run(load_onnx(model))
    return graph


def _unary(op: str, dtype=TensorProto.FLOAT, **attrs):
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "g",
                          [helper.make_tensor_value_info("x", dtype, ["n"])], [helper.make_tensor_value_info("y", dtype, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def _binary(op: str, dtype=TensorProto.FLOAT, **attrs):
    g = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"], **attrs)], "g",
                          [helper.make_tensor_value_info("a", dtype, ["n"]), helper.make_tensor_value_info("b", dtype, ["n"])],
                          [helper.make_tensor_value_info("y", dtype, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


EDGES = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1.5, 2.5, -2.5, 1e-30, -1e-30, 1e-6, 30.0, -30.0, 100.0, -100.0,
         float("inf"), float("-inf"), float("nan")]
# op -> (numpy in float64, the inputs' range); results compared within 4 float32 ulps (relative
# 5e-7) or 1e-6 absolute, NaN where numpy gives NaN
UNARY = {
    "Tanh": (np.tanh, 12), "Atan": (np.arctan, 50), "Asin": (np.arcsin, 1), "Acos": (np.arccos, 1),
    "Sinh": (np.sinh, 12), "Cosh": (np.cosh, 12), "Asinh": (np.arcsinh, 1e4), "Acosh": (np.arccosh, 1e4),
    "Atanh": (np.arctanh, 1), "Tan": (np.tan, 1.5), "Exp": (np.exp, 80), "Log": (np.log, 1e4),
    "Sqrt": (np.sqrt, 1e4), "Erf": (None, 4), "Sigmoid": (lambda x: 1 / (1 + np.exp(-x)), 30),
    "Softplus": (lambda x: np.logaddexp(0, x), 30), "Round": (np.round, 10), "Sign": (np.sign, 5),
    "Reciprocal": (lambda x: 1 / x, 100), "Floor": (np.floor, 10), "Ceil": (np.ceil, 10), "Abs": (np.abs, 10),
}


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_math_against_numpy(op):
    fn, scale = UNARY[op]
    if fn is None:
        from math import erf

        fn = np.vectorize(erf)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-scale, scale, 3000), rng.standard_normal(1000) * 1e-3, EDGES]).astype(np.float32)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        want = fn(x.astype(np.float64))
        got = runner.run(_graph(_unary(op)), {"x": x})["y"].astype(np.float64)
    want32 = want.astype(np.float32).astype(np.float64)
    close = np.isclose(got, want32, rtol=5e-7, atol=1e-6, equal_nan=True) | (got == want32)
    assert close.all(), f"{op}: " + ", ".join(f"x={x[i]!r}: {got[i]!r} vs {want32[i]!r}" for i in np.flatnonzero(~close)[:5])


BINARY = {
    "Pow": (lambda a, b: np.power(a, b), {}), "Mod_fmod": (np.fmod, {"fmod": 1}), "Mod": (np.mod, {}),
    "Div": (np.divide, {}), "Max": (np.maximum, {}), "Min": (np.minimum, {}),
}


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_math_against_numpy(name):
    fn, attrs = BINARY[name]
    rng = np.random.default_rng(1)
    a = np.concatenate([rng.uniform(-8, 8, 2000), np.repeat(EDGES, len(EDGES))]).astype(np.float32)
    b = np.concatenate([rng.uniform(-4, 4, 2000), np.tile(EDGES, len(EDGES))]).astype(np.float32)
    if name == "Pow":  # whole exponents too: negative bases to them
        b[:500] = np.round(b[:500])
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        want = fn(a.astype(np.float64), b.astype(np.float64)).astype(np.float32).astype(np.float64)
        got = runner.run(_graph(_binary(name.split("_")[0], **attrs)), {"a": a, "b": b})["y"].astype(np.float64)
    close = np.isclose(got, want, rtol=2e-6, atol=1e-6, equal_nan=True) | (got == want)
    bad = np.flatnonzero(~close)
    assert not len(bad), f"{name}: " + ", ".join(f"({a[i]!r}, {b[i]!r}): {got[i]!r} vs {want[i]!r}" for i in bad[:5])


@settings(max_examples=25, deadline=None)
@given(dtype=st.sampled_from([TensorProto.INT32, TensorProto.INT64, TensorProto.INT8]),
       op=st.sampled_from(["Div", "Mod", "Mod_fmod", "BitShift_L", "BitShift_R"]), seed=st.integers(0, 2 ** 16))
def test_integer_ops_against_numpy(dtype, op, seed):
    """Integer division truncates (0 for a divisor of 0, as the C++ kernels give), Mod
    follows the divisor's sign, fmod the dividend's, shifts past the width fill."""
    np_dtype = {TensorProto.INT32: np.int32, TensorProto.INT64: np.int64, TensorProto.INT8: np.int8}[dtype]
    rng = np.random.default_rng(seed)
    a = rng.integers(-100, 100, 64).astype(np_dtype)
    b = rng.integers(-9, 9, 64).astype(np_dtype)
    name, _, mode = op.partition("_")
    attrs = {"fmod": 1} if mode == "fmod" else {"direction": "LEFT" if mode == "L" else "RIGHT"} if name == "BitShift" else {}
    if name == "BitShift":
        a, b = np.abs(a).astype(np.uint8), (np.abs(b) % 8).astype(np.uint8)
        dtype = TensorProto.UINT8
        want = np.left_shift(a, b) if mode == "L" else np.right_shift(a, b)
    elif name == "Div":
        b = np.where(b == 0, 1, b).astype(np_dtype)
        want = (np.trunc(a.astype(np.float64) / b)).astype(np_dtype)
    elif mode == "fmod":
        b = np.where(b == 0, 1, b).astype(np_dtype)
        want = np.fmod(a, b)
    else:
        b = np.where(b == 0, 1, b).astype(np_dtype)
        want = np.mod(a, b)
    event(f"{op} on {np.dtype(np_dtype).name}")
    got = runner.run(_graph(_binary(name, dtype, **attrs)), {"a": a, "b": b})["y"]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("width", [5, 1024, 1500, 4099])
def test_reductions_within_one_block_and_past_it(width):
    """A softmax (max, then sum, then a loop storing) and a sum, over rows narrower than a
    block (one pass) and wider (walked RBLOCK elements at a time)."""
    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["s"], axis=-1),
                           helper.make_node("ReduceSum", ["x", "axes"], ["r"], keepdims=0),
                           helper.make_node("ReduceMin", ["x"], ["m"], keepdims=0)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "w"])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in "srm"],
                          [numpy_helper.from_array(np.array([1], np.int64), "axes")])
    x = np.random.default_rng(width).standard_normal((3, width)).astype(np.float32)
    x[1, width // 2] = np.nan  # a NaN makes its row's min and softmax NaN
    out = runner.run(_graph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])), {"x": x})
    e = np.exp(x - x.max(-1, keepdims=True))
    np.testing.assert_allclose(out["s"], e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["r"], x.sum(-1), rtol=1e-5, atol=1e-4)
    assert np.isnan(out["m"])  # the min over everything, a NaN in it
    assert np.isnan(out["s"][1]).all() and not np.isnan(out["s"][[0, 2]]).any()


def test_16_bit_floats_compute_in_float32_and_round_to_nearest_even():
    g = helper.make_graph([helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
                           helper.make_node("Cast", ["x"], ["b"], to=TensorProto.BFLOAT16),
                           helper.make_node("Mul", ["h", "h"], ["hh"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                          [helper.make_tensor_value_info(o, t, None) for o, t in
                           (("h", TensorProto.FLOAT16), ("b", TensorProto.BFLOAT16), ("hh", TensorProto.FLOAT16))])
    import ml_dtypes

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(500) * 300, [np.nan, np.inf, -np.inf, 65520.0, 1e-8]]).astype(np.float32)
    with np.errstate(all="ignore"):
        out = runner.run(_graph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])), {"x": x})
        h = x.astype(np.float16)
        np.testing.assert_array_equal(out["h"], h)
        np.testing.assert_array_equal(out["hh"], (h.astype(np.float32) * h.astype(np.float32)).astype(np.float16))
    np.testing.assert_array_equal(out["b"].view(np.uint16), x.astype(ml_dtypes.bfloat16).view(np.uint16))


def test_one_module_serves_every_size():
    """Sizes are runtime arguments: the source rendered for a graph of symbolic sizes is
    the same whatever sizes it runs at, and so is the loaded module."""
    graph = _graph(_unary("Tanh"))
    renderer.load.cache_clear()
    for n in (3, 1000, 2500):
        x = np.linspace(-3, 3, n, dtype=np.float32)
        np.testing.assert_allclose(runner.run(graph, {"x": x})["y"], np.tanh(x), rtol=5e-7, atol=1e-7)
    assert renderer.load.cache_info().misses == 1


def test_an_op_it_lacks_is_not_renderable():
    graph = _graph(_unary("Cast", to=TensorProto.FLOAT8E4M3FN))
    with pytest.raises(renderer.NotRenderable, match="float8e4m3fn"):
        runner.run(graph, {"x": np.ones(4, np.float32)})


# -- the ONNX node cases ----------------------------------------------------------------
SHARDS = 8


def _cases(every: int, offset: int) -> list:
    """Every `every`-th passing node case (not in the C++ target's xfail list), from `offset`."""
    return [(name, case) for name, case in sorted(node_cases().items()) if name not in XFAIL][offset::every]


def _run_cases(cases) -> tuple[int, list, list]:
    """(passed, out of scope with why, failed with why) over `cases`."""
    passed, out_of_scope, failed = 0, [], []
    for name, case in cases:
        graph = ember.compile(case.model, codegen=False).graph
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                check_case(case, lambda model, feeds, graph=graph: list(runner.run(graph, feeds).values()))
            passed += 1
        except (runner.Unsupported, renderer.NotRenderable) as e:
            out_of_scope.append((name, f"{type(e).__name__}: {e}"))
        except Exception as e:  # noqa: BLE001 - every other outcome is a failure, listed
            failed.append((name, f"{type(e).__name__}: {str(e)[:300]}"))
    return passed, out_of_scope, failed


@pytest.mark.parametrize("shard", range(SHARDS))
def test_node_cases_on_triton_kernels(shard):
    """Every 16th passing node case (the fast subset, in shards; `-m slow` runs them all):
    those whose lowering is all generated kernels of types the renderer has run through it
    and pass."""
    passed, out_of_scope, failed = _run_cases(_cases(16 * SHARDS, 16 * shard))
    assert not failed, failed
    assert passed >= 3, (passed, out_of_scope)  # the shard ran kernels


@pytest.mark.slow
@pytest.mark.parametrize("shard", range(SHARDS))
def test_every_node_case_on_triton_kernels(shard):
    passed, out_of_scope, failed = _run_cases(_cases(SHARDS, shard))
    assert not failed, failed
    assert passed > 50, (passed, out_of_scope)


def test_int64_offsets_past_the_int32_limit(monkeypatch):
    """A kernel indexes in int32 below INT32_INDEX_LIMIT elements and in int64 past it (the
    limit lowered here so that a small tensor crosses it): the same results either way."""
    x = np.linspace(-3, 3, 3000, dtype=np.float32)
    graph = _graph(_unary("Tanh"))
    small = runner.run(graph, {"x": x})["y"]
    monkeypatch.setattr(renderer, "INT32_INDEX_LIMIT", 100)
    source = renderer.render(*_lowered(graph))
    assert "< 100 else tl.int64" in source
    wide = runner.run(graph, {"x": x})["y"]
    np.testing.assert_array_equal(wide, small)
    np.testing.assert_allclose(wide, np.tanh(x), rtol=5e-7, atol=1e-7)


def _lowered(graph):
    from ember.codegen.lowering import lower_graph

    lowered = lower_graph(graph)
    symbols = sorted({d for name in lowered.inputs for d in lowered.buffers[name].shape if getattr(d, "is_Symbol", False)},
                     key=lambda s: s.name)
    return lowered.kernels, lowered.buffers, symbols
