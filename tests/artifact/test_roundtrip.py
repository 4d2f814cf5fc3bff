"""compiled.save -> ember.load gives the same model: outputs bit-identical, no frontend,
pass or C++ build on load (on the machine it was built for), a rebuild with a warning
on another."""

import hashlib
import json
import mmap
import zipfile

import blake3
import ml_dtypes
import numpy as np
import pytest

import ember
from tests.artifact.zips import refuse_building
from ember.artifact import inspect
from ember.codegen import cpu
from ember.runtime import native
from ember.ir import DType, Graph, TensorType, Value, print_graph, symbol

from . import models
from .zips import members, rezip

X = np.array([[1, -2, 3], [0.5, 0.25, -1]], np.float32)


def round_trip(compiled, feeds, tmp_path, **load_options):
    """Save, load, run both: the loaded model's outputs, asserted bit-identical."""
    expected = compiled.run(feeds)
    path = compiled.save(tmp_path / "model.ember")
    loaded = ember.load(path, **load_options)
    got = loaded.run(feeds)
    assert list(got) == list(expected)
    for name in expected:
        assert got[name].dtype == expected[name].dtype and got[name].shape == expected[name].shape, name
        assert got[name].tobytes() == expected[name].tobytes(), f"output {name!r} differs after loading"
    return loaded


def quantized_graph() -> Graph:
    """int4 weights dequantized, a bfloat16 and a float8 constant cast: every one of them a
    dtype safetensors has no numpy type for (compiled at O0 so they stay as they are)."""
    n = symbol("n")
    x = Value("x", TensorType(DType.float32, (n, 4)))
    g = Graph("q", inputs=[x], opsets={"": 21})
    w = g.add_constant("w4", (np.arange(12) % 15 - 7).astype(ml_dtypes.int4).reshape(4, 3))
    scale = g.add_constant("scale", np.array(0.5, np.float32))
    b = g.add_constant("b16", np.linspace(-2, 2, 3).astype(ml_dtypes.bfloat16))
    f8 = g.add_constant("f8", np.array([0.5, -1.5, 3.0], ml_dtypes.float8_e4m3fn))

    def add(op, inputs, shape, **attrs):
        return g.add_node(op, inputs, [Value(f"v{len(g.nodes)}", TensorType(DType.float32, shape))], attrs).outputs[0]

    wf = add("DequantizeLinear", [w, scale], (4, 3))
    m = add("MatMul", [x, wf], (n, 3))
    bf = add("Cast", [b], (3,), to=DType.float32.onnx_code)
    ff = add("Cast", [f8], (3,), to=DType.float32.onnx_code)
    g.outputs = [add("Mul", [add("Add", [m, bf], (n, 3)), ff], (n, 3))]
    return g


@pytest.mark.parametrize("name, make, feeds", [
    ("kernels", models.matmul_gelu, {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}),
    ("fallback", models.with_fallback, {"x": X}),
    ("if", lambda: models.with_if(False), {"x": X}),
    ("if-fallback", lambda: models.with_if(True), {"x": X}),
    ("loop", models.with_loop, {"trips": np.array(4), "v0": np.zeros(3, np.float32), "x": X[0]}),
    ("strided-conv", models.strided_conv, {"x": np.linspace(-1, 1, 2 * 3 * 17 * 23, dtype=np.float32).reshape(2, 3, 17, 23)}),
])
def test_round_trip_is_bit_identical(name, make, feeds, tmp_path):
    compiled = ember.compile(make())
    loaded = round_trip(compiled, feeds, tmp_path)
    assert print_graph(loaded.graph) == print_graph(compiled.graph)
    assert loaded.stats.fallback_nodes == compiled.stats.fallback_nodes
    assert [s.kind for s in loaded.program.steps] == [s.kind for s in compiled.program.steps]
    if name == "if":  # the other branch, through the loaded program too
        np.testing.assert_array_equal(loaded.run({"x": -X})["y"], compiled.run({"x": -X})["y"])
    if name.endswith("fallback"):
        assert compiled.stats.fallback_nodes


def test_a_loaded_graph_is_parsed_on_first_use(tmp_path):
    """Loading and running read no printed IR: the signature comes from the manifest and
    the program's boundary buffers (dims as `ember.ir.sizes.Size`s, no sympy), and every
    size of every buffer (floor, ceiling of the strides) is evaluated at each input size.
    The graph is parsed when asked for, and is the compiled one."""
    compiled = ember.compile(models.strided_conv())
    loaded = ember.load(compiled.save(tmp_path / "m.ember"))
    rng = np.random.default_rng(0)
    for shape in ((1, 3, 17, 23), (2, 3, 8, 9), (1, 3, 1, 2)):
        x = rng.standard_normal(shape, dtype=np.float32)
        want, got = compiled.run({"x": x})["y"], loaded.run({"x": x})["y"]
        assert got.shape == want.shape and got.tobytes() == want.tobytes(), shape
    assert loaded._graph is None  # not parsed yet
    assert str(loaded.inputs) == str(compiled.inputs) and str(loaded.outputs) == str(compiled.outputs)
    assert loaded.stats.num_nodes == compiled.stats.num_nodes and loaded.stats.op_histogram == compiled.stats.op_histogram
    with pytest.raises(ember.InputError, match="dim 1 must be 3"):
        loaded.run({"x": np.zeros((1, 4, 8, 8), np.float32)})
    assert print_graph(loaded.graph) == print_graph(compiled.graph)


def test_low_precision_weights_round_trip(tmp_path):
    compiled = ember.compile(quantized_graph(), opt_level=0)
    dtypes = {str(a.dtype) for a in compiled.program.constants.values()}
    assert {"int4", "bfloat16", "float8_e4m3fn"} <= dtypes
    loaded = round_trip(compiled, {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}, tmp_path)
    assert {str(a.dtype) for a in loaded.program.constants.values()} == dtypes
    # the weights file is a standard safetensors file (those dtypes as raw bytes, named in its metadata)
    from safetensors.numpy import load

    with zipfile.ZipFile(tmp_path / "model.ember") as z:
        tensors = load(z.read("weights.safetensors"))
    assert {str(a.dtype) for a in tensors.values()} <= {"uint8", "float32"}


def test_minilm_round_trip(minilm_onnx, tmp_path):
    from ember import _builtin

    feeds = _builtin.tokenize(_builtin.SAMPLE_SENTENCES)
    loaded = round_trip(ember.compile(minilm_onnx), feeds, tmp_path)
    assert loaded.stats.num_kernels > 40 and not loaded.stats.fallback_nodes
    assert "load" in loaded.stats.timings and "passes" not in loaded.stats.timings
    assert [p.name for p in loaded.stats.passes][:3] == ["expand_ops", "fold_qdq", "fold_constants"]  # recorded when it was compiled


def test_loading_runs_no_frontend_pass_or_compiler(tmp_path, monkeypatch):
    from ember.passes import PassManager

    compiled = ember.compile(models.with_if(False))
    expected = compiled.run({"x": X})
    path = compiled.save(tmp_path / "m.ember")
    native.load.cache_clear()  # the library is loaded again, from the kernel cache

    def refuse(*args, **kwargs):
        raise AssertionError("loading an artifact compiled something")

    monkeypatch.setattr(cpu, "build", refuse)
    monkeypatch.setattr(cpu, "render", refuse)
    monkeypatch.setattr(PassManager, "run", refuse)
    monkeypatch.setattr("ember.frontends.onnx.load_onnx", refuse)
    monkeypatch.setattr("ember.codegen.generate", refuse)
    monkeypatch.setattr("ember.codegen.lowering.lower_graph", refuse)
    monkeypatch.setattr("subprocess.run", refuse)
    loaded = ember.load(path)
    np.testing.assert_array_equal(loaded.run({"x": X})["y"], expected["y"])
    np.testing.assert_array_equal(loaded.run({"x": -X})["y"], compiled.run({"x": -X})["y"])
    library = loaded.program.library
    assert "artifact-" in library and library.startswith(str(cpu._cache_dir()))


def test_no_pickle_on_load(tmp_path, monkeypatch):
    import pickle

    path = ember.compile(models.with_fallback()).save(tmp_path / "m.ember")

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading an artifact")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    ember.load(path).run({"x": X})


def test_another_machine_rebuilds_from_source_and_warns(tmp_path, monkeypatch):
    compiled = ember.compile(models.matmul_gelu())
    feeds = {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}
    expected = compiled.run(feeds)["y"]
    path = compiled.save(tmp_path / "m.ember")
    built = []
    real_build = cpu.build
    monkeypatch.setattr(cpu, "_machine_key", lambda: "another-machine")
    monkeypatch.setattr(cpu, "build", lambda source: built.append(source) or real_build(source))
    with pytest.warns(UserWarning, match="built for another machine .* rebuilding its 1 kernel library"):
        loaded = ember.load(path)
    assert built == [compiled.program.source]
    assert "artifact-" not in loaded.program.library
    np.testing.assert_array_equal(loaded.run(feeds)["y"], expected)
    assert not inspect(path)["host_matches"]


def test_another_machine_without_a_compiler_runs_the_reference(tmp_path, monkeypatch):
    compiled = ember.compile(models.matmul_gelu())
    feeds = {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}
    path = compiled.save(tmp_path / "m.ember")
    monkeypatch.setattr(cpu, "_machine_key", lambda: "another-machine")
    monkeypatch.setattr(cpu, "compiler", lambda: None)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler here"):
        loaded = ember.load(path)
    assert loaded.program is None and loaded.stats.fallback_nodes
    np.testing.assert_allclose(loaded.run(feeds)["y"], compiled.run(feeds)["y"], rtol=1e-5, atol=1e-6)


def test_interpreted_model_round_trips(tmp_path, monkeypatch):
    """A model compiled with codegen off has no program: the artifact holds the graph."""
    compiled = ember.compile(models.with_fallback(), codegen=False)
    assert compiled.program is None
    loaded = round_trip(compiled, {"x": X}, tmp_path)
    assert loaded.program is None
    with zipfile.ZipFile(tmp_path / "model.ember") as z:
        assert "program.json" not in z.namelist()


def test_manifest_records_the_model(tmp_path):
    compiled = ember.compile(models.matmul_gelu(), opt_level=1)
    path = compiled.save(tmp_path / "m.ember")
    facts = inspect(path)
    assert facts["format_version"] == 2 and facts["ember_version"] == ember.__version__
    assert facts["kind"] == "model" and facts["target"] == "cpu" and facts["host_matches"]
    assert facts["signature"] == {"inputs": [{"name": "x", "type": "f32[n, 4]"}],
                                  "outputs": [{"name": "y", "type": "f32[n, 3]"}]}
    assert facts["options"] == {"opt_level": 1, "codegen": True, "passes": []}
    assert facts["program"]["externs"] == {"matmul": 1}
    assert set(facts["members"]) == {"graph.ir", "program.json", "weights.safetensors", "kernels/0.cpp",
                                     "kernels/0.so"}
    with zipfile.ZipFile(path) as z:
        assert json.loads(z.read("manifest.json"))["members"]["graph.ir"]["sha256"] == facts["members"]["graph.ir"]["sha256"]
        weights = z.read("weights.safetensors")
    entry = facts["members"]["weights.safetensors"]  # BLAKE3: fast to check on load
    assert set(entry) == {"blake3", "size", "stored_size"} and entry["blake3"] == blake3.blake3(weights).hexdigest()
    loaded = ember.load(path, digest=facts["digest"])
    assert loaded.artifact["digest"] == facts["digest"] and loaded.options["opt_level"] == 1


def test_saving_twice_gives_the_same_members(tmp_path):
    compiled = ember.compile(models.matmul_gelu())
    a, b = inspect(compiled.save(tmp_path / "a.ember")), inspect(compiled.save(tmp_path / "b.ember"))
    assert ({k: v.get("sha256") or v["blake3"] for k, v in a["members"].items()}
            == {k: v.get("sha256") or v["blake3"] for k, v in b["members"].items()})


def test_a_loaded_model_saves_again(tmp_path):
    compiled = ember.compile(models.with_if(True))
    loaded = round_trip(compiled, {"x": X}, tmp_path)
    again = ember.load(loaded.save(tmp_path / "again.ember"))
    np.testing.assert_array_equal(again.run({"x": X})["y"], compiled.run({"x": X})["y"])


def test_profile_and_threads_options(tmp_path):
    path = ember.compile(models.matmul_gelu()).save(tmp_path / "m.ember")
    loaded = ember.load(path, profile=True, intra_op_threads=1)
    loaded.run({"x": np.ones((2, 4), np.float32)})
    assert "extern matmul" in loaded.profile()


def test_inference_session_takes_an_artifact_and_compile_points_to_load(tmp_path):
    compiled = ember.compile(models.matmul_gelu())
    path = compiled.save(tmp_path / "m.ember")
    x = np.ones((2, 4), np.float32)
    (y,) = ember.InferenceSession(str(path)).run(None, {"x": x})
    np.testing.assert_array_equal(y, compiled.run({"x": x})["y"])
    with pytest.raises(ember.UnsupportedError, match="is a compiled artifact: load it with ember.load"):
        ember.compile(path)


def test_a_format_1_artifact_still_loads(tmp_path):
    """Format 1 checked the weights by the sha256 of each 16 MiB chunk; such an artifact
    loads, and a changed weight is still refused."""
    compiled = ember.compile(models.matmul_gelu())
    contents = members(compiled.save(tmp_path / "m.ember"))
    weights = contents["weights.safetensors"]

    def format_1(manifest):
        size = 1 << 24
        manifest["format_version"] = 1
        manifest["members"]["weights.safetensors"] = {
            "sha256": hashlib.sha256(weights).hexdigest(), "size": len(weights),
            "chunks": {"size": size, "sha256": [hashlib.sha256(weights[i:i + size]).hexdigest()
                                                for i in range(0, len(weights), size)]}}

    def write(target, weights_bytes):
        return rezip(target, {**contents, "weights.safetensors": weights_bytes}, manifest_edit=format_1)

    x = {"x": np.ones((2, 4), np.float32)}
    np.testing.assert_array_equal(ember.load(write(tmp_path / "v1.ember", weights)).run(x)["y"], compiled.run(x)["y"])
    changed = bytearray(weights)
    changed[-1] ^= 1
    with pytest.raises(ember.ArtifactError, match="'weights.safetensors' does not match its sha256"):
        ember.load(write(tmp_path / "v1-changed.ember", bytes(changed)))


def _packed_attention_graph() -> Graph:
    """A causal ember.Attention on packed float32 rows (a decoder's fused QKV), which runs
    on ember's paged-attention kernel library."""
    g = Graph("g", opsets={"": 28})
    g.inputs = [Value("qkv", TensorType(DType.float32, (symbol("b"), 6, 3 * 2 * 8)))]
    node = g.add_node("ember.Attention", [g.inputs[0], None, None],
                      [Value("y", TensorType(DType.float32, (symbol("b"), 6, 2 * 8)))], {"num_heads": 2, "causal": 1})
    g.outputs = list(node.outputs)
    return g


def test_an_artifact_ships_the_attention_kernel_library(tmp_path, monkeypatch):
    """The hand-written kernel a program runs is in the artifact, built for this machine:
    loaded with an empty kernel cache, nothing is compiled, and the kernel runs."""
    from ember.runtime import native
    from ember.runtime.native import paged_attention

    qkv = {"qkv": np.random.default_rng(0).standard_normal((2, 6, 48)).astype(np.float32)}
    compiled = ember.compile(_packed_attention_graph())
    expected = compiled.run(qkv)["y"]
    path = compiled.save(tmp_path / "m.ember")
    entries = inspect(path)["kernel_libraries"]
    assert entries == [{"kernel": "paged_attention", "dtype": "float32", "source": "kernels/paged_attention-float32.cpp",
                        "binary": "kernels/paged_attention-float32.so"}]
    before = native.installed("paged_attention-float32")
    native.uninstall("paged_attention-float32")
    refuse_building(monkeypatch, tmp_path)
    taken = []
    dense = paged_attention.dense_attention
    monkeypatch.setattr(paged_attention, "dense_attention", lambda *a, **k: taken.append(dense(*a, **k)) or taken[-1])
    try:
        loaded = ember.load(path)
        assert "artifact-" in loaded._executor.program.libraries["paged_attention-float32"]
        np.testing.assert_array_equal(loaded.run(qkv)["y"], expected)
        assert taken == [True] and "artifact-" in native.installed("paged_attention-float32")
    finally:  # later tests' programs name their own
        native.uninstall("paged_attention-float32")
        native.install({"paged_attention-float32": before})


def test_a_shipped_kernel_of_another_source_is_not_used(tmp_path, monkeypatch):
    """A shipped attention kernel whose source is not this ember's (another ember's, which
    may take other arguments) is not used: the kernel is built from ember's own source."""
    compiled = ember.compile(_packed_attention_graph())
    own = compiled._executor.program.libraries["paged_attention-float32"]
    contents = members(compiled.save(tmp_path / "m.ember"))
    source = "kernels/paged_attention-float32.cpp"
    contents[source] = contents[source].replace(b"namespace ember_paged", b"namespace ember_paged_older")
    rezip(tmp_path / "other.ember", contents, fix_hashes=True)
    qkv = {"qkv": np.random.default_rng(0).standard_normal((2, 6, 48)).astype(np.float32)}
    loaded = ember.load(tmp_path / "other.ember")
    assert loaded._executor.program.libraries == {"paged_attention-float32": own}
    np.testing.assert_array_equal(loaded.run(qkv)["y"], compiled.run(qkv)["y"])


def test_weights_are_aligned_and_mapped_in_place(tmp_path):
    """The weights member starts at a multiple of 64 in the file, so a load maps it (the
    page cache's pages, copy-on-write) rather than reading it; mmap=False reads it into
    memory of the process's own. Both give the same outputs, and a mapped load still
    refuses weights changed on disk before it."""
    import struct

    from ember.artifact.archive import ALIGN

    compiled = ember.compile(models.matmul_gelu())
    path = compiled.save(tmp_path / "m.ember")
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("weights.safetensors")
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    offset = info.header_offset + 30 + name_len + extra_len
    assert offset % ALIGN == 0
    x = {"x": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)}
    mapped, copied = ember.load(path), ember.load(path, mmap=False)
    np.testing.assert_array_equal(mapped.run(x)["y"], compiled.run(x)["y"])
    np.testing.assert_array_equal(copied.run(x)["y"], compiled.run(x)["y"])
    weights = {id(c): c for c in mapped.program.constants.values()}
    assert all(isinstance(_root_base(c), mmap.mmap) for c in weights.values())
    assert not any(isinstance(_root_base(c), mmap.mmap) for c in copied.program.constants.values())
    data[offset + info.file_size - 1] ^= 1  # the last weight's last byte
    (tmp_path / "changed.ember").write_bytes(data)
    with pytest.raises(ember.ArtifactError, match="'weights.safetensors' does not match its blake3"):
        ember.load(tmp_path / "changed.ember")


def _root_base(array):
    """What `array`'s memory belongs to, following numpy's base chain (an mmap for a mapped load)."""
    base = array
    while (isinstance(base, np.ndarray) and base.base is not None) or isinstance(base, memoryview):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    return base
