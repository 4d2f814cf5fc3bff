"""The `ember` command: inspect, compile, run and profile models; generate, chat and serve with LLMs.

Every user error (an `ember.EmberError`, a missing file, a malformed `--input`) ends as
one line `ember: error: <message>` on stderr and exit status 2; set EMBER_DEBUG=1 to
see the traceback as well.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import EmberError

EPILOG = """\
examples:
  ember inspect model.onnx               signature, opset, op histogram, parameter count
  ember inspect model.onnx --json        the same as JSON
  ember compile model.onnx --dump-ir ir/ what each pass did, and the IR after each
  ember compile model.onnx -o model.ember an artifact: ember run/inspect/profile read it, no compiling
  ember compile model.gguf -o llm.ember  an LLM artifact (tokenizer inside): ember serve llm.ember
  ember run model.onnx --input x=x.npy   run once, print a summary of each output
  ember run model.onnx --input ids=ids.npy --input mask=mask.npy --output-dir out/
  ember demo                             sentence embeddings with all-MiniLM-L6-v2
  ember generate "What is a compiler?"   a chat answer from the built-in SmolLM2-135M-Instruct
  ember chat                             a conversation with it in the terminal
  ember serve --port 8000                an OpenAI-compatible server (/v1/chat/completions, ...)
  ember bench                            the built-in LLM's offline throughput
  ember bench model.onnx --dim batch=1 --onnxruntime    latency, against onnxruntime
  ember demo --sentence "I like tea." --sentence "Tea is my favourite drink."

set EMBER_DEBUG=1 to see the traceback of an error.
"""


class UsageError(Exception):
    """A mistake on the command line that argparse cannot see (a bad --input, a missing .npy)."""


# -- helpers ----------------------------------------------------------------------------
def _status(message: str) -> None:
    print(f"ember: {message}", file=sys.stderr, flush=True)


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _compile(model: str, target: str, **options):
    """`model` compiled for `target`; an artifact is loaded instead (no compiling)."""
    import ember
    from .artifact import is_artifact

    t0 = time.perf_counter()
    if is_artifact(model):
        _status(f"loading {model} ...")
        compiled = ember.load(model, **{k: v for k, v in options.items() if k in ("profile", "intra_op_threads")})
        if compiled.target != target:
            raise UsageError(f"{model} was compiled for target {compiled.target!r}, not {target!r}")
        return compiled, time.perf_counter() - t0
    _status(f"compiling {model} for {target} ...")
    compiled = ember.compile(model, target=target, **options)
    return compiled, time.perf_counter() - t0


def _info_json(info) -> dict[str, Any]:
    shape = None if info.shape is None else [d if isinstance(d, int) else str(d) for d in info.shape]
    return {"name": info.name, "type": str(info.type),
            "dtype": info.dtype.short if info.dtype is not None else None, "shape": shape}


def _original_opsets(model: str) -> dict[str, int]:
    import onnx

    proto = onnx.load(model, load_external_data=False)
    return {(op.domain or "ai.onnx"): int(op.version) for op in proto.opset_import}


# -- ember inspect ----------------------------------------------------------------------
def cmd_inspect(args: argparse.Namespace) -> int:
    from ._signature import TensorInfo
    from .artifact import is_artifact

    if is_artifact(args.model):
        return _inspect_artifact(args)
    graph, shown = _inspected_graph(args)
    inputs = [TensorInfo(v.name, v.type) for v in graph.inputs]
    outputs = [TensorInfo(v.name, v.type) for v in graph.outputs]
    upgraded = {(d or "ai.onnx"): v for d, v in graph.opsets.items()}
    opsets = {d: {"original": v, "ember": upgraded.get(d, v)} for d, v in _original_opsets(args.model).items()}
    histogram = graph.op_histogram()  # sorted by count, then name
    params = graph.num_parameters()
    if args.json:
        print(json.dumps({
            "model": args.model, "graph": "optimized" if args.optimized else "file",
            "opt_level": args.opt_level if args.optimized else None, "opsets": opsets,
            "inputs": [_info_json(i) for i in inputs],
            "outputs": [_info_json(o) for o in outputs],
            "num_nodes": sum(histogram.values()), "num_parameters": params,
            "op_histogram": histogram}, indent=2))
        return 0
    print(f"model       {args.model}")
    print(f"graph       {shown}")
    for domain, v in opsets.items():
        note = f" (ember upgraded it to {v['ember']})" if v["ember"] != v["original"] else ""
        print(f"opset       {domain} {v['original']}{note}")
    for title, infos in (("inputs", inputs), ("outputs", outputs)):
        print(title)
        for info in infos:
            print(f"  {info}")
    print(f"nodes       {sum(histogram.values())}")
    print(f"parameters  {params:,} ({_human(params)})")
    print(f"ops         {len(histogram)} kinds")
    width = max((len(op) for op in histogram), default=0)
    for op, count in histogram.items():
        print(f"  {op:<{width}}  {count:>5}")
    return 0


def _inspected_graph(args: argparse.Namespace):
    """The graph `ember inspect` shows, and a line that says which one it is."""
    if not args.optimized:
        from .frontends.onnx import load_onnx

        return load_onnx(args.model), ("the file's, as ember imports it (opsets upgraded, no pass run; "
                                       "--optimized shows it after the passes)")
    import ember

    # the passes alone: no kernel is generated or built for a look at the graph
    compiled = ember.compile(args.model, target=args.target, opt_level=args.opt_level, codegen=False)
    num_passes = sum(p.modified for p in compiled.stats.passes)
    return compiled.graph, (f"optimized: after the O{args.opt_level} pass pipeline ({num_passes} passes changed "
                            f"it in {_ms(compiled.stats.timings['passes'])}), as ember runs it")


def _inspect_artifact(args: argparse.Namespace) -> int:
    from .artifact import inspect

    facts = inspect(args.model)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    machine, program, stats = facts.get("machine") or {}, facts.get("program"), facts.get("stats") or {}
    print(f"artifact    {facts['path']} ({_human(facts['file_size'])}B, format version {facts['format_version']}, "
          f"ember {facts.get('ember_version')}, {facts.get('created')})")
    print(f"digest      {facts['digest']} (every member checked against its hash)")
    print(f"kind        {facts.get('kind')}, target {facts.get('target')}")
    print("graph       optimized: an artifact holds the graph after the passes, as ember runs it")
    host = "this machine" if facts["host_matches"] else "another machine: its kernels are rebuilt on load"
    print(f"built for   {machine.get('arch')} {machine.get('system')} with {machine.get('compiler')} ({host})")
    options = ", ".join(f"{k} {v}" for k, v in (facts.get("options") or {}).items() if v not in ([], None))
    print(f"options     {options}")
    for title in ("inputs", "outputs"):
        print(title)
        for info in facts["signature"][title]:
            print(f"  {info['name']}: {info['type']}")
    if facts.get("llm"):
        llm = facts["llm"]
        print(f"llm         from {llm['source']}: vocabulary {llm['vocab_size']}, up to {llm['max_model_len']} "
              f"tokens, KV blocks of {llm['block_size']}, eos {llm['eos_token_ids']}")
    print(f"nodes       {stats.get('num_nodes')}")
    if program:
        externs = ", ".join(f"{name}×{n}" for name, n in program["externs"].items())
        print(f"kernels     {program['num_kernels']}: {program['generated_kernels']} generated in "
              f"{program['segments']} segments, externs {externs or 'none'}; {program['fused_nodes']} nodes "
              f"fused, {len(program['fallbacks'])} on the reference fallback")
    else:
        print("kernels     none: every node runs its reference implementation")
    print("members")
    width = max(len(name) for name in facts["members"])
    for name, entry in facts["members"].items():
        print(f"  {name:<{width}}  {_human(entry['size']):>7}B  ({_human(entry['stored_size'])}B stored)")
    return 0


# -- ember compile ----------------------------------------------------------------------
def _is_llm_source(model: str) -> bool:
    """A Hugging Face folder or a GGUF file (what the LLM frontend reads), not ONNX."""
    path = Path(model)
    return path.is_dir() or path.suffix.lower() == ".gguf"


def cmd_compile(args: argparse.Namespace) -> int:
    if _is_llm_source(args.model):
        compiled, seconds = _compile_llm(args)
    else:
        if (args.block_size is not None or args.max_model_len is not None or args.dtype is not None
                or args.kv_cache_dtype is not None or args.tensor_parallel_size != 1):
            raise UsageError("--block-size, --max-model-len, --dtype, --kv-cache-dtype and --tensor-parallel-size are "
                             "for LLMs (a Hugging Face folder or a GGUF file)")
        if args.quantization in ("gguf", "none"):
            raise UsageError(f"--quantization {args.quantization} is for LLMs; an ONNX model takes a scheme "
                             "(int8, int4, int4_asym, q8_0, q4_0, q4_1, q5_0, q5_1)")
        compiled, seconds = _compile(args.model, args.target, opt_level=args.opt_level,
                                     verify=args.verify or None, dump_ir=args.dump_ir, quantization=args.quantization)
    stats = compiled.stats
    print(f"compiled    {args.model} at O{args.opt_level} for {args.target} in {_ms(seconds)}")
    print(f"nodes       {stats.num_nodes}")
    print("passes")
    width = max((len(p.name) for p in stats.passes), default=0)
    for p in stats.passes:
        change = "" if p.modified else "  (no change)"
        print(f"  {p.name:<{width}}  {p.nodes_before:>6} -> {p.nodes_after:<6} {_ms(p.seconds):>10}{change}")
    if args.dump_ir:
        print(f"IR after each pass written to {args.dump_ir}/")
    if args.output:
        t0 = time.perf_counter()
        path = compiled.save(args.output)
        print(f"saved       {path} ({_human(path.stat().st_size)}B) in {_ms(time.perf_counter() - t0)}")
    return 0


def _compile_llm(args: argparse.Namespace):
    from .llm import compile_llm

    if args.opt_level != 2 or args.verify:
        raise UsageError("an LLM compiles at O2: --opt-level and --verify are for ONNX models")
    size = args.tensor_parallel_size
    if size > 1 and args.output:
        raise UsageError("--tensor-parallel-size with --output: an LLM is sharded as it loads, not saved sharded; "
                         "serve the model folder or GGUF file with --tensor-parallel-size")
    shard = f" (rank 0's shard of {size})" if size > 1 else ""
    _status(f"compiling {args.model} for {args.target}{shard} ...")
    t0 = time.perf_counter()
    compiled = compile_llm(args.model, target=args.target, dtype=args.dtype or "float32", block_size=args.block_size or 16,
                           max_model_len=args.max_model_len, quantization=args.quantization,
                           kv_cache_dtype=args.kv_cache_dtype, dump_ir=args.dump_ir,
                           tensor_parallel=(0, size) if size > 1 else None)
    return compiled, time.perf_counter() - t0


# -- ember run --------------------------------------------------------------------------
def _load_feeds(specs: list[str]) -> dict[str, np.ndarray]:
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            raise UsageError(f"--input {spec!r}: expected NAME=FILE.npy")
        if name in feeds:
            raise UsageError(f"--input {name!r} is given twice")
        if not file.endswith(".npy"):
            raise UsageError(f"--input {spec!r}: {file} is not a .npy file")
        if not os.path.isfile(file):
            raise UsageError(f"--input {name}: no such file: {file}")
        try:
            feeds[name] = np.load(file, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UsageError(f"--input {name}: cannot read {file}: {exc}") from exc
    return feeds


def _safe_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "output"
    candidate, i = base, 1
    while candidate in taken:
        candidate, i = f"{base}_{i}", i + 1
    taken.add(candidate)
    return candidate


def _summary(value: Any, first: int = 6) -> str:
    if value is None:
        return "empty optional"
    if isinstance(value, list):
        return f"sequence of {len(value)} tensors: " + ", ".join(f"{v.dtype}{list(v.shape)}" for v in value)
    arr = np.asarray(value)
    text = f"{arr.dtype} {list(arr.shape)}"
    if arr.size and (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        f64 = arr.astype(np.float64)
        text += f"  min {f64.min():.6g}  max {f64.max():.6g}  mean {f64.mean():.6g}"
    values = np.array2string(arr.reshape(-1)[:first], precision=5, separator=", ")
    return text + f"\n    first values {values}{' ...' if arr.size > first else ''}"


def cmd_run(args: argparse.Namespace) -> int:
    feeds = _load_feeds(args.input)
    compiled, _ = _compile(args.model, args.target)
    t0 = time.perf_counter()
    results = compiled.run(feeds)
    elapsed = time.perf_counter() - t0
    print(f"ran {args.model} in {_ms(elapsed)}")
    if args.output_dir:
        out_dir = Path(args.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        taken: set[str] = set()
        for name, value in results.items():
            stem = _safe_name(name, taken)
            if value is None:
                print(f"  {name}: empty optional, not written")
            elif isinstance(value, list):
                path = out_dir / f"{stem}.npz"
                np.savez(path, *value)
                print(f"  {name} -> {path} (sequence of {len(value)})")
            else:
                path = out_dir / f"{stem}.npy"
                np.save(path, np.asarray(value))
                print(f"  {name} -> {path}")
    else:
        for name, value in results.items():
            print(f"  {name}: {_summary(value)}")
    return 0


# -- ember profile ----------------------------------------------------------------------
def _random_feeds(compiled, dims: dict[str, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for info in compiled.inputs:
        if info.shape is None:
            raise UsageError(f"input {info.name!r} has no known rank: give it with --input")
        shape = []
        for d in info.shape:
            if isinstance(d, int):
                shape.append(d)
            elif str(d) in dims:
                shape.append(dims[str(d)])
            else:
                raise UsageError(f"input {info.name!r} has dim {d}: give it with --dim {d}=N (or --input)")
        dtype = info.dtype.numpy
        feeds[info.name] = (rng.integers(0, 2, shape) if dtype.kind in "iub" else rng.standard_normal(shape)).astype(dtype)
    return feeds


def _dims(specs: list[str]) -> dict[str, int]:
    dims = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not value.isdigit():
            raise UsageError(f"--dim takes NAME=INT, got {spec!r}")
        dims[name] = int(value)
    return dims


def cmd_profile(args: argparse.Namespace) -> int:
    dims = _dims(args.dim)
    compiled, compile_s = _compile(args.model, args.target, profile=True)
    feeds = _load_feeds(args.input) if args.input else _random_feeds(compiled, dims)
    compiled.run(feeds)  # warm-up: binds the shapes, plans memory
    compiled._executor.profile.clear()
    compiled._runs = 0
    for _ in range(args.runs):
        compiled.run(feeds)
    stats = compiled.stats
    print(f"profiled    {args.model}: {args.runs} runs after one warm-up; compiled in {_ms(compile_s)}")
    print(f"program     {stats.num_kernels} kernels, {stats.fused_nodes} nodes fused, "
          f"{len(stats.fallback_nodes)} on the reference fallback")
    print(compiled.profile(trace=args.trace))
    if args.trace:
        print(f"trace       {args.trace} (open in https://ui.perfetto.dev)")
    return 0


# -- ember bench ------------------------------------------------------------------------
def _percentiles(seconds: list[float]) -> str:
    ms = 1e3 * np.asarray(seconds)
    return f"median {np.median(ms):.2f} ms, p90 {np.percentile(ms, 90):.2f} ms"


def cmd_bench(args: argparse.Namespace) -> int:
    """An ONNX model's latency (against onnxruntime with --onnxruntime), or an LLM's
    offline throughput on a seeded synthetic workload."""
    if args.runs < 1 or args.requests < 1 or args.prompt_len < 1 or args.max_tokens < 1:
        raise UsageError("--runs, --requests, --prompt-len and --max-tokens must be at least 1")
    if args.model and (args.model.endswith(".onnx") or _is_model_artifact(args.model)):
        return _bench_onnx(args)
    return _bench_llm(args)


def _is_model_artifact(model: str) -> bool:
    from .artifact import inspect, is_artifact

    return is_artifact(model) and inspect(model, verify=False).get("kind") != "llm"


def _bench_onnx(args: argparse.Namespace) -> int:
    from .runtime.executor import default_threads

    dims = _dims(args.dim)
    compiled, compile_s = _compile(args.model, args.target)
    feeds = _load_feeds(args.input) if args.input else _random_feeds(compiled, dims)
    runners = {"ember": lambda: compiled.run(feeds)}
    if args.onnxruntime:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UsageError("--onnxruntime needs onnxruntime (pip install onnxruntime)") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = default_threads()  # the threads ember's run uses
        session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
        runners["onnxruntime"] = lambda: session.run(None, feeds)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():  # warm-up
        run()
    block = 5
    while min(len(t) for t in times.values()) < args.runs:  # alternating blocks: both see the same drift
        for name, run in runners.items():
            for _ in range(block):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    print(f"bench       {args.model}: {args.runs} runs each after a warm-up; ember compiled in {_ms(compile_s)}")
    for name, t in times.items():
        print(f"{name:<11} {_percentiles(t)}")
    if args.onnxruntime:
        print(f"ratio       ember / onnxruntime median: {np.median(times['ember']) / np.median(times['onnxruntime']):.2f}")
    return 0


def _bench_llm(args: argparse.Namespace) -> int:
    from ._builtin import default_llm
    from .llm import LLM
    from .runtime.request import SamplingParams

    path = Path(args.model) if args.model else default_llm()
    start = time.perf_counter()
    llm = LLM(path)
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(args.seed)
    vocab = llm.engine.vocab_size
    prompts = [{"prompt_token_ids": rng.integers(min(1000, vocab // 2), vocab, args.prompt_len).tolist()}
               for _ in range(args.requests)]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    llm.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=sys.stderr.isatty())
    wall = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    ttft = [o.metrics.time_to_first_token for o in outputs]
    tpot = [o.metrics.time_per_output_token for o in outputs]
    print(f"bench       {path.name}: {args.requests} requests of {args.prompt_len} prompt tokens and "
          f"{args.max_tokens} output tokens (greedy, seed {args.seed}); loaded and compiled in {load_s:.1f} s")
    print(f"throughput  {args.requests / wall:.2f} requests/s, {tokens / wall:.1f} output tokens/s "
          f"({wall:.1f} s in all)")
    print(f"TTFT        {_percentiles(ttft)}")
    print(f"TPOT        {_percentiles(tpot)}")
    return 0


# -- ember demo -------------------------------------------------------------------------
def _similarity_table(sim: np.ndarray) -> list[str]:
    header = "       " + "".join(f"{f'[{j}]':>7}" for j in range(len(sim)))
    return [header] + [f"  [{i}]" + "".join(f"{x:7.3f}" for x in row) for i, row in enumerate(sim)]


def _compare_onnxruntime(path: Path, feeds: dict[str, np.ndarray], hidden: np.ndarray) -> str | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (reference,) = session.run(None, feeds)
    return f"onnxruntime {ort.__version__}: max abs diff {np.abs(reference - hidden).max():.2e}"


def cmd_demo(args: argparse.Namespace) -> int:
    from . import _builtin

    sentences = args.sentence or _builtin.SAMPLE_SENTENCES
    _builtin.minilm_dir()  # fails early, with the install hint, if the model is missing
    if not (_builtin.cache_dir() / "models" / "all-MiniLM-L6-v2.onnx").is_file():
        _status("exporting all-MiniLM-L6-v2 to ONNX (first run only, a few seconds) ...")
    path = _builtin.export_minilm()
    compiled, compile_s = _compile(str(path), args.target)
    feeds = _builtin.tokenize(sentences)
    t0 = time.perf_counter()
    hidden = compiled.run(feeds)[_builtin.OUTPUT_NAME]
    run_s = time.perf_counter() - t0
    embeddings = _builtin.mean_pool(hidden, feeds["attention_mask"])

    graph = compiled.graph
    print(f"model       all-MiniLM-L6-v2 (sentence embeddings), ONNX at {path}")
    print(f"compiled    in {_ms(compile_s)} for {args.target}: {len(graph.nodes)} nodes, "
          f"{_human(graph.num_parameters())} parameters")
    print(f"signature   ({', '.join(map(str, compiled.inputs))})")
    print(f"            -> ({', '.join(map(str, compiled.outputs))})")
    print(f"ran         {len(sentences)} sentences ({feeds['input_ids'].shape[1]} tokens, padded) "
          f"in {_ms(run_s)}")
    print(f"embeddings  {embeddings.dtype} {list(embeddings.shape)} (mean-pooled, L2-normalized)")
    print("sentences")
    for i, sentence in enumerate(sentences):
        print(f"  [{i}] {sentence}")
    print("cosine similarity matrix")
    print("\n".join(_similarity_table(embeddings @ embeddings.T)))
    comparison = _compare_onnxruntime(path, feeds, hidden)
    if comparison:
        print(comparison)
    return 0


# -- generate -----------------------------------------------------------------------------
def cmd_generate(args) -> int:
    """Answer one prompt with an LLM (default: the built-in SmolLM2-135M-Instruct), the
    text streaming as it decodes; then the speed, and with --compare transformers' on
    the same prompt."""
    from ._builtin import default_llm
    from .llm import _chat_prompt, build_engine
    from .runtime.request import SamplingParams

    if args.max_tokens < 1:
        raise UsageError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                            max_tokens=args.max_tokens)
    path = Path(args.model) if args.model else default_llm()
    start = time.perf_counter()
    engine = build_engine(path, target=args.target, dtype=args.dtype, quantization=args.quantization,
                          kv_cache_dtype=args.kv_cache_dtype, kv_cache_memory=256 << 20,
                          tensor_parallel_size=args.tensor_parallel_size)
    load_s = time.perf_counter() - start
    tokenizer = engine.tokenizer
    if args.raw or not getattr(tokenizer, "chat_template", None):
        prompt = {"prompt_token_ids": tokenizer.encode(args.prompt)}
    else:
        prompt = _chat_prompt(tokenizer, [{"role": "user", "content": args.prompt}])
    out = None
    for delta, out in engine.stream("cli", prompt, params):
        print(delta, end="", flush=True)
    print()
    sample, m = out.outputs[0], out.metrics
    speed = 1 / m.time_per_output_token if m.num_generated_tokens > 1 else math.nan
    print(f"ember: {path.name}, loaded and compiled in {load_s:.1f} s; {len(out.prompt_token_ids)} prompt tokens "
          f"in {_ms(m.time_to_first_token)}, {len(sample.token_ids)} generated ({sample.finish_reason}), "
          f"{speed:.1f} tokens/s decoding", file=sys.stderr)
    if args.compare:
        stop = {t for t in (tokenizer.eos_token_id,) if t is not None}
        print(_compare_transformers(path, out.prompt_token_ids, sample.token_ids, stop), file=sys.stderr)
    return 0


def _compare_transformers(path: Path, prompt_ids: list[int], token_ids: list[int], stop: set[int]) -> str:
    """transformers' greedy generate of as many tokens on the same prompt and weights."""
    import torch

    from ._builtin import transformers_llm

    model = transformers_llm(path)
    ids = torch.tensor([prompt_ids])
    n = len(token_ids)
    with torch.no_grad():
        start = time.perf_counter()
        model(ids)  # prefill alone, to time decoding as ember's line does
        prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             eos_token_id=sorted(stop) or None, pad_token_id=next(iter(stop), 0))
        total_s = time.perf_counter() - start
    new = out[0, len(prompt_ids):].tolist()
    speed = (len(new) - 1) / max(total_s - prefill_s, 1e-9) if len(new) > 1 else math.nan
    same = "the same tokens as ember" if new == token_ids else "other tokens than ember (ember sampled, or they diverge)"
    return f"transformers: {len(new)} tokens greedy, {speed:.1f} tokens/s decoding; {same}"


# -- serve and chat -----------------------------------------------------------------------
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _byte_size(text: str) -> int:
    """'2G', '512MiB', '1.5g', '1048576' -> bytes (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, flags=re.I)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size like 2G, 512M or a number of bytes, got {text!r}")
    return int(float(match[1]) * _SIZE_UNITS[match[2].lower()])


def _engine_options(args) -> dict[str, Any]:
    names = ("max_model_len", "max_num_seqs", "kv_cache_memory", "block_size", "max_num_batched_tokens", "dtype",
             "quantization", "kv_cache_dtype", "tensor_parallel_size")
    options = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if getattr(args, "enforce_eager", False):
        options["enforce_eager"] = True
    return options


def cmd_serve(args) -> int:
    """Serve an LLM over an OpenAI-compatible HTTP API until SIGTERM or Ctrl-C."""
    try:
        from .serve import serve
    except ImportError as e:
        raise UsageError(f"ember serve needs the serve extra (pip install 'ember[serve]'): {e}") from None
    if args.default_max_tokens < 0:
        raise UsageError(f"--default-max-tokens must be 0 (no default) or more, got {args.default_max_tokens}")
    api_key = args.api_key or os.environ.get("EMBER_API_KEY") or None
    _status(f"loading and compiling {args.model or 'the built-in SmolLM2-135M-Instruct'} for {args.target} ...")
    serve(args.model, host=args.host, port=args.port, model_name=args.served_model_name, api_key=api_key,
          max_queue=args.max_queue, shutdown_timeout=args.shutdown_timeout, log_level=args.log_level,
          default_max_tokens=args.default_max_tokens or None, tool_call_parser=args.tool_call_parser,
          embedding_model=args.embedding_model, embedding_model_name=args.served_embedding_model_name,
          target=args.target, **_engine_options(args))
    _status("stopped")
    return 0


def cmd_chat(args) -> int:
    """Chat in the terminal, one stdin line per message, with a local model or a server."""
    from . import _chat
    from .runtime.request import SamplingParams

    if args.max_tokens < 1:
        raise UsageError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    if args.url:
        if args.model:
            raise UsageError("give a MODEL or --url, not both")
        sampling = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p}
        if args.seed is not None:
            sampling["seed"] = args.seed
        session = _chat.RemoteChat(args.url, args.api_key or os.environ.get("EMBER_API_KEY"), sampling)
    else:
        from .llm import build_engine

        params = SamplingParams(temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                                max_tokens=args.max_tokens)
        _status(f"loading and compiling {args.model or 'the built-in SmolLM2-135M-Instruct'} for {args.target} ...")
        options = {"kv_cache_memory": 256 << 20, **_engine_options(args)}
        engine = build_engine(args.model, target=args.target, **options)
        _chat.check_model_can_chat(engine.tokenizer)
        session = _chat.LocalChat(engine, params)
    interactive = sys.stdin.isatty()
    if interactive:
        _status("type a message and press Enter; /help lists the commands, /exit (or Ctrl-D) ends it")
    _chat.converse(session, _chat.lines(sys.stdin, "> " if interactive else None), sys.stdout, system=args.system)
    return 0


# -- the parser and main ----------------------------------------------------------------
def _feed_arguments(p: argparse.ArgumentParser, scope: str = "") -> None:
    """--input and --dim: given inputs, or the sizes of random ones."""
    p.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE.npy",
                   help=scope + "feed the array in FILE.npy to input NAME (default: random inputs)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                   help=scope + "the size of a symbolic dim for random inputs (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ember", description="ember: a model compiler and inference runtime.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ember {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func, help: str, epilog: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--target", default="cpu", choices=["cpu", "cuda"],
                       help="cpu (C++ kernels; the default) or cuda (Triton kernels on a GPU; with TRITON_INTERPRET=1 and no "
                       "GPU, in Triton's interpreter on the CPU)")
        p.set_defaults(func=func)
        return p

    p = add("inspect", cmd_inspect, "show a model's signature, opset, op histogram and size, or an artifact's "
            "manifest, signature, kernels and sizes",
            "examples:\n  ember inspect model.onnx                the file's graph\n"
            "  ember inspect model.onnx --optimized    the graph after the passes, as ember runs it\n"
            "  ember inspect model.onnx --json\n  ember inspect model.ember")
    p.add_argument("model", metavar="MODEL", help="an ONNX file or an artifact (.ember)")
    p.add_argument("--optimized", action="store_true",
                   help="show the graph after ember's passes (what it runs) instead of the file's graph; an "
                        "artifact always holds the optimized one")
    p.add_argument("--opt-level", "-O", type=int, default=2, choices=range(4), metavar="N",
                   help="with --optimized: the pass pipeline O0-O3 (default: 2)")
    p.add_argument("--json", action="store_true", help="print the same facts as JSON")

    p = add("compile", cmd_compile, "compile a model, report what each pass did, and save it as an artifact",
            "examples:\n  ember compile model.onnx\n  ember compile model.onnx --opt-level 0\n"
            "  ember compile model.onnx --dump-ir ir/ --verify\n"
            "  ember compile model.onnx -o model.ember        then: ember run model.ember --input x=x.npy\n"
            "  ember compile model.gguf -o llm.ember          then: ember serve llm.ember")
    p.add_argument("model", metavar="MODEL", help="an ONNX file, or an LLM: a Hugging Face folder or a GGUF file")
    p.add_argument("--output", "-o", metavar="OUT.ember",
                   help="save the compiled model as an artifact (ember.load, ember run/serve read it back)")
    p.add_argument("--block-size", type=int, metavar="N", help="LLM: tokens per KV cache block (default: 16)")
    p.add_argument("--max-model-len", type=int, metavar="N",
                   help="LLM: longest prompt + output in tokens (default: the model's context length)")
    _add_dtype(p, "LLM: ")
    _add_kv_cache_dtype(p, "LLM: ")
    _add_quantization(p, "LLM or ONNX (a scheme) ")
    _add_tensor_parallel(p, "LLM: compile rank 0's shard of N (with --dump-ir: see its collectives); ")
    p.add_argument("--opt-level", "-O", type=int, default=2, choices=range(4), metavar="N",
                   help="pass pipeline O0-O3 (default: 2)")
    p.add_argument("--dump-ir", metavar="DIR", help="write the printed IR after every pass to DIR (ONNX or LLM)")
    p.add_argument("--verify", action="store_true", help="verify the IR after every pass")

    p = add("run", cmd_run, "run a model once on inputs read from .npy files",
            "examples:\n  ember run model.onnx --input x=x.npy\n"
            "  ember run model.onnx --input x=x.npy --input y=y.npy --output-dir out/\n"
            "  ember run model.ember --input x=x.npy          an artifact: loaded, not compiled")
    p.add_argument("model", metavar="MODEL", help="an ONNX file or an artifact (.ember)")
    p.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE.npy",
                   help="feed the array in FILE.npy to input NAME (repeat for each input)")
    p.add_argument("--output-dir", "-o", metavar="DIR",
                   help="write each output to DIR/<output name>.npy instead of printing a summary")

    p = add("profile", cmd_profile, "run a compiled model and print where the time goes, by kernel kind",
            "examples:\n  ember profile model.onnx --dim batch=8 --dim seq=128\n"
            "  ember profile model.onnx --input x=x.npy --runs 20 --trace trace.json")
    p.add_argument("model", metavar="MODEL", help="an ONNX file or an artifact (.ember)")
    _feed_arguments(p)
    p.add_argument("--runs", type=int, default=10, help="timed runs (default: 10)")
    p.add_argument("--trace", metavar="FILE.json", help="also write a Chrome trace (Perfetto opens it)")

    p = add("bench", cmd_bench, "time a model: an ONNX model's latency, or an LLM's throughput",
            "examples:\n  ember bench model.onnx --dim batch=1 --dim seq=128 --onnxruntime\n"
            "  ember bench                                  the built-in SmolLM2: offline throughput\n"
            "  ember bench model.gguf --requests 64 --prompt-len 256 --max-tokens 128")
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="an ONNX file, a Hugging Face LLM folder, a GGUF file or an artifact "
                        "(default: the built-in SmolLM2)")
    _feed_arguments(p, "ONNX: ")
    p.add_argument("--runs", type=int, default=20, help="ONNX: timed runs per engine (default: 20)")
    p.add_argument("--onnxruntime", action="store_true", help="ONNX: also time onnxruntime, in the same run")
    p.add_argument("--requests", type=int, default=32, help="LLM: requests, all arriving at once (default: 32)")
    p.add_argument("--prompt-len", type=int, default=256, help="LLM: prompt tokens per request (default: 256)")
    p.add_argument("--max-tokens", type=int, default=64, help="LLM: output tokens per request (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="LLM: seed of the random prompts (default: 0)")

    p = add("generate", cmd_generate, "answer a prompt with an LLM (default: the built-in SmolLM2-135M-Instruct)",
            'examples:\n  ember generate "What is a compiler?"\n'
            '  ember generate "Write a haiku about tea." --temperature 0.7 --top-p 0.9 --seed 1\n'
            '  ember generate "Hello" --model path/to/model-folder-or.gguf --compare')
    p.add_argument("prompt", metavar="PROMPT", help="the prompt (sent through the model's chat template)")
    p.add_argument("--model", "-m", metavar="PATH",
                   help="a Hugging Face model folder, a GGUF file or an LLM artifact (default: the built-in SmolLM2)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens to generate at most (default: 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (the default) decodes greedily")
    p.add_argument("--top-p", type=float, default=1.0, help="sample from the top-p mass (default: 1)")
    p.add_argument("--seed", type=int, help="seed of the sampler (default: a fresh one each run)")
    p.add_argument("--raw", action="store_true", help="send the prompt as it is, without the chat template")
    _add_dtype(p)
    _add_kv_cache_dtype(p)
    _add_quantization(p)
    _add_tensor_parallel(p)
    p.add_argument("--compare", action="store_true",
                   help="also time transformers' greedy generate on the same prompt and weights")

    p = add("serve", cmd_serve, "serve an LLM, an encoder or both over an OpenAI-compatible HTTP API "
            "(default: the built-in SmolLM2)",
            "examples:\n  ember serve                                  the built-in SmolLM2 on http://127.0.0.1:8000/v1\n"
            "  ember serve path/to/model --host 0.0.0.0 --port 8080 --api-key s3cret\n"
            "  ember serve --embedding-model path/to/all-MiniLM-L6-v2   SmolLM2, and embeddings and reranking\n"
            "  ember serve path/to/sentence-transformers-folder        an encoder alone (or a cross-encoder)\n"
            "  ember serve model.gguf --max-model-len 4096 --max-num-seqs 32 --kv-cache-memory 4G\n"
            "  ember serve model.gguf --target cuda --dtype bfloat16      on a GPU\n"
            "  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\\n"
            "       -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hi!\"}]}'\n\n"
            "routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions, POST /v1/responses,\n"
            "POST /tokenize, /detokenize, GET /health, GET /metrics; with an encoder, POST /v1/embeddings and\n"
            "POST /v1/rerank (also /rerank, /v2/rerank);\n"
            "SIGTERM or Ctrl-C finishes the requests in flight (up to --shutdown-timeout), then exits.")
    p.add_argument("model", metavar="MODEL", nargs="?",
                   help="a Hugging Face model folder, a GGUF file or an LLM artifact (default: the built-in SmolLM2); "
                        "or an encoder (a sentence-transformers folder, a cross-encoder, an .onnx encoder) to serve "
                        "alone")
    p.add_argument("--embedding-model", metavar="ENCODER",
                   help="also serve this encoder (a sentence-transformers folder, a cross-encoder or an .onnx "
                        "encoder): /v1/embeddings, /v1/rerank")
    p.add_argument("--served-embedding-model-name", metavar="NAME",
                   help="the encoder's name in the API (default: its folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: 8000)")
    p.add_argument("--served-model-name", metavar="NAME",
                   help="the model's name in the API (default: the folder's name, the file's without extension)")
    p.add_argument("--api-key", metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $EMBER_API_KEY, else none)")
    _add_engine_options(p)
    p.add_argument("--default-max-tokens", type=int, default=1024, metavar="N",
                   help="max_tokens of a chat request that sets none, so a sampled answer cannot run on to "
                        "the context limit; 0: up to --max-model-len, as OpenAI (default: 1024; "
                        "/v1/completions keeps OpenAI's 16)")
    p.add_argument("--tool-call-parser", choices=["hermes", "llama3_json", "mistral"],
                   help="how answers to requests with tools are read for tool calls (default: the format the chat "
                        "template speaks; hermes, with ember's own tool prompt, for a template that knows no tools)")
    p.add_argument("--max-queue", type=int, default=256, metavar="N",
                   help="sequences that may wait beyond --max-num-seqs; past that, 503 (default: 256)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="on SIGTERM, how long requests in flight may run on (default: 30)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level; info and debug log each request (default: warning)")

    p = add("chat", cmd_chat, "chat with an LLM in the terminal, answers streamed (default: the built-in SmolLM2)",
            "examples:\n  ember chat\n  ember chat path/to/model --system \"You are terse.\" --temperature 0.7\n"
            "  printf 'What is a compiler?\\nAnd an interpreter?\\n' | ember chat\n"
            "  ember chat --url http://127.0.0.1:8000/v1          the model a running `ember serve` serves\n\n"
            "each line is a message; /help lists the commands: /reset forgets the conversation, /exit or Ctrl-D\n"
            "ends it.")
    p.add_argument("model", metavar="MODEL", nargs="?",
                   help="a Hugging Face model folder, a GGUF file or an LLM artifact (default: the built-in SmolLM2)")
    p.add_argument("--url", help="chat with the model of the OpenAI-compatible server at this /v1 URL instead")
    p.add_argument("--api-key", metavar="KEY", help="the server's API key, with --url (default: $EMBER_API_KEY)")
    p.add_argument("--system", metavar="TEXT", help="a system message that opens the conversation")
    p.add_argument("--max-tokens", type=int, default=512, help="tokens per answer at most (default: 512)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (the default) decodes greedily")
    p.add_argument("--top-p", type=float, default=1.0, help="sample from the top-p mass (default: 1)")
    p.add_argument("--seed", type=int, help="seed of the sampler")
    _add_engine_options(p, serving=False)

    p = add("demo", cmd_demo, "embed sentences with all-MiniLM-L6-v2, compiled by ember",
            'example:\n  ember demo --sentence "A cat sits." --sentence "A kitten is sitting."')
    p.add_argument("--sentence", "-s", action="append", metavar="TEXT",
                   help="a sentence to embed (repeatable; default: four built-in samples)")
    return parser


def _add_dtype(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                   help=f"{what}the dtype of the weights, activations and KV cache (default: float32; an artifact: "
                        "the one it was compiled in)")


def _add_kv_cache_dtype(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument("--kv-cache-dtype", choices=["auto", "float32", "float16", "bfloat16", "fp8", "int8"],
                   help=f"{what}the KV cache's element type alone (default: auto, the model's dtype); float16 halves "
                        "its bytes: twice the tokens in --kv-cache-memory, half the reads of decode's attention; fp8 "
                        "(float8 e4m3fn) and int8 (a float32 scale per token and kv head) about quarter them")


QUANTIZATION_HELP = ("weights: 'gguf' keeps a GGUF file's quantized blocks (the default for a GGUF file on the cpu "
                     "target in float32), 'none' dequantizes them; a scheme quantizes float weights: int8 (q8_0), "
                     "int4 (q4_0), int4_asym (q4_1), q5_0, q5_1 (weight-only, llama.cpp's blocks; the head stays float)")


def _add_quantization(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument("--quantization", "-q", metavar="SCHEME", help=what + QUANTIZATION_HELP)


def _add_tensor_parallel(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, metavar="N",
                   help=f"{what}shard the model over N processes on this machine, each with its slice of the "
                        "weights and KV cache and cores/N threads (torch.distributed, gloo); under torchrun, over "
                        "its ranks (docs/distributed.md) (default: 1)")


def _add_engine_options(p: argparse.ArgumentParser, serving: bool = True) -> None:
    _add_dtype(p)
    _add_kv_cache_dtype(p)
    _add_quantization(p)
    _add_tensor_parallel(p)
    p.add_argument("--enforce-eager", action="store_true",
                   help="--target cuda: run decode steps kernel by kernel, without CUDA graphs (faster start, slower steps)")
    p.add_argument("--max-model-len", type=int, metavar="N",
                   help="longest prompt + output in tokens (default: the model's context length)")
    p.add_argument("--kv-cache-memory", type=_byte_size, metavar="SIZE",
                   help=f"memory for the KV cache, e.g. 512M or 4G, taken when the engine starts "
                        f"(default: {'2G' if serving else '256M'})")
    if serving:
        p.add_argument("--max-num-seqs", type=int, metavar="N",
                       help="sequences the engine runs at once (default: 64)")
        p.add_argument("--max-num-batched-tokens", type=int, metavar="N",
                       help="tokens one engine step computes at most (default: 2048)")
        p.add_argument("--block-size", type=int, metavar="N", help="tokens per KV cache block (default: 16)")


def main(argv: list[str] | None = None) -> int:
    """Run the `ember` command with `argv` (default: sys.argv[1:]); return the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse has printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return args.func(args)
    except (EmberError, UsageError, OSError) as exc:
        if os.environ.get("EMBER_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"ember: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ember: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
