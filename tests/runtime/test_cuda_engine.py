"""The LLM engine on the cuda target: the forward graph compiled for it (Triton kernels,
the torch GEMMs, ember's Triton paged attention), its KV cache device tensors the model
runner keeps and hands the executor every step, the logits sampled where they are.
Without a GPU, in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, set here
before triton is imported)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM  # noqa: E402

import ember  # noqa: E402
from ember.errors import InputError  # noqa: E402
from ember.runtime.device import DeviceExecutor  # noqa: E402
from tests.frontends.hf.conftest import compare_logits, save_tiny  # noqa: E402
from tests.frontends.hf.test_llama import BASE  # noqa: E402
from tests.runtime.test_engine import greedy, make_llm, prompts  # noqa: E402


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-4), ("bfloat16", 3e-2)])
def test_forward_logits_match_transformers(tmp_path, dtype, tolerance):
    """Prefill of three sequences in one batch, then four decode steps, through the paged
    cache (numpy arrays: `run` writes the device's copy back into them), against
    transformers' float32 logits; nothing falls back to the CPU."""
    model = save_tiny(LlamaForCausalLM, LlamaConfig(**{**BASE, "num_key_value_heads": 2}), tmp_path)
    abs_err, rel_err = compare_logits(model, tmp_path, target="cuda", dtype=dtype)
    print(f"cuda {dtype}: max abs {abs_err:.2e}, max rel {rel_err:.2e}")
    assert rel_err < tolerance


def test_sliding_window(tmp_path):
    config = MistralConfig(**{**BASE, "num_key_value_heads": 2, "sliding_window": 4})
    model = save_tiny(MistralForCausalLM, config, tmp_path)
    abs_err, _ = compare_logits(model, tmp_path, prefill=(9, 2, 6), steps=4, target="cuda")
    assert abs_err < 1e-4


def test_greedy_tokens_equal_transformers(tiny_llm_dir, monkeypatch):
    """ember.LLM(target="cuda"): continuous batching over device-resident caches, the
    runner calling the executor (never CompiledModel.run), greedy tokens those of
    transformers' generate."""
    from transformers import AutoModelForCausalLM

    llm = make_llm(tiny_llm_dir, target="cuda")
    runner = llm.engine.runner
    assert isinstance(runner.executor, DeviceExecutor) and runner.compiled.stats.fallback_nodes == []
    assert "paged_attention-triton" in runner.compiled.program.libraries
    assert all(isinstance(c, torch.Tensor) and not c.any() for c in runner.caches.values())
    monkeypatch.setattr(type(runner.compiled), "run", lambda *a, **k: pytest.fail("the runner called run"))
    reference = AutoModelForCausalLM.from_pretrained(tiny_llm_dir, dtype=torch.float32).eval()
    batch = prompts(3, seed=20)
    got = llm.generate([{"prompt_token_ids": p} for p in batch], greedy(12), use_tqdm=False)
    for prompt, out in zip(batch, got):
        with torch.no_grad():
            want = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                      max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert out.outputs[0].token_ids == want[0, len(prompt):].tolist()
    assert all(c.any() for c in runner.caches.values())  # the kernels wrote the runner's own tensors


def test_bfloat16_engine_runs_in_bfloat16(tiny_llm_dir):
    llm = make_llm(tiny_llm_dir, target="cuda", dtype="bfloat16")
    runner = llm.engine.runner
    assert all(c.dtype == torch.bfloat16 for c in runner.caches.values())
    assert runner.compiled.stats.fallback_nodes == []
    out = llm.generate([{"prompt_token_ids": prompts(1, seed=3)[0]}], greedy(4), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 4


@pytest.mark.parametrize("name, dtype, width", [("int8", torch.int8, 16 + 4), ("fp8", torch.float8_e4m3fn, 16)])
def test_a_quantized_kv_cache_on_the_cuda_target(tiny_llm_dir, name, dtype, width):
    """LLM(target="cuda", kv_cache_dtype="int8" | "fp8"): int8 device caches (rows of
    head_dim + 4) or float8 ones, written and read by the Triton kernels (no fallback), the
    cpu target's engine's greedy tokens with the same cache."""
    llm = make_llm(tiny_llm_dir, target="cuda", kv_cache_dtype=name)
    runner = llm.engine.runner
    assert runner.compiled.stats.fallback_nodes == []
    assert all(isinstance(c, torch.Tensor) and c.dtype == dtype and c.shape[-1] == width
               for c in runner.caches.values())
    batch = [{"prompt_token_ids": p} for p in prompts(3, seed=21)]
    got = [o.outputs[0].token_ids for o in llm.generate(batch, greedy(8), use_tqdm=False)]
    cpu = make_llm(tiny_llm_dir, kv_cache_dtype=name)
    assert got == [o.outputs[0].token_ids for o in cpu.generate(batch, greedy(8), use_tqdm=False)]
    assert all(c.view(torch.uint8).any() for c in runner.caches.values())


def test_an_unknown_dtype_is_a_clear_error(tiny_llm_dir):
    with pytest.raises(InputError, match="float16"):
        ember.LLM(tiny_llm_dir, dtype="float8")


def test_sampled_tokens_on_the_device_follow_their_seed(tiny_llm_dir):
    """Seeded sampling on the device's logits: the same seed, the same tokens, in any batch."""
    llm = make_llm(tiny_llm_dir, target="cuda")
    params = ember.SamplingParams(temperature=0.8, top_p=0.9, max_tokens=6, seed=7, ignore_eos=True)
    prompt = {"prompt_token_ids": prompts(1, seed=5)[0]}
    alone = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
    others = [{"prompt_token_ids": p} for p in prompts(2, seed=6)]
    batched = llm.generate([others[0], prompt, others[1]], [greedy(6), params, greedy(6)], use_tqdm=False)
    assert batched[1].outputs[0].token_ids == alone and len(alone) == 6


def _sampled(llm, batch):
    params = [ember.SamplingParams(temperature=1.0, seed=i, max_tokens=8, logprobs=3, ignore_eos=True)
              for i in range(len(batch))]
    outs = llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
    return [(o.outputs[0].token_ids, [[lp[t].logprob for t in sorted(lp)] for lp in o.outputs[0].logprobs])
            for o in outs]


def test_decode_steps_run_on_static_plans_with_the_eager_steps_results(tiny_llm_dir):
    """Decode steps of three requests run on the static plan of bucket 4 (one padding row
    that writes no cache slot); seeded sampled tokens and their logprobs are those of the
    same requests run step by step (enforce_eager)."""
    batch = prompts(3, seed=11)
    eager = make_llm(tiny_llm_dir, target="cuda", enforce_eager=True)
    want = _sampled(eager, batch)
    assert eager.engine.runner.plan_stats["static_steps"] == 0
    llm = make_llm(tiny_llm_dir, target="cuda")
    got = _sampled(llm, batch)
    runner = llm.engine.runner
    stats = runner.plan_stats
    assert stats["static_steps"] >= 7
    if torch.cuda.is_available():  # every bucket captured in a CUDA graph at start-up
        assert stats["captured"] == stats["planned"] == len(runner.buckets)
    else:  # planned when first used, its kernels run one by one in the interpreter
        assert stats["planned"] == 1 and list(runner._plans) == [4]
    # (the tiny model's own tokens dominate its logits: the top-3 logprobs of every step
    # are what shows the attention's and the cache's work)
    assert all(len(step) >= 3 for _, logprobs in got for step in logprobs)
    for (tokens, logprobs), (want_tokens, want_logprobs) in zip(got, want):
        assert tokens == want_tokens
        np.testing.assert_allclose(logprobs, want_logprobs, rtol=1e-5, atol=1e-5)


def test_an_llm_artifact_of_the_cuda_target(tiny_llm_dir, tmp_path):
    """`ember compile --target cuda` of an LLM, saved and served from the artifact: its
    paged attention's Triton module named again on load; the folder's greedy tokens."""
    from ember.llm import compile_llm

    path = compile_llm(tiny_llm_dir, target="cuda", block_size=4, max_model_len=512).save(tmp_path / "tiny.ember")
    batch = prompts(2, seed=9)
    from_artifact = make_llm(path, target="cuda")
    runner = from_artifact.engine.runner
    assert isinstance(runner.executor, DeviceExecutor) and "paged_attention-triton" in runner.compiled.program.libraries
    got = tokens_of(from_artifact.generate([{"prompt_token_ids": p} for p in batch], greedy(6), use_tqdm=False))
    want = tokens_of(make_llm(tiny_llm_dir, target="cuda").generate([{"prompt_token_ids": p} for p in batch],
                                                                    greedy(6), use_tqdm=False))
    assert got == want
    with pytest.raises(InputError, match="compiled for target 'cuda', not 'cpu'"):
        make_llm(path)


def tokens_of(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def test_start_up_captures_every_bucket_it_has_time_for(tiny_llm_dir, monkeypatch):
    """The runner's start-up bookkeeping for CUDA graphs, with the capture itself (a GPU's)
    stood in for: every bucket planned and captured, smallest first, into one memory pool;
    the buckets it captured reported."""
    from ember.runtime.device import StaticRun

    llm = make_llm(tiny_llm_dir, target="cuda", max_num_seqs=4)
    runner = llm.engine.runner
    captured = []
    monkeypatch.setattr(StaticRun, "capture", lambda self, pool=None: captured.append(pool) or setattr(self, "graph", 1))
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: "pool")
    runner._graphs = True
    assert runner.capture(budget_s=60) == [1, 2, 4] == runner.buckets
    assert captured == ["pool"] * 3 and runner.plan_stats["captured"] == 3
