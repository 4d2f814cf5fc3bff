"""shard_tensor_parallel on an LLM's forward graph: the collectives it adds (golden), the
slices each rank keeps (the ranks' shards put back together are the weights), the heads
each rank's attention runs, and the errors that name what cannot be split."""

import numpy as np
import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from ember.errors import ModelError
from ember.frontends.hf import load_pretrained
from ember.ir.printer import print_graph
from ember.passes.shard_tensor_parallel import ShardTensorParallel, head_ranges
from tests.frontends.hf.paged import save_tiny

BASE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=1, max_position_embeddings=64)


def _model(tmp_path, **config):
    save_tiny(LlamaForCausalLM, LlamaConfig(**{**BASE, **config}), tmp_path)
    return load_pretrained(tmp_path, progress=False)


def _shard(pm, rank, size=2, plan=None):
    graph = pm.graph(block_size=4)
    weights = {c.name: c.const for c in graph.constants}
    shard = ShardTensorParallel(size, rank, plan or pm.architecture.tensor_parallel_plan(pm.config))
    shard.run(graph)
    return graph, shard, weights


def test_collectives_golden(tmp_path):
    graph, shard, _ = _shard(_model(tmp_path), rank=1)
    lines = [line.strip() for line in print_graph(graph).splitlines()
             if "ember.All" in line or "PagedAttention(" in line or line.startswith("graph")]
    assert shard.report.applied == {"vocab_lookup": 1, "column_ember.Linear": 5, "attention_heads": 1,
                                    "row_ember.Linear": 2, "vocab_head_ember.Linear": 1}
    assert "\n".join(lines) == '''\
graph llama_forward(%input_ids: i64[num_tokens], %positions: i64[num_tokens], %slot_mapping: i64[num_tokens], \
%block_tables: i64[num_seqs, max_blocks], %query_start_loc: i64[num_seqs + 1], %seq_lens: i64[num_seqs], \
%logit_indices: i64[num_logits], %k_cache_0: f32[num_blocks, 4, 1, 16], %v_cache_0: f32[num_blocks, 4, 1, 16]) \
opsets {"": 23, "ember": 1} {
%"Gather_0/vocab_lookup/AllReduce_8_out0": f32[num_tokens, 64] = ember.AllReduce(%"Gather_0/vocab_lookup/Where_7_out0") \
{world_size = 2} @"Gather_0/vocab_lookup/AllReduce_8"
%"PagedAttention_15/attention_heads/PagedAttention_0_out0": f32[num_tokens, 32] = ember.PagedAttention(%Reshape_11_out0, \
%Reshape_14_out0, %"Linear_8/column_ember.Linear/Linear_0_out0", %k_cache_0, %v_cache_0, %slot_mapping, %block_tables, \
%query_start_loc, %seq_lens) {kv_num_heads = 1, num_heads = 2, scale = 0.0, sliding_window = 0} \
@"PagedAttention_15/attention_heads/PagedAttention_0"
%"Linear_16/row_ember.Linear/AllReduce_1_out0": f32[num_tokens, 64] = ember.AllReduce(%"Linear_16/row_ember.Linear/Linear_0_out0") \
{world_size = 2} @"Linear_16/row_ember.Linear/AllReduce_1"
%"Linear_22/row_ember.Linear/AllReduce_1_out0": f32[num_tokens, 64] = ember.AllReduce(%"Linear_22/row_ember.Linear/Linear_0_out0") \
{world_size = 2} @"Linear_22/row_ember.Linear/AllReduce_1"
%"logits/vocab_head_ember.Linear/AllGather_1_out0": f32[num_logits, 98] = ember.AllGather(%"logits/vocab_head_ember.Linear/Linear_0_out0") \
{axis = -1, world_size = 2} @"logits/vocab_head_ember.Linear/AllGather_1"'''


def test_the_shards_put_back_together_are_the_weights(tmp_path):
    pm = _model(tmp_path)
    shards = [_shard(pm, rank) for rank in (0, 1)]
    weights = shards[0][2]
    kept = [{c.name.partition("[tp")[0]: c.const for c in graph.constants if "[tp" in c.name}
            for graph, _, _ in shards]
    assert set(kept[0]) == set(kept[1])
    checked = set()
    for name, original in weights.items():
        if name not in kept[0]:
            continue
        a, b = kept[0][name], kept[1][name]
        if ".k_proj." in name or ".v_proj." in name:  # one KV head, two ranks: each keeps it
            np.testing.assert_array_equal(a, original)
            np.testing.assert_array_equal(b, original)
        elif name == "model.embed_tokens.weight":  # 97 rows: 49 + 48, padded with a zero row
            np.testing.assert_array_equal(np.concatenate([a, b])[:97], original)
            assert a.shape == b.shape == (49, 64) and not b[48].any()
        elif name == "lm_head.weight":  # [in, out]: the vocabulary's columns
            np.testing.assert_array_equal(np.concatenate([a, b], axis=1)[:, :97], original)
        elif ".o_proj." in name or ".down_proj." in name:  # [in, out]: rows
            np.testing.assert_array_equal(np.concatenate([a, b]), original)
        else:  # q, gate, up: columns
            np.testing.assert_array_equal(np.concatenate([a, b], axis=-1), original)
        checked.add(name.rpartition(".")[0].rpartition(".")[2])
    assert checked == {"embed_tokens", "lm_head", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                       "down_proj"}
    for graph, _, _ in shards:  # no rank holds a whole planned weight
        names = {c.name for c in graph.constants}
        assert not names & set(kept[0])


@pytest.mark.parametrize("heads, kv, size, want", [
    (4, 2, 2, [((0, 2), (0, 1)), ((2, 4), (1, 2))]),
    (4, 1, 2, [((0, 2), (0, 1)), ((2, 4), (0, 1))]),          # the KV head replicated
    (9, 3, 2, [((0, 3), (0, 1)), ((3, 9), (1, 3))]),          # SmolLM2: uneven, by KV groups
    (8, 2, 4, [((0, 2), (0, 1)), ((2, 4), (0, 1)), ((4, 6), (1, 2)), ((6, 8), (1, 2))]),
])
def test_head_ranges(heads, kv, size, want):
    got = [head_ranges(heads, kv, size, rank) for rank in range(size)]
    assert got == want
    for (qb, qe), (b, e) in got:  # each rank's query heads read only its KV heads
        group = heads // kv
        assert b <= qb // group and (qe - 1) // group < e


def test_uneven_heads_set_attention_and_caches(tmp_path):
    pm = _model(tmp_path, hidden_size=72, num_attention_heads=9, num_key_value_heads=3)  # head_dim 8
    for rank, (heads, kv) in enumerate([(3, 1), (6, 2)]):
        graph, _, _ = _shard(pm, rank)
        (node,) = [n for n in graph.nodes if n.op == "ember.PagedAttention"]
        assert (node.attrs["num_heads"], node.attrs["kv_num_heads"]) == (heads, kv)
        assert node.inputs[3].type.shape[2] == kv and node.inputs[0].type.shape[1] == heads * 8


@pytest.mark.parametrize("config, plan, message", [
    (dict(num_attention_heads=4, num_key_value_heads=2), {"*": "rows"}, "is not a split"),
    (dict(num_attention_heads=4, num_key_value_heads=2), {"nothing.*": "column"}, "names no weight"),
    (dict(num_attention_heads=4, num_key_value_heads=2), {"*input_layernorm*": "column"},
     r"input_layernorm.weight \(column split\) is read by .*RMSNormalization"),
    (dict(num_attention_heads=6, num_key_value_heads=2, hidden_size=48), None,
     "2 KV heads cannot be shared by 3 ranks"),
    (dict(num_attention_heads=6, num_key_value_heads=1, hidden_size=48), None,
     "6 query heads do not divide among 4 ranks"),
])
def test_what_cannot_be_split_is_named(tmp_path, config, plan, message):
    pm = _model(tmp_path, **config)
    size = {1: 4, 2: 3}[config["num_key_value_heads"]] if config["num_attention_heads"] == 6 else 2
    with pytest.raises(ModelError, match=message):
        _shard(pm, 0, size, plan)


def test_a_mixture_of_experts_sums_its_experts_once(tmp_path):
    """Each expert's down projection is row-split; its partial sum, weighted by the router
    (the same on every rank), joins the others' before one ember.AllReduce per layer."""
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(vocab_size=96, hidden_size=64, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                           num_local_experts=4, num_experts_per_tok=2)
    save_tiny(MixtralForCausalLM, config, tmp_path)
    pm = load_pretrained(tmp_path, progress=False)
    graph, shard, _ = _shard(pm, rank=1)
    assert shard.report.applied["row_ember.Linear"] == 2 * (1 + 4)  # o_proj and 4 experts' w2, per layer
    assert shard.report.applied["scale_partial_sum"] == 2 * 4 and shard.report.applied["sum_partial_sums"] == 2 * 3
    assert graph.op_histogram()["ember.AllReduce"] == 1 + 2 * 2  # the lookup; per layer attention and experts
