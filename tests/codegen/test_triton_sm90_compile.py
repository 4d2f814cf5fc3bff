"""The Triton renderer's kernels compiled for an H100 (sm_90) here, without a GPU: Triton
compiles through its bundled ptxas for a target a stand-in driver names, and each kernel's
own launcher specializes and checks its arguments as a real launch does (`warmup`: nothing
runs). The interpreter the other tests use checks none of what the compiler does: a module
global NaN failed every launch on a GPU ("Global variable NAN has changed since we compiled
this kernel": NaN is not equal to itself), which no interpreted test could see."""

import json
import os
import subprocess
import sys
import textwrap

import onnx
from onnx import TensorProto, helper

COMPILE = textwrap.dedent(r'''
    import importlib.util, json, sys
    import torch, triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    class Driver:  # a stand-in for CUDA's: an H100's target, and nothing launched
        def get_current_device(self): return 0
        def get_current_stream(self, device=None): return 0
        def get_current_target(self): return GPUTarget("cuda", 90, 32)
        def is_active(self): return True

    driver.set_active(Driver())
    run = JITFunction.run
    JITFunction.run = lambda self, *a, grid, warmup, **k: run(self, *a, grid=grid, warmup=True, **k)
    spec = json.loads(sys.argv[2])
    loader = importlib.util.spec_from_file_location("rendered", sys.argv[1])
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    B = {name: torch.zeros(64, dtype=getattr(torch, dtype)) for name, dtype in spec["buffers"].items()}
    compiled = []
    for name in spec["kernels"]:
        getattr(module, "launch_" + name)(B, spec["sizes"])
        compiled.append(name)
    print(json.dumps(compiled))
''')


def _graph():
    """Softmax, a float ReduceMax and ArgMax (the renderer's NaN-aware reductions), and a
    NaN constant in a pointwise kernel."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 24])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("soft", "top", "masked")]
    outs.append(helper.make_tensor_value_info("arg", TensorProto.INT64, None))
    nan = helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")])
    nodes = [helper.make_node("Softmax", ["x"], ["soft"], axis=-1),
             helper.make_node("ReduceMax", ["x"], ["top"], axes=[1], keepdims=1),
             helper.make_node("ArgMax", ["x"], ["arg"], axis=1),
             helper.make_node("Greater", ["x", "zero"], ["positive"]),
             helper.make_node("Where", ["positive", "x", "nan"], ["masked"])]
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    graph = helper.make_graph(nodes, "g", [x], outs, initializer=[nan, zero])
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_rendered_kernels_compile_for_sm90_as_a_launch_specializes_them(tmp_path):
    from ember.codegen import triton as renderer
    from ember.codegen.lowering import lower_graph
    from ember.frontends.onnx import load_onnx
    from ember.runtime._torch import torch_dtype

    lowered = lower_graph(load_onnx(_graph()))
    assert not lowered.fallbacks
    buffers = lowered.buffers
    symbols = sorted({d for name in lowered.inputs for d in buffers[name].shape if getattr(d, "is_Symbol", False)},
                     key=lambda s: s.name)
    source = renderer.render(lowered.kernels, buffers, symbols)
    assert "float(\"nan\")" in source.split("REDUCTION_CONFIGS = ", 1)[1]  # (the kernels this test is for)
    path = tmp_path / "rendered.py"
    path.write_text(source)
    spec = {"buffers": {name: str(torch_dtype(b.dtype.numpy)).removeprefix("torch.") for name, b in buffers.items()},
            "sizes": [5] * len(symbols), "kernels": [k.name for k in lowered.kernels]}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", COMPILE, str(path), json.dumps(spec)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    compiled = json.loads(proc.stdout.strip().splitlines()[-1])
    assert compiled == spec["kernels"] and len(compiled) >= 3
