"""The interface of an LLM's forward graph, shared by the frontend that builds it
(ember/frontends/hf/decoder.py) and the runtime that runs it each engine step
(ember/runtime/model_runner.py): its per-step inputs, in this order, then the caches."""

# the per-step inputs of an LLM's forward graph; every other graph input is a KV cache
FEEDS = ("input_ids", "positions", "slot_mapping", "block_tables", "query_start_loc", "seq_lens", "logit_indices")
