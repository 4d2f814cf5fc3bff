"""The hand-written kernels a Program names: codegen builds the ones its externs may call
(Program.libraries), the runtime loads those and builds nothing; buffer lifetimes are
codegen's (Program.lifetimes), recomputed when an artifact is loaded, never read from it."""

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.codegen import cpu, handwritten
from ember.codegen.memory import program_lifetimes
from ember.errors import ArtifactError
from ember.runtime import native
from ember.runtime.executor import Executor
from ember.runtime.native import gemm
from tests.artifact import models
from tests.artifact.zips import members, rezip

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")


def _linear_model():
    """y = relu(x @ W + b), x: f32[n, 64], W [64, 32]: one linear extern (the tiled GEMM)."""
    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32) * 0.1
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
                               helper.make_node("Relu", ["a"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.ones(32, np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _conv_model():
    """A 3x3 convolution (16 -> 32 channels) and a ReLU over an NHWC image: channels-last,
    on the direct kernel."""
    w = np.random.default_rng(0).standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.1
    nodes = [helper.make_node("Transpose", ["x_nhwc"], ["x"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["y"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x_nhwc", TensorProto.FLOAT, ["n", "h", "w", 16])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("model, names", [
    (_linear_model(), {"gemm"}),
    (models.with_fallback(), set()),
])
def test_a_program_names_the_kernels_its_externs_may_call(model, names):
    program = ember.compile(model)._executor.program
    assert set(program.libraries) == names
    assert all(path is not None and path.endswith(".so") for path in program.libraries.values())


def test_codegen_decides_the_lifetimes_of_temps():
    """Each temp buffer (not a view) lives from the first kernel that touches it to the
    last, counted over every step's kernels in order."""
    program = ember.compile(models.with_fallback())._executor.program
    temps = {name for name, b in program.buffers.items() if b.kind == "temp" and b.view_of is None}
    kernels = sum(len(step.parts) for step in program.steps)
    assert temps and set(program.lifetimes) == temps
    assert all(0 <= first <= last < kernels for first, last in program.lifetimes.values())
    assert program.lifetimes == program_lifetimes(program)


def test_the_runtime_builds_nothing(monkeypatch):
    """A Program runs on the libraries it names: with every build refused and the kernel
    forgotten, a new executor of it installs its library, and the GEMM runs on it."""
    compiled = ember.compile(_linear_model())
    x = {"x": np.random.default_rng(1).standard_normal((600, 64)).astype(np.float32)}
    expected = compiled.run(x)["y"]

    def refuse(*args, **kwargs):
        raise AssertionError("the runtime built a kernel")

    monkeypatch.setattr(cpu, "build", refuse)
    monkeypatch.setattr("subprocess.run", refuse)
    path = native.installed("gemm")
    native.uninstall("gemm")
    try:
        assert not gemm.available()
        executor = Executor(compiled._executor.program)
        assert native.installed("gemm") == path and gemm.available()
        before = gemm.RUNS[0]
        np.testing.assert_array_equal(executor.run([x["x"]])[0], expected)
        assert gemm.RUNS[0] == before + 1
    finally:
        native.install({"gemm": path})


def test_a_kernel_no_program_named_is_not_there_and_its_extern_goes_on():
    """Forgotten (as in a process where no Program named it), the GEMM is not available and
    the linear extern runs on its other path, with the same result."""
    compiled = ember.compile(_linear_model())
    x = {"x": np.random.default_rng(2).standard_normal((700, 64)).astype(np.float32)}
    expected = compiled.run(x)["y"]
    path = native.installed("gemm")
    native.uninstall("gemm")
    try:
        before = gemm.RUNS[0]
        np.testing.assert_allclose(compiled.run(x)["y"], expected, rtol=1e-6, atol=1e-6)
        assert gemm.RUNS[0] == before
    finally:
        native.install({"gemm": path})


def test_a_kxk_channels_last_convolution_names_the_gemm_library():
    """The direct convolution is in the tiled GEMM's library: a Program with only a 3x3
    channels-last convolution names it (and so an artifact of it ships it), and it runs
    there."""
    from ember.runtime.native import gemm

    compiled = ember.compile(_conv_model())
    program = compiled._executor.program
    assert [s.params.get("channels_last") for s in program.steps if s.kind == "extern" and s.name == "conv"] == [True]
    assert "gemm" in program.libraries
    before = gemm.CONV_RUNS[0]
    compiled.run({"x_nhwc": np.random.default_rng(3).standard_normal((1, 40, 36, 16)).astype(np.float32)})
    assert gemm.CONV_RUNS[0] == before + 1


def test_a_build_that_fails_is_named_none_and_logged(monkeypatch, caplog):
    from ember.errors import ExecutionError

    def fail(source):
        raise ExecutionError("the C++ compiler rejected it")

    monkeypatch.setattr(cpu, "build", fail)
    with caplog.at_level("WARNING", logger="ember.codegen"):
        assert handwritten.build("small_conv") is None
    assert "small convolution kernel did not build" in caplog.text
    monkeypatch.setattr(cpu, "compiler", lambda: None)
    assert handwritten.build("gemm") is None  # no compiler: nothing to build with, nothing logged


def test_loaded_lifetimes_are_recomputed_and_a_forged_part_is_refused(tmp_path):
    compiled = ember.compile(models.with_fallback())
    path = compiled.save(tmp_path / "m.ember")
    loaded = ember.load(path)
    assert loaded._executor.program.lifetimes == compiled._executor.program.lifetimes != {}
    contents = members(path)
    program = json.loads(contents["program.json"])
    program["steps"][0]["parts"][0].append("no_such_buffer")
    contents["program.json"] = json.dumps(program).encode()
    rezip(tmp_path / "forged.ember", contents, fix_hashes=True)
    with pytest.raises(ArtifactError, match="touch a buffer the program lacks"):
        ember.load(tmp_path / "forged.ember")
