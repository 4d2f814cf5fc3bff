"""Fuzzed models: real models mutated (bytes flipped, files truncated, shapes, attributes,
op types and initializers edited), some fed integers far outside any dim (-10^12, -1,
10^12, where their ids and masks were valid), must each compile and run, or raise an ember error —
never crash the process, hang, or let a foreign exception (numpy's, torch's, oneDNN's,
protobuf's) escape. The mutants are drawn by hypothesis; `event`s count what each kind
of mutant did, so a run shows the mutations really reached the compiler and the kernels.

The corpus: the real models of tests/models/real/ that are small enough to compile
hundreds of times. FUZZ_EXAMPLES sets how many mutants (default 200)."""

from __future__ import annotations

import signal
from contextlib import contextmanager

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto

import ember
from ember.errors import EmberError

HANG_S = 120  # a mutant that takes this long to compile and run has hung (the slowest real one: ~5 s)


class Hang(Exception):
    pass


@contextmanager
def _deadline(seconds: int):
    def alarm(signum, frame):
        raise Hang(f"no answer in {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- the corpus -----------------------------------------------------------------------------
SMALL = 2_000_000  # bytes: models that compile in about a second, so hundreds fit in CI


@pytest.fixture(scope="module")
def corpus() -> dict[str, onnx.ModelProto]:
    """The real-model suite's default-run models under SMALL bytes (front-ends, wake-word
    heads, a VAD with If and LSTM, audio resamplers): their packages are installed by the
    test command, so a missing one fails here too."""
    from tests.models.real.cases import CASES

    models = {case.name: onnx.load(str(case.path)) for case in CASES
              if case.fast and case.path.stat().st_size < SMALL}
    assert len(models) >= 8, sorted(models)
    return models


# -- feeds for whatever the (mutated) model declares -----------------------------------------
_NUMPY = {TensorProto.FLOAT: np.float32, TensorProto.INT64: np.int64, TensorProto.INT32: np.int32,
          TensorProto.UINT8: np.uint8, TensorProto.INT8: np.int8, TensorProto.BOOL: np.bool_,
          TensorProto.DOUBLE: np.float64, TensorProto.FLOAT16: np.float16}


def _feeds(model: onnx.ModelProto, rng: np.random.Generator) -> dict[str, np.ndarray] | None:
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        t = value.type.tensor_type
        dtype = _NUMPY.get(t.elem_type)
        if dtype is None or not value.type.HasField("tensor_type"):
            return None
        # (a dim a mutant declares negative is fed as an unknown one: the feeds are the test's)
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else 4 for d in t.shape.dim]
        if any(d > 4096 for d in shape) or int(np.prod(shape, dtype=np.int64)) > 1 << 22:
            return None
        if np.issubdtype(dtype, np.integer):
            feeds[value.name] = rng.integers(0, 3, size=shape).astype(dtype)  # valid ids and masks
        elif dtype == np.bool_:
            feeds[value.name] = rng.random(shape) > 0.5
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


# -- mutations ---------------------------------------------------------------------------------
_OPS = ["Add", "MatMul", "Conv", "Reshape", "Transpose", "Softmax", "Gather", "Concat", "Slice", "Relu",
        "LayerNormalization", "Resize", "NoSuchOp", "LSTM", "If"]


def _mutate(model: onnx.ModelProto, data) -> bytes:
    kind = data.draw(st.sampled_from(["flip", "truncate", "input_shape", "attribute", "op_type", "initializer",
                                      "rewire"]), label="kind")
    event(f"mutation: {kind}")
    if kind in ("flip", "truncate"):
        raw = bytearray(model.SerializeToString())
        if kind == "truncate":
            return bytes(raw[:data.draw(st.integers(0, len(raw) - 1), label="cut")])
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            at = data.draw(st.integers(0, len(raw) - 1), label="at")
            raw[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        return bytes(raw)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    pick = lambda seq, label: seq[data.draw(st.integers(0, len(seq) - 1), label=label)]  # noqa: E731
    if kind == "input_shape" and g.input:
        dims = pick(g.input, "input").type.tensor_type.shape.dim
        if dims:
            d = pick(dims, "dim")
            choice = data.draw(st.sampled_from(["value", "param", "clear"]), label="how")
            if choice == "value":
                d.dim_value = data.draw(st.integers(-2, 70), label="value")
            elif choice == "param":
                d.dim_param = data.draw(st.sampled_from(["?", "", "batch", "seq", "unk__1", "x y"]), label="param")
            else:
                d.Clear()
    elif kind == "attribute":
        nodes = [n for n in g.node if n.attribute]
        if nodes:
            a = pick(pick(nodes, "node").attribute, "attribute")
            if a.type == onnx.AttributeProto.INT:
                a.i = data.draw(st.integers(-3, 5), label="i")
            elif a.type == onnx.AttributeProto.INTS and a.ints:
                a.ints[data.draw(st.integers(0, len(a.ints) - 1), label="at")] = data.draw(st.integers(-3, 5))
            elif a.type == onnx.AttributeProto.FLOAT:
                a.f = data.draw(st.sampled_from([0.0, -1.0, 1e30, float("nan")]), label="f")
            else:
                a.type = data.draw(st.sampled_from([onnx.AttributeProto.INT, onnx.AttributeProto.STRING]))
    elif kind == "op_type" and g.node:
        pick(g.node, "node").op_type = data.draw(st.sampled_from(_OPS), label="op")
    elif kind == "initializer" and g.initializer:
        t = pick(g.initializer, "initializer")
        how = data.draw(st.sampled_from(["dims", "dtype", "short"]), label="how")
        if how == "dims" and t.dims:
            t.dims[data.draw(st.integers(0, len(t.dims) - 1))] = data.draw(st.integers(0, 9), label="dim")
        elif how == "dtype":
            t.data_type = data.draw(st.sampled_from([TensorProto.INT64, TensorProto.FLOAT16, TensorProto.STRING,
                                                     TensorProto.UINT8, 999]), label="dtype")
        elif t.raw_data:
            t.raw_data = t.raw_data[:len(t.raw_data) // 2]
    elif kind == "rewire" and len(g.node) > 1:
        node = pick(g.node, "node")
        if node.input:
            source = pick(g.node, "source")
            if source.output:
                node.input[data.draw(st.integers(0, len(node.input) - 1))] = pick(source.output, "output")
    return m.SerializeToString()


def _run_mutant(raw: bytes, hostile: int | None = None) -> str:
    """What became of one mutant: 'ran', or the ember error class it raised. Anything
    else propagates and fails the test. `hostile`: every integer feed filled with it
    (clipped to its type) instead of valid ids and masks — indices far outside any dim."""
    try:
        model = onnx.load_from_string(raw)
    except Exception:  # noqa: BLE001 - not even protobuf: ember must refuse the bytes too
        model = None
    try:
        compiled = ember.compile(raw)
        feeds = _feeds(model, np.random.default_rng(0)) if model is not None else None
        if feeds is None:
            return "compiled"
        if hostile is not None:
            for name, array in feeds.items():
                if np.issubdtype(array.dtype, np.integer):
                    info = np.iinfo(array.dtype)
                    feeds[name] = np.full_like(array, min(max(hostile, info.min), info.max))
        compiled.run(feeds)
        return "ran"
    except EmberError as e:
        return type(e).__name__


@settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", 200)), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_mutated_models_run_or_raise_ember_errors(corpus, data):
    name = data.draw(st.sampled_from(sorted(corpus)), label="model")
    raw = _mutate(corpus[name], data)
    hostile = data.draw(st.sampled_from([None, None, -10**12, -1, 10**12]), label="integer feeds")
    with _deadline(HANG_S):
        outcome = _run_mutant(raw, hostile)
    event(f"outcome: {outcome}")
    event(f"integer feeds: {'valid' if hostile is None else hostile}")
    event(f"model: {name}")
