"""Every way an artifact can be damaged or forged is refused with an ArtifactError that
names what is wrong: a flipped byte, a truncated file, a missing, extra or escaping
member, a future format, a manifest that is not JSON; and, for a forger who also fixes
the manifest's hashes, program JSON that would make ember do anything but run its own
kernels."""

import json
import zipfile

import numpy as np
import pytest

import ember
from ember import ArtifactError

from . import models
from .zips import members, rezip

X = np.array([[1, -2, 3], [0.5, 0.25, -1]], np.float32)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("artifact") / "model.ember"
    ember.compile(models.with_fallback()).save(path)
    return path


def refused(path, match: str):
    with pytest.raises(ArtifactError, match=match):
        ember.load(path).run({"x": X})


def test_the_untouched_artifact_loads(artifact):
    ember.load(artifact).run({"x": X})


def test_a_flipped_byte_in_the_weights(tmp_path):
    path = ember.compile(models.matmul_gelu()).save(tmp_path / "m.ember")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("weights.safetensors")
    data[info.header_offset + 30 + len(info.filename) + info.file_size - 1] ^= 0x01  # the last weight's last byte
    path.write_bytes(data)
    with pytest.raises(ArtifactError, match="member 'weights.safetensors' does not match its blake3"):
        ember.load(path)


@pytest.mark.parametrize("member", ["program.json", "graph.ir", "kernels/0.so", "kernels/0.cpp"])
def test_a_changed_member(artifact, tmp_path, member):
    contents = members(artifact)
    changed = bytearray(contents[member])
    changed[len(changed) // 2] ^= 0x20
    contents[member] = bytes(changed)
    refused(rezip(tmp_path / "m.ember", contents), f"member {member!r} does not match its sha256")


def test_a_flipped_byte_in_a_compressed_member(artifact, tmp_path):
    data = bytearray(artifact.read_bytes())
    with zipfile.ZipFile(artifact) as z:
        info = z.getinfo("program.json")
    data[info.header_offset + 30 + len("program.json") + info.compress_size // 2] ^= 0xFF
    (tmp_path / "m.ember").write_bytes(data)
    refused(tmp_path / "m.ember", "member 'program.json' (is corrupt|cannot be read|does not match)")


@pytest.mark.parametrize("keep", [0.5, 0.99, 0.0])
def test_a_truncated_file(artifact, tmp_path, keep):
    data = artifact.read_bytes()
    (tmp_path / "m.ember").write_bytes(data[:int(len(data) * keep)])
    refused(tmp_path / "m.ember", "truncated")


@pytest.mark.parametrize("member", ["program.json", "weights.safetensors", "kernels/0.so", "graph.ir"])
def test_a_missing_member(artifact, tmp_path, member):
    contents = members(artifact)
    del contents[member]
    refused(rezip(tmp_path / "m.ember", contents), f"member {member!r} is missing")


def test_a_member_the_manifest_does_not_list(artifact, tmp_path):
    contents = {**members(artifact), "kernels/evil.so": b"\x7fELF"}
    refused(rezip(tmp_path / "m.ember", contents), "member 'kernels/evil.so' is not in the manifest")


def test_a_future_format_version(artifact, tmp_path):
    def future(manifest):
        manifest["format_version"] = 99
        manifest["ember_version"] = "9.0.0"

    refused(rezip(tmp_path / "m.ember", members(artifact), manifest_edit=future),
            "written by a newer ember .*format version 99.*upgrade ember")


@pytest.mark.parametrize("name", ["../evil", "kernels/../../evil", "/etc/evil", "C:/evil", "a//b", "a\\..\\b"])
def test_a_member_that_escapes_its_folder(artifact, tmp_path, name):
    contents = {**members(artifact), name: b"x"}
    refused(rezip(tmp_path / "m.ember", contents, fix_hashes=True), "refused")


def test_a_manifest_that_is_not_json(artifact, tmp_path):
    contents = members(artifact)
    with zipfile.ZipFile(tmp_path / "m.ember", "w") as z:
        for name, data in contents.items():
            z.writestr(name, data if name != "manifest.json" else b"{not json")
    refused(tmp_path / "m.ember", "manifest.json is not JSON")


def test_not_an_artifact(tmp_path, artifact):
    (tmp_path / "m.ember").write_bytes(b"GGUF" + bytes(100))
    refused(tmp_path / "m.ember", "not an ember artifact")
    with zipfile.ZipFile(tmp_path / "z.ember", "w") as z:
        z.writestr("hello.txt", "hi")
    refused(tmp_path / "z.ember", "it has no manifest.json")
    refused(tmp_path / "absent.ember", "cannot open it")


def test_a_pinned_digest(artifact):
    with pytest.raises(ArtifactError, match="not the 00ff asked for"):
        ember.load(artifact, digest="00ff")


# -- forged artifacts: the manifest's hashes fixed up to match -------------------------------
def forged_program(artifact, tmp_path, edit) -> str:
    contents = members(artifact)
    program = json.loads(contents["program.json"])
    edit(program)
    contents["program.json"] = json.dumps(program).encode()
    return rezip(tmp_path / "m.ember", contents, fix_hashes=True)


def fallback_step(program) -> dict:
    return next(s for s in program["steps"] if s["kind"] == "fallback")


@pytest.mark.parametrize("edit, match", [
    (lambda p: fallback_step(p)["params"].update(x={"$pickle": "gASV"}), "unknown value kind '\\$pickle'"),
    (lambda p: p["symbols"].append(["S", "n); __import__('os').system('id'", {}]), "bad symbol name"),
    (lambda p: p["symbols"].append(["S", "m", {"__class__": True}]), "bad assumptions"),
    (lambda p: p["buffers"][0]["shape"].insert(0, {"$expr": ["Mod", 3]}), "Mod of 1 arguments"),
    (lambda p: p["buffers"][0]["shape"].insert(0, {"$expr": ["Pow", 9, ["Pow", 9, 9]]}), "only integer exponents"),
    (lambda p: p["buffers"][0]["shape"].insert(0, {"$expr": ["__import__", "os"]}), "is not one ember writes"),
    (lambda p: p["steps"].append({**fallback_step(p), "kind": "extern", "name": "os.system"}),
     "'os.system' is not an extern kernel"),
    (lambda p: fallback_step(p)["params"].update(node={"$node": 99}), "bad \\$node value 99: no such node"),
    (lambda p: p["steps"][0].update(args=["no_such_buffer"]), "a buffer the program lacks"),
    (lambda p: p.update(library=7), "malformed"),
    (lambda p: p.pop("steps"), "malformed"),
])
def test_forged_program_json(artifact, tmp_path, edit, match):
    refused(forged_program(artifact, tmp_path, edit), match)


def test_forged_sizes_of_a_program_that_defers_its_graph(tmp_path):
    """A program that never points into its graph (no fallback) loads without parsing it:
    its signature's names are the manifest's, checked against the graph when the graph is
    first asked for; a size that divides by zero is an ExecutionError naming the buffer."""
    path = ember.compile(models.matmul_gelu()).save(tmp_path / "source.ember")
    x = np.ones((2, 4), np.float32)
    renamed = ember.load(rezip(tmp_path / "renamed.ember", members(path),
                               manifest_edit=lambda m: m["signature"]["inputs"][0].update(name="z")))
    assert renamed.run({"z": x})["y"].shape == (2, 3)
    with pytest.raises(ArtifactError, match="manifest's inputs \\['z'\\] are not the graph's \\['x'\\]"):
        renamed.graph  # noqa: B018
    with pytest.raises(ArtifactError, match="manifest's inputs .* do not match the program's 1 inputs"):
        ember.load(rezip(tmp_path / "two.ember", members(path),
                         manifest_edit=lambda m: m["signature"]["inputs"].append({"name": "w"})))

    def by_zero(p):
        b = next(b for b in p["buffers"] if b["kind"] == "temp")
        b["shape"][0] = {"$expr": ["Mod", b["shape"][0]["$expr"], 0]}

    with pytest.raises(ember.ExecutionError, match="the size of buffer .* cannot be evaluated at n = 2: "
                                                   "ZeroDivisionError"):
        ember.load(forged_program(path, tmp_path, by_zero)).run({"x": x})


def test_forged_graph_with_an_unknown_op_where_its_reference_would_run(artifact, tmp_path):
    contents = members(artifact)  # Scaler is the program's fallback: run by the op's reference
    contents["graph.ir"] = contents["graph.ir"].replace(b"= ai.onnx.ml.Scaler(", b"= os.system(")
    refused(rezip(tmp_path / "m.ember", contents, fix_hashes=True), "op os.system.* is not an op this ember knows")


def test_forged_graph_with_an_unknown_op_and_no_program(tmp_path):
    path = ember.compile(models.with_fallback(), codegen=False).save(tmp_path / "plain.ember")
    contents = members(path)
    assert "program.json" not in contents  # the reference interpreter runs every node
    contents["graph.ir"] = contents["graph.ir"].replace(b"= Mul(", b"= os.system(")
    refused(rezip(tmp_path / "m.ember", contents, fix_hashes=True), "op os.system.* is not an op this ember knows")


def test_an_unknown_op_name_on_a_kernel_node_is_never_looked_up(artifact, tmp_path):
    """Mul is computed by a generated kernel of the program: its name in graph.ir is not
    checked on load (that would import the op registry, onnx and ml_dtypes, for nothing),
    and nothing resolves it to run. The outputs are the shipped kernels'; the graph itself
    is refused wherever its ops are used."""
    contents = members(artifact)
    contents["graph.ir"] = contents["graph.ir"].replace(b"= Mul(", b"= os.system(")
    forged = ember.load(rezip(tmp_path / "m.ember", contents, fix_hashes=True))
    np.testing.assert_array_equal(forged.run({"x": X})["y"], ember.load(artifact).run({"x": X})["y"])
    with pytest.raises(ember.IRError, match="os.system"):
        ember.compile(forged.graph)


def test_forged_weights_header(artifact, tmp_path):
    contents = members(artifact)
    weights = contents["weights.safetensors"]
    header = b'{"x": {"dtype": "F32", "shape": [1000000], "data_offsets": [0, 4000000]}}'
    contents["weights.safetensors"] = len(header).to_bytes(8, "little") + header + weights[8:]
    refused(rezip(tmp_path / "m.ember", contents, fix_hashes=True), "not a valid safetensors file")


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(options=[1]), "manifest's 'options' is malformed"),
    (lambda m: m.pop("target"), "manifest's 'target' is malformed"),
    (lambda m: m.update(target="tpu"), "compiled for target 'tpu', which this ember cannot run"),
    (lambda m: m.update(kind="plugin"), "kind 'plugin' is not one ember writes"),
    (lambda m: m["signature"]["inputs"][0].update(name="z"), "manifest's inputs \\['z'\\] are not the graph's"),
    (lambda m: m.update(libraries="kernels/0.so"), "manifest's 'libraries' is malformed"),
    (lambda m: m.update(libraries=[{"source": 3}]), "list of kernel libraries is malformed"),
    (lambda m: m["members"]["graph.ir"].update(size=-1), "entry for member 'graph.ir' is malformed"),
    (lambda m: m["members"]["weights.safetensors"].update(blake3=7), "entry for member 'weights.safetensors' is malformed"),
    (lambda m: m["members"]["weights.safetensors"].update(sha256="00"),  # two hashes: which one counts?
     "entry for member 'weights.safetensors' is malformed"),
    (lambda m: m["members"]["weights.safetensors"].update(chunks={"size": 1 << 24, "sha256": ["00"]}),
     "entry for member 'weights.safetensors' is malformed"),  # a format-1 chunk list without its sha256
    (lambda m: m.update(format="zip"), "not an ember artifact's manifest"),
])
def test_a_malformed_manifest(artifact, tmp_path, edit, match):
    refused(rezip(tmp_path / "m.ember", members(artifact), manifest_edit=edit), match)


@pytest.mark.parametrize("listed, match", [
    ("vector", "is marked transposed but is not a matrix"),
    ("not a list", "'\\$transposed' entry that is not a list of names"),
    ("missing", "lists 'feedfacefeedface' as transposed, not a tensor of it"),
])
def test_forged_transposed_weights(tmp_path, listed, match):
    """The list of weights stored transposed is checked like the rest of the header."""
    contents = members(ember.compile(models.matmul_gelu()).save(tmp_path / "source.ember"))
    weights = contents["weights.safetensors"]
    n = int.from_bytes(weights[:8], "little")
    header = json.loads(weights[8:8 + n])
    vector = next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 1)
    raw = json.loads(header.setdefault("__metadata__", {}).get("ember.raw", "{}"))
    raw["$transposed"] = {"vector": [vector], "not a list": vector, "missing": ["feedfacefeedface"]}[listed]
    header["__metadata__"]["ember.raw"] = json.dumps(raw)
    encoded = json.dumps(header).encode()
    contents["weights.safetensors"] = len(encoded).to_bytes(8, "little") + encoded + weights[8 + n:]
    refused(rezip(tmp_path / "m.ember", contents, fix_hashes=True), match)
