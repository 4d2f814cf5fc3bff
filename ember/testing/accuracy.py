"""Accuracy of a quantized language model: its perplexity on a fixed evaluation text, the
same text for every engine compared (ember in float32, ember quantized, llama.cpp).

`evaluation_text()` assembles the text at run time from local files: the docstrings of a
pinned list of standard-library modules and of their public functions and classes, in a
fixed order (nothing is downloaded). The text differs between Python versions, so only
perplexities measured on one interpreter are compared. `perplexity(llm, token_ids)` asks
an `ember.LLM` for each token's log-probability given those before it (vLLM's
`prompt_logprobs`), in windows of `window` tokens, each starting a sequence afresh."""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Sequence

MODULES = ("json", "textwrap", "difflib", "fractions", "heapq", "bisect", "shlex", "string", "argparse", "csv",
           "calendar", "statistics")


def evaluation_text(modules: Sequence[str] = MODULES) -> str:
    """The docstrings of `modules` and of their public functions and classes (by name),
    joined by blank lines."""
    parts = []
    for name in modules:
        module = importlib.import_module(name)
        if doc := inspect.getdoc(module):
            parts.append(doc)
        for attr in sorted(getattr(module, "__all__", None) or dir(module)):
            obj = getattr(module, attr, None)
            if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            if doc := inspect.getdoc(obj):
                parts.append(doc)
    return "\n\n".join(parts)


def perplexity(llm, token_ids: Sequence[int], window: int = 512) -> float:
    """exp of the mean negative log-probability `llm` (an ember.LLM) gives each token of
    `token_ids` after the first of its window."""
    from ..runtime.request import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
    windows = [list(token_ids[i:i + window]) for i in range(0, len(token_ids), window)]
    windows = [w for w in windows if len(w) > 1]
    outputs = llm.generate([{"prompt_token_ids": w} for w in windows], params, use_tqdm=False)
    total, count = 0.0, 0
    for w, out in zip(windows, outputs):
        for token, logprobs in zip(w[1:], out.prompt_logprobs[1:]):
            total -= logprobs[token].logprob
            count += 1
    return math.exp(total / count)


def calibration_feeds(tokenizer, count: int = 15, chars: int = 400, max_length: int = 128) -> list[dict]:
    """Inputs to calibrate static quantization on (onnxruntime.quantization's
    CalibrationDataReader gives them one by one): `count` pieces of `chars` characters of
    `evaluation_text()`, each tokenized alone by a Hugging Face `tokenizer` (int64 arrays,
    batch 1, at most `max_length` tokens)."""
    text = evaluation_text()
    return [{k: v.astype("int64") for k, v in tokenizer([text[i:i + chars]], return_tensors="np", truncation=True,
                                                         max_length=max_length).items()}
            for i in range(0, count * chars, chars)]
