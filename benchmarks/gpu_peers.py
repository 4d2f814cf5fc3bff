"""The peers ember's CUDA target will be measured against, on a CUDA GPU, with ember's
own workloads' shapes. ember has no CUDA target yet (the Triton backend is deferred);
this script records the baselines a later session must beat, on whatever GPU the
device tool lends, and prints the device name with every figure.

Weights are random (initialised from each model's config): the real files do not
travel to the GPU machine, and timing does not depend on the values.

- MiniLM (all-MiniLM-L6-v2's config), batch 32 x 128, fp16: torch eager vs
  torch.compile, latency (median of CUDA-event-timed runs).
- SmolLM2-135M's shape (Llama, 30 layers x 576), bf16, transformers ``generate``:
  batch-1 greedy decode tokens/s, and a static batch of 64 (useful tokens/s).
- A device-to-device copy (bytes read + written per second): the bandwidth ceiling.

    python benchmarks/gpu_peers.py [--minilm-config PATH] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
               rms_norm_eps=1e-5, tie_word_embeddings=True)


def cuda_median_ms(fn, runs: int = 30, warmup: int = 5) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth() -> float:
    import torch

    src = torch.randn(1 << 28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms = cuda_median_ms(lambda: dst.copy_(src), runs=20)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e12  # TB/s


def minilm(config_path: str | None) -> dict:
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(config_path) if config_path else BertConfig(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = BertModel(config, add_pooling_layer=False).eval().half().cuda()
    ids = torch.randint(1000, config.vocab_size, (32, 128), device="cuda")
    mask = torch.ones_like(ids)
    with torch.no_grad():
        eager = cuda_median_ms(lambda: model(input_ids=ids, attention_mask=mask))
        t0 = time.perf_counter()
        compiled = torch.compile(model)
        compiled(input_ids=ids, attention_mask=mask)
        compile_s = time.perf_counter() - t0
        fast = cuda_median_ms(lambda: compiled(input_ids=ids, attention_mask=mask))
    return {"eager_ms": eager, "torch_compile_ms": fast, "torch_compile_build_s": compile_s}


def smollm2() -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2)).eval().to(torch.bfloat16).cuda()
    out = {}
    for batch, new in ((1, 256), (64, 128)):
        prompt = torch.randint(1000, SMOLLM2["vocab_size"], (batch, 32), device="cuda")
        kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            model.generate(prompt, **{**kwargs, "max_new_tokens": 8, "min_new_tokens": 8})  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.generate(prompt, **kwargs)
            torch.cuda.synchronize()
        out[f"b{batch}_tokens_per_s"] = batch * new / (time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minilm-config", help="all-MiniLM-L6-v2's config.json (default: its shape, built in)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    import torch
    import transformers

    if not torch.cuda.is_available():
        parser.error("no CUDA device: this script measures GPU peers")
    device = torch.cuda.get_device_name()
    result = {"device": device, "torch": torch.__version__, "transformers": transformers.__version__,
              "copy_TBps": copy_bandwidth(), "minilm_b32x128_fp16": minilm(args.minilm_config),
              "smollm2_bf16_generate": smollm2()}
    m, s = result["minilm_b32x128_fp16"], result["smollm2_bf16_generate"]
    print(f"{device}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"device-to-device copy: {result['copy_TBps']:.2f} TB/s (read + write)")
    print(f"MiniLM b32x128 fp16: eager {m['eager_ms']:.2f} ms, torch.compile {m['torch_compile_ms']:.2f} ms "
          f"(compiled in {m['torch_compile_build_s']:.0f} s)")
    print(f"SmolLM2-135M shape bf16, transformers generate: batch 1 {s['b1_tokens_per_s']:.0f} tok/s, "
          f"batch 64 {s['b64_tokens_per_s']:.0f} tok/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
