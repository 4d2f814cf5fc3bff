"""fold_constants keeps one constant where a graph reads it several ways: an Identity of a
constant is that constant (not a copy), and the same op folded on the same constants is
folded once. chython-rxnmap reads each shared layer weight through an Identity per layer:
8 weights had become 61 copies, each packed for oneDNN apart."""

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.frontends.onnx import load_onnx
from ember.passes import get_pass


def _shared_weight_model(layers: int = 4):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 16)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    nodes, x = [], "x"
    for i in range(layers):
        nodes += [helper.make_node("Identity", ["w"], [f"w{i}"]),
                  helper.make_node("Transpose", [f"w{i}"], [f"t{i}"], perm=[1, 0]),
                  helper.make_node("MatMul", [x, f"t{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", "b"], [f"h{i}"])]
        x = f"h{i}"
    nodes.append(helper.make_node("Identity", ["w"], ["w_out"]))  # a graph output keeps its name
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("w_out", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w, b


def test_a_constant_read_through_identities_stays_one_constant():
    model, w, b = _shared_weight_model()
    graph = load_onnx(model)
    get_pass("fold_constants").run(graph)
    matmul_weights = {id(n.inputs[1]) for n in graph.nodes if n.op == "MatMul"}
    assert len(matmul_weights) == 1  # the four Transposes of one constant folded once
    assert [v.name for v in graph.outputs][1] == "w_out"
    compiled = ember.compile(model)
    # and the executor packs it once for every GEMM that reads it
    packed = [step.params.get("tiled") or step.params.get("packed")
              for kind, _, step in compiled._executor._steps if step.name == "linear"]
    assert len(packed) == 4 and packed[0] is not None and all(p is packed[0] for p in packed)
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    want = x
    for _ in range(4):
        want = want @ w.T + b
    got = compiled.run({"x": x})
    np.testing.assert_allclose(got[compiled.outputs[0].name], want, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(got["w_out"], w)
