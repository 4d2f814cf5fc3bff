"""Tensor parallelism over real processes and torch.distributed (gloo): ember.LLM(...,
tensor_parallel_size=2) against the same model unsharded, a worker killed or stopped
mid-generation, a rank that fails to start, and two "nodes" launched by torchrun."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM, Qwen2Config, Qwen2ForCausalLM

import ember
from ember.errors import ExecutionError
from tests.frontends.hf.conftest import smollm2_gguf_path  # noqa: F401 - the fixture
from tests.frontends.hf.paged import save_tiny

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)
MODELS = {
    # grouped-query attention with one KV head: each rank keeps it (replicated)
    "llama_one_kv_head": (LlamaForCausalLM, LlamaConfig(**SMALL, intermediate_size=128, num_key_value_heads=1)),
    # tied embedding over a vocabulary that does not divide (97 = 49 + 48, padded)
    "llama_tied_odd_vocab": (LlamaForCausalLM, LlamaConfig(**{**SMALL, "vocab_size": 97}, intermediate_size=128,
                                                           num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen2_biases": (Qwen2ForCausalLM, Qwen2Config(**SMALL, intermediate_size=128, num_key_value_heads=2)),
    "mixtral": (MixtralForCausalLM, MixtralConfig(**SMALL, intermediate_size=48, num_key_value_heads=2,
                                                  num_local_experts=4, num_experts_per_tok=2)),
}
PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 8], [20, 30, 40, 50, 60, 70, 80, 90, 11, 12, 13]]
GREEDY = ember.SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
OPTIONS = dict(kv_cache_memory=1 << 22, max_model_len=128, block_size=4)


def _with_tokenizer(folder: Path, tiny_llm_dir: Path) -> Path:
    for f in tiny_llm_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")) or f.suffix == ".jinja":
            shutil.copy(f, folder / f.name)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_llm_dir):
    folders = {}
    for name, (cls, config) in MODELS.items():
        folder = tmp_path_factory.mktemp(name)
        save_tiny(cls, config, folder)
        folders[name] = _with_tokenizer(folder, tiny_llm_dir)
    return folders


def _greedy(model, prompts=PROMPTS, **options) -> list[list[int]]:
    llm = ember.LLM(model, **OPTIONS, **options)
    try:
        return [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY, use_tqdm=False)]
    finally:
        llm.shutdown()


def _workers() -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "ember._tensor_parallel" in line and str(os.getpid()) in line]


@pytest.mark.parametrize("name", list(MODELS))
def test_tp2_greedy_equals_tp1(models, name):
    want = _greedy(models[name])
    got = _greedy(models[name], tensor_parallel_size=2)
    assert got == want
    assert not _workers()


def test_tp2_with_an_int8_kv_cache(models):
    """Each rank's caches of its kv heads in int8 rows (their scales per row, so a shard's rows
    are the whole model's rows of those heads): tp=2 the greedy tokens of tp=1 with the same cache."""
    import numpy as np

    name = next(iter(MODELS))
    want = _greedy(models[name], kv_cache_dtype="int8")
    llm = ember.LLM(models[name], **OPTIONS, kv_cache_dtype="int8", tensor_parallel_size=2)
    try:
        caches = llm.engine.runner.caches.values()  # rank 0's: half the kv heads
        assert all(c.dtype == np.int8 for c in caches)
        assert [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)] == want
    finally:
        llm.shutdown()
    assert not _workers()


TEXT = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


def test_tp2_smollm2_equals_tp1(smollm2_gguf_path):
    """The built-in SmolLM2 (9 query heads over 3 KV heads: rank 0 keeps one KV head's
    group, rank 1 two), its weights dequantized: tp=2 decodes what tp=1 does."""
    want = _greedy(smollm2_gguf_path, quantization="none", prompts=TEXT)
    got = _greedy(smollm2_gguf_path, quantization="none", prompts=TEXT, tensor_parallel_size=2)
    assert got == want


def _prompt_logprobs(model, **options) -> np.ndarray:
    llm = ember.LLM(model, **OPTIONS, **options)
    try:
        out = llm.generate([" ".join(TEXT) * 3], ember.SamplingParams(max_tokens=1, prompt_logprobs=0),
                           use_tqdm=False)[0]
    finally:
        llm.shutdown()
    ids = out.prompt_token_ids
    return np.array([d[ids[i]].logprob for i, d in enumerate(out.prompt_logprobs) if d is not None])


def test_tp2_smollm2_blocks_within_quantization_noise(smollm2_gguf_path):
    """SmolLM2's Q4_1 blocks kept: split by rows (column-parallel), by whole blocks of their
    input features (row-parallel) and by vocabulary rows (the tied, quantized embedding and
    head). The kernel quantizes each layer's input to int8, so the last bit of a sum taken
    in two halves flips some of those roundings: tp=2 is tp=1's model with other rounding
    noise (per token, not per model: the same perplexity)."""
    want = _prompt_logprobs(smollm2_gguf_path)
    got = _prompt_logprobs(smollm2_gguf_path, tensor_parallel_size=2)
    print(f"prompt NLL tp=1 {-want.mean():.4f}, tp=2 {-got.mean():.4f}; mean |diff| {np.abs(got - want).mean():.4f}")
    assert abs(got.mean() - want.mean()) < 0.05
    assert np.abs(got - want).mean() < 0.15


def _kill_mid_generation(model, sig) -> tuple[BaseException, float, ember.LLM]:
    llm = ember.LLM(model, **OPTIONS, tensor_parallel_size=2)
    worker = llm.engine.runner.group.processes[1]
    steps = []
    original = llm.engine.step

    def step():  # the worker is signalled after a few steps, mid-generation
        steps.append(1)
        if len(steps) == 4:
            os.kill(worker.pid, sig)
        return original()

    llm.engine.step = step
    start = time.monotonic()
    with pytest.raises(ExecutionError) as error:
        llm.generate(PROMPTS, ember.SamplingParams(max_tokens=100, temperature=0, ignore_eos=True), use_tqdm=False)
    return error.value, time.monotonic() - start, llm


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_worker_fault_ends_every_request(models, sig, monkeypatch):
    monkeypatch.setenv("EMBER_TP_TIMEOUT", "5")
    error, seconds, llm = _kill_mid_generation(models["llama_one_kv_head"], sig)
    assert seconds < 30
    assert "the engine has stopped" in str(error)
    assert ("rank 1 died" in str(error)) == (sig == signal.SIGKILL)
    assert sorted(error.request_ids) == ["0", "1", "2"]  # every request, not only the step's
    with pytest.raises(ExecutionError, match="tensor parallelism"):  # nothing new is taken
        llm.generate([[1, 2]], GREEDY, use_tqdm=False)
    llm.shutdown()
    assert not _workers()


def _launch(rank: int, port: int, model: Path, script: str) -> subprocess.Popen:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
           "WORLD_SIZE": "2", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", script, str(model)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


RANK_SCRIPT = """
import sys, ember
llm = ember.LLM(sys.argv[1], tensor_parallel_size=2, kv_cache_memory=1 << 22, max_model_len=128, block_size=4)
outs = llm.generate({prompts}, ember.SamplingParams(max_tokens=12, temperature=0, ignore_eos=True), use_tqdm=False)
print("TOKENS", [o.outputs[0].token_ids for o in outs])
llm.shutdown()
""".format(prompts=PROMPTS)


def _communicate(processes, timeout: float = 240) -> list[tuple[str, str]]:
    """Each process's (stdout, stderr) once all have exited; past `timeout`, all are killed
    and the test fails with what they wrote."""
    try:
        return [p.communicate(timeout=timeout) for p in processes]
    except subprocess.TimeoutExpired:
        for p in processes:
            p.kill()
        outs = [p.communicate() for p in processes]
        raise AssertionError("ranks did not finish:\n" + "\n---\n".join(o + e[-3000:] for o, e in outs)) from None


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_startup_error_names_the_rank(models, tmp_path):
    """Launched by hand (MASTER_ADDR/PORT, RANK, WORLD_SIZE): rank 1's node lacks the model."""
    port = _port()
    rank0 = _launch(0, port, models["llama_one_kv_head"], RANK_SCRIPT)
    rank1 = _launch(1, port, tmp_path / "missing", RANK_SCRIPT)
    (out0, err0), _ = _communicate([rank0, rank1])
    assert rank0.returncode != 0 and rank1.returncode != 0
    assert "start-up failed on rank 1: ModelError" in err0 and "no such model folder" in err0


def test_torchrun_two_nodes(models, tmp_path):
    """Two "nodes" on loopback, each `torchrun --nnodes 2 --nproc-per-node 1`: rank 0 generates
    what one process does; rank 1 serves as its worker and exits when it stops."""
    model = models["qwen2_biases"]
    want = _greedy(model)
    port = _port()
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank",
                               str(r), "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port",
                               str(port), str(script), str(model)],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = _communicate(nodes)
    assert [n.returncode for n in nodes] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert f"TOKENS {want}" in outs[0][0]
    assert "TOKENS" not in outs[1][0]  # rank 1 was a worker


MINILM_PLAN = {  # all-MiniLM-L6-v2 after attention fusion: 12 heads of 32 (the weights' ONNX names are opaque,
    # "onnx::MatMul_884": a layer is named by its bias, "bert.encoder.layer.0.attention.self.query.bias")
    "bert.encoder.layer.*.attention.self.query.*": "heads/32", "bert.encoder.layer.*.attention.self.key.*": "heads/32",
    "bert.encoder.layer.*.attention.self.value.*": "heads/32",
    "bert.encoder.layer.*.attention.output.dense.*": "row/32",
    "bert.encoder.layer.*.intermediate.dense.*": "column", "bert.encoder.layer.*.output.dense.*": "row",
}
MINILM_SCRIPT = """
import json, sys
import numpy as np
import torch.distributed as dist
import ember

model, plan, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo")
compiled = ember.compile(model, tensor_parallel=(dist.get_rank(), dist.get_world_size(), plan))
assert compiled.stats.fallback_nodes == [], compiled.stats.fallback_nodes
feeds = dict(np.load(out + ".feeds.npz"))
result = compiled.run(feeds)["last_hidden_state"]
if dist.get_rank() == 0:
    np.save(out, result)
    print("ALLREDUCE", compiled.graph.op_histogram().get("ember.AllReduce"))
dist.destroy_process_group()
"""


def test_minilm_sharded_over_two_ranks(minilm_onnx, tmp_path):
    """An ONNX transformer sharded from a plan by `ember.compile(..., tensor_parallel=...)`:
    heads and MLP split over 2 processes, within 1e-4 of the unsharded model."""
    import json

    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 30000, (2, 16)), "attention_mask": np.ones((2, 16), np.int64),
             "token_type_ids": np.zeros((2, 16), np.int64)}
    feeds["attention_mask"][1, 9:] = 0
    out = tmp_path / "out.npy"
    np.savez(str(out) + ".feeds.npz", **feeds)
    port = _port()
    ranks = [subprocess.Popen([sys.executable, "-c", MINILM_SCRIPT, str(minilm_onnx), json.dumps(MINILM_PLAN), str(out)],
                              env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(r),
                                   "WORLD_SIZE": "2", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = _communicate(ranks)
    assert [r.returncode for r in ranks] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert "ALLREDUCE 12" in outs[0][0]  # 6 layers: the attention's output and the MLP's down projection
    want = ember.compile(minilm_onnx).run(feeds)["last_hidden_state"]
    np.testing.assert_allclose(np.load(out), want, atol=1e-4, rtol=0)
