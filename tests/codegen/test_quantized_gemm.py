"""ember.QuantizedLinear: llama.cpp's quantized blocks (q8_0, q4_0, q4_1, q5_0, q5_1, and the
K-quants q4_k, q5_k, q6_k) times float32 activations, on ember's kernel
(ember/codegen/cpu_quantized_gemm.cpp).

The kernel quantizes x to int8 blocks of 32 as llama.cpp's q8_1 does, then sums exact 8-bit
products: it is checked against that computation emulated in numpy (float64 sums of the
dequantized weights times the rounded activations), to float32 rounding, on random shapes
(hypothesis) — its interleaved-row path (constant weights of the formats of 32, packed at
prepare), its row path (fed weights, the K-quants), its step form (called from C in a
chained run, between generated kernels), its scalar build (no AVX2) and the numpy path
where the kernel is absent. The reference (the dequantized weight times x in float32) is
within the activations' rounding of all of them."""

import ctypes

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import ember
from ember.codegen import cpu, handwritten
from ember.errors import ExecutionError
from ember.frontends.hf._builder import GraphBuilder
from ember.ir.dtypes import DType
from ember.ir.quant_formats import FORMATS, block_format
from ember.ir.types import symbol
from ember.runtime import native
from ember.runtime.native import quantized_gemm

from .. import native as test_native

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")
ACTIVATIONS = {"": lambda y: y, "relu": lambda y: np.maximum(y, 0), "silu": lambda y: y / (1 + np.exp(-y))}


def emulate(x: np.ndarray, blocks: np.ndarray, fmt, bias=None, activation="") -> np.ndarray:
    """What the kernel computes: x rounded to int8 blocks of 32 (d = max|x| / 127, q = round
    half to even of x / d), times the dequantized weight, summed in float64."""
    rows, k = x.shape
    b = x.reshape(rows, k // 32, 32).astype(np.float32)
    amax = np.abs(b).max(-1, keepdims=True)
    inv = np.where(amax != 0, np.float32(127) / np.where(amax == 0, 1, amax), 0).astype(np.float32)
    xq = (np.rint(b * inv) * (amax / np.float32(127))).reshape(rows, k)
    y = xq.astype(np.float64) @ fmt.dequantize(blocks).T.astype(np.float64)
    if bias is not None:
        y = y + bias
    return ACTIVATIONS[activation](y)


def graph(fmt, k: int, n: int, blocks, bias, activation: str, fed_weight: bool, around: bool = False):
    """x [T, k] -> (Relu ->) QuantizedLinear (-> Add 1): the weight a constant or an input."""
    g = GraphBuilder("q")
    x = g.input("x", DType.float32, (symbol("T"), k))
    w = g.input("w", DType.uint8, blocks.shape) if fed_weight else g.const("w", blocks)
    h = g("Relu", x) if around else x
    b = None if bias is None else g.const("b", bias)
    y = g("ember.QuantizedLinear", h, w, b, format=fmt.name, activation=activation)
    if around:
        y = g("Add", y, g.const("one", np.ones(1, np.float32)))
    return g.finish([y])


@st.composite
def cases(draw):
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    k = FORMATS[fmt].elements * draw(st.integers(1, 20 if FORMATS[fmt].elements == 32 else 3))
    n = draw(st.integers(1, 40))
    rows = draw(st.integers(0, 6))
    return (FORMATS[fmt], rows, k, n, draw(st.booleans()), draw(st.sampled_from(sorted(ACTIVATIONS))),
            draw(st.booleans()), draw(st.integers(0, 2**31)))


# a K-quant superblock's f16 scales: (byte offset, value range) — d and dmin, or q6_k's d
K_SCALES = {"q4_k": [(0, (0.005, 0.02)), (2, (0.0, 0.02))], "q5_k": [(0, (0.005, 0.02)), (2, (0.0, 0.02))],
            "q6_k": [(208, (0.002, 0.01))]}


def blocks_of(fmt, n: int, k: int, rng, scale: float = 1.0) -> np.ndarray:
    """A weight [n, k] in `fmt`'s blocks: gguf's quantizer for the formats of 32; random
    superblocks for the K-quants (gguf has no quantizer for them): random bytes, their f16
    scales set to finite values of the size a real file's have (times `scale`)."""
    if fmt.elements == 32:
        return fmt.quantize(scale * rng.standard_normal((n, k)).astype(np.float32))
    blocks = rng.integers(0, 256, (n, k // fmt.elements, fmt.block_bytes)).astype(np.uint8)
    for offset, (low, high) in K_SCALES[fmt.name]:
        scales = (scale * rng.uniform(low, high, blocks.shape[:2])).astype(np.float16)
        blocks[:, :, offset:offset + 2] = scales.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return blocks.reshape(n, -1)


def _inputs(fmt, rows, k, n, with_bias, seed):
    rng = np.random.default_rng(seed)
    blocks = blocks_of(fmt, n, k, rng)
    bias = rng.standard_normal(n).astype(np.float32) if with_bias else None
    x = (rng.standard_normal((rows, k)) * rng.uniform(0.1, 10)).astype(np.float32)
    return x, blocks, bias


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_kernel_matches_its_computation(case):
    fmt, rows, k, n, with_bias, activation, fed, seed = case
    x, blocks, bias = _inputs(fmt, rows, k, n, with_bias, seed)
    model = ember.compile(graph(fmt, k, n, blocks, bias, activation, fed))
    assert model.stats.fallback_nodes == []
    step = model.program.steps[0]
    packed = "packed" in model.executor._steps[0][2].params
    assert packed == (not fed and fmt.elements == 32), (fmt.name, fed)
    event(f"{fmt.name}, {'interleaved rows' if packed else 'rows'}")
    feeds = {"x": x, **({"w": blocks} if fed else {})}
    before = quantized_gemm.RUNS[0]
    got = model.run(feeds)[model.outputs[0].name]
    assert step.name == "quantized_linear"
    if rows:
        assert quantized_gemm.RUNS[0] == before + 1
    want = emulate(x, blocks, fmt, bias, activation)
    scale = max(float(np.abs(want).max(initial=0)), 1e-3)
    # float32 rounding: of the result, and of the terms that cancel into it (a small output of
    # large products, which an activation such as silu can squash further)
    terms = float((np.abs(x) @ np.abs(fmt.dequantize(blocks)).T).max(initial=0))
    np.testing.assert_allclose(got, want, atol=2e-5 * scale + 1e-7 * terms, rtol=0)
    # the reference multiplies by the weight in float32: within the activations' rounding, at
    # most half a step (max|x| / 254 of a block) per element, times the row's sum of |w|
    reference = ember.compile(graph(fmt, k, n, blocks, bias, activation, fed), codegen=False).run(feeds)
    bound = np.abs(x).max(initial=0) / 254 * np.abs(fmt.dequantize(blocks)).sum(axis=1).max()
    assert np.abs(list(reference.values())[0] - got).max(initial=0) <= 1.1 * bound + 1e-5


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"])
@pytest.mark.parametrize("rows, n", [(130, 40), (1, 56), (1, 64), (1, 8), (7, 9)])
def test_interleaved_rows_at_every_tiling(fmt, rows, n):
    """The interleaved-row kernel's tilings: chunks of 64 rows of x (130: two and a rest of
    2), tiles of 4 rows and their rest, batch 1 with the groups read in two streams (an
    even and an odd count of groups, one group) and a last group of fewer than 8 rows."""
    fmt = FORMATS[fmt]
    x, blocks, bias = _inputs(fmt, rows, 96, n, True, rows * n)
    model = ember.compile(graph(fmt, 96, n, blocks, bias, "", False))
    assert "packed" in model.executor._steps[0][2].params
    got = model.run({"x": x})[model.outputs[0].name]
    want = emulate(x, blocks, fmt, bias)
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max(), rtol=0)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_chained_step_runs_from_c(fmt):
    """Between generated kernels the linear layer's step form runs inside the chained call
    (nothing through its Python extern) and gives the extern's result."""
    fmt = FORMATS[fmt]
    k = 3 * fmt.elements
    x, blocks, bias = _inputs(fmt, 3, k, 24, True, 1)
    model = ember.compile(graph(fmt, k, 24, blocks, bias, "", False, around=True))
    executor = model.executor
    before = quantized_gemm.RUNS[0]
    got = model.run({"x": x})[model.outputs[0].name]
    assert quantized_gemm.RUNS[0] == before, "the extern ran in Python, not in the chain"
    binding = next(iter(executor._bindings.values()))
    chained = [entry for entry in binding.chained if entry[0] == 4]
    assert chained and any(e[2].name == "quantized_linear" for entry in chained for e in entry[1][4])
    np.testing.assert_allclose(got, emulate(np.maximum(x, 0), blocks, fmt, bias) + 1, atol=2e-5 * np.abs(got).max())


AVX2 = {"avx2", "fma"} <= test_native.cpu_flags()
# the kernel's builds with a path turned off (cpu_quantized_gemm.cpp): what each one runs depends on
# the host, which ember_qgemm_simd reports (1 AVX2, 2 VNNI, 4 AVX-512 groups of 16, 8 their VNNI)
BUILDS = {"native": "", "no VNNI": "#define EMBER_QGEMM_NO_VNNI 1", "no AVX-512": "#define EMBER_QGEMM_NO_AVX512 1",
          "AVX2 only": "#define EMBER_QGEMM_NO_VNNI 1\n#define EMBER_QGEMM_NO_AVX512 1",
          "scalar": "#define EMBER_QGEMM_SCALAR 1"}


@pytest.mark.parametrize("rows, n", [(3, 19), (1, 40), (9, 33)])
def test_every_build_gives_the_same_sums(rows, n):
    """The kernel's portable loops (no AVX2), its AVX2 path, and where the host has them its
    VNNI dot products and AVX-512 groups of 16 rows give the same results, every format,
    interleaved and plain rows (batch 1, tiles of 4 and their rest, a last group short)."""
    source = handwritten.KERNELS["quantized_gemm"].source()
    P, I = ctypes.c_void_p, ctypes.c_int64
    libs = {}
    for name, defines in BUILDS.items():
        lib = ctypes.CDLL(str(cpu.build(f"{defines}\n{source}")))
        lib.ember_qgemm.argtypes = [I, P, I, I, I, P, I, I, P, P, I, I, I]
        lib.ember_qgemm_simd.restype = I
        lib.ember_qgemm_packed_bytes.argtypes, lib.ember_qgemm_packed_bytes.restype = [I, I, I], I
        lib.ember_qgemm_pack.argtypes = [I, P, I, I, I, P]
        libs[name] = lib
    flags = {name: lib.ember_qgemm_simd() for name, lib in libs.items()}
    assert flags["scalar"] == 0 and flags["AVX2 only"] & 0b1110 == 0 and flags["no VNNI"] & 0b1010 == 0
    assert flags["no AVX-512"] & 0b100 == 0 and flags["native"] & 1 == AVX2
    for fmt in FORMATS.values():
        k = 5 * fmt.elements
        x, blocks, bias = _inputs(fmt, rows, k, n, True, 2)
        for packed in (False, True):
            results = {}
            for name, lib in libs.items():
                w, row_bytes = blocks, blocks.shape[1]
                if packed:
                    size = lib.ember_qgemm_packed_bytes(fmt.code, n, k)
                    if not size:
                        continue
                    w, row_bytes = np.empty(size, np.uint8), 0
                    lib.ember_qgemm_pack(fmt.code, blocks.ctypes.data, n, k, blocks.shape[1], w.ctypes.data)
                y = np.empty((rows, n), np.float32)
                assert lib.ember_qgemm(fmt.code, x.ctypes.data, rows, k, k, w.ctypes.data, n, row_bytes,
                                       bias.ctypes.data, y.ctypes.data, n, 0, 2) == 0
                results[name] = y
            for name, y in results.items():
                np.testing.assert_allclose(y, results["scalar"], rtol=1e-5, atol=1e-5 * np.abs(y).max(), err_msg=name)
            if results:
                np.testing.assert_allclose(results["scalar"], emulate(x, blocks, fmt, bias), rtol=0,
                                           atol=2e-5 * np.abs(results["scalar"]).max())


def test_without_the_kernel_numpy_runs_the_dequantized_weight():
    fmt = FORMATS["q4_1"]
    x, blocks, bias = _inputs(fmt, 4, 64, 9, True, 3)
    native.uninstall("quantized_gemm")
    try:
        model = ember.compile(graph(fmt, 64, 9, blocks, bias, "relu", False))
        native.uninstall("quantized_gemm")  # (compile installed it again: a Program without its library)
        model.executor._steps[0] = (model.executor._steps[0][0], model.executor._steps[0][1],
                                    model.executor._prepared(model.program.steps[0]))
        assert "dequantized" in model.executor._steps[0][2].params
        before = quantized_gemm.RUNS[0]
        got = model.run({"x": x})[model.outputs[0].name]
        assert quantized_gemm.RUNS[0] == before
        want = np.maximum(x @ fmt.dequantize(blocks).T + bias, 0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    finally:
        test_native.install("quantized_gemm")


def test_a_weight_of_the_wrong_size_is_named():
    fmt = block_format("Q4_1")
    blocks = fmt.quantize(np.ones((4, 64), np.float32))
    g = GraphBuilder("bad")
    x = g.input("x", DType.float32, (2, 96))  # 96 features, blocks for 64
    model = ember.compile(g.finish([g("ember.QuantizedLinear", x, g.const("w", blocks), format="q4_1")]))
    with pytest.raises(ExecutionError, match=r"q4_1 weight for inputs of 96 features is \[N, 60\]"):
        model.run({"x": np.ones((2, 96), np.float32)})


def test_formats_are_gguf_blocks():
    """quantize / dequantize are gguf's, and block_format names the formats there are."""
    import gguf

    w = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    for fmt in FORMATS.values():
        if fmt.elements != 32:  # a K-quant: kept where a file has it, never written
            with pytest.raises(ember.errors.UnsupportedError, match=f"does not write them.*{fmt.name}|{fmt.name}.*does not write"):
                fmt.quantize(np.zeros((2, 256), np.float32))
            continue
        blocks = fmt.quantize(w)
        assert blocks.shape == (3, fmt.row_bytes(64)) and blocks.dtype == np.uint8
        np.testing.assert_array_equal(blocks, gguf.quants.quantize(w, gguf.GGMLQuantizationType[fmt.ggml]))
        assert np.abs(fmt.dequantize(blocks) - w).max() < (0.02 if fmt.bits == 8 else 0.5)
    with pytest.raises(ember.errors.UnsupportedError, match="q3_k.*keeps q8_0, q4_0"):
        block_format("q3_k")


def test_a_step_form_that_does_nothing_runs_as_its_extern(monkeypatch):
    """Where a kernel's step form returns nonzero inside a chained run (here: a context
    naming no format the kernel has), that step runs as its Python extern and the chain
    goes on after it: the Add after it runs, and the result is right."""
    from ember.runtime import externs

    real = externs.NATIVE["quantized_linear"]

    def poisoned(params, args):
        fn, ctx = real(params, args)
        ctx[0] = 99  # not a format: ember_qgemm returns -1 and does nothing
        return fn, ctx

    monkeypatch.setitem(externs.NATIVE, "quantized_linear", poisoned)
    fmt = FORMATS["q4_1"]
    x, blocks, bias = _inputs(fmt, 2, 64, 16, True, 4)
    model = ember.compile(graph(fmt, 64, 16, blocks, bias, "", False, around=True))
    before = quantized_gemm.RUNS[0]
    got = model.run({"x": x})[model.outputs[0].name]
    assert quantized_gemm.RUNS[0] == before + 1  # the extern ran, once
    binding = next(iter(model.executor._bindings.values()))
    assert any(entry[0] == 4 for entry in binding.chained)
    np.testing.assert_allclose(got, emulate(np.maximum(x, 0), blocks, fmt, bias) + 1, atol=2e-5 * np.abs(got).max())


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_embedding_rows_are_dequantized_as_gguf_does(fmt):
    """ember.QuantizedGather (an embedding kept in its blocks): the rows looked up and
    dequantized by the kernel bit for bit as gguf's dequantization (the reference), as the
    Python extern and as the step form inside a chained run (between generated kernels: its
    extern never runs); an id out of range is an error that names the node."""
    fmt = FORMATS[fmt]
    rng = np.random.default_rng(fmt.code)
    blocks = blocks_of(fmt, 50, 2 * fmt.elements, rng)
    table = fmt.dequantize(blocks)
    for around in (False, True):
        g = GraphBuilder("embed")
        ids = g.input("ids", DType.int64, (symbol("B"), symbol("S")))
        y = g("ember.QuantizedGather", g.const("table", blocks), ids, format=fmt.name)
        if around:
            y = g("Relu", y)
        model = ember.compile(g.finish([y]))
        assert model.stats.fallback_nodes == []
        feeds = {"ids": rng.integers(0, 50, (3, 7)).astype(np.int64)}
        before = quantized_gemm.GATHERS[0]
        got = model.run(feeds)[model.outputs[0].name]
        want = table[feeds["ids"]]
        np.testing.assert_array_equal(got, np.maximum(want, 0) if around else want)
        assert quantized_gemm.GATHERS[0] == before + (0 if around else 1)  # (chained: from C)
        feeds["ids"][1, 2] = 50
        with pytest.raises(ExecutionError, match="QuantizedGather"):
            model.run(feeds)
