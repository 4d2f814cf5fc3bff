"""ember's cuda target on a GPU: the figures issue #21 asks for, each engine timed in its own
process, with the device named. Its peers' figures (torch eager, torch.compile,
transformers' generate, a device-to-device copy) come from benchmarks/gpu_peers.py in the
same device_check.sh run.

Weights are random, from each model's config (the real files do not travel to the GPU
machine; timings do not depend on the values); the LLM's tokenizer is a word-level one
over its vocabulary (the prompts are token ids).

- llm: a SmolLM2-135M-shaped Llama (30 layers x 576, 9 heads over 3 kv heads) in
  bfloat16 through `ember.LLM(target="cuda", dtype="bfloat16")`: engine start (compile
  and first step), cold (empty kernel caches) and warm (a second process); batch-1
  greedy decode tokens/s; 256 requests of #6's mixed workload scaled (prompts 16-512
  tokens, outputs 16-256, greedy, all at once): useful output tokens/s; with --kv-caches
  int8,fp8 the same two with those KV caches (their Triton store and attention). With --llama1b
  also a Llama-3.2-1B-shaped model's batch-1 decode, as a share of the bandwidth limit
  (its weights' bytes read once per token).
- minilm: all-MiniLM-L6-v2 (the built-in package's export) compiled for the cuda target,
  float32 and float16 (converted by onnxconverter-common, as onnxruntime's users do),
  batch 1 x 128 and 32 x 128 (median of synchronized runs).
- kernels: ember's generated kernels' bandwidth as a share of a device-to-device copy's
  (bytes read + written per second): a fused pointwise chain and a row softmax.
- embeddings: #25's workload on the GPU (2,000 sentences of 3-120 words, all-MiniLM-L6-v2's
  folder): `ember.Encoder(target="cuda")` (packed rows, batches of up to 16,384 tokens)
  against sentence-transformers' `encode` on the same device (its default batch size), each
  in its own process, best of 3 timed embeddings after a warm-up.

    python benchmarks/gpu.py [--parts llm,minilm,kernels,embeddings] [--llama1b] [--kv-caches int8,fp8] [--json OUT.json]
    TRITON_INTERPRET=1 python benchmarks/gpu.py --tiny    # the same path at toy sizes, no GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
               rms_norm_eps=1e-5, tie_word_embeddings=True)
LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                rms_norm_eps=1e-5, tie_word_embeddings=True)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=1024, tie_word_embeddings=True)


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (Triton's interpreter)"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ms(fn, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


# -- the LLM ------------------------------------------------------------------------------
def save_llm(folder: Path, config: dict) -> Path:
    """A random-init Llama of `config`, in bfloat16, with a word-level tokenizer over its vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config, bos_token_id=1, eos_token_id=2)).to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(folder)
    vocab = {f"t{i}": i for i in range(config["vocab_size"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="t1", eos_token="t2", unk_token="t0").save_pretrained(folder)
    return folder


def workload(n: int, seed: int, vocab: int, prompt=(16, 512), output=(16, 256)) -> list[tuple[list[int], int]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(3, vocab, int(rng.integers(prompt[0], prompt[1] + 1))).tolist(),
             int(rng.integers(output[0], output[1] + 1))) for _ in range(n)]


def llm_part(folder: Path, tiny: bool, mixed: bool, kv_cache_dtype: str | None = None) -> dict:
    """One process: engine start, batch-1 decode, and (mixed) the 256 requests."""
    import ember

    target = "cuda"
    t0 = time.perf_counter()
    llm = ember.LLM(folder, target=target, dtype="bfloat16", kv_cache_dtype=kv_cache_dtype,
                    max_num_seqs=256 if not tiny else 16,
                    max_num_batched_tokens=2048 if not tiny else 64, kv_cache_memory=(8 << 30) if not tiny else 4 << 20,
                    max_model_len=1024 if not tiny else 256)
    greedy = ember.SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    llm.generate([{"prompt_token_ids": list(range(3, 35))}], greedy, use_tqdm=False)  # the first step compiles Triton's kernels
    sync()
    result = {"start_s": time.perf_counter() - t0}
    engine = llm.engine
    new = 256 if not tiny else 8
    engine.add_request("b1", {"prompt_token_ids": list(range(40, 72))},
                       ember.SamplingParams(temperature=0, max_tokens=new, ignore_eos=True))
    times = []
    while engine.has_unfinished():
        engine.step()
        times.append(time.perf_counter())
    decode = times[-1] - times[0]  # the steps after the first token's
    result["b1_decode_tokens_per_s"] = (len(times) - 1) / decode
    if mixed:
        vocab = engine.vocab_size
        requests = workload(256 if not tiny else 8, 0, vocab, *(((16, 512), (16, 256)) if not tiny else ((4, 24), (2, 8))))
        params = [ember.SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for _, n in requests]
        t0 = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": p} for p, _ in requests], params, use_tqdm=False)
        wall = time.perf_counter() - t0
        useful = sum(len(o.outputs[0].token_ids) for o in outs)
        result.update(mixed_requests=len(requests), mixed_useful_tokens_per_s=useful / wall, mixed_wall_s=wall)
    return result


def weight_bytes(config: dict) -> int:
    h, i, layers, v = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"], config["vocab_size"]
    d = h // config["num_attention_heads"]
    per_layer = h * h * 2 + 2 * h * config["num_key_value_heads"] * d + 3 * h * i
    return 2 * (layers * per_layer + v * h)  # bfloat16


# -- MiniLM and kernels -------------------------------------------------------------------
def minilm_part(tiny: bool) -> dict:
    """all-MiniLM-L6-v2 as ember exports it (the package's weights; on the GPU machine
    device_check.sh has re-made them randomly from its config), in float32 and converted
    to float16 by onnxconverter-common (its inputs and outputs kept as they are), as an
    onnxruntime user converts a model for a GPU."""
    import onnx
    import torch
    from onnxconverter_common import float16

    import ember
    from ember import _builtin

    path = _builtin.export_minilm()
    half = Path(tempfile.mkdtemp()) / "minilm-fp16.onnx"
    onnx.save(float16.convert_float_to_float16(onnx.load(str(path)), keep_io_types=True), str(half))
    rng = np.random.default_rng(0)
    seq = 128 if not tiny else 8
    out = {}
    for dtype, model in (("fp32", path), ("fp16", half)):
        t0 = time.perf_counter()
        compiled = ember.compile(str(model), target="cuda")
        out[f"{dtype}_compile_s"] = time.perf_counter() - t0
        out[f"{dtype}_fallback_nodes"] = len(compiled.stats.fallback_nodes)
        for batch in (1, 32) if not tiny else (1, 2):
            feeds = {"input_ids": rng.integers(1000, 30000, (batch, seq)),
                     "attention_mask": np.ones((batch, seq), np.int64), "token_type_ids": np.zeros((batch, seq), np.int64)}
            inputs = [torch.from_numpy(feeds[i.name]).to(compiled.executor.device) for i in compiled.inputs]
            out[f"{dtype}_b{batch}x{seq}_ms"] = median_ms(lambda: compiled.executor.run_device(inputs),
                                                          runs=30 if not tiny else 2)
    return out


def kernels_part(tiny: bool) -> dict:
    import torch
    from onnx import TensorProto, helper

    import ember

    device = "cuda" if torch.cuda.is_available() else "cpu"
    n, rows, width = (1 << 26, 1 << 16, 1024) if not tiny else (1 << 12, 16, 64)
    runs = 20 if not tiny else 2
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src), runs)
    out = {"copy_GBps": 2 * 4 * n / copy_ms / 1e6}

    def model(nodes, shape):
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])

    cases = {
        "pointwise": (model([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["m"]),
                             helper.make_node("Tanh", ["m"], ["y"])], [n]), torch.randn(n, device=device)),
        "softmax": (model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [rows, width]),
                    torch.randn(rows, width, device=device)),
    }
    for name, (onnx_model, x) in cases.items():
        compiled = ember.compile(onnx_model, target="cuda")
        assert not compiled.stats.fallback_nodes, compiled.stats.fallback_nodes
        ms = median_ms(lambda: compiled.executor.run_device([x]), runs)
        out[f"{name}_GBps"] = 2 * 4 * x.numel() / ms / 1e6
        out[f"{name}_share_of_copy"] = out[f"{name}_GBps"] / out["copy_GBps"]
    return out


def embeddings_part(engine: str, tiny: bool) -> dict:
    """One engine's time to embed #25's sentences on the GPU (see the module's notes)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from embeddings import sentences  # benchmarks/embeddings.py

    from ember._builtin import minilm_dir

    texts = sentences(2000 if not tiny else 16)
    if engine == "ember":
        import ember

        t0 = time.perf_counter()
        encoder = ember.Encoder(target="cuda", max_batch_tokens=16384 if not tiny else 256)
        start = time.perf_counter() - t0
        embed = encoder.embed
    else:
        import torch
        from sentence_transformers import SentenceTransformer

        t0 = time.perf_counter()
        model = SentenceTransformer(str(minilm_dir()), device="cuda" if torch.cuda.is_available() else "cpu")
        start = time.perf_counter() - t0
        embed = model.encode
    embed(texts[:64])
    times = []
    for _ in range(3 if not tiny else 1):
        t0 = time.perf_counter()
        vectors = np.asarray(embed(texts))
        times.append(time.perf_counter() - t0)
    return {"start_s": start, "best_s": min(times), "sentences": len(texts), "first": vectors[0, :8].tolist()}


# -- driver -------------------------------------------------------------------------------
def child(args) -> int:
    """One measurement in this process (--child PART): its figures as JSON on stdout's last line."""
    if args.child == "llm":
        result = llm_part(Path(args.folder), args.tiny, mixed=args.mixed, kv_cache_dtype=args.kv_cache_dtype)
    elif args.child == "minilm":
        result = minilm_part(args.tiny)
    elif args.child.startswith("embeddings-"):
        result = embeddings_part(args.child.removeprefix("embeddings-"), args.tiny)
    else:
        result = kernels_part(args.tiny)
    print(json.dumps(result))
    return 0


def run_child(part: str, args, env: dict | None = None, extra: list[str] = ()) -> dict:
    command = [sys.executable, __file__, "--child", part, *(["--tiny"] if args.tiny else []), *extra]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode:
        raise SystemExit(f"{part} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--parts", default="llm,minilm,kernels,embeddings", help="which measurements (default: all)")
    parser.add_argument("--llama1b", action="store_true", help="also a Llama-3.2-1B-shaped model's batch-1 decode")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (a smoke test, e.g. under TRITON_INTERPRET=1)")
    parser.add_argument("--kv-caches", default="", metavar="TYPES",
                        help="also the LLM part with these KV cache types (comma-separated: int8, fp8, float16)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--mixed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kv-cache-dtype", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    import torch

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("no CUDA device (set TRITON_INTERPRET=1 with --tiny for a smoke test on the CPU)")
    parts = set(args.parts.split(","))
    result: dict = {"device": device_name(), "torch": torch.__version__}
    work = Path(tempfile.mkdtemp(prefix="ember-gpu-"))
    if "llm" in parts:
        folder = save_llm(work / "smollm2", TINY if args.tiny else SMOLLM2)
        cold = {"EMBER_CACHE_DIR": str(work / "cache"), "TRITON_CACHE_DIR": str(work / "triton")}
        result["llm_cold"] = run_child("llm", args, cold, ["--folder", str(folder)])
        result["llm"] = run_child("llm", args, cold, ["--folder", str(folder), "--mixed"])  # warm caches
        for kv in filter(None, args.kv_caches.split(",")):
            result[f"llm_{kv}_kv"] = run_child("llm", args, cold, ["--folder", str(folder), "--mixed",
                                                                    "--kv-cache-dtype", kv])
        if args.llama1b and not args.tiny:
            big = save_llm(work / "llama1b", LLAMA_1B)
            result["llama1b"] = run_child("llm", args, cold, ["--folder", str(big)])
            result["llama1b"]["weight_bytes"] = weight_bytes(LLAMA_1B)
    if "minilm" in parts:
        result["minilm"] = run_child("minilm", args)
    if "kernels" in parts:
        result["kernels"] = run_child("kernels", args)
    if "embeddings" in parts:
        result["embeddings"] = {engine: run_child(f"embeddings-{engine}", args)
                                for engine in ("ember", "sentence-transformers")}
    print(f"ember on the cuda target, {result['device']}, torch {result['torch']}")
    if "llm" in result:
        cold, warm = result["llm_cold"], result["llm"]
        print(f"SmolLM2-135M shape, bf16: engine start {cold['start_s']:.1f} s cold, {warm['start_s']:.1f} s warm; "
              f"batch-1 decode {warm['b1_decode_tokens_per_s']:.0f} tok/s; {warm['mixed_requests']} mixed requests "
              f"{warm['mixed_useful_tokens_per_s']:.0f} useful tok/s ({warm['mixed_wall_s']:.1f} s)")
        for kv in filter(None, args.kv_caches.split(",")):
            q = result[f"llm_{kv}_kv"]
            print(f"  with an {kv} KV cache: batch-1 decode {q['b1_decode_tokens_per_s']:.0f} tok/s; mixed "
                  f"{q['mixed_useful_tokens_per_s']:.0f} useful tok/s ({q['mixed_wall_s']:.1f} s)")
    if "llama1b" in result:
        r = result["llama1b"]
        print(f"Llama-1B shape, bf16: batch-1 decode {r['b1_decode_tokens_per_s']:.0f} tok/s "
              f"({r['weight_bytes'] * r['b1_decode_tokens_per_s'] / 1e9:.0f} GB/s of weights read)")
    if "minilm" in result:
        m = result["minilm"]
        print("MiniLM: " + ", ".join(f"{k[:-3]} {v:.2f} ms" for k, v in m.items() if k.endswith("_ms"))
              + f" (fallback nodes: fp32 {m['fp32_fallback_nodes']}, fp16 {m['fp16_fallback_nodes']})")
    if "kernels" in result:
        k = result["kernels"]
        print(f"kernels: copy {k['copy_GBps']:.0f} GB/s; pointwise {k['pointwise_share_of_copy']:.0%} of it, "
              f"softmax {k['softmax_share_of_copy']:.0%}")
    if "embeddings" in result:
        e, st = result["embeddings"]["ember"], result["embeddings"]["sentence-transformers"]
        print(f"embeddings: {e['sentences']} sentences, ember {e['best_s']:.2f} s (start {e['start_s']:.1f} s), "
              f"sentence-transformers {st['best_s']:.2f} s: {st['best_s'] / e['best_s']:.2f}x; first vector's "
              f"largest difference {np.abs(np.subtract(e['first'], st['first'])).max():.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
