"""Models ember cannot take: each an ember.ModelError that names the problem."""

import json

import numpy as np
import pytest
from transformers import LlamaConfig, LlamaForCausalLM

import ember
from ember.frontends.hf import load_pretrained

from .conftest import save_tiny
from .test_gguf import _write

TINY = dict(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=32)


@pytest.fixture
def folder(tmp_path):
    save_tiny(LlamaForCausalLM, LlamaConfig(**TINY), tmp_path / "m")
    return tmp_path / "m"


def _shard(folder):
    """Split model.safetensors into two shards with an index, as save_pretrained does for big models."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[:len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, part in halves.items():
        save_file({n: tensors[n] for n in part}, folder / file)
    (folder / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {n: f for f, part in halves.items() for n in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def test_sharded_folder_loads(folder):
    _shard(folder)
    graph = load_pretrained(folder, progress=False).graph()
    assert graph.op_histogram()["ember.PagedAttention"] == 2


def test_missing_shard(folder):
    _shard(folder)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ember.ModelError, match="shard 'model-00002-of-00002.safetensors' is missing"):
        load_pretrained(folder)


def test_unknown_architecture(folder):
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["FancyNetForCausalLM"], model_type="fancynet")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ember.ModelError, match=r"unknown architecture \(architectures \['FancyNetForCausalLM'\]\)"):
        load_pretrained(folder)


def test_missing_and_mismatched_tensors(folder, tmp_path):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ember.ModelError, match="tensor 'model.layers.1.mlp.up_proj.weight' is missing"):
        load_pretrained(folder, progress=False).graph()
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((24, 15), np.float32)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ember.ModelError, match=r"'model.layers.1.mlp.up_proj.weight' has shape \[24, 15\], "
                                               r"the config implies \[24, 16\]"):
        load_pretrained(folder, progress=False).graph()


def test_truncated_safetensors(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:len(data) - 100])
    with pytest.raises(ember.ModelError, match="model.safetensors: truncated"):
        load_pretrained(folder)


def test_not_a_model(tmp_path):
    with pytest.raises(ember.ModelError, match="no such model folder or GGUF file"):
        load_pretrained(tmp_path / "nothing")
    with pytest.raises(ember.ModelError, match="no config.json"):
        load_pretrained(tmp_path)
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(ember.ModelError, match="not a GGUF file"):
        load_pretrained(tmp_path / "x.gguf")


def test_truncated_gguf(tmp_path):
    from gguf import GGMLQuantizationType as Q

    path = tmp_path / "t.gguf"
    rng = np.random.default_rng(0)
    _write(path, {"token_embd.weight": (rng.standard_normal((32, 64)).astype(np.float32), Q.Q8_0),
                  "blk.0.ffn_up.weight": (rng.standard_normal((64, 64)).astype(np.float32), Q.F32)},
           {"block_count": 1})
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 5000])  # mid-way through the last tensor
    with pytest.raises(ember.ModelError, match="t.gguf: .*truncated"):
        load_pretrained(path)


def test_unknown_gguf_architecture(tmp_path):
    from gguf import GGMLQuantizationType as Q

    path = tmp_path / "t.gguf"
    _write(path, {"token_embd.weight": (np.zeros((4, 32), np.float32), Q.F32)}, arch="mamba")
    with pytest.raises(ember.ModelError, match="unknown GGUF architecture 'mamba'"):
        load_pretrained(path)


def test_unknown_dtype(folder):
    with pytest.raises(ember.ModelError, match="dtype 'int8' is not supported"):
        load_pretrained(folder, dtype="int8")


def test_float32_weights_stay_mapped(folder):
    """A float32 safetensors weight becomes a constant that views the mapped file: nothing
    is read or copied until the compiled model packs it."""
    graph = load_pretrained(folder, progress=False).graph()
    weights = {v.name: v.const for v in graph.constants}

    def mapped(a):
        while isinstance(a, np.ndarray):
            if isinstance(a, np.memmap):
                return True
            a = a.base
        return False

    assert mapped(weights["model.layers.0.self_attn.q_proj.weight"])
    assert mapped(weights["model.embed_tokens.weight"])
