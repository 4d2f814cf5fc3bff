import sys
import textwrap

import numpy as np
import pytest

import ember
from ember.errors import IRError, UnsupportedError
from ember.ir import DType, Graph, TensorType, Value, evaluate, symbol
from ember.passes import PassManager, PassResult, get_pass, pipeline_names, registry

F32 = TensorType(DType.float32, (symbol("n"), 3))


def _graph() -> Graph:
    """y = Relu(x + (c1 * c2)) + Relu(x + (c1 * c2)), plus a dead Neg."""
    x = Value("x", F32)
    g = Graph("g", inputs=[x], opsets={"": 28})
    c1 = g.add_constant("c1", np.full(3, 2.0, np.float32))
    c2 = g.add_constant("c2", np.full(3, 3.0, np.float32))
    g.add_constant("c2_again", np.full(3, 3.0, np.float32))
    prod = g.add_node("Mul", [c1, c2], name="prod").outputs[0]
    a1 = g.add_node("Add", [x, prod], name="a1").outputs[0]
    a2 = g.add_node("Add", [x, prod], name="a2").outputs[0]
    r1 = g.add_node("Relu", [a1], name="r1").outputs[0]
    r2 = g.add_node("Relu", [a2], name="r2").outputs[0]
    g.add_node("Neg", [x], name="dead")
    y = g.add_node("Add", [r1, r2], [Value("y", F32)], name="sum").outputs[0]
    g.outputs = [y]
    return g


def _outputs(g):
    return evaluate(g, {"x": np.array([[-10, 0, 1.5]], np.float32)})["y"]


def test_o2_folds_dedupes_and_sweeps_without_changing_results():
    expected = _outputs(_graph())
    g, stats = PassManager([get_pass(n) for n in pipeline_names(2)], verify=True).run(_graph())
    assert [n.name for n in g.nodes] == ["a1", "r1", "sum"]
    assert [c.name for c in g.constants] == ["prod_0_out0"]  # the folded Mul's output
    assert [s.name for s in stats] == pipeline_names(2)
    assert stats[0].nodes_before == 7 and stats[-1].nodes_after == 3
    np.testing.assert_array_equal(_outputs(g), expected)


def test_returned_values_keep_their_names():
    g = _graph()
    dup = g.add_node("Add", [g.nodes[-1].inputs[0], g.nodes[-1].inputs[1]], [Value("y2", F32)], name="sum2")
    g.outputs.append(dup.outputs[0])
    compiled = ember.compile(g)
    assert [o.name for o in compiled.outputs] == ["y", "y2"]


def test_dump_ir_writes_the_graph_after_every_pass(tmp_path):
    ember.compile(_graph(), dump_ir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    names = ember.passes.pipeline_names(2)
    assert files == ["00-input.ir", *(f"{i:02d}-{name}.ir" for i, name in enumerate(names, 1))]
    assert names[:4] == ["expand_ops", "fold_qdq", "fold_constants", "canonicalize"] and names[-1] == "flush_denormals"
    assert "Mul(" in (tmp_path / "00-input.ir").read_text()
    assert "Mul(" not in (tmp_path / "03-fold_constants.ir").read_text()


def test_verify_names_the_pass_that_broke_the_ir():
    class Breaker(ember.passes.Pass):
        name = "breaker"

        def run(self, graph):
            graph.nodes.reverse()
            return PassResult(graph, True)

    with pytest.raises(IRError, match="after pass 'breaker'"):
        PassManager([Breaker()], verify=True).run(_graph())


def test_pipeline_placement_errors():
    with pytest.raises(UnsupportedError, match="opt_level"):
        pipeline_names(7)
    with pytest.raises(UnsupportedError, match="cannot place 'x' after 'nope'"):
        pipeline_names(2, [("x", "after", "nope")])
    with pytest.raises(UnsupportedError, match="unknown pass 'no_such_pass'"):
        ember.compile(_graph(), passes=[("no_such_pass", "after", "fold_constants")])


def test_random_ops_are_not_folded():
    g = Graph("g", opsets={"": 28})
    r = g.add_node("RandomUniform", [], [Value("r", TensorType(DType.float32, (4,)))], {"shape": [4]}, name="rand")
    g.outputs = r.outputs
    assert [n.op for n in ember.compile(g).graph] == ["RandomUniform"]


PLUGIN = textwrap.dedent('''
    from ember.passes import Pass, PassResult

    class TagRelus(Pass):
        """Renames every Relu node: visible proof that the plugin ran."""
        name = "tag_relus"

        def run(self, graph):
            for node in graph.nodes:
                if node.op == "Relu":
                    node.name = "tagged_" + node.name
            return PassResult(graph, True)
''')


def test_a_pass_from_an_entry_point_runs_in_a_pipeline(tmp_path, monkeypatch):
    (tmp_path / "ember_test_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "ember_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ember-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ember.passes]\ntag_relus = ember_test_plugin:TagRelus\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    registry._load_builtin()  # ember's own passes register lazily: into the real registry, before the copy
    monkeypatch.setattr(registry, "_PASSES", dict(registry._PASSES))
    compiled = ember.compile(_graph(), passes=[("tag_relus", "after", "flush_denormals")])
    assert "tag_relus" in registry.registered_passes()
    assert [n.name for n in compiled.graph if n.op == "Relu"] == ["tagged_r1"]
    assert compiled.stats.passes[-1].name == "tag_relus"
    sys.modules.pop("ember_test_plugin", None)


def test_passes_run_inside_control_flow_bodies_once(tmp_path, monkeypatch):
    """The pass manager runs each pass in If branches too (their outer-scope reads
    included): a SwiGLU written out inside a branch is fused there, the dumped IR shows it,
    and codegen lowers the branch as the pipeline left it (one pipeline run in all)."""
    from onnx import TensorProto, helper

    from ember.passes import manager

    F = TensorProto.FLOAT
    then_branch = helper.make_graph(
        [helper.make_node("Sigmoid", ["g"], ["s"]), helper.make_node("Mul", ["g", "s"], ["swish"]),
         helper.make_node("Mul", ["swish", "u"], ["then_y"])],
        "then", [], [helper.make_tensor_value_info("then_y", F, [2, 8])])
    else_branch = helper.make_graph([helper.make_node("Neg", ["u"], ["else_y"])], "else", [],
                                    [helper.make_tensor_value_info("else_y", F, [2, 8])])
    model = helper.make_model(helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)], "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), helper.make_tensor_value_info("g", F, [2, 8]),
         helper.make_tensor_value_info("u", F, [2, 8])],
        [helper.make_tensor_value_info("y", F, [2, 8])]), opset_imports=[helper.make_opsetid("", 17)])
    runs = []
    real_run = manager.PassManager.run
    monkeypatch.setattr(manager.PassManager, "run", lambda self, graph: runs.append(graph) or real_run(self, graph))
    compiled = ember.compile(model, dump_ir=tmp_path)
    assert len(runs) == 1  # the model's pipeline, and no other for the branch
    (node,) = [n for n in compiled.graph.nodes if n.op == "If"]
    assert [n.op for n in node.attrs["then_branch"].nodes] == ["ember.SwiGLU"]
    assert next(s for s in compiled.stats.passes if s.name == "fuse_silu").modified
    assert "ember.SwiGLU" in sorted(tmp_path.glob("*fuse_silu.ir"))[0].read_text()
    rng = np.random.default_rng(0)
    g, u = rng.standard_normal((2, 8)).astype(np.float32), rng.standard_normal((2, 8)).astype(np.float32)
    out = compiled.run({"cond": np.array(True), "g": g, "u": u})["y"]
    np.testing.assert_allclose(out, g / (1 + np.exp(-g)) * u, rtol=1e-5, atol=1e-6)
    assert compiled.stats.fallback_nodes == []  # the If on kernels: its branches lowered as they are
