"""The cuda target: `ember.compile(model, target="cuda")` runs its whole path (Triton kernels
rendered from the Kernel IR, externs on torch, fallbacks on the CPU with copies). Without a
GPU, on CPU tensors with every Triton kernel in Triton's interpreter (TRITON_INTERPRET=1,
set here before triton is imported); on a machine with one (benchmarks/device_check.sh),
the same tests on the GPU."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import ember  # noqa: E402
from ember import _builtin  # noqa: E402
from ember.runtime.device import DeviceExecutor  # noqa: E402
from ember.testing.conformance import check_case, node_cases  # noqa: E402
from tests.conformance.onnx_node_xfail import XFAIL  # noqa: E402


def _model(nodes, inputs, outputs, initializers=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def test_minilm_b1_on_the_cuda_target_matches_the_cpu():
    """all-MiniLM-L6-v2 (its real weights) at batch 1: every node on Triton kernels or the
    target's torch externs, none on the fallback, within 1e-5 of the cpu target."""
    path = _builtin.export_minilm()
    feeds = _builtin.tokenize(["ember runs one compiler on CPUs and GPUs"], max_length=16)
    compiled = ember.compile(str(path), target="cuda")
    assert isinstance(compiled._executor, DeviceExecutor) and compiled.stats.target == "cuda"
    assert compiled.stats.fallback_nodes == [] and compiled.stats.num_kernels > 40
    assert any(step.kind == "segment" for step in compiled.program.steps)
    assert {step.name for step in compiled.program.steps if step.kind == "extern"} <= {"linear", "attention", "matmul"}
    got = compiled.run(feeds)["last_hidden_state"]
    want = ember.compile(str(path)).run(feeds)["last_hidden_state"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_packed_rows_on_the_cuda_target_match_the_cpu():
    """all-MiniLM-L6-v2 built over packed rows (frontends/hf/bert.py: three sentences of
    different lengths, one run of rows, ember.Attention with starts): on the cuda target every
    node on Triton kernels or torch externs (the attention one SDPA call per sentence), within
    1e-5 of the cpu target's."""
    from ember.frontends.hf.bert import build_packed_encoder, packed_feeds

    rows = [(ids, None) for ids in ([101, 7592, 102], [101, 2023, 2003, 1037, 3231, 6251, 102], [101, 102])]
    feeds = packed_feeds(rows, 0, True)
    compiled = ember.compile(build_packed_encoder(_builtin.minilm_dir()), target="cuda")
    assert compiled.stats.fallback_nodes == [] and compiled.stats.target == "cuda"
    assert "attention" in {step.name for step in compiled.program.steps if step.kind == "extern"}
    got = compiled.run(feeds)["last_hidden_state"]
    want = ember.compile(build_packed_encoder(_builtin.minilm_dir())).run(feeds)["last_hidden_state"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_an_encoder_on_the_cuda_target_embeds_as_on_the_cpu(tiny_bert):
    """ember.Encoder(target="cuda") (a tiny random BERT folder, packed rows): the same
    vectors as the cpu target's, every node on the cuda target's kernels and externs."""
    texts = ["A man is playing a guitar.", "hi", "The weather forecast says it will rain in the north tomorrow."]
    encoder = ember.Encoder(tiny_bert, target="cuda")
    assert encoder.packed and encoder.compiled.stats.target == "cuda" and encoder.compiled.stats.fallback_nodes == []
    np.testing.assert_allclose(encoder.embed(texts), ember.Encoder(tiny_bert).embed(texts), rtol=1e-5, atol=1e-5)


def _with_a_fallback():
    """Relu -> Det -> Sigmoid: Det (LAPACK's LU in torch on the cpu target) has no cuda kernel."""
    return _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Det", ["r"], ["d"]),
                   helper.make_node("Sigmoid", ["d"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 3])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])


def test_a_node_without_a_cuda_kernel_falls_back_with_copies():
    """A determinant (no det extern on the cuda target) runs its reference implementation
    on the CPU between Triton kernels, and is counted."""
    model = _with_a_fallback()
    compiled = ember.compile(model, target="cuda")
    assert len(compiled.stats.fallback_nodes) == 1 and "Det" in compiled.stats.fallback_nodes[0]
    assert any(step.kind == "segment" for step in compiled.program.steps)  # the rest on Triton kernels
    for n in (1, 4):  # one program, every size
        x = {"x": np.random.default_rng(1).standard_normal((n, 3, 3)).astype(np.float32)}
        np.testing.assert_allclose(compiled.run(x)["y"], ember.compile(model).run(x)["y"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape, attrs", [(["n", 16, "h", "w"], {"pads": [1, 1, 1, 1]}),
                                          ([1, 16, 9, 9], {"strides": [2, 2]}),
                                          ([2, 16, 8, 8], {"group": 4, "pads": [1, 1, 1, 1]})])
def test_convolutions_run_on_the_device(dtype, shape, attrs):
    """Conv (+ bias, ReLU) on the cuda target: the conv extern on torch's convolutions
    (16-bit ones in float32, rounded once), or generated kernels; no fallback; the cpu
    target's results."""
    rng = np.random.default_rng(0)
    group = attrs.get("group", 1)
    w = (rng.standard_normal((32, 16 // group, 3, 3)) * 0.1).astype(dtype)
    b = (rng.standard_normal(32) * 0.1).astype(dtype)
    onnx_type = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    model = _model([helper.make_node("Conv", ["x", "W", "B"], ["c"], **attrs), helper.make_node("Relu", ["c"], ["y"])],
                   [helper.make_tensor_value_info("x", onnx_type, shape)], [helper.make_tensor_value_info("y", onnx_type, None)],
                   [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    compiled = ember.compile(model, target="cuda")
    assert compiled.stats.fallback_nodes == [] and isinstance(compiled.executor, DeviceExecutor)
    x = rng.standard_normal([2, 16, 8, 8] if shape[0] != 1 else shape).astype(dtype)
    np.testing.assert_allclose(compiled.run({"x": x})["y"].astype(np.float32),
                               ember.compile(model).run({"x": x})["y"].astype(np.float32), rtol=1e-5, atol=1e-5)


def test_values_the_device_cannot_hold_run_on_the_reference():
    """A model with float8 values: the device holds no such tensor, so every node runs its
    reference implementation (all counted), with the cpu target's results."""
    model = _model([helper.make_node("Cast", ["x"], ["f8"], to=TensorProto.FLOAT8E4M3FN),
                    helper.make_node("Cast", ["f8"], ["y"], to=TensorProto.FLOAT)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    compiled = ember.compile(model, target="cuda")
    assert not isinstance(compiled._executor, DeviceExecutor) and len(compiled.stats.fallback_nodes) == 2
    x = {"x": np.array([0.1, 1.7, -300.0, 1e4], np.float32)}
    np.testing.assert_array_equal(compiled.run(x)["y"], ember.compile(model).run(x)["y"])


def test_the_cuda_target_without_a_gpu_or_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(ember.UnsupportedError, match="needs a CUDA GPU.*TRITON_INTERPRET=1"):
        ember.compile(model, target="cuda")
    with pytest.raises(ember.UnsupportedError, match="'tpu' is not available"):
        ember.compile(model, target="tpu")


def test_bad_feeds_are_input_errors():
    model = _model([helper.make_node("Add", ["a", "b"], ["y"])],
                   [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n"]),
                    helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n"])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    compiled = ember.compile(model, target="cuda")
    np.testing.assert_array_equal(compiled.run({"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)})["y"],
                                  np.full(3, 2, np.float32))
    with pytest.raises(ember.InputError):
        compiled.run({"a": np.ones(3, np.float32), "b": np.ones(4, np.float32)})


SHARDS = 4


def _cuda_cases(every: int, offset: int) -> list:
    return [(n, c) for n, c in sorted(node_cases().items()) if n not in XFAIL][offset::every]


@pytest.mark.parametrize("shard", range(SHARDS))
def test_node_cases_on_the_cuda_target(shard):
    """Every 32nd passing node case (in shards; `-m slow`: every 4th) through
    `ember.compile(model, target="cuda")`: all pass, as on cpu (nodes without a cuda kernel
    on their reference)."""
    _check_cuda_cases(_cuda_cases(8 * SHARDS, 8 * shard))


@pytest.mark.slow
@pytest.mark.parametrize("shard", range(SHARDS))
def test_more_node_cases_on_the_cuda_target(shard):
    _check_cuda_cases(_cuda_cases(4 * SHARDS, shard))


def _check_cuda_cases(cases) -> None:
    failed, on_device = [], 0
    for name, case in cases:
        def run(model, feeds):
            nonlocal on_device
            compiled = ember.compile(model, target="cuda")
            on_device += isinstance(compiled._executor, DeviceExecutor) and not compiled.stats.fallback_nodes
            return list(compiled.run(feeds).values())
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                check_case(case, run)
        except Exception as e:  # noqa: BLE001 - every failure listed
            failed.append((name, f"{type(e).__name__}: {str(e)[:200]}"))
    assert not failed, failed
    assert on_device >= len(cases) // 3, (on_device, len(cases))  # most ran on the device's kernels


def test_the_llm_engine_on_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    """Before any weight loads (tests/runtime/test_cuda_engine.py runs it where it can)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ember.UnsupportedError, match="needs a CUDA GPU"):
        ember.LLM(target="cuda")


def test_bfloat16_values_come_back_bit_for_bit():
    """bfloat16 buffers live on the device as torch.bfloat16 and come back through their
    bits: the same bits as the cpu target's."""
    model = _model([helper.make_node("Cast", ["x"], ["b"], to=TensorProto.BFLOAT16), helper.make_node("Mul", ["b", "b"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                   [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, None)])
    x = {"x": np.random.default_rng(0).standard_normal(50).astype(np.float32)}
    got, want = ember.compile(model, target="cuda").run(x)["y"], ember.compile(model).run(x)["y"]
    assert got.dtype.name == "bfloat16"
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


def _mlp():
    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    return _model([helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Softmax", ["m"], ["s"]),
                   helper.make_node("Tanh", ["s"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "W")])


def test_a_static_plan_reruns_on_the_same_memory():
    """DeviceExecutor.plan: inputs and outputs are fixed tensors, each run overwrites them
    with run_device's results for the inputs copied in (what a CUDA graph captures)."""
    compiled = ember.compile(_mlp(), target="cuda")
    executor = compiled.executor
    plan = executor.plan([(3, 16)])
    assert set(plan.inputs) == {0}
    out = plan.outputs[0]
    rng = np.random.default_rng(1)
    for _ in range(2):
        x = torch.from_numpy(rng.standard_normal((3, 16)).astype(np.float32))
        plan.inputs[0].copy_(x)
        (y,) = plan.run()
        assert y is out
        torch.testing.assert_close(y.cpu(), executor.run_device([x.to(executor.device)])[0].cpu())
    assert plan.runs == 2


def test_a_program_with_fallbacks_is_not_planned():
    compiled = ember.compile(_with_a_fallback(), target="cuda")
    assert compiled.stats.fallback_nodes
    with pytest.raises(ember.UnsupportedError, match="fallback"):
        compiled.executor.plan([(2, 3, 3)])


@pytest.mark.cuda
def test_a_captured_plan_replays_on_the_gpu():
    compiled = ember.compile(_mlp(), target="cuda")
    executor = compiled.executor
    plan = executor.plan([(5, 16)])
    plan.capture()
    assert plan.graph is not None
    for seed in range(3):
        x = torch.from_numpy(np.random.default_rng(seed).standard_normal((5, 16)).astype(np.float32)).cuda()
        plan.inputs[0].copy_(x)
        (y,) = plan.run()
        torch.testing.assert_close(y, executor.run_device([x])[0])


def test_a_cuda_artifact_loads_on_the_cuda_target(tmp_path, monkeypatch):
    """compiled.save on the cuda target: its Triton module ships as source (written into
    the kernel cache when loaded), and ember.load runs it on the device executor, with the
    compiled model's results; where the target cannot run, loading says so."""
    compiled = ember.compile(_mlp(), target="cuda")
    path = compiled.save(tmp_path / "mlp.ember")
    loaded = ember.load(path)
    assert loaded.target == "cuda" and isinstance(loaded.executor, DeviceExecutor)
    assert loaded.program.source == compiled.program.source and loaded.program.library.endswith(".py")
    x = {"x": np.random.default_rng(2).standard_normal((4, 16)).astype(np.float32)}
    np.testing.assert_array_equal(loaded.run(x)["y"], compiled.run(x)["y"])
    compiled = ember.compile(_with_a_fallback(), target="cuda")  # with a node on the fallback
    loaded = ember.load(compiled.save(tmp_path / "det.ember"))
    assert loaded.stats.fallback_nodes == compiled.stats.fallback_nodes != []
    x = {"x": np.random.default_rng(3).standard_normal((2, 3, 3)).astype(np.float32)}
    np.testing.assert_array_equal(loaded.run(x)["y"], compiled.run(x)["y"])
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ember.UnsupportedError, match="needs a CUDA GPU"):
        ember.load(path)


def test_a_float16_encoder_layer_runs_whole_on_the_device():
    """Float16 LayerNorm, MatMul and Softmax (what a float16-converted BERT has): no node on
    the fallback (the norms in float32, the GEMMs on torch's half kernels), within float16's
    rounding of the float32 model."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((32, 32)) * 0.2).astype(np.float16)
    gamma, beta = (1 + 0.1 * rng.standard_normal(32)).astype(np.float16), (0.1 * rng.standard_normal(32)).astype(np.float16)

    def model(dtype, np_dtype):
        return _model([helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], axis=-1, epsilon=1e-5),
                       helper.make_node("MatMul", ["n", "W"], ["m"]), helper.make_node("Softmax", ["m"], ["y"])],
                      [helper.make_tensor_value_info("x", dtype, ["b", "s", 32])],
                      [helper.make_tensor_value_info("y", dtype, None)],
                      [numpy_helper.from_array(a.astype(np_dtype), n) for a, n in ((gamma, "g"), (beta, "b"), (w, "W"))])

    half = ember.compile(model(TensorProto.FLOAT16, np.float16), target="cuda")
    assert half.stats.fallback_nodes == [] and isinstance(half.executor, DeviceExecutor)
    x = rng.standard_normal((2, 5, 32)).astype(np.float16)
    got = half.run({"x": x})["y"]
    want = ember.compile(model(TensorProto.FLOAT, np.float32)).run({"x": x.astype(np.float32)})["y"]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-2, atol=2e-3)


def test_the_cuda_target_leaves_out_the_channels_last_rewrite():
    """Its pipeline adjustment: torch's convolutions take the ONNX layout, so no transposes
    are put around them (the cpu target's pipeline has the rewrite)."""
    w = np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32)
    model = _model([helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, "h", "w"])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "W")])
    cuda, cpu_ = ember.compile(model, target="cuda"), ember.compile(model)
    assert "channels_last" not in [p.name for p in cuda.stats.passes]
    assert "channels_last" in [p.name for p in cpu_.stats.passes] and "Transpose" in cpu_.stats.op_histogram
    assert "Transpose" not in cuda.stats.op_histogram and cuda.stats.fallback_nodes == []
    x = {"x": np.random.default_rng(1).standard_normal((2, 4, 6, 5)).astype(np.float32)}
    np.testing.assert_allclose(cuda.run(x)["y"], cpu_.run(x)["y"], rtol=1e-5, atol=1e-5)
