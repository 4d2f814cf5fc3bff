"""Every pass, and the O1-O3 pipelines, on random graphs: the IR stays valid and the
outputs stay the same (ember.testing.check_pass)."""

import pytest
from hypothesis import HealthCheck, given, settings

from ember.passes import build_pipeline, get_pass, registered_passes
from ember.testing import check_pass, graphs_and_feeds

BUILTIN = ["expand_ops", "fold_constants", "canonicalize", "eliminate_common_subexpressions", "fuse_norms", "fuse_gelu",
           "fuse_silu", "fuse_rotary", "fuse_linear", "fuse_attention", "fuse_qkv", "fuse_skip_layernorm",
           "fuse_bias_activation", "fuse_integer_matmul", "fuse_conv", "channels_last", "eliminate_dead_code", "flush_denormals"]
# passes that change outputs by design, each tested within its error where it is named
LOSSY = {"quantize_weights": "tests/passes/test_quantize_weights.py: within the quantization's error",
         "fold_dynamic_quantization": "tests/passes/test_fold_dynamic_quantization.py: within the two schemes' rounding",
         "fold_qdq": "tests/passes/test_fold_qdq.py: within float32 rounding (and a quantization step where it flips)",
         # (one rank's shard: its graph computes a part; the ranks together give the outputs)
         "shard_tensor_parallel": "tests/test_tensor_parallel.py: ranks over a process group give the unsharded "
                                  "outputs; tests/passes/test_shard_tensor_parallel.py: the shards' slices"}
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_every_builtin_pass_is_covered_here():
    assert set(BUILTIN) | set(LOSSY) == {name for name in registered_passes() if get_pass(name).__module__.startswith("ember.")}


@pytest.mark.parametrize("name", BUILTIN)
@SETTINGS
@given(case=graphs_and_feeds())
def test_pass_preserves_outputs(name, case):
    check_pass(get_pass(name), *case)


@pytest.mark.parametrize("opt_level", [1, 2, 3])
@SETTINGS
@given(case=graphs_and_feeds())
def test_pipeline_preserves_outputs(opt_level, case):
    check_pass(build_pipeline(opt_level), *case)


def test_check_pass_catches_a_wrong_rewrite():
    import numpy as np

    from ember.ir import DType, Graph, TensorType, Value
    from ember.passes import Pass, PassResult

    class ReluToNeg(Pass):  # a broken "optimization"
        name = "relu_to_neg"

        def run(self, graph):
            for node in graph.nodes:
                if node.op == "Relu":
                    node.op = "Neg"
            return PassResult(graph, True)

    t = TensorType(DType.float32, (3,))
    x = Value("x", t)
    g = Graph("g", inputs=[x], opsets={"": 28})
    g.outputs = g.add_node("Relu", [x], [Value("y", t)]).outputs
    with pytest.raises(AssertionError, match="output 'y'"):
        check_pass(ReluToNeg(), g, {"x": np.array([-1, 0, 2], np.float32)})
