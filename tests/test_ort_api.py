"""onnxruntime's session API on ember: every script here runs once with `rt = onnxruntime`
and once with `rt = ember`, and the two runs' observations (values, metadata, shapes,
types, files written, buffers filled) are compared. What only ember promises (an error
for a provider it lacks, outputs written without a copy, ember's error types) is checked
after, on ember alone."""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np
import onnx
import onnxruntime
import pytest
from hypothesis import event, given, settings, strategies as st
from onnx import TensorProto, helper

import ember

ENGINES = [onnxruntime, ember]
RNG = np.random.default_rng(0)
W1, B1 = RNG.standard_normal((8, 16)).astype(np.float32), RNG.standard_normal(16).astype(np.float32)
W2, B2 = RNG.standard_normal((16, 4)).astype(np.float32), RNG.standard_normal(4).astype(np.float32)
METADATA = {"author": "ember tests", "license": "MIT", "labels": "a,b,c,d"}


def mlp_model() -> onnx.ModelProto:
    """x[batch, 8] -> Linear -> Gelu -> Linear -> y[batch, 4]; z = sum of y's rows;
    label = argmax of y (int64): outputs of two element types and two ranks, and a graph
    ember fuses into its own ops (ember.Linear), with every metadata field set."""
    def init(name, array):
        return helper.make_tensor(name, TensorProto.FLOAT if array.dtype == np.float32 else TensorProto.INT64,
                                  array.shape, array.ravel().tolist())

    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Gelu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
             helper.make_node("Add", ["h3", "b2"], ["y"]),
             helper.make_node("ReduceSum", ["y", "axes"], ["z"], keepdims=1),
             helper.make_node("ArgMax", ["y"], ["label"], axis=1, keepdims=0)]
    graph = helper.make_graph(
        nodes, "tiny_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])],
        [init("w1", W1), init("b1", B1), init("w2", W2), init("b2", B2), init("axes", np.array([1], np.int64))],
        doc_string="two linear layers")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], producer_name="ember-tests",
                              producer_version="1.0", domain="ai.ember.tests", model_version=3,
                              doc_string="a tiny MLP for the session API tests")
    model.ir_version = 9  # onnxruntime 1.30 reads IR 13 at most; 9 is opset 20's
    helper.set_model_props(model, METADATA)
    return model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ort_api") / "mlp.onnx"
    onnx.save(mlp_model(), path)
    return str(path)


def expected(x: np.ndarray) -> dict[str, np.ndarray]:
    h = x @ W1 + B1
    h = 0.5 * h * (1 + np.vectorize(math.erf, otypes=[np.float64])(h / np.sqrt(2)))
    y = (h @ W2 + B2).astype(np.float32)
    return {"y": y, "z": y.sum(axis=1, keepdims=True), "label": y.argmax(axis=1)}


def session(rt, path, **options):
    opts = rt.SessionOptions()
    opts.log_severity_level = 3  # onnxruntime's warnings about writing an optimized model
    for name, value in options.items():
        setattr(opts, name, value)
    return rt.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def assert_same(ours, theirs, what: str = "") -> None:
    """Observations (nested dicts, lists, arrays, scalars) equal up to float rounding."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and sorted(ours) == sorted(theirs), (what, ours, theirs)
        for key in theirs:
            assert_same(ours[key], theirs[key], f"{what}.{key}")
    elif isinstance(theirs, (list, tuple)):
        assert isinstance(ours, (list, tuple)) and len(ours) == len(theirs), (what, ours, theirs)
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{what}[{i}]")
    elif isinstance(theirs, np.ndarray):
        assert isinstance(ours, np.ndarray) and ours.dtype == theirs.dtype and ours.shape == theirs.shape, \
            (what, ours, theirs)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5, err_msg=what)
    else:
        assert ours == theirs, (what, ours, theirs)


def on_both(script, *args):
    """Run `script(rt, *args)` with onnxruntime and with ember; assert the observations
    agree; return ember's."""
    theirs = script(onnxruntime, *args)
    ours = script(ember, *args)
    assert_same(ours, theirs, script.__name__)
    return ours


# -- sessions, options, metadata -------------------------------------------------------------
LEVELS = ["ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_LAYOUT", "ORT_ENABLE_ALL"]


@pytest.mark.parametrize("level", LEVELS)
def test_session_options_metadata_and_signature(model_path, level):
    x = RNG.standard_normal((3, 8)).astype(np.float32)

    def script(rt):
        opts = rt.SessionOptions()
        opts.graph_optimization_level = getattr(rt.GraphOptimizationLevel, level)
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 2  # with 1, onnxruntime reports ORT_SEQUENTIAL back
        opts.execution_mode = rt.ExecutionMode.ORT_PARALLEL
        opts.log_severity_level = 3
        opts.log_verbosity_level = 0
        opts.logid = "api-test"
        opts.enable_mem_pattern = False
        opts.add_session_config_entry("session.use_env_allocators", "1")
        sess = rt.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
        meta = sess.get_modelmeta()
        got = sess.get_session_options()
        with pytest.raises(Exception):
            got.get_session_config_entry("no.such.entry")
        return {
            "outputs": sess.run(None, {"x": x}),
            "selected": sess.run(["label", "y"], {"x": x}),
            "inputs": [(a.name, a.type, a.shape) for a in sess.get_inputs()],
            "output_args": [(a.name, a.type, a.shape) for a in sess.get_outputs()],
            "meta": {k: getattr(meta, k) for k in ("producer_name", "graph_name", "domain", "description",
                                                   "graph_description", "version", "custom_metadata_map")},
            "providers": sess.get_providers(),
            "provider_options": sess.get_provider_options(),
            "available": "CPUExecutionProvider" in rt.get_available_providers(),
            "options": [got.intra_op_num_threads, got.inter_op_num_threads, int(got.graph_optimization_level),
                        int(got.execution_mode), got.log_severity_level, got.logid, got.enable_mem_pattern,
                        got.get_session_config_entry("session.use_env_allocators")],
        }

    ours = on_both(script)
    assert_same(ours["outputs"], list(expected(x).values()))
    assert ours["meta"]["custom_metadata_map"] == METADATA and ours["meta"]["version"] == 3


def test_graph_optimization_level_selects_the_pipeline(model_path, monkeypatch):
    import ember.passes  # (compile imports build_pipeline from there when it runs)

    levels = []
    real = ember.passes.build_pipeline
    monkeypatch.setattr(ember.passes, "build_pipeline",
                        lambda level, passes: levels.append(level) or real(level, passes))
    for name in LEVELS:
        session(ember, model_path, graph_optimization_level=getattr(ember.GraphOptimizationLevel, name))
    assert levels == [0, 1, 2, 2, 3]
    fused = session(ember, model_path)._model.graph.op_histogram()
    plain = session(ember, model_path, graph_optimization_level=ember.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert "ember.Linear" in fused and "MatMul" in plain._model.graph.op_histogram()


def test_intra_op_num_threads_sets_ember_threads(model_path, monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    sess = session(ember, model_path, intra_op_num_threads=1)
    assert calls == [1] and sess.get_session_options().intra_op_num_threads == 1


def test_session_options_reject_typos_on_both(model_path):
    for rt in ENGINES:
        with pytest.raises(AttributeError):
            rt.SessionOptions().intra_op_threads = 2  # onnxruntime's name is intra_op_num_threads


# -- profiling and the optimized model ----------------------------------------------------------
def test_profiling_writes_a_chrome_trace(model_path, tmp_path):
    x = RNG.standard_normal((2, 8)).astype(np.float32)

    def script(rt):
        prefix = str(tmp_path / f"{rt.__name__}_profile")
        sess = session(rt, model_path, enable_profiling=True, profile_file_prefix=prefix)
        for _ in range(3):
            sess.run(None, {"x": x})
        path = sess.end_profiling()
        assert path.startswith(prefix) and path.endswith(".json") and os.path.isfile(path)
        with open(path) as f:
            events = json.load(f)
        assert all({"name", "cat", "ph", "ts", "dur", "pid", "tid", "args"} <= set(e) for e in events)
        nodes = [e for e in events if e["cat"] == "Node"]
        assert nodes and all(e["args"]["provider"] == "CPUExecutionProvider" and e["args"]["op_name"] for e in nodes)
        assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in events)
        return {"is_list": isinstance(events, list), "phases": sorted({e["ph"] for e in events}),
                "runs": sum(e["name"] == "model_run" for e in events),
                "initialized": any(e["name"] == "session_initialization" for e in events),
                "ended": sess.end_profiling()}  # a second end: nothing more to write

    assert on_both(script) == {"is_list": True, "phases": ["X"], "runs": 3, "initialized": True, "ended": ""}
    for rt in ENGINES:  # profiling off: nothing written
        assert session(rt, model_path).end_profiling() == ""


def test_optimized_model_file_loads_and_gives_the_same_outputs(model_path, tmp_path):
    x = RNG.standard_normal((5, 8)).astype(np.float32)

    def script(rt):
        path = tmp_path / f"{rt.__name__}_optimized.onnx"
        first = session(rt, model_path, optimized_model_filepath=str(path)).run(None, {"x": x})
        model = onnx.load(path)
        onnx.checker.check_model(model)
        again = session(rt, str(path), graph_optimization_level=rt.GraphOptimizationLevel.ORT_DISABLE_ALL)
        assert_same(again.run(None, {"x": x}), first)
        return {"outputs": first, "names": [o.name for o in model.graph.output]}

    on_both(script)
    # ember writes its fused ops in its own domain (as onnxruntime writes com.microsoft
    # ones); with standard ops only, onnxruntime runs ember's optimized model
    assert "ember" in {n.domain for n in onnx.load(tmp_path / "ember_optimized.onnx").graph.node}
    opts = ember.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "standard.onnx")
    opts.add_session_config_entry("ember.optimized_model.standard_ops_only", "1")
    ember.InferenceSession(model_path, opts)
    standard = onnx.load(tmp_path / "standard.onnx")
    assert {n.domain for n in standard.graph.node} == {""}
    assert_same(session(onnxruntime, str(tmp_path / "standard.onnx")).run(None, {"x": x}), list(expected(x).values()))


# -- run options ---------------------------------------------------------------------------------
def test_run_options(model_path):
    x = RNG.standard_normal((2, 8)).astype(np.float32)

    def script(rt):
        sess = session(rt, model_path)
        ro = rt.RunOptions()
        ro.logid = "request-17"
        ro.log_severity_level = 3
        ro.log_verbosity_level = 0
        ro.only_execute_path_to_fetches = True
        ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        outputs = sess.run(["z"], {"x": x}, ro)
        stopped = rt.RunOptions()
        stopped.terminate = True
        with pytest.raises(Exception, match="terminate") as info:
            sess.run(None, {"x": x}, stopped)
        return {"outputs": outputs, "entry": ro.get_run_config_entry("memory.enable_memory_arena_shrinkage"),
                "logid": ro.logid, "after_stop": sess.run(["z"], {"x": x}), "stopped_is_ember": info.type}

    theirs = script(onnxruntime)
    ours = script(ember)
    assert ours.pop("stopped_is_ember") is ember.ExecutionError and theirs.pop("stopped_is_ember")
    assert_same(ours, theirs)
    ro = ember.RunOptions()
    ro.run_tag = "old-name"  # onnxruntime's older spelling of logid
    assert ro.logid == "old-name"


def test_log_severity_level_filters_ember_s_session_log(model_path, caplog):
    x = np.ones((1, 8), np.float32)
    ro = ember.RunOptions()
    ro.logid = "tagged"
    with caplog.at_level(logging.DEBUG, logger="ember.session"):
        session(ember, model_path, log_severity_level=0).run(None, {"x": x}, ro)
        verbose = [r.getMessage() for r in caplog.records]
        caplog.clear()
        session(ember, model_path, log_severity_level=3).run(None, {"x": x}, ro)
        quiet = [r.getMessage() for r in caplog.records]
        caplog.clear()
        ro.log_severity_level = 0  # a run's own level wins over the session's
        session(ember, model_path, log_severity_level=3).run(None, {"x": x}, ro)
        run_only = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("session ready") for m in verbose) and any("run 'tagged'" in m for m in verbose)
    assert quiet == []
    assert len(run_only) == 1 and "run 'tagged'" in run_only[0]
    with pytest.raises(ember.InputError, match="log_severity_level"):
        session(ember, model_path, log_severity_level=7)


def test_run_async_calls_back_with_the_outputs_or_the_error(model_path):
    """run_async returns at once; the callback gets (outputs, user_data, "") from a worker
    thread, or ([], user_data, the error) for a run that fails; an unknown output or a
    missing input raises at the call, as onnxruntime's do."""
    import threading

    x = RNG.standard_normal((3, 8)).astype(np.float32)

    def script(rt):
        sess = session(rt, model_path)
        calls = []
        done = threading.Semaphore(0)

        def callback(outputs, user_data, err):
            calls.append((outputs, user_data, bool(err), threading.current_thread() is threading.main_thread()))
            done.release()

        returned = [sess.run_async(["y", "label"], {"x": x}, callback, "first"),
                    sess.run_async(None, {"x": x.astype(np.float64)}, callback, {"second": 2})]
        assert done.acquire(timeout=60) and done.acquire(timeout=60)
        calls.sort(key=lambda c: c[2])  # the good run's first, whichever finished first
        with pytest.raises(ValueError):  # (ember's InputError is one)
            sess.run_async(None, {}, callback, None)
        return {"returned": returned, "calls": calls}

    ours = on_both(script)
    assert ours["calls"][0][2] is False and ours["calls"][1][0] == []
    assert_same(ours["calls"][0][0], [expected(x)["y"], expected(x)["label"]])


def test_free_dimension_overrides_fix_dims_by_name_and_by_denotation(model_path, tmp_path):
    """add_free_dimension_override_by_name / _by_denotation: the inputs' and outputs' dims
    show the size, a run at that size matches, another size is refused, a name no dim has
    changes nothing; on ember an artifact (compiled already) refuses overrides."""
    model = onnx.load(model_path)
    model.graph.input[0].type.tensor_type.shape.dim[0].denotation = "DATA_BATCH"
    denoted = str(tmp_path / "denoted.onnx")
    onnx.save(model, denoted)
    x = RNG.standard_normal((3, 8)).astype(np.float32)

    def script(rt):
        seen = {}
        for how, path, key in (("name", model_path, "batch"), ("denotation", denoted, "DATA_BATCH"),
                               ("unknown", model_path, "no_such_dim")):
            opts = rt.SessionOptions()
            opts.log_severity_level = 3
            if how == "denotation":
                opts.add_free_dimension_override_by_denotation(key, 3)
            else:
                opts.add_free_dimension_override_by_name(key, 3)
            sess = rt.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            refused = None
            if how != "unknown":
                with pytest.raises(Exception) as info:
                    sess.run(None, {"x": x[:2]})
                refused = info.type.__name__
            seen[how] = {"inputs": [i.shape for i in sess.get_inputs()], "outputs": [o.shape for o in sess.get_outputs()],
                         "run": sess.run(None, {"x": x}), "refused": refused is not None}
        return seen

    ours = on_both(script)
    assert ours["name"]["inputs"] == [[3, 8]] and ours["unknown"]["inputs"] == [["batch", 8]]
    assert_same(ours["name"]["run"], [expected(x)[k] for k in ("y", "z", "label")])
    with pytest.raises(ember.InputError, match="dim 0 must be 3"):
        opts = ember.SessionOptions()
        opts.add_free_dimension_override_by_name("batch", 3)
        ember.InferenceSession(model_path, opts).run(None, {"x": x[:2]})
    with pytest.raises(ember.InputError, match="dim_value"):
        ember.SessionOptions().add_free_dimension_override_by_name("batch", -1)
    artifact = ember.compile(model_path).save(tmp_path / "mlp.ember")
    opts = ember.SessionOptions()
    opts.add_free_dimension_override_by_name("batch", 3)
    with pytest.raises(ember.UnsupportedError, match="compiled already"):
        ember.InferenceSession(str(artifact), opts)
    fixed = ember.compile(model_path, fixed_dims={"batch": 3})  # the compile option behind it
    assert [i.shape for i in fixed.inputs] == [(3, 8)] and fixed.options["fixed_dims"] == {"batch": 3}


def test_capi_exception_classes_catch_what_ember_raises(model_path, tmp_path):
    """Programs catch onnxruntime's exceptions by their capi names: the same except
    clauses catch ember's errors for the same failures."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")

    def script(rt):
        state = rt.capi.onnxruntime_pybind11_state
        sess = session(rt, model_path)
        caught = []
        for attempt, cls in ((lambda: sess.run(None, {"x": np.ones((2, 8), np.float64)}), state.InvalidArgument),
                             (lambda: sess.run(None, {"x": np.ones((2, 3), np.float32)}), state.InvalidArgument),
                             (lambda: rt.InferenceSession(str(tmp_path / "missing.onnx")), state.NoSuchFile),
                             (lambda: rt.InferenceSession(str(bad)), state.InvalidProtobuf)):
            try:
                attempt()
                caught.append(None)
            except cls:
                caught.append(cls.__name__ if rt is onnxruntime else "caught")
        return [c is not None for c in caught]

    assert on_both(script) == [True] * 4
    from ember.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

    assert InvalidArgument is ember.InputError and RuntimeException is ember.ExecutionError
    assert Fail is ember.EmberError


def test_dlpack_and_reinterpreted_ortvalues():
    """OrtValue.from_dlpack shares the memory of a numpy array, a torch tensor (bool
    included) or a raw capsule; an OrtValue is a DLPack tensor itself; an array's bytes
    read as float8 (ortvalue_from_numpy_with_onnx_type). SessionOptions.execution_order
    and has_providers() as onnxruntime's."""
    import torch

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = torch.arange(4, dtype=torch.int64)
    flags = torch.tensor([True, False, True])
    raw = np.array([56, 64, 72], np.uint8)

    def script(rt):
        values = [rt.OrtValue.from_dlpack(x), rt.OrtValue.from_dlpack(t), rt.OrtValue.from_dlpack(flags),
                  rt.OrtValue.from_dlpack(t.__dlpack__())]
        shared = [values[0].data_ptr() == x.ctypes.data, values[1].data_ptr() == t.data_ptr()]
        back = torch.from_dlpack(values[1])
        f8 = rt.OrtValue.ortvalue_from_numpy_with_onnx_type(raw, TensorProto.FLOAT8E4M3FN)
        opts = rt.SessionOptions()
        order = int(opts.execution_order)
        opts.execution_order = rt.ExecutionOrder.PRIORITY_BASED
        return {"values": [v.numpy() for v in values], "types": [v.data_type() for v in values], "shared": shared,
                "back": back.numpy(), "back_shared": back.data_ptr() == t.data_ptr(),
                "f8": [f8.data_type(), f8.shape(), f8.element_type(), f8.numpy().view(np.uint8)],
                "order": [order, int(opts.execution_order)], "has_providers": opts.has_providers()}

    ours = on_both(script)
    assert ours["shared"] == [True, True] and ours["back_shared"]
    with pytest.raises(ember.InputError, match="DLPack"):
        ember.OrtValue.from_dlpack(3)
    with pytest.raises(ember.InputError, match="byte"):
        ember.OrtValue.ortvalue_from_numpy_with_onnx_type(np.zeros(2, np.float32), TensorProto.FLOAT16)


def test_module_functions_for_logging_and_versions():
    import logging as logging_

    before = logging_.getLogger("ember").level
    try:
        for rt in ENGINES:
            rt.set_default_logger_severity(3)
            rt.set_default_logger_verbosity(0)
        assert logging_.getLogger("ember").level == logging_.ERROR
        with pytest.raises(ember.InputError, match="severity"):
            ember.set_default_logger_severity(9)
    finally:
        logging_.getLogger("ember").setLevel(before)
    assert ember.get_version_string() == ember.__version__ and ember.__version__ in ember.get_build_info()
    assert ember.get_all_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ember.get_available_providers()[-1] == "CPUExecutionProvider"
    assert set(ember.get_all_providers()) <= set(onnxruntime.get_all_providers())


# -- OrtValue and run_with_ort_values --------------------------------------------------------------
def test_ortvalue_and_run_with_ort_values(model_path):
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    ids = np.arange(6, dtype=np.int64).reshape(2, 3)

    def script(rt):
        sess = session(rt, model_path)
        value = rt.OrtValue.ortvalue_from_numpy(x)
        assert value.data_ptr() == x.ctypes.data and np.shares_memory(value.numpy(), x)
        other = rt.OrtValue.ortvalue_from_numpy(ids)
        empty = rt.OrtValue.ortvalue_from_shape_and_type([2, 5], np.float16)
        coded = rt.OrtValue.ortvalue_from_shape_and_type([3], TensorProto.INT32, "cpu")
        named = sess.run_with_ort_values(["label", "z"], {"x": value})
        every = sess.run_with_ort_values(None, {"x": value})
        facts = [(v.shape(), v.data_type(), v.element_type(), v.device_name(), v.is_tensor(),
                  v.tensor_size_in_bytes(), v.has_value()) for v in (value, other, empty, coded, *named)]
        return {"facts": facts, "named": [v.numpy() for v in named], "every": [v.numpy() for v in every],
                "types": [type(v).__name__ for v in every], "ids": other.numpy(),
                "same_as_run": [np.array_equal(a.numpy(), b) for a, b in zip(every, sess.run(None, {"x": x}))]}

    ours = on_both(script)
    assert ours["types"] == ["OrtValue"] * 3 and all(ours["same_as_run"])
    assert_same(ours["every"], list(expected(x).values()))


# -- IOBinding -------------------------------------------------------------------------------------
def test_iobinding_writes_bound_buffers_in_place(model_path):
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    x2 = RNG.standard_normal((3, 8)).astype(np.float32)

    def script(rt):
        sess = session(rt, model_path)
        binding = sess.io_binding()
        binding.bind_cpu_input("x", x)
        y = np.zeros((3, 4), np.float32)
        binding.bind_output("y", "cpu", 0, np.float32, list(y.shape), y.ctypes.data)
        label = rt.OrtValue.ortvalue_from_shape_and_type([3], np.int64)
        binding.bind_ortvalue_output("label", label)
        binding.bind_output("z")  # no buffer: the run allocates it
        sess.run_with_iobinding(binding)
        first_y = y.copy()
        outputs = binding.get_outputs()
        copies = binding.copy_outputs_to_cpu()
        in_place = [outputs[0].data_ptr() == y.ctypes.data, outputs[1].data_ptr() == label.data_ptr(),
                    not np.shares_memory(copies[0], y)]
        # the same binding and buffers again, on new data bound by address
        binding.clear_binding_inputs()
        binding.bind_input("x", "cpu", 0, np.float32, list(x2.shape), x2.ctypes.data)
        sess.run_with_iobinding(binding)
        second_y = y.copy()
        # an input bound as an OrtValue, its element type given as an ONNX code
        other = sess.io_binding()
        other.bind_ortvalue_input("x", rt.OrtValue.ortvalue_from_numpy(x))
        z = np.zeros((3, 1), np.float32)
        other.bind_output("z", "cpu", 0, TensorProto.FLOAT, [3, 1], z.ctypes.data)
        sess.run_with_iobinding(other)
        return {"first_y": first_y, "label": label.numpy(), "copies": copies, "in_place": in_place,
                "shapes": [v.shape() for v in outputs], "types": [v.data_type() for v in outputs],
                "second_y": second_y, "z": z, "second_outputs": [v.numpy() for v in binding.get_outputs()],
                "other": [v.shape() for v in other.get_outputs()]}

    ours = on_both(script)
    want, want2 = expected(x), expected(x2)
    assert_same(ours["first_y"], want["y"])  # the bound array itself was filled
    assert_same(ours["label"], want2["label"])  # read after the second run, which rewrote it
    assert_same(ours["second_y"], want2["y"])
    assert_same(ours["z"], want["z"])
    assert ours["in_place"] == [True, True, True]
    assert ours["shapes"] == [[3, 4], [3], [3, 1]]  # in the order bound


@pytest.fixture(scope="module")
def sessions(model_path):
    return {rt: session(rt, model_path) for rt in ENGINES}


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(0, 9), bound=st.sets(st.sampled_from(["y", "z", "label"]), min_size=1),
       preallocate=st.sets(st.sampled_from(["y", "z", "label"])), seed=st.integers(0, 2**16))
def test_iobinding_matches_onnxruntime_for_any_batch_and_bindings(sessions, batch, bound, preallocate, seed):
    """Any batch size (empty included), any subset of outputs bound, any of them to a
    preallocated buffer: the same outputs as onnxruntime, the buffers themselves filled."""
    x = np.random.default_rng(seed).standard_normal((batch, 8)).astype(np.float32)
    shapes = {"y": (batch, 4), "z": (batch, 1), "label": (batch,)}
    dtypes = {"y": np.float32, "z": np.float32, "label": np.int64}
    order = sorted(bound)
    observed = {}
    for rt, sess in sessions.items():
        binding = sess.io_binding()
        binding.bind_cpu_input("x", x)
        buffers = {}
        for name in order:
            if name in preallocate:
                buffers[name] = np.full(shapes[name], -7, dtypes[name])
                binding.bind_output(name, "cpu", 0, dtypes[name], shapes[name], buffers[name].ctypes.data)
            else:
                binding.bind_output(name)
        sess.run_with_iobinding(binding)
        outputs = binding.copy_outputs_to_cpu()
        observed[rt] = outputs
        for name, array in buffers.items():
            assert_same(array, outputs[order.index(name)], f"{rt.__name__} buffer {name}")
        if rt is ember:
            assert binding.copied_outputs == []
            event(f"{len(buffers)} output(s) written in place")
    assert_same(observed[ember], observed[onnxruntime])
    want = expected(x)
    assert_same(observed[ember], [want[name] for name in order])


def test_iobinding_outputs_are_written_without_a_copy(model_path):
    """The program's kernels write into the bound buffers: no output is copied in after."""
    sess = session(ember, model_path)
    binding = sess.io_binding()
    x = RNG.standard_normal((6, 8)).astype(np.float32)
    binding.bind_cpu_input("x", x)
    buffers = {"y": np.zeros((6, 4), np.float32), "z": np.zeros((6, 1), np.float32),
               "label": np.zeros(6, np.int64)}
    for name, array in buffers.items():
        binding.bind_output(name, "cpu", 0, array.dtype.type, array.shape, array.ctypes.data)
    sess.run_with_iobinding(binding)
    assert binding.copied_outputs == []
    assert [v.data_ptr() for v in binding.get_outputs()] == [a.ctypes.data for a in buffers.values()]
    assert_same(buffers, expected(x))


def test_an_output_only_the_run_can_size_is_copied_into_its_buffer_once(tmp_path):
    graph = helper.make_graph([helper.make_node("NonZero", ["x"], ["idx"])], "nz",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("idx", TensorProto.INT64, [1, "k"])])
    path = tmp_path / "nonzero.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = np.array([0, 3, 0, 1, 2], np.float32)

    def script(rt):
        sess = session(rt, str(path))
        binding = sess.io_binding()
        binding.bind_cpu_input("x", x)
        idx = np.full((1, 3), -1, np.int64)
        binding.bind_output("idx", "cpu", 0, np.int64, [1, 3], idx.ctypes.data)
        sess.run_with_iobinding(binding)
        return idx

    assert_same(on_both(script), np.array([[1, 3, 4]]))


# -- what only ember promises --------------------------------------------------------------------
@pytest.fixture
def no_gpu(monkeypatch):
    """A machine without a GPU, and Triton's interpreter off."""
    import torch

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("providers", [["CUDAExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"],
                                       [("TensorrtExecutionProvider", {}), "CPUExecutionProvider"]])
def test_a_provider_ember_lacks_is_an_error_naming_it(model_path, providers, no_gpu):
    name = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    with pytest.raises(ember.UnsupportedError, match=name):
        ember.InferenceSession(model_path, providers=providers)
    assert ember.get_available_providers() == ["CPUExecutionProvider"]


def test_provider_options_and_module_functions(model_path, no_gpu):
    sess = ember.InferenceSession(model_path, providers=[("CPUExecutionProvider", {"use_arena": "0"})])
    assert sess.get_provider_options() == {"CPUExecutionProvider": {}}  # as onnxruntime's CPU provider
    assert ember.get_device() == onnxruntime.get_device() == "CPU"
    with pytest.raises(ember.UnsupportedError, match="CUDAExecutionProvider.*GPU"):
        sess.set_providers(["CUDAExecutionProvider"])
    assert sess.get_providers() == ["CPUExecutionProvider"]  # the session as it was


def test_the_cuda_provider_runs_the_cuda_target(model_path, monkeypatch):
    """providers=["CUDAExecutionProvider", "CPUExecutionProvider"]: the cuda target (here
    in Triton's interpreter), onnxruntime's outputs; set_providers compiles it again."""
    import torch

    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert ember.get_available_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    sess = ember.InferenceSession(model_path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert sess._model.target == "cuda"
    assert sess.get_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert sess.get_provider_options()["CUDAExecutionProvider"] == {"device_id": "0"}
    feeds = {i.name: RNG.standard_normal([d if isinstance(d, int) else 2 for d in i.shape]).astype(np.float32)
             for i in sess.get_inputs()}
    want = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"]).run(None, feeds)
    for got, expected in zip(sess.run(None, feeds), want):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    sess.set_providers(["CPUExecutionProvider"])
    assert sess._model.target == "cpu" and sess.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ember.UnsupportedError, match="device_id 1"):
        sess.set_providers([("CUDAExecutionProvider", {"device_id": 1})])


def test_bad_calls_are_ember_errors_that_name_the_problem(model_path):
    sess = session(ember, model_path)
    x = np.ones((2, 8), np.float32)
    binding = sess.io_binding()
    with pytest.raises(ember.InputError, match="'q'"):
        binding.bind_cpu_input("q", x)
    with pytest.raises(ember.InputError, match="'nope'"):
        binding.bind_output("nope")
    with pytest.raises(ember.UnsupportedError, match="'cuda'"):
        binding.bind_output("y", "cuda", 0, np.float32, [2, 4], x.ctypes.data)
    with pytest.raises(ember.UnsupportedError, match="'cuda'"):
        ember.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    with pytest.raises(ember.InputError, match="element type"):
        ember.OrtValue.ortvalue_from_shape_and_type([2], 999)
    binding.bind_cpu_input("x", x)
    with pytest.raises(ember.InputError, match="no output is bound"):
        sess.run_with_iobinding(binding)
    wrong = np.zeros((3, 4), np.float32)
    binding.bind_output("y", "cpu", 0, np.float32, wrong.shape, wrong.ctypes.data)
    with pytest.raises(ember.InputError, match="output 'y'.*\\[2, 4\\]"):
        sess.run_with_iobinding(binding)
    binding.clear_binding_outputs()
    binding.bind_output("y", "cpu", 0, np.int32, [2, 4], wrong.ctypes.data)
    with pytest.raises(ember.InputError, match="output 'y'"):
        sess.run_with_iobinding(binding)
    with pytest.raises(ember.InputError, match="takes OrtValues"):
        sess.run_with_ort_values(None, {"x": x})
    with pytest.raises(ember.InputError, match="unknown output 'w'"):
        sess.run(["w"], {"x": x})
    with pytest.raises(ember.InputError, match="ember.SessionOptions"):
        ember.InferenceSession(model_path, onnxruntime.SessionOptions())
    with pytest.raises(ember.UnsupportedError, match="warp_speed"):
        ember.InferenceSession(model_path, warp_speed=True)
    with pytest.raises(ember.UnsupportedError, match="register_custom_ops_library"):
        ember.SessionOptions().register_custom_ops_library("libcustom.so")
    with pytest.raises(ember.InputError, match="no config entry 'x.y'"):
        ember.SessionOptions().get_session_config_entry("x.y")
    with pytest.raises(ember.InputError, match="graph_optimization_level"):
        session(ember, model_path, graph_optimization_level=5)
    other = session(ember, model_path).io_binding()
    with pytest.raises(ember.InputError, match="this session's io_binding"):
        sess.run_with_iobinding(other)


def test_an_artifact_keeps_the_model_s_metadata_and_the_session_api(model_path, tmp_path):
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    artifact = ember.compile(model_path).save(tmp_path / "mlp.ember")
    sess = ember.InferenceSession(str(artifact))
    meta = sess.get_modelmeta()
    assert (meta.producer_name, meta.graph_name, meta.version, meta.custom_metadata_map) == \
        ("ember-tests", "tiny_mlp", 3, METADATA)
    binding = sess.io_binding()
    binding.bind_cpu_input("x", x)
    y = np.zeros((2, 4), np.float32)
    binding.bind_output("y", "cpu", 0, np.float32, y.shape, y.ctypes.data)
    sess.run_with_iobinding(binding)
    assert binding.copied_outputs == []
    assert_same(y, expected(x)["y"])


def test_compiled_model_run_writes_into_out_arrays(model_path):
    compiled = ember.compile(model_path)
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    y = np.zeros((2, 4), np.float32)
    results = compiled.run({"x": x}, out={"y": y})
    assert results["y"] is y
    assert_same(y, expected(x)["y"])
    with pytest.raises(ember.InputError, match="unknown output 'q'"):
        compiled.run({"x": x}, out={"q": y})
    with pytest.raises(ember.InputError, match="C-contiguous"):
        compiled.run({"x": x}, out={"y": np.zeros((4, 2), np.float32).T})
