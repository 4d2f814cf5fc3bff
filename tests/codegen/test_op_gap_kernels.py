"""Kernels for normalizations, reductions, index remaps, optimizer steps and ai.onnx.ml
ops against their reference implementations, on random inputs (hypothesis). Each
compiled graph is checked to run with no node on the reference fallback."""

import copy

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ember
from ember.codegen import cpu
from ember.codegen.lowering import lower_graph
from ember.ir import DType, Graph, TensorType, Value
from ember.ir.interpreter import evaluate
from ember.ir.types import symbol

from .test_linalg_kernels import _check
from .test_lowerings import SETTINGS, _compiled

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")
N, M = symbol("n"), symbol("m")


# -- reductions and normalizations -----------------------------------------------------------
@pytest.mark.parametrize("axes, keepdims", [((1,), 1), ((0, 2), 0), ((-1,), 1)])
@SETTINGS
@given(data=st.data())
def test_reduce_log_sum_exp(data, axes, keepdims):
    shape = (3, N, 2)
    out = tuple(1 if a in [x % 3 for x in axes] else d for a, d in enumerate(shape)
                if keepdims or a not in [x % 3 for x in axes])
    consts = ((1, np.array(axes, np.int64).tobytes(), np.int64, (len(axes),)),)
    compiled, graph = _compiled("ReduceLogSumExp", (("x", DType.float64, shape),), (("y", DType.float64, out),),
                                (("keepdims", keepdims),), consts)
    n = data.draw(st.integers(0, 5))  # 0: an empty reduction gives -inf
    special = st.sampled_from([np.inf, -np.inf, np.nan, 800.0, -800.0])
    x = data.draw(hnp.arrays(np.float64, (3, n, 2), elements=st.one_of(st.floats(-50, 50), special)))
    _check(compiled, graph, {"x": x}, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [0, 1, -1])
@SETTINGS
@given(data=st.data())
def test_lp_normalization(data, p, axis):
    compiled, graph = _compiled("LpNormalization", (("x", DType.float32, (N, 3)),), (("y", DType.float32, (N, 3)),),
                                (("p", p), ("axis", axis)))
    x = data.draw(hnp.arrays(np.float32, (data.draw(st.integers(0, 5)), 3),
                             elements=st.sampled_from([0.0, 1.0, -2.0, 3.5, -0.25])))  # zero norms too
    _check(compiled, graph, {"x": x}, rtol=1e-6, atol=1e-7)


@SETTINGS
@given(data=st.data())
def test_instance_normalization(data):
    compiled, graph = _compiled("InstanceNormalization", (("x", DType.float32, (N, 3, M, 2)), ("s", DType.float32, (3,)),
                                                          ("b", DType.float32, (3,))),
                                (("y", DType.float32, (N, 3, M, 2)),), (("epsilon", 1e-3),))
    n, m = data.draw(st.integers(0, 3)), data.draw(st.integers(1, 4))
    feeds = {"x": data.draw(hnp.arrays(np.float32, (n, 3, m, 2), elements=st.floats(-10, 10, width=32))),
             "s": data.draw(hnp.arrays(np.float32, (3,), elements=st.floats(-2, 2, width=32))),
             "b": data.draw(hnp.arrays(np.float32, (3,), elements=st.floats(-2, 2, width=32)))}
    _check(compiled, graph, feeds, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("axes", [(0, 2, 3), (1,), (2, 3)])
@SETTINGS
@given(data=st.data())
def test_mean_variance_normalization(data, axes):
    compiled, graph = _compiled("MeanVarianceNormalization", (("x", DType.float32, (2, 3, N, 2)),),
                                (("y", DType.float32, (2, 3, N, 2)),), (("axes", axes),))
    # E[x^2] - E[x]^2 cancels, so the sums' order would show: integer values sum exactly in any order
    x = data.draw(hnp.arrays(np.float32, (2, 3, data.draw(st.integers(1, 4)), 2), elements=st.integers(-4, 4).map(float)))
    _check(compiled, graph, {"x": x}, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@SETTINGS
@given(data=st.data())
def test_lrn_sums_a_window_of_channels(data, size):
    compiled, graph = _compiled("LRN", (("x", DType.float32, (N, 4, M, 2)),), (("y", DType.float32, (N, 4, M, 2)),),
                                (("size", size), ("alpha", 0.5), ("beta", 0.75), ("bias", 1.5)))
    x = data.draw(hnp.arrays(np.float32, (data.draw(st.integers(0, 3)), 4, data.draw(st.integers(1, 3)), 2),
                             elements=st.floats(-3, 3, width=32)))
    _check(compiled, graph, {"x": x}, rtol=1e-5, atol=1e-6)


def test_lrn_and_lp_normalization_references_agree_with_onnx_where_it_follows_the_spec():
    """ember's references fix two slips of onnx.reference (LRN windows only the first N
    channels; L1 norms sum x, not |x|); where those do not show, they agree with it."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    for op, attrs, x in [("LRN", {"size": 3, "alpha": 0.5, "beta": 0.75, "bias": 1.5},
                          rng.standard_normal((4, 4, 2, 2)).astype(np.float32)),
                         ("LpNormalization", {"p": 1, "axis": 1}, rng.random((3, 4)).astype(np.float32))]:
        proto = helper.make_model(helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "g",
                                                    [helper.make_tensor_value_info("x", 1, x.shape)],
                                                    [helper.make_tensor_value_info("y", 1, x.shape)]))
        compiled, graph = _compiled(op, (("x", DType.float32, x.shape),), (("y", DType.float32, x.shape),),
                                    tuple(attrs.items()))
        want = ReferenceEvaluator(proto).run(None, {"x": x})[0]
        np.testing.assert_allclose(evaluate(copy.deepcopy(graph), {"x": x})["y"], want, rtol=1e-6)


# -- index remaps -----------------------------------------------------------------------------
@pytest.mark.parametrize("batch_dims, k", [(0, 1), (0, 2), (1, 1)])
@SETTINGS
@given(data=st.data())
def test_gather_nd(data, batch_dims, k):
    dshape = (2, 3, 4)
    n = data.draw(st.integers(0, 3))
    ishape = (2, n, k) if batch_dims else (n, k)
    out = (*ishape[:-1], *dshape[batch_dims + k:])
    compiled, graph = _compiled("GatherND", (("x", DType.float32, dshape), ("i", DType.int64, ishape)),
                                (("y", DType.float32, out),), (("batch_dims", batch_dims),))
    x = np.arange(24, dtype=np.float32).reshape(dshape)
    bounds = [dshape[batch_dims + j] for j in range(k)]
    i = np.stack([data.draw(hnp.arrays(np.int64, ishape[:-1], elements=st.integers(-d, d - 1))) for d in bounds], -1)
    _check(compiled, graph, {"x": x, "i": i})


@pytest.mark.parametrize("batch_axis, time_axis", [(0, 1), (1, 0)])
@SETTINGS
@given(data=st.data())
def test_reverse_sequence(data, batch_axis, time_axis):
    steps, batch = data.draw(st.integers(1, 5)), 3
    shape = [0, 0, 2]
    shape[batch_axis], shape[time_axis] = batch, steps
    compiled, graph = _compiled("ReverseSequence", (("x", DType.int32, tuple(shape)), ("n", DType.int64, (batch,))),
                                (("y", DType.int32, tuple(shape)),),
                                (("batch_axis", batch_axis), ("time_axis", time_axis)))
    x = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    lens = data.draw(hnp.arrays(np.int64, (batch,), elements=st.integers(-steps - 1, steps + 1)))
    _check(compiled, graph, {"x": x, "n": lens})


@pytest.mark.parametrize("mode", ["linear", "circular"])
@SETTINGS
@given(data=st.data())
def test_tensor_scatter(data, mode):
    cache, length = data.draw(st.integers(1, 5)), data.draw(st.integers(0, 3))
    length = min(length, cache)
    compiled, graph = _compiled("TensorScatter", (("past", DType.float32, (2, 3, cache, 2)),
                                                  ("new", DType.float32, (2, 3, length, 2)), ("w", DType.int64, (2,))),
                                (("y", DType.float32, (2, 3, cache, 2)),), (("mode", mode),))
    past = np.arange(12 * cache, dtype=np.float32).reshape(2, 3, cache, 2)
    new = -1 - np.arange(12 * length, dtype=np.float32).reshape(2, 3, length, 2)
    top = cache - length if mode == "linear" else 3 * cache
    w = data.draw(hnp.arrays(np.int64, (2,), elements=st.integers(-cache if mode == "linear" else 0, top)))
    _check(compiled, graph, {"past": past, "new": new, "w": w})
    if mode == "linear":
        with pytest.raises(ember.ExecutionError, match="write_indices"):
            compiled.run({"past": past, "new": new, "w": np.array([0, cache - length + 1], np.int64)})


# -- optimizer steps, ai.onnx.ml --------------------------------------------------------------
OPTIMIZERS = {"Adagrad": ("G", "H"), "Adam": ("G", "V", "H"), "Momentum": ("G", "V")}


@pytest.mark.parametrize("op, attrs", [
    ("Adagrad", (("decay_factor", 0.1), ("epsilon", 1e-5), ("norm_coefficient", 0.001))),
    ("Adam", (("alpha", 0.95), ("beta", 0.85), ("epsilon", 1e-2), ("norm_coefficient", 0.001),
              ("norm_coefficient_post", 0.01))),
    ("Momentum", (("alpha", 0.95), ("beta", 0.85), ("mode", "standard"), ("norm_coefficient", 0.001))),
    ("Momentum", (("alpha", 0.9), ("beta", 1.0), ("mode", "nesterov"), ("norm_coefficient", 0.01)))])
@SETTINGS
@given(data=st.data())
def test_optimizer_steps(data, op, attrs):
    n = data.draw(st.integers(1, 2))  # tensors updated at once
    shapes = [(data.draw(st.integers(0, 3)),) for _ in range(n)]
    kinds = ("X", *OPTIMIZERS[op])
    inputs = [("R", DType.float32, ()), ("T", DType.int64, ())]
    inputs += [(f"{kind}{k}", DType.float32, shapes[k]) for kind in kinds for k in range(n)]
    outputs = tuple((f"{kind}{k}_new", DType.float32, shapes[k]) for kind in ("X", *OPTIMIZERS[op][1:])
                    for k in range(n))
    compiled, graph = _compiled(f"ai.onnx.preview.training.{op}", tuple(inputs), outputs, attrs)
    feeds = {"R": np.float32(data.draw(st.floats(0.01, 1))), "T": np.int64(data.draw(st.integers(0, 3)))}
    for name, _, shape in inputs[2:]:
        low = 0 if name.startswith("H") else -2  # squared-gradient accumulators are not negative
        feeds[name] = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(low, 2, width=32)))
    # (onnx.reference's Adam of one tensor returns float64)
    _check(compiled, graph, feeds, rtol=1e-5, atol=1e-6, declared_dtypes=True)


@SETTINGS
@given(data=st.data(), threshold=st.sampled_from([0.0, 1.0, -0.5]))
def test_binarizer(data, threshold):
    compiled, graph = _compiled("ai.onnx.ml.Binarizer", (("x", DType.float32, (N,)),), (("y", DType.float32, (N,)),),
                                (("threshold", threshold),))
    x = data.draw(hnp.arrays(np.float32, (data.draw(st.integers(0, 9)),),
                             elements=st.sampled_from([0.0, 1.0, -0.5, 2.0, np.nan, -np.inf])))
    _check(compiled, graph, {"x": x})


@pytest.mark.parametrize("x_shape, i_shape", [((3, 4), (2,)), ((2, 3, 4), (1, 3)), ((4,), (2,)), ((3, 4), (2, 2))])
@SETTINGS
@given(data=st.data())
def test_array_feature_extractor(data, x_shape, i_shape):
    count = int(np.prod(i_shape))
    out = (1, count) if len(x_shape) == 1 else (*x_shape[:-1], count)
    compiled, graph = _compiled("ai.onnx.ml.ArrayFeatureExtractor", (("x", DType.float32, x_shape),
                                                                      ("i", DType.int64, i_shape)),
                                (("y", DType.float32, out),))
    x = np.arange(np.prod(x_shape), dtype=np.float32).reshape(x_shape)
    i = data.draw(hnp.arrays(np.int64, i_shape, elements=st.integers(-x_shape[-1], x_shape[-1] - 1)))
    _check(compiled, graph, {"x": x, "i": i})


@SETTINGS
@given(data=st.data(), momentum=st.sampled_from([0.9, 0.5]))
def test_batch_normalization_in_training_mode(data, momentum):
    f32, c = DType.float32, (3,)
    compiled, graph = _compiled("BatchNormalization", (("x", f32, (N, 3, M)), ("s", f32, c), ("b", f32, c),
                                                       ("mean", f32, c), ("var", f32, c)),
                                (("y", f32, (N, 3, M)), ("running_mean", f32, c), ("running_var", f32, c)),
                                (("training_mode", 1), ("momentum", momentum), ("epsilon", 1e-3)))
    n, m = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    feeds = {"x": data.draw(hnp.arrays(np.float32, (n, 3, m), elements=st.floats(-5, 5, width=32)))}
    for name in ("s", "b", "mean", "var"):
        feeds[name] = data.draw(hnp.arrays(np.float32, c, elements=st.floats(0, 2, width=32)))
    _check(compiled, graph, feeds, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceProd", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2",
                                "ReduceLogSum", "ReduceSumSquare", "ReduceMean"])
@pytest.mark.parametrize("dtype", [DType.float32, DType.int64])
def test_empty_reductions_give_the_fold_identity(op, dtype):
    if dtype == DType.int64 and op in ("ReduceL2", "ReduceLogSum", "ReduceMean"):
        return  # (a float formula: stays on the reference)
    consts = ((1, np.array([1], np.int64).tobytes(), np.int64, (1,)),)
    compiled, graph = _compiled(op, (("x", dtype, (2, N, 3)),), (("y", dtype, (2, 1, 3)),), (("keepdims", 1),), consts)
    for n in (0, 2):
        x = np.arange(6 * n).reshape(2, n, 3).astype(dtype.numpy)
        _check(compiled, graph, {"x": x}, rtol=1e-6)


def _random_trees(data, features, n_targets):
    """TreeEnsemble attributes for a few random trees (depth up to 3, every test mode)."""
    nodes = {k: [] for k in ("modes", "splits", "features", "true_ids", "false_ids", "true_leafs", "false_leafs",
                             "missing")}
    leaves, weights, members = [], [], []

    def leaf():
        leaves.append(data.draw(st.integers(0, n_targets - 1)))
        weights.append(data.draw(st.floats(-10, 10, width=32)))
        return len(leaves) - 1, 1

    def branch(depth):
        if depth == 3 or (depth and data.draw(st.integers(0, 3)) == 0):  # (roots branch)
            return leaf()
        i = len(nodes["modes"])
        mode = data.draw(st.integers(0, 6))
        for key in nodes:
            nodes[key].append(0)
        nodes["modes"][i], nodes["features"][i] = mode, data.draw(st.integers(0, features - 1))
        nodes["splits"][i] = data.draw(st.sampled_from([-1.0, 0.0, 0.5, 2.0])) if mode != 6 else float("nan")
        nodes["missing"][i] = data.draw(st.integers(0, 1))
        if mode == 6:
            members.extend(data.draw(st.lists(st.sampled_from([-1.0, 0.5, 2.0, 3.0]), min_size=1, max_size=3)))
            members.append(float("nan"))
        nodes["true_ids"][i], nodes["true_leafs"][i] = branch(depth + 1)
        nodes["false_ids"][i], nodes["false_leafs"][i] = branch(depth + 1)
        return i, 0

    roots = []
    for _ in range(data.draw(st.integers(1, 3))):
        roots.append(branch(0)[0])  # (one-leaf trees: see the test after this one)
    attrs = {"nodes_modes": np.array(nodes["modes"], np.uint8), "nodes_splits": np.array(nodes["splits"], np.float32),
             "nodes_featureids": nodes["features"], "nodes_truenodeids": nodes["true_ids"],
             "nodes_falsenodeids": nodes["false_ids"], "nodes_trueleafs": nodes["true_leafs"],
             "nodes_falseleafs": nodes["false_leafs"], "nodes_missing_value_tracks_true": nodes["missing"],
             "leaf_targetids": leaves, "leaf_weights": np.array(weights, np.float32), "tree_roots": roots,
             "n_targets": n_targets}
    if members:
        attrs["membership_values"] = np.array(members, np.float32)
    return attrs


@pytest.mark.parametrize("aggregate", [0, 1, 2, 3])
@SETTINGS
@given(data=st.data())
def test_tree_ensemble(data, aggregate):
    attrs = {**_random_trees(data, 2, 3), "aggregate_function": aggregate}
    rows = data.draw(st.integers(1, 5))
    g = Graph("g", inputs=[Value("x", TensorType(DType.float32, (rows, 2)))], opsets={"": 28, "ai.onnx.ml": 5})
    g.outputs = g.add_node("ai.onnx.ml.TreeEnsemble", list(g.inputs), [Value("y", TensorType(DType.float32, (rows, 3)))],
                           attrs).outputs
    compiled = ember.compile(copy.deepcopy(g), opt_level=0)
    assert compiled.stats.fallback_nodes == []
    x = data.draw(hnp.arrays(np.float32, (rows, 2), elements=st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0, np.nan])))
    _check(compiled, g, {"x": x}, rtol=1e-6, atol=1e-5)


def test_tree_ensemble_one_leaf_trees_read_the_leaf_at_the_root_index():
    """A tree that is one leaf (a root whose both branches are that leaf): the reference
    reads the leaf at the root's index, so a kernel runs only where that is the leaf named."""
    def graph(leaf):
        g = Graph("g", inputs=[Value("x", TensorType(DType.float32, (2, 1)))], opsets={"": 28, "ai.onnx.ml": 5})
        attrs = {"nodes_modes": np.zeros(2, np.uint8), "nodes_splits": np.zeros(2, np.float32),
                 "nodes_featureids": [0, 0], "nodes_truenodeids": [1, leaf], "nodes_falsenodeids": [0, leaf],
                 "nodes_trueleafs": [1, 1], "nodes_falseleafs": [1, 1], "leaf_targetids": [0, 0],
                 "leaf_weights": np.array([2.0, 5.0], np.float32), "tree_roots": [0, 1], "n_targets": 1,
                 "aggregate_function": 1}
        g.outputs = g.add_node("ai.onnx.ml.TreeEnsemble", list(g.inputs),
                               [Value("y", TensorType(DType.float32, (2, 1)))], attrs).outputs
        return g
    compiled = ember.compile(copy.deepcopy(graph(1)), opt_level=0)
    assert compiled.stats.fallback_nodes == []
    _check(compiled, graph(1), {"x": np.array([[-1.0], [1.0]], np.float32)})
    assert "one-leaf tree" in next(iter(lower_graph(graph(0)).fallback_reasons.values()))


@SETTINGS
@given(data=st.data())
def test_inference_dropout_passes_x_and_a_full_mask(data):
    compiled, graph = _compiled("Dropout", (("x", DType.float32, (N, 3)), ("r", DType.float32, ())),
                                (("y", DType.float32, (N, 3)), ("mask", DType.bool, (N, 3))))
    x = data.draw(hnp.arrays(np.float32, (data.draw(st.integers(0, 4)), 3), elements=st.floats(-5, 5, width=32)))
    _check(compiled, graph, {"x": x, "r": np.float32(data.draw(st.floats(0, 0.9)))})


@pytest.mark.parametrize("mode", ["TF", "IDF", "TFIDF"])
@SETTINGS
@given(data=st.data())
def test_tfidf_vectorizer(data, mode):
    """Random pools of 1- to 3-grams over a few token values (repeats included), every
    skip count, batched or not, with and without weights."""
    tokens = st.integers(0, 3)
    per_size = [data.draw(st.integers(0, 3)) for _ in range(3)]  # how many 1-, 2-, 3-grams
    pool, counts = [], []
    for n, k in enumerate(per_size, start=1):
        counts.append(len(pool))
        pool += data.draw(st.lists(tokens, min_size=n * k, max_size=n * k))
    total = sum(per_size)
    indexes = data.draw(st.permutations(range(max(total, 1))))[:total] or [0]
    low = data.draw(st.integers(1, 3))
    attrs = {"mode": mode, "pool_int64s": pool or [0], "ngram_counts": counts, "ngram_indexes": indexes,
             "min_gram_length": low, "max_gram_length": data.draw(st.integers(low, 3)),
             "max_skip_count": data.draw(st.integers(0, 3))}
    size = max(indexes) + 1
    if mode != "TF" or data.draw(st.booleans()):  # (onnx.reference's IDF and TFIDF need weights)
        attrs["weights"] = data.draw(st.lists(st.floats(0.5, 2, width=32), min_size=size, max_size=size))
    batched = data.draw(st.booleans())
    shape = (2, data.draw(st.integers(1, 7))) if batched else (data.draw(st.integers(1, 7)),)
    compiled, graph = _compiled("TfIdfVectorizer", (("x", DType.int64, shape),),
                                (("y", DType.float32, (2, size) if batched else (size,)),),
                                tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in attrs.items()))
    _check(compiled, graph, {"x": data.draw(hnp.arrays(np.int64, shape, elements=tokens))}, rtol=1e-6)
