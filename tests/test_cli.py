"""The `ember` command line: inspect, run and demo, called in-process through main()."""

import json
import shutil
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ember.cli import main

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


@pytest.fixture
def tiny(tmp_path):
    """out/scores = (x + y) @ W with x, y: f32[n, 4], W: f32[4, 3], at opset 13."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["s"]),
         helper.make_node("MatMul", ["s", "W"], ["out/scores"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("out/scores", TensorProto.FLOAT, ["n", 3])],
        initializer=[numpy_helper.from_array(W, "W")])
    # opset 13's IR version, not onnx's newest (which an older onnxruntime cannot read)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture
def feeds(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    y = rng.standard_normal((5, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return x, y


def error_line(capsys) -> str:
    """The one `ember: error:` line on stderr (status lines may come before it)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("ember: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_compile_reports_passes_and_dumps_ir(tiny, tmp_path, capsys):
    dump = tmp_path / "ir"
    assert main(["compile", str(tiny), "--dump-ir", str(dump), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "compiled    " in out and "at O2" in out
    for name in ("fold_constants", "eliminate_common_subexpressions", "eliminate_dead_code"):
        assert name in out
    files = sorted(p.name for p in dump.iterdir())
    assert files[0] == "00-input.ir" and files[-1].endswith("-flush_denormals.ir")
    assert "MatMul(" in (dump / files[-1]).read_text()
    assert main(["compile", str(tiny), "-O", "0"]) == 0
    assert "passes\n" in capsys.readouterr().out
    assert main(["compile", str(tiny), "-O", "9"]) == 2


def test_inspect(tiny, capsys):
    assert main(["inspect", str(tiny)]) == 0
    out = capsys.readouterr().out
    assert "x: f32[n, 4]" in out and "y: f32[n, 4]" in out
    assert "out/scores: f32[n, 3]" in out
    assert "opset       ai.onnx 13 (ember upgraded it to" in out
    assert "parameters  12 (12)" in out
    assert "nodes       2" in out
    ops = [line.split() for line in out.split("ops ")[1].splitlines()[1:]]
    assert ops == [["Add", "1"], ["MatMul", "1"]]


def test_inspect_json(tiny, capsys):
    assert main(["inspect", str(tiny), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["inputs"][0] == {"name": "x", "type": "f32[n, 4]", "dtype": "f32", "shape": ["n", 4]}
    assert info["outputs"][0]["shape"] == ["n", 3]
    assert info["opsets"]["ai.onnx"]["original"] == 13
    assert info["op_histogram"] == {"Add": 1, "MatMul": 1}
    assert info["num_nodes"] == 2 and info["num_parameters"] == 12


@pytest.fixture
def linear_relu(tmp_path):
    """y = relu(x @ W + b): three nodes in the file, one ember.Linear after the passes."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])],
        "linear_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.ones(3, np.float32), "b")])
    path = tmp_path / "linear_relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7), path)
    return path


def test_inspect_says_which_graph_it_shows(linear_relu, capsys):
    assert main(["inspect", str(linear_relu)]) == 0
    out = capsys.readouterr().out
    assert "graph       the file's, as ember imports it (opsets upgraded, no pass run" in out
    assert "nodes       3" in out and "  Relu " in out
    assert main(["inspect", str(linear_relu), "--optimized"]) == 0
    out = capsys.readouterr().out
    assert "graph       optimized: after the O2 pass pipeline" in out
    assert "nodes       1" in out and "  ember.Linear " in out and "Relu" not in out
    assert "x: f32[n, 4]" in out and "parameters  15 (15)" in out
    assert main(["inspect", str(linear_relu), "--optimized", "-O", "0", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["graph"] == "optimized" and info["opt_level"] == 0
    assert info["op_histogram"] == {"Add": 1, "MatMul": 1, "Relu": 1}
    assert main(["inspect", str(linear_relu), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["graph"] == "file"


def test_run_writes_outputs(tiny, feeds, tmp_path, capsys):
    x, y = feeds
    out_dir = tmp_path / "out"
    code = main(["run", str(tiny), "--input", f"x={tmp_path / 'x.npy'}",
                 "-i", f"y={tmp_path / 'y.npy'}", "--output-dir", str(out_dir)])
    assert code == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith(f"ran {tiny} in ")
    assert "out/scores -> " in stdout
    written = np.load(out_dir / "out_scores.npy")
    np.testing.assert_allclose(written, (x + y) @ W, rtol=1e-5, atol=1e-6)


def test_run_prints_summary(tiny, feeds, tmp_path, capsys):
    x, y = feeds
    assert main(["run", str(tiny), "-i", f"x={tmp_path / 'x.npy'}", "-i", f"y={tmp_path / 'y.npy'}"]) == 0
    out = capsys.readouterr().out
    expected = (x + y) @ W
    assert "out/scores: float32 [5, 3]" in out
    assert f"max {expected.max():.6g}" in out and f"min {expected.min():.6g}" in out
    assert "first values [" in out


@pytest.mark.parametrize("make_args, message", [
    (lambda p: ["inspect", str(p / "nope.onnx")], "no such model file"),
    (lambda p: ["run", str(p / "tiny.onnx"), "-i", f"x={p / 'x64.npy'}", "-i", f"y={p / 'y.npy'}"],
     "wrong dtype"),
    (lambda p: ["run", str(p / "tiny.onnx"), "-i", f"x={p / 'x.npy'}", "-i", f"z={p / 'y.npy'}"],
     "unknown input 'z'"),
    (lambda p: ["run", str(p / "tiny.onnx"), "-i", "x.npy"], "expected NAME=FILE.npy"),
    (lambda p: ["run", str(p / "tiny.onnx"), "-i", f"x={p / 'missing.npy'}"], "no such file"),
], ids=["missing-model", "wrong-dtype", "unknown-input", "bad-spec", "missing-npy"])
def test_errors(tiny, feeds, tmp_path, capsys, make_args, message):
    np.save(tmp_path / "x64.npy", feeds[0].astype(np.float64))
    assert main(make_args(tmp_path)) == 2
    assert message in error_line(capsys)


def test_debug_shows_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EMBER_DEBUG", "1")
    assert main(["inspect", str(tmp_path / "nope.onnx")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ember: error:" in err


def test_demo(minilm_onnx, capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "cosine similarity matrix" in out
    assert "embeddings  float32 [4, 384]" in out
    assert "last_hidden_state: f32[batch, seq, 384]" in out


def test_console_script_help():
    exe = shutil.which("ember")
    if exe is None:
        pytest.skip("the ember console script is not installed (pip install -e .)")
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "inspect" in done.stdout and "demo" in done.stdout and "examples:" in done.stdout


def test_profile(tiny, tmp_path, capsys):
    trace = tmp_path / "trace.json"
    assert main(["profile", str(tiny), "--dim", "n=3", "--runs", "2", "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "ms/run" in out and "total" in out and trace.is_file()
    assert main(["profile", str(tiny)]) == 2  # n has no size: a usage error naming it
    assert "--dim n=N" in capsys.readouterr().err


@pytest.mark.slow
def test_ember_generate_answers_with_the_built_in_model(capsys):
    assert main(["generate", "What is the capital of France? One word.", "--max-tokens", "16"]) == 0
    out, err = capsys.readouterr()
    assert "Paris" in out
    assert "tokens/s decoding" in err


def test_bench_onnx_against_onnxruntime(tiny, capsys):
    assert main(["bench", str(tiny), "--dim", "n=2", "--runs", "5", "--onnxruntime"]) == 0
    out = capsys.readouterr().out
    assert "ember " in out and "onnxruntime median" in out and "ratio" in out


def test_bench_llm_throughput(tiny_llm_dir, capsys):
    assert main(["bench", str(tiny_llm_dir), "--requests", "3", "--prompt-len", "8", "--max-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "3 requests of 8 prompt tokens and 4 output tokens" in out and "output tokens/s" in out


def test_bench_refuses_bad_counts(tiny, capsys):
    assert main(["bench", str(tiny), "--runs", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
