"""The server's Prometheus metrics (`GET /metrics`), one registry per app.

The engine's load is read when the metrics are scraped: running and waiting sequences,
KV cache blocks used and in all, prefix-cache queries, hits and hit rate, preemptions.
The server counts what went through it: prompt and generated tokens, choices finished
by reason, requests turned away, and each finished request's time to first token, time
per output token and end-to-end latency (histograms, from the engine's own clock).
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..llm import RequestOutput

_TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class _EngineCollector:
    """The engine's gauges, read at scrape time."""

    def __init__(self, llm, pending):
        self.llm, self.pending = llm, pending

    def collect(self):
        s = self.llm.stats()
        used = s.num_kv_blocks - s.num_free_kv_blocks
        yield GaugeMetricFamily("ember_num_requests_running", "Sequences the engine is running (n samples count n).",
                                value=s.num_running)
        yield GaugeMetricFamily("ember_num_requests_waiting", "Sequences waiting to be scheduled.",
                                value=s.num_waiting)
        yield GaugeMetricFamily("ember_num_requests_pending", "Sequences the server has admitted and not finished.",
                                value=self.pending())
        yield GaugeMetricFamily("ember_kv_cache_blocks_used", "KV cache blocks held by requests.", value=used)
        yield GaugeMetricFamily("ember_kv_cache_blocks_total", "KV cache blocks in all.", value=s.num_kv_blocks)
        yield GaugeMetricFamily("ember_kv_cache_usage_ratio", "Fraction of KV cache blocks held by requests.",
                                value=used / s.num_kv_blocks)
        yield CounterMetricFamily("ember_prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                                  value=s.prefix_cache_queries)
        yield CounterMetricFamily("ember_prefix_cache_hits", "Prompt tokens whose KV came from the prefix cache.",
                                  value=s.prefix_cache_hits)
        yield GaugeMetricFamily("ember_prefix_cache_hit_rate", "Prefix cache hits over queries, in tokens, so far.",
                                value=s.prefix_cache_hits / s.prefix_cache_queries if s.prefix_cache_queries else 0.0)
        yield CounterMetricFamily("ember_num_preemptions", "Sequences preempted (their KV recomputed later).",
                                  value=s.num_preemptions)


class ServerMetrics:
    def __init__(self, llm, pending):
        """`llm`: the AsyncLLM whose engine is read at scrape time (None: none served);
        `pending`: a function giving the number of sequences the server has admitted."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.prompt_tokens = Counter("ember_prompt_tokens", "Prompt tokens of the requests served.", registry=r)
        self.generation_tokens = Counter("ember_generation_tokens", "Tokens generated.", registry=r)
        self.finished = Counter("ember_completions_finished", "Choices finished, by finish reason "
                                "(stop, length, abort: the client went away, error: the model failed).",
                                ["finish_reason"], registry=r)
        self.rejected = Counter("ember_requests_rejected", "Requests turned away with 503 (the queue was full).",
                                registry=r)
        self.ttft = Histogram("ember_time_to_first_token_seconds", "From arrival at the engine to the first token.",
                              buckets=_TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("ember_time_per_output_token_seconds", "Decoding time over the tokens after the first.",
                              buckets=_TPOT_BUCKETS, registry=r)
        self.e2e = Histogram("ember_e2e_request_latency_seconds", "From arrival at the engine to the last token.",
                             buckets=_E2E_BUCKETS, registry=r)
        self.encoder_inputs = Counter("ember_encoder_inputs", "Inputs embedded or documents reranked, by route.",
                                      ["route"], registry=r)
        self.encoder_tokens = Counter("ember_encoder_tokens", "Tokens the encoder ran, by route.", ["route"],
                                      registry=r)
        if llm is not None:  # (a server of an encoder alone has no engine)
            r.register(_EngineCollector(llm, pending))

    def observe_encoder(self, route: str, inputs: int, tokens: int) -> None:
        """Count one encoder request (route: embeddings or rerank) of `inputs` rows, `tokens` tokens."""
        self.encoder_inputs.labels(route).inc(inputs)
        self.encoder_tokens.labels(route).inc(tokens)

    def observe(self, num_prompt_tokens: int, n: int, last: RequestOutput | None, error: bool = False) -> None:
        """Count one engine request (of `n` samples) when it ends: `last` is the last output
        it gave (None if none); one that did not finish was aborted (or failed: `error`)."""
        self.prompt_tokens.inc(num_prompt_tokens)
        if last is None:
            self.finished.labels("error" if error else "abort").inc(n)
            return
        self.generation_tokens.inc(sum(len(c.token_ids) for c in last.outputs))
        for c in last.outputs:
            self.finished.labels("error" if error else c.finish_reason or "abort").inc()
        m = last.metrics
        if not last.finished:
            return
        if m.time_to_first_token is not None:
            self.ttft.observe(m.time_to_first_token)
        if not math.isnan(m.time_per_output_token):
            self.tpot.observe(m.time_per_output_token)
        if m.finished_time is not None:
            self.e2e.observe(m.finished_time - m.arrival_time)

    def render(self) -> bytes:
        return generate_latest(self.registry)
