"""ember's LLM APIs: `LLM` for offline batches, `AsyncLLM` for streaming (what the server
sits on). Both open a Hugging Face folder or GGUF file (default: the built-in
SmolLM2-135M-Instruct), compile its forward graph and run it in an `LLMEngine` — or
load an artifact of it (`ember compile model.gguf -o model.ember`), compiled already.

    llm = ember.LLM()                                  # or ember.LLM("model.gguf", max_num_seqs=32)
    for out in llm.generate(["Hello", "The capital of France is"], ember.SamplingParams(max_tokens=32)):
        print(out.outputs[0].text)

    llm = ember.AsyncLLM()
    async for out in llm.generate("Hello", ember.SamplingParams(max_tokens=32), request_id="a"):
        print(out.outputs[0].text)                   # cumulative; out.finished on the last

Options: the `EngineOptions` fields (block_size, kv_cache_memory, max_num_batched_tokens,
max_num_seqs, max_model_len, enable_prefix_caching), plus `intra_op_threads`, `target`
("cpu" or "cuda"), `dtype` ("float32", the default, "float16" or "bfloat16": the
weights', activations' and KV cache's), `kv_cache_dtype` (the KV cache's alone, e.g.
"float16": half the cache's bytes, so twice the tokens in kv_cache_memory and half the
reads of a decode step's attention; "fp8" and "int8" about a quarter)
and `quantization` for the compiler:

    llm = ember.LLM("model.gguf", target="cuda", dtype="bfloat16")
    llm = ember.LLM("model.gguf", kv_cache_dtype="float16")
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import queue
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from .errors import ExecutionError, InputError, UnsupportedError
from .ir.dtypes import DType
from .ir.quant_formats import SCHEMES
from .runtime.engine import CompletionOutput, EngineOptions, EngineStats, LLMEngine, RequestOutput, StepError  # noqa: F401
from .runtime.request import SamplingParams, StructuredOutputsParams  # noqa: F401 - re-exported (ember.serve)
from .runtime.sampler import Logprob  # noqa: F401 - with CompletionOutput: the LLM API's result types (ember.serve reads them here)

_ENGINE_FIELDS = {f.name for f in dataclasses.fields(EngineOptions)}
LLM_DTYPES = ("float32", "float16", "bfloat16")
# a KV cache's element types beyond LLM_DTYPES, by the names they are asked for: vLLM's "fp8"
# (float8 e4m3fn, unscaled), and int8 (rows quantized with a scale each)
KV_CACHE_QUANTIZED = {"fp8": "float8e4m3fn", "fp8_e4m3": "float8e4m3fn", "float8_e4m3fn": "float8e4m3fn",
                      "float8e4m3fn": "float8e4m3fn", "int8": "int8"}
LLM_QUANTIZATIONS = ("gguf", "none", *SCHEMES)  # compile_llm


def llm_dtype(compiled) -> str:
    """The dtype an LLM's forward graph was built in (its logits')."""
    return compiled.outputs[0].dtype.name


def kv_cache_dtype(compiled) -> str:
    """The element type of an LLM's KV cache (its graph's cache inputs')."""
    from .ir.forward import FEEDS

    return next(info.dtype.name for info in compiled.inputs if info.name not in FEEDS)


def build_engine(model: str | os.PathLike | None = None, *, target: str = "cpu", dtype: str | None = None,
                 quantization: str | None = None, kv_cache_dtype: str | None = None,
                 intra_op_threads: int | None = None, progress: bool | None = None, tensor_parallel_size: int = 1,
                 **options) -> LLMEngine:
    """Open `model` (a Hugging Face folder, a GGUF file, or an artifact that `ember compile`
    wrote), compile its forward graph unless it is an artifact, and return an engine over it.
    `tensor_parallel_size` N > 1: the model sharded over N processes (_tensor_parallel.py)."""
    from ._builtin import default_llm
    from .artifact import is_artifact

    unknown = set(options) - _ENGINE_FIELDS
    if unknown:
        raise InputError(f"unknown engine option(s) {sorted(unknown)}; the options are {sorted(_ENGINE_FIELDS)}, "
                         "intra_op_threads, target, dtype, kv_cache_dtype, quantization and tensor_parallel_size")
    engine_options = EngineOptions(**options)
    path = Path(model) if model is not None else default_llm()
    if not isinstance(tensor_parallel_size, int) or tensor_parallel_size < 1:
        raise InputError(f"tensor_parallel_size must be a positive integer, got {tensor_parallel_size!r}")
    group = None
    if tensor_parallel_size > 1:
        if is_artifact(path):
            raise InputError(f"{path} is an artifact: tensor parallelism shards a model folder or GGUF file as it "
                             "loads (each rank reads only its slices)")
        from . import _tensor_parallel

        compiled, group = _tensor_parallel.start(
            path, tensor_parallel_size, dict(target=target, dtype=dtype or "float32", quantization=quantization,
                                             kv_cache_dtype=kv_cache_dtype, block_size=engine_options.block_size,
                                             max_model_len=engine_options.max_model_len,
                                             intra_op_threads=intra_op_threads), engine_options, progress)
    elif is_artifact(path):
        if quantization is not None:
            raise InputError(f"{path} is an artifact, compiled already: its weights are as it was compiled "
                             "(compile it again with --quantization to change them)")
        compiled, engine_options = _load_artifact(path, target, dtype, kv_cache_dtype, intra_op_threads, options)
    else:
        compiled = compile_llm(path, target=target, dtype=dtype or "float32", quantization=quantization,
                               kv_cache_dtype=kv_cache_dtype, block_size=engine_options.block_size,
                               max_model_len=engine_options.max_model_len, intra_op_threads=intra_op_threads,
                               progress=progress)
    info = compiled.llm
    try:
        engine = LLMEngine(compiled, info.tokenizer, vocab_size=info.vocab_size, eos_token_ids=info.eos_token_ids,
                           max_model_len=engine_options.max_model_len or info.max_model_len, options=engine_options,
                           group=group)
    except BaseException:
        if group is not None:
            group.shutdown()
        raise
    if group is not None:  # the workers stop with the engine, or at exit
        weakref.finalize(engine, group.shutdown)
    return engine


def compile_llm(model: str | os.PathLike, *, target: str = "cpu", dtype: str = "float32",
                quantization: str | None = None, kv_cache_dtype: str | None = None, block_size: int = 16,
                max_model_len: int | None = None, intra_op_threads: int | None = None,
                progress: bool | None = None, tensor_parallel: tuple[int, int] | None = None, tokenizer: bool = True,
                dump_ir: str | os.PathLike | None = None):
    """The forward graph of the LLM at `model` (a Hugging Face folder or a GGUF file) in
    `dtype` ("float32", "float16" or "bfloat16"), compiled for `target`, KV-cache blocks of
    `block_size` tokens and sequences of up to `max_model_len` (default: the model's
    context length), with its tokenizer and facts in `compiled.llm`: what
    `compiled.save()` puts in an LLM artifact.

    `quantization` (see LLM_QUANTIZATIONS): "gguf" keeps a GGUF file's quantized blocks
    (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) as they are, its linear layers multiplying by them
    (ember.QuantizedLinear) instead of by float weights; "none" dequantizes them into
    `dtype`; None (the default) is "gguf" where it applies (a GGUF file, float32, the cpu
    target: the kernel's), else "none". A scheme ("int8", "int4", "int4_asym", or a block
    format: q8_0, q4_0, q4_1, q5_0, q5_1) quantizes the float weights into those blocks
    (the quantize_weights pass; the head stays float), on the cpu target in float32.

    `kv_cache_dtype` (one of LLM_DTYPES, "fp8": float8 e4m3fn, or "int8"; None or "auto":
    `dtype`) is the KV cache's element type: each new key and value is
    rounded into it (into fp8 saturated to +-448, unscaled; into int8 each token's row of each
    kv head with a float32 scale of its own: D + 4 bytes a row), attention reads it back in
    `dtype`.

    `tensor_parallel` (rank, size): that rank's shard of the model (the shard_tensor_parallel
    pass, by the architecture's plan), its collectives meeting the other ranks'.
    `tokenizer` False: none loaded (a worker rank's). `dump_ir`: a folder for the IR after
    every pass."""
    from . import api
    from .frontends.hf import load_pretrained

    if dtype not in LLM_DTYPES:
        raise InputError(f"dtype {dtype!r} is not one an LLM runs in; choose one of {', '.join(LLM_DTYPES)}")
    cache_dtype = _cache_dtype(kv_cache_dtype, dtype)
    api.check_target(target)  # (before the weights load)
    path = Path(model)
    progress = sys.stderr.isatty() if progress is None else progress
    keep = _keeps_blocks(path, target, dtype, quantization)
    scheme = quantization if quantization not in (None, "gguf", "none") else None
    pretrained = load_pretrained(path, dtype=dtype, progress=progress)
    pretrained.weights.keep_quantized = keep
    max_len = max_model_len or pretrained.config.max_position_embeddings
    graph = pretrained.graph(block_size=block_size, max_model_len=max_len, kv_cache_dtype=DType[cache_dtype])
    sharding = _sharding(pretrained, *tensor_parallel) if tensor_parallel is not None else None
    compiled = api.compile(graph, target=target, intra_op_threads=intra_op_threads, quantization=scheme,
                           tensor_parallel=sharding, dump_ir=dump_ir)
    tokenizer = pretrained.tokenizer() if tokenizer else None
    eos = [tokenizer.eos_token_id] if tokenizer is not None and tokenizer.eos_token_id is not None else []
    compiled.options.update(block_size=block_size, max_model_len=max_len)
    compiled.llm = api.LLMInfo(pretrained.config.vocab_size, eos, max_len, block_size, source=path.name,
                               _tokenizer=tokenizer)
    return compiled


def _sharding(pretrained, rank: int, size: int):
    """compile's tensor_parallel option for rank `rank` of `size` (None: no sharding)."""
    from .errors import UnsupportedError

    if size == 1:
        return None
    plan = pretrained.architecture.tensor_parallel_plan
    if plan is None:
        raise UnsupportedError(f"{pretrained.config.family} models cannot be sharded for tensor parallelism yet")
    return rank, size, plan(pretrained.config)


def _cache_dtype(kv_cache_dtype: str | None, dtype: str) -> str:
    """The KV cache's element type (a DType's name) for the option `kv_cache_dtype` of a
    model in `dtype`."""
    if kv_cache_dtype in (None, "auto"):
        return dtype
    if kv_cache_dtype in KV_CACHE_QUANTIZED:
        return KV_CACHE_QUANTIZED[kv_cache_dtype]
    if kv_cache_dtype not in LLM_DTYPES:
        raise InputError(f"kv_cache_dtype {kv_cache_dtype!r} is not one ember keeps a KV cache in; choose one of "
                         f"auto, {', '.join(LLM_DTYPES)}, fp8, int8")
    return kv_cache_dtype


def _keeps_blocks(path: Path, target: str, dtype: str, quantization: str | None) -> bool:
    """Whether the weights keep a GGUF file's quantized blocks (see compile_llm)."""
    if quantization not in (None, *LLM_QUANTIZATIONS):
        raise InputError(f"quantization {quantization!r} is not one ember knows; choose one of "
                         f"{', '.join(LLM_QUANTIZATIONS)}")
    gguf, kernel = path.is_file(), target == "cpu" and dtype == "float32"  # (where the block kernel runs)
    if quantization == "gguf" and not gguf:
        raise InputError(f"quantization 'gguf' keeps a GGUF file's blocks; {path} is not a GGUF file")
    if quantization not in (None, "none") and not kernel:
        raise InputError(f"quantization {quantization!r} runs on the cpu target in float32 (its kernel's), not "
                         f"{dtype} on {target!r}: use quantization='none'")
    return quantization == "gguf" or (quantization is None and gguf and kernel)


def _load_artifact(path: Path, target: str, dtype: str | None, cache_dtype: str | None, intra_op_threads: int | None,
                   options: dict):
    """An LLM artifact, and the engine options it allows: its block size (the graph's
    caches are shaped by it) and a max_model_len no longer than it was compiled for."""
    from .artifact import load

    compiled = load(path, intra_op_threads=intra_op_threads)
    info = compiled.llm
    if info is None:
        raise InputError(f"{path} is an artifact of a model that is not an LLM (use ember.load and run it)")
    if compiled.target != target:
        raise InputError(f"{path} was compiled for target {compiled.target!r}, not {target!r}")
    if dtype is not None and llm_dtype(compiled) != dtype:
        raise InputError(f"{path} was compiled in {llm_dtype(compiled)}, not {dtype}: compile it again with --dtype {dtype}")
    if cache_dtype not in (None, "auto") and kv_cache_dtype(compiled) != KV_CACHE_QUANTIZED.get(cache_dtype, cache_dtype):
        raise InputError(f"{path} was compiled with its KV cache in {kv_cache_dtype(compiled)}, not {cache_dtype}: compile "
                         f"it again with --kv-cache-dtype {cache_dtype}")
    if options.get("block_size", info.block_size) != info.block_size:
        raise InputError(f"{path} was compiled for KV-cache blocks of {info.block_size} tokens, not "
                         f"{options['block_size']}: compile it again with --block-size {options['block_size']}")
    if (options.get("max_model_len") or 0) > info.max_model_len:
        raise InputError(f"{path} was compiled for sequences of up to {info.max_model_len} tokens, not "
                         f"{options['max_model_len']}: compile it again with --max-model-len {options['max_model_len']}")
    return compiled, EngineOptions(**{**options, "block_size": info.block_size})


def _chat_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> dict:
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("this model's tokenizer has no chat template: use generate() with a plain prompt")
    text = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    return {"prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)}


def _prompt_list(prompts) -> list:
    """generate's and embed's `prompts` as a list: one prompt (a string, token ids, a dict) or a list of them."""
    if isinstance(prompts, (str, dict)) or (prompts and isinstance(prompts[0], int)):
        return [prompts]
    return list(prompts)


class LLM:
    """Offline generation: hand over all prompts, get all outputs back in order. Given an
    encoder (a sentence-transformers folder, a cross-encoder, an .onnx encoder: ember.Encoder's
    models), it embeds and scores instead, in vLLM's shapes:

        llm = ember.LLM("path/to/all-MiniLM-L6-v2")
        llm.embed(["A sentence."])[0].outputs.embedding        # list of floats
        llm.score("a query", ["doc one", "doc two"])[1].outputs.score
    """

    def __init__(self, model: str | os.PathLike | None = None, **options):
        from .frontends.hf.encoder import is_encoder

        self.engine = self.encoder = None
        if model is not None and is_encoder(model):
            from .embeddings import Encoder

            unknown = set(options) - {"max_seq_length", "target", "intra_op_threads", "max_batch_tokens", "batch_size"}
            if unknown:
                raise InputError(f"{model} is an encoder: options {sorted(unknown)} are a generative LLM's")
            self.encoder = Encoder(model, **options)
            self.tokenizer = self.encoder.tokenizer
            return
        self.engine = build_engine(model, **options)
        self.tokenizer = self.engine.tokenizer

    def embed(self, prompts) -> list:
        """Each prompt's embedding (EmbeddingRequestOutput: `.outputs.embedding`), normalized
        where the model says; `prompts` as generate's."""
        from .embeddings import embed_outputs

        return embed_outputs(self._encoder("embed"), _prompt_list(prompts))

    def score(self, text_1, text_2) -> list:
        """ScoringRequestOutput (`.outputs.score`) of each pair: `text_1` one string against each
        of `text_2`, or two lists pair by pair; a cross-encoder's score, else the cosine of
        their embeddings."""
        from .embeddings import score_outputs

        return score_outputs(self._encoder("score"), text_1, text_2)

    def _encoder(self, what: str):
        if self.encoder is None:
            raise UnsupportedError(f"{what}() needs an embedding model or a cross-encoder (a sentence-transformers "
                                   "folder, for one); this LLM generates: use generate() or chat()")
        return self.encoder

    def _generative(self) -> LLMEngine:
        if self.engine is None:
            raise UnsupportedError(f"{self.encoder.name} is an encoder: use embed() or score(), not generation")
        return self.engine

    def generate(self, prompts, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """`prompts`: a string, token ids, a dict ("prompt" / "prompt_token_ids"), or a list
        of them; `sampling_params`: one for all, or one per prompt."""
        self._generative()
        return self._run(_prompt_list(prompts), sampling_params, use_tqdm)

    def chat(self, messages, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
             use_tqdm: bool = True) -> list[RequestOutput]:
        """`messages`: one conversation (a list of {"role", "content"} dicts) or a list of them;
        the model's chat template makes each a prompt that asks for the assistant's turn."""
        self._generative()
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        return self._run([_chat_prompt(self.tokenizer, c) for c in conversations], sampling_params, use_tqdm)

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers now (they also stop when the LLM is collected,
        and at exit); the LLM cannot generate afterwards."""
        if self.engine is not None:
            self.engine.close()

    def _run(self, prompts: list, params, use_tqdm: bool) -> list[RequestOutput]:
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise InputError(f"{len(prompts)} prompts but {len(params)} sampling params")
        engine, ids = self.engine, []
        try:
            for prompt, p in zip(prompts, params):
                ids.append(engine.add_request(None, prompt, p))
            results: dict[str, RequestOutput] = {}
            bar = _progress(len(ids), use_tqdm)
            while engine.has_unfinished():
                for out in engine.step():
                    if out.finished:
                        results[out.request_id] = out
                        if bar is not None:
                            bar.update(1)
            if bar is not None:
                bar.close()
        except BaseException:
            engine.abort_request(ids)
            raise
        return [results[i] for i in ids]


def _progress(total: int, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="requests", unit="req", file=sys.stderr)


_ENDED = object()  # a stream's end without a final output (the request was aborted)


class _Stream:
    """One request's newest output, handed from the engine thread to its reader. Outputs
    are cumulative, so a reader that falls behind only needs the newest: it is kept in
    place of the older one (memory stays one output per request, however slow the
    reader). An error or the end replaces whatever waits and is never replaced."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop, self._ready, self._lock = loop, asyncio.Event(), threading.Lock()
        self._item = None

    def put(self, item) -> None:  # the engine thread
        with self._lock:
            waiting = self._item is not None
            if not (self._item is _ENDED or isinstance(self._item, BaseException)):
                self._item = item
        if not waiting:
            self._loop.call_soon_threadsafe(self._ready.set)

    async def get(self):  # the reader's event loop
        await self._ready.wait()
        with self._lock:
            item, self._item = self._item, None
            self._ready.clear()
        return item


class AsyncLLM:
    """Streaming generation for many concurrent callers. The engine runs in a thread of
    its own; `generate` is an async iterator of cumulative RequestOutputs per request."""

    def __init__(self, model: str | os.PathLike | None = None, **options):
        self.engine = build_engine(model, **options)
        self.tokenizer = self.engine.tokenizer
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, _Stream] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="ember-engine", daemon=True)
        self._thread.start()

    # -- the caller's side ------------------------------------------------------------------
    async def generate(self, prompt, sampling_params: SamplingParams | None = None,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield the request's output each time it gains tokens; the last has finished=True.
        Raises InputError for a bad request (nothing queued) and ExecutionError if the
        model fails on it. Closing the iterator early aborts the request."""
        await self.prepare(sampling_params)
        stream = _Stream(asyncio.get_running_loop())
        request_id = await self._call(self._add, prompt, sampling_params, request_id, stream)
        finished = False
        try:
            while True:
                item = await stream.get()
                if item is _ENDED or isinstance(item, BaseException):
                    finished = True
                    if item is _ENDED:
                        return
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self._commands.put((self._abort, (request_id,), None))

    async def prepare(self, sampling_params: SamplingParams | None) -> None:
        """Compile the request's structured-output grammar, if it has one, on a worker
        thread (not the event loop's, not the engine's: others keep running); the engine
        then finds it in its cache. InputError if the grammar engine cannot take it."""
        if sampling_params is not None and sampling_params.structured_outputs is not None:
            await asyncio.to_thread(self.engine.grammars.compile, sampling_params.structured_outputs)

    async def chat(self, messages: list[dict], sampling_params: SamplingParams | None = None,
                   request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        async for out in self.generate(_chat_prompt(self.tokenizer, messages), sampling_params, request_id):
            yield out

    async def abort(self, request_id: str, error: BaseException | None = None) -> None:
        """Stop a request and free its blocks; its iterator ends without a final output,
        or raises `error` if one is given (a server ending its requests on shutdown)."""
        await self._call(self._abort, request_id, error)

    def stats(self) -> EngineStats:
        """The engine's load now. Safe from any thread: each number is current, though the
        set is not taken at one instant of the engine thread."""
        return self.engine.stats()

    @property
    def is_running(self) -> bool:
        """False once shut down, if the engine thread died, or if the engine cannot run
        (a tensor-parallel worker died or hung)."""
        return not self._stopped and self._thread.is_alive() and self.engine.failed is None

    def shutdown(self) -> None:
        self._stopped = True
        self._commands.put(None)
        self._thread.join(timeout=10)
        self.engine.close()

    async def _call(self, fn, *args):
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put((fn, args, future))
        return await asyncio.wrap_future(future)

    # -- the engine thread ------------------------------------------------------------------
    def _add(self, prompt, params, request_id, stream) -> str:
        rid = self.engine.add_request(request_id, prompt, params)
        self._streams[rid] = stream
        return rid

    def _abort(self, request_id: str, error: BaseException | None = None) -> None:
        self.engine.abort_request(request_id)
        # its iterator ends, or raises `error` (a no-op when the iterator itself asked)
        self._send(request_id, _ENDED if error is None else error)
        self._streams.pop(request_id, None)

    def _send(self, request_id: str, item) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.put(item)

    def _loop(self) -> None:
        while not self._stopped:
            block = not self.engine.has_unfinished()
            while True:  # every command that came in, waiting for one when there is no work
                try:
                    command = self._commands.get(block=block)
                except queue.Empty:
                    break
                if command is None:
                    return
                fn, args, future = command
                try:
                    result = fn(*args)
                except BaseException as e:
                    if future is not None:
                        future.set_exception(e)
                else:
                    if future is not None:
                        future.set_result(result)
                block = False
            if not self.engine.has_unfinished():
                continue
            try:
                outputs = self.engine.step()
            except StepError as e:
                for rid in e.request_ids:
                    self._send(rid, e)
                    self._streams.pop(rid, None)
                continue
            except Exception as e:  # a fault of the engine itself: fail every request, keep serving
                error = ExecutionError(f"the engine failed: {type(e).__name__}: {e}")
                for rid in list(self._streams):
                    self._send(rid, error)
                    self._abort(rid)
                continue
            for out in outputs:
                self._send(out.request_id, out)
                if out.finished:
                    self._streams.pop(out.request_id, None)
