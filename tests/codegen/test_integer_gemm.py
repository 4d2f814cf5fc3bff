"""The exact 8-bit integer GEMM (ember/codegen/cpu_integer_gemm.cpp) of MatMulInteger,
QLinearMatMul and com.microsoft.MatMulIntegerToFloat: (A - a_zero) . (B - b_zero) summed
exactly in int32, on random shapes, types and zero points (hypothesis), in both packed
layouts (int8 with the sign trick where B fits [-127, 127], else int16), through its
wrapper and through compiled graphs against the numpy reference, bit for bit; its scalar
build (no AVX2) equals its AVX2 build; a graph without the kernel takes torch's path."""

import ctypes

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.codegen import cpu, handwritten
from ember.ir.ops.contrib_microsoft import integer_product
from ember.runtime import native
from ember.runtime.native import integer_gemm

from .. import native as test_native

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")
EIGHT = [np.uint8, np.int8]


def _ints(rng, dtype, shape, avoid=None):
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, shape).astype(dtype)
    if avoid is not None:
        x[x == avoid] = avoid + 1
    return x


@st.composite
def cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    m, k, n = draw(st.integers(1, 20)), draw(st.integers(1, 70)), draw(st.integers(1, 40))
    at, bt = draw(st.sampled_from(EIGHT)), draw(st.sampled_from(EIGHT))
    fits = draw(st.booleans())  # B - shift within [-127, 127]: the int8 layout takes it
    b = _ints(rng, bt, (k, n), avoid=None if not fits else (-128 if bt == np.int8 else 0))
    if not fits:
        b.flat[rng.integers(b.size)] = -128 if bt == np.int8 else 0
    a = _ints(rng, at, (m, k))
    a_zero = _ints(rng, at, ())
    b_zero = draw(st.sampled_from([None, "one", "columns"]))
    zb = None if b_zero is None else _ints(rng, bt, (1,) if b_zero == "one" else (n,))
    return a, a_zero, b, zb


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), mode=st.sampled_from(["int32", "float32", "uint8", "int8"]))
def test_kernel_is_exact(case, mode):
    test_native.install("integer_gemm")
    a, a_zero, b, zb = case
    n = b.shape[1]
    packed = integer_gemm.pack(b, zb)
    event(f"{integer_gemm.kind(packed)} layout, A {a.dtype}, B {b.dtype}, {mode}")
    acc = integer_product(a, b, a_zero, zb)
    rng = np.random.default_rng(n)
    y = np.empty((a.shape[0], n), np.dtype(mode))
    if mode == "int32":
        assert integer_gemm.run(a, a_zero, packed, n, y, 2)
        np.testing.assert_array_equal(y, acc)
    elif mode == "float32":
        scale = rng.uniform(1e-4, 1e-2, n).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        assert integer_gemm.run(a, a_zero, packed, n, y, 2, scale=scale, bias=bias)
        np.testing.assert_array_equal(y, acc.astype(np.float32) * scale + bias)  # (each op rounded, as the graph's)
    else:
        multiplier = np.float64(rng.uniform(1e-5, 1e-3))
        y_zero = int(_ints(rng, np.dtype(mode), ()))
        assert integer_gemm.run(a, a_zero, packed, n, y, 2, multiplier=np.array([multiplier]), y_zero=y_zero)
        info = np.iinfo(np.dtype(mode))
        want = np.clip(np.rint(acc.astype(np.float64) * multiplier + y_zero), info.min, info.max).astype(mode)
        np.testing.assert_array_equal(y, want)


def test_layouts_by_the_weights_range():
    test_native.install("integer_gemm")
    rng = np.random.default_rng(0)
    symmetric = rng.integers(-127, 128, (64, 16)).astype(np.int8)  # quantize_dynamic's int8 weights
    assert integer_gemm.kind(integer_gemm.pack(symmetric, None)) == "int8"
    # a -128 (B - shift) saturates AVX2's pairs: int16 there; VNNI's products take it as int8
    wide = "int8" if integer_gemm.any_int8() else "int16"
    with_min = symmetric.copy()
    with_min[3, 5] = -128
    assert integer_gemm.kind(integer_gemm.pack(with_min, None)) == wide
    u8 = rng.integers(1, 256, (64, 16)).astype(np.uint8)  # uint8: B - 128 in [-127, 127] without zeros
    assert integer_gemm.kind(integer_gemm.pack(u8, np.array([128], np.uint8))) == "int8"
    u8[0, 0] = 0
    assert integer_gemm.kind(integer_gemm.pack(u8, np.array([128], np.uint8))) == wide
    assert integer_gemm.pack(u8, np.array([1, 2], np.uint8)) is None  # a zero point neither one nor per column


# the kernel's builds with a path turned off: what each runs depends on the host, which
# ember_igemm_simd reports (1 AVX2, 2 VNNI, 4 at AVX-512's width)
BUILDS = {"native": "", "no VNNI": "#define EMBER_IGEMM_NO_VNNI 1", "no AVX-512": "#define EMBER_IGEMM_NO_AVX512 1",
          "scalar": "#define EMBER_IGEMM_SCALAR 1"}


@pytest.mark.parametrize("m", [1, 13, 30])
def test_every_build_gives_the_same_sums(m):
    """The portable loops, the AVX2 path and (where the host has them) VNNI's at 256 bits and
    at AVX-512's width give the same exact sums: both layouts, A uint8 and int8, B int8 and
    uint8 with zero points, a tile's rows and their rest (tiles of 4, 6 or 8 rows), panels
    in pairs and one alone (AVX-512)."""
    source = handwritten.KERNELS["integer_gemm"].source()
    P, I = ctypes.c_void_p, ctypes.c_int64
    libs = {}
    for name, defines in BUILDS.items():
        lib = ctypes.CDLL(str(cpu.build(f"{defines}\n{source}")))
        lib.ember_igemm_simd.restype = I
        lib.ember_igemm_packed_bytes.argtypes, lib.ember_igemm_packed_bytes.restype = [I, I, I], I
        lib.ember_igemm_pack.argtypes, lib.ember_igemm_pack.restype = [I, P, I, I, I, I, P, I, P], ctypes.c_int
        lib.ember_igemm.argtypes = [P, I, I, I, I, I, P, I, I, P, I, P, I, P, P, I, I, I]
        lib.ember_igemm.restype = ctypes.c_int
        libs[name] = lib
    flags = {name: lib.ember_igemm_simd() for name, lib in libs.items()}
    assert flags["scalar"] == 0 and flags["no VNNI"] & 0b110 == 0 and flags["no AVX-512"] & 0b100 == 0
    rng = np.random.default_rng(m)
    k, n = 45, 37
    for kind in (0, 1):
        for at, bt in [(np.uint8, np.int8), (np.int8, np.int8), (np.uint8, np.uint8), (np.int8, np.uint8)]:
            a = _ints(rng, at, (m, k))
            b = _ints(rng, bt, (k, n), avoid=-128 if bt == np.int8 else 0)  # (kind 1 on every build)
            zero = _ints(rng, bt, (n,))
            a_zero = int(_ints(rng, at, ()))
            outs = {}
            for name, lib in libs.items():
                packed = np.empty(lib.ember_igemm_packed_bytes(kind, k, n), np.uint8)
                assert lib.ember_igemm_pack(kind, b.ctypes.data, int(bt == np.int8), k, n, n, zero.ctypes.data, n,
                                            packed.ctypes.data) == 0
                y = np.empty((m, n), np.int32)
                assert lib.ember_igemm(a.ctypes.data, int(at == np.int8), m, k, k, a_zero, packed.ctypes.data, n, 0,
                                       y.ctypes.data, n, None, 0, None, None, 0, 0, 2) == 0
                outs[name] = y
            want = integer_product(a, b, a_zero, zero)
            for name, y in outs.items():
                np.testing.assert_array_equal(y, want, err_msg=f"{name}: kind {kind}, A {at}, B {bt}")


def _model(path, op: str, a_type, b: np.ndarray, b_zero: np.ndarray | None, batch: bool):
    """a [batch?, M, K] -> op with a constant B (and its zero point); MatMulInteger -> int32,
    QLinearMatMul -> uint8 (scales per tensor)."""
    k, n = b.shape
    et = {np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8}
    inits = [numpy_helper.from_array(b, "b"), numpy_helper.from_array(np.array(5, a_type), "az")]
    shape = ["B", "M", k] if batch else ["M", k]
    if op == "MatMulInteger":
        inputs = ["a", "b", "az"]
        if b_zero is not None:
            inits.append(numpy_helper.from_array(b_zero, "bz"))
            inputs.append("bz")
        out = TensorProto.INT32
    else:
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "as"),
                  numpy_helper.from_array(np.array(0.01, np.float32), "bs"),
                  numpy_helper.from_array(np.array(b_zero if b_zero is not None else 0, b.dtype).reshape(()), "bz"),
                  numpy_helper.from_array(np.array(0.5, np.float32), "ys"),
                  numpy_helper.from_array(np.array(128, np.uint8), "yz")]
        inputs = ["a", "as", "az", "b", "bs", "bz", "ys", "yz"]
        out = TensorProto.UINT8
    graph = helper.make_graph([helper.make_node(op, inputs, ["y"])], "g",
                              [helper.make_tensor_value_info("a", et[a_type], shape)],
                              [helper.make_tensor_value_info("y", out, None)], inits)
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from(["MatMulInteger", "QLinearMatMul"]), at=st.sampled_from(EIGHT),
       bt=st.sampled_from(EIGHT), per_column=st.booleans(), batch=st.booleans(), seed=st.integers(0, 2**16))
def test_compiled_ops_run_on_the_kernel_exactly(tmp_path_factory, op, at, bt, per_column, batch, seed):
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    k, n = int(rng.integers(1, 80)), int(rng.integers(1, 50))
    b = _ints(rng, bt, (k, n))
    per_column = per_column and op == "MatMulInteger"
    zb = _ints(rng, bt, (n,) if per_column else ())
    path = tmp_path_factory.mktemp("int") / "m.onnx"
    _model(path, op, at, b, zb, batch)
    a = _ints(rng, at, (3, 7, k) if batch else (7, k))
    event(f"{op}, A {np.dtype(at)}, B {np.dtype(bt)}{', per column' if per_column else ''}")
    model = ember.compile(path)
    before = integer_gemm.RUNS[0]
    got = model.run({"a": a})["y"]
    assert integer_gemm.RUNS[0] == before + 1
    acc = integer_product(a, b, np.array(5, at), zb)
    if op == "MatMulInteger":
        np.testing.assert_array_equal(got, acc)
        if at == np.uint8 and bt == np.uint8 and not per_column:
            # onnxruntime's uint8 x uint8 kernel is exact too (its uint8 x int8 one, on CPUs
            # without VNNI, saturates pairs of products past 2^15: 70% of a 7 x 68 x 32
            # product's sums off, by up to 7%)
            theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
            np.testing.assert_array_equal(got, theirs)
    else:
        want = np.clip(np.rint(acc * np.float64(np.float32(0.02) * np.float32(0.01) / np.float32(0.5)) + 128), 0, 255)
        np.testing.assert_array_equal(got, want.astype(np.uint8))


def test_without_the_kernel_torch_runs_it(tmp_path):
    rng = np.random.default_rng(3)
    b = _ints(rng, np.int8, (40, 24))
    _model(tmp_path / "m.onnx", "MatMulInteger", np.uint8, b, None, False)
    a = _ints(rng, np.uint8, (9, 40))
    model = ember.compile(tmp_path / "m.onnx")
    native.uninstall("integer_gemm")
    try:
        fresh = ember.compile(tmp_path / "m.onnx")
        native.uninstall("integer_gemm")
        before = integer_gemm.RUNS[0]
        got = fresh.run({"a": a})["y"]
        assert integer_gemm.RUNS[0] == before
        np.testing.assert_array_equal(got, integer_product(a, b, np.array(5, np.uint8), None))
    finally:
        test_native.install("integer_gemm")
    del model


def _dql_model(path):
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("z", TensorProto.UINT8, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path.write_bytes(model.SerializeToString())
    return model


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(n=st.sampled_from([1, 7, 33, 100, 40000]), kind=st.sampled_from(["normal", "positive", "negative", "zeros",
                                                                         "nan", "inf"]),
       seed=st.integers(0, 2**16))
def test_dynamic_quantize_is_the_reference(tmp_path_factory, n, kind, seed):
    import warnings

    from onnx.reference import ReferenceEvaluator

    model = _dql_model(tmp_path_factory.mktemp("dql") / "m.onnx")
    rng = np.random.default_rng(seed)
    x = {"normal": lambda: rng.standard_normal(n) * 3, "positive": lambda: rng.uniform(0.5, 2, n),
         "negative": lambda: -rng.uniform(0.5, 2, n), "zeros": lambda: np.zeros(n)}.get(kind, lambda: rng.standard_normal(n))()
    x = x.astype(np.float32)
    if kind in ("nan", "inf"):
        x[rng.integers(n)] = np.nan if kind == "nan" else -np.inf
    compiled = ember.compile(model)
    before = integer_gemm.QUANTIZE_RUNS[0]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        got = compiled.run({"x": x})
        want = ReferenceEvaluator(model).run(None, {"x": x})
    on_kernel = integer_gemm.QUANTIZE_RUNS[0] > before
    assert on_kernel == (kind not in ("nan", "inf"))  # (those take torch's path)
    event(f"{kind}: {'the kernel' if on_kernel else 'torch'}")
    for name, w in zip("ysz", want):
        np.testing.assert_array_equal(got[name], w)


def test_dynamic_quantize_of_nothing_is_an_error(tmp_path):
    compiled = ember.compile(_dql_model(tmp_path / "m.onnx"))
    with pytest.raises(ember.ExecutionError, match="DynamicQuantizeLinear of an empty tensor"):
        compiled.run({"x": np.zeros(0, np.float32)})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from(["ConvInteger", "QLinearConv"]), xt=st.sampled_from(EIGHT), wt=st.sampled_from(EIGHT),
       group=st.sampled_from([1, 2]), kernel=st.integers(1, 3), stride=st.integers(1, 2), dilation=st.integers(1, 2),
       pad=st.integers(0, 2), per_channel=st.booleans(), seed=st.integers(0, 2**16))
def test_convolutions_with_constant_filters_run_on_the_kernel_exactly(tmp_path_factory, op, xt, wt, group, kernel,
                                                                      stride, dilation, pad, per_channel, seed):
    from ember.frontends.onnx import load_onnx
    from ember.ir.interpreter import evaluate

    if op == "QLinearConv" and xt != wt:
        xt = wt  # (QLinearConv's x and y share a type; keep the draw simple)
    rng = np.random.default_rng(seed)
    c, oc = 2 * group, 3 * group
    h = int(rng.integers(dilation * (kernel - 1) + 1, 9))
    w = _ints(rng, wt, (oc, c // group, kernel, kernel))
    et = {np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8}
    wz = _ints(rng, wt, (oc,) if per_channel else ())
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(_ints(rng, xt, ()), xt), "xz"),
             numpy_helper.from_array(wz, "wz")]
    attrs = {"pads": [pad] * 4, "strides": [stride] * 2, "dilations": [dilation] * 2, "group": group}
    if op == "ConvInteger":
        node = helper.make_node(op, ["x", "w", "xz", "wz"], ["y"], **attrs)
        out = TensorProto.INT32
    else:
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
                  numpy_helper.from_array(rng.uniform(0.001, 0.01, oc if per_channel else ()).astype(np.float32), "ws"),
                  numpy_helper.from_array(np.array(0.7, np.float32), "ys"),
                  numpy_helper.from_array(np.array(_ints(rng, xt, ()), xt), "yz"),
                  numpy_helper.from_array(rng.integers(-500, 500, oc).astype(np.int32), "bias")]
        node = helper.make_node(op, ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "bias"], ["y"], **attrs)
        out = et[xt]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", et[xt], ["N", c, h, h])],
                              [helper.make_tensor_value_info("y", out, None)], inits)
    path = tmp_path_factory.mktemp("conv") / "m.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    x = _ints(rng, xt, (2, c, h, h))
    event(f"{op}, x {np.dtype(xt)}, w {np.dtype(wt)}, group {group}{', per channel' if per_channel else ''}")
    before = integer_gemm.RUNS[0]
    got = ember.compile(path).run({"x": x})["y"]
    assert integer_gemm.RUNS[0] == before + group
    np.testing.assert_array_equal(got, evaluate(load_onnx(path), {"x": x})["y"])
