"""The Hugging Face frontend: an LLM's folder (config.json + safetensors) or GGUF file
-> the ember Graph of its forward step over a flattened batch of tokens with a paged KV
cache. One file per architecture family (`llama`, `qwen2`, `gpt2`, `mixtral`), registered in `registry`.

    model = load_pretrained("path/to/folder-or.gguf")
    graph = model.graph(block_size=16)       # weights read now
    compiled = ember.compile(graph)
"""

from .config import ModelConfig
from .decoder import FEEDS, ForwardOptions, cache_names
from .loader import PretrainedModel, load_pretrained
from .registry import ARCHITECTURES, Architecture, register_architecture

__all__ = ["ModelConfig", "FEEDS", "ForwardOptions", "cache_names", "PretrainedModel", "load_pretrained",
           "ARCHITECTURES", "Architecture", "register_architecture"]
