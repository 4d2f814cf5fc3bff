"""Start-up: `import ember` loads none of the heavy libraries, and loading and running a
compiled artifact loads nothing that only compiling needs (onnx and ml_dtypes, sympy, the
op registry, the passes, the frontends, jinja2). Each check runs in a fresh interpreter and
reads its sys.modules; the public API stays what it was."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ember

from .artifact import models

ROOT = Path(ember.__file__).resolve().parents[1]  # the ember these tests import, in the child too

# libraries that take from tens of milliseconds (jinja2) to seconds (torch, ml_dtypes) to import
HEAVY = {"torch", "onnx", "sympy", "transformers", "jinja2", "networkx", "ml_dtypes", "tokenizers", "fastapi",
         "uvicorn", "safetensors", "onnxruntime", "gguf", "PIL", "tqdm"}
# what compiling needs and running a compiled program does not
COMPILING = {"onnx", "ml_dtypes", "sympy", "jinja2", "networkx", "transformers", "tokenizers"}
COMPILER_MODULES = ("ember.frontends", "ember.ir.ops", "ember.passes.canonicalize", "ember.passes.fuse_attention",
                    "ember.codegen.lowering")


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code`."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def top_level(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_import_ember_loads_no_heavy_library():
    loaded = modules_after("import ember")
    assert "ember" in loaded
    assert not top_level(loaded) & HEAVY, sorted(top_level(loaded) & HEAVY)


def test_the_public_api_is_unchanged():
    names = set(ember.__all__)
    assert names <= set(dir(ember))
    namespace: dict = {}
    exec("from ember import *", namespace)
    assert names <= set(namespace)
    for name, module in [("compile", "api"), ("CompiledModel", "api"), ("CompileStats", "api"),
                         ("InferenceSession", "_session"), ("SessionOptions", "_session"), ("OrtValue", "_iobinding"),
                         ("load", "artifact"), ("DType", "ir.dtypes"), ("LLM", "llm"),
                         ("AsyncLLM", "llm"), ("SamplingParams", "runtime.request")]:
        assert getattr(ember, name) is getattr(importlib.import_module(f"ember.{module}"), name), name
    assert ember.passes.PassManager is ember.passes.manager.PassManager  # subpackages by attribute, as before
    assert "fuse_gelu" in ember.passes.registered_passes()
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        ember.no_such_thing  # noqa: B018


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, minilm_onnx) -> dict[str, tuple[Path, Path]]:
    """(artifact, feeds .npz) of a small model and of MiniLM (packed attention)."""
    from ember import _builtin

    folder = tmp_path_factory.mktemp("startup")
    cases = {"matmul_gelu": (models.matmul_gelu(), {"x": np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)}),
             "minilm": (minilm_onnx, _builtin.tokenize(_builtin.SAMPLE_SENTENCES)),
             "strided_conv": (models.strided_conv(), {"x": np.linspace(-1, 1, 3 * 17 * 23, dtype=np.float32)
                                                      .reshape(1, 3, 17, 23)})}
    found = {}
    for name, (model, feeds) in cases.items():
        path = ember.compile(model).save(folder / f"{name}.ember")
        np.savez(folder / f"{name}.npz", **feeds)
        found[name] = (path, folder / f"{name}.npz")
    return found


@pytest.mark.parametrize("name", ["matmul_gelu", "minilm", "strided_conv"])
def test_loading_and_running_an_artifact_imports_nothing_compiling_needs(artifacts, name):
    """strided_conv's buffer sizes are floor and ceiling expressions of its input's:
    evaluated without sympy (ember/ir/sizes.py)."""
    path, feeds = artifacts[name]
    loaded = modules_after(f"import ember, numpy as np\n"
                           f"feeds = dict(np.load({str(feeds)!r}))\n"
                           f"model = ember.load({str(path)!r})\n"
                           f"assert ember.load({str(path)!r}).program is not None\n"
                           f"model.run(feeds)")
    assert "ember.runtime.executor" in loaded  # it did load and run the program
    # torch is imported where a step runs on it (matmul_gelu's MatMul extern), and only there:
    # MiniLM runs on ember's kernels alone (segments, the tiled GEMM and attention)
    assert ("torch" in loaded) == (name == "matmul_gelu"), "torch imported" if "torch" in loaded else "no torch"
    assert not top_level(loaded) & COMPILING, sorted(top_level(loaded) & COMPILING)
    compiler = sorted(m for m in loaded if m.startswith(COMPILER_MODULES))
    assert not compiler, compiler


def test_a_step_that_needs_torch_imports_it_then_on_the_executors_threads(artifacts, tmp_path):
    """MiniLM's artifact runs a batch of a few rows on ember's kernels alone; a batch of
    1,024 rows sends its GEMMs to MKL's sgemm, which imports torch then (runtime/_torch.py),
    on the executor's thread count (1 here, where torch's default is every core), and
    torch shares the OpenMP runtime the kernels loaded (codegen/cpu.py: torch's own). Both
    results match the same model compiled in this process."""
    path, feeds = artifacts["minilm"]
    small = dict(np.load(feeds))
    rng = np.random.default_rng(0)
    large = {name: (rng.integers(1, 1000, (8, 128)) if name == "input_ids" else np.ones((8, 128))).astype(a.dtype)
             for name, a in small.items()}
    np.savez(tmp_path / "large.npz", **large)
    code = (f"import sys, numpy as np, ember\n"
            f"model = ember.load({str(path)!r}, intra_op_threads=1)\n"
            f"small = model.run(dict(np.load({str(feeds)!r})))\n"
            f"assert 'torch' not in sys.modules, 'a small batch imported torch'\n"
            f"large = model.run(dict(np.load({str(tmp_path / 'large.npz')!r})))\n"
            f"import torch\n"
            f"assert torch.get_num_threads() == 1, torch.get_num_threads()\n"
            # the kernels loaded first, torch after: still one OpenMP runtime (torch's), one thread pool
            f"import glob, os\n"
            f"gomp = {{os.path.realpath(line.split()[-1]) for line in open('/proc/self/maps') if 'libgomp' in line}}\n"
            f"shipped = sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), 'lib', 'libgomp*.so*')))\n"
            f"assert len(gomp) == 1 and (not shipped or gomp == {{os.path.realpath(shipped[0])}}), (gomp, shipped)\n"
            f"np.savez({str(tmp_path / 'out.npz')!r}, **{{'small_' + k: v for k, v in small.items()}},"
            f" **{{'large_' + k: v for k, v in large.items()}})\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    here = ember.load(path)
    for which, fed in (("small", small), ("large", large)):
        for name, want in here.run(fed).items():
            np.testing.assert_allclose(got[f"{which}_{name}"], want, rtol=1e-4, atol=1e-4)
