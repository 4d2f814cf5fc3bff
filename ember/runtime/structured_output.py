"""Structured outputs: a grammar engine keeps each constrained request's output valid.

    grammars = Grammars(tokenizer, vocab_size, eos_token_ids)     # one per engine
    grammar = grammars.compile(params.structured_outputs)          # cached; InputError if it cannot
    state = grammars.state(params.structured_outputs)              # one per sequence
    masks = grammars.fill([state, ...])                            # int32 [rows, ceil(vocab / 32)]
    state.accept(token)                                            # after each sampled token

The engine is llguidance (https://github.com/guidance-ai/llguidance): chosen over xgrammar
and outlines-core by `benchmarks/grammar_engines.py` on this project's CPUs (compile time
and mask time per token; docs/benchmarks.md has the figures), and the one that reads every
form `StructuredOutputsParams` takes: JSON schemas, regexes, Lark grammars and, through its
converter, GBNF (llama.cpp's EBNF). A grammar is compiled once per distinct spec (an LRU
of `CACHE_SIZE` matchers at their start); each sequence walks a copy of it token by token.

Notes:

1. JSON is compact: no whitespace beyond one space after `,` and `:` (llguidance's
   `whitespace_flexible` off), so a sampled answer cannot run on in spaces and newlines.
2. `fill` computes a batch's masks (outside the GIL); the engine calls it on a worker
   thread while the model runs the step (engine.py), and waits for it only when it samples.
3. A sequence whose grammar has ended (its last token completed the output) allows only
   the end-of-sequence tokens; the engine finishes it there.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import torch

from ..errors import InputError
from .request import StructuredOutputsParams

CACHE_SIZE = 256


class GrammarState:
    """One sequence's place in its grammar."""

    def __init__(self, matcher):
        self.matcher = matcher

    def accept(self, token_id: int) -> bool:
        """Advance by a sampled token; False if the grammar does not allow it (the
        sequence's mask did; a token forced past it, as max_tokens does not, is ignored)."""
        if self.matcher.is_stopped():
            return False
        return bool(self.matcher.consume_token(token_id))

    @property
    def terminated(self) -> bool:
        """The output is complete and has ended (its end-of-sequence token accepted)."""
        return self.matcher.is_stopped()


class Grammars:
    """The grammar engine of one LLM engine: its tokenizer's token tables (built at the
    first constrained request's compile: ~3 s for 49k tokens), the compiled grammars, the
    masks."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: Iterable[int] = ()):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self.eos_token_ids = sorted(eos_token_ids)
        self._lock = threading.Lock()
        self._tokenizer_info = None
        self._cache: OrderedDict = OrderedDict()   # spec key -> its matcher at the start

    def _tokenizer(self):
        with self._lock:
            if self._tokenizer_info is None:
                import llguidance
                import llguidance.hf

                self._tokenizer_info = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.vocab_size,
                                                                    eos_token=self.eos_token_ids[0]
                                                                    if self.eos_token_ids else None)
                # the engine builds its token tables at the first mask (~3 s for 49k tokens): here, where
                # a compile runs (AsyncLLM: on a worker thread), not in an engine step
                import llguidance.torch as lt

                warm = llguidance.LLMatcher(self._tokenizer_info, llguidance.LLMatcher.grammar_from_regex("a"))
                lt.fill_next_token_bitmask(warm, lt.allocate_token_bitmask(1, self.vocab_size))
            return self._tokenizer_info

    def compile(self, spec: StructuredOutputsParams):
        """`spec` compiled (a matcher at the start of its grammar, which `state` copies),
        checked against the tokenizer; InputError naming what is wrong with it. Cached by
        spec: a spec seen before costs a lookup."""
        key = spec.key()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        import llguidance

        grammar = _grammar(spec)
        tokenizer = self._tokenizer()
        error = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
        matcher = None if error else llguidance.LLMatcher(tokenizer, grammar)
        if matcher is not None and matcher.is_error():
            error = matcher.get_error()
        if error:
            raise InputError(f"{spec.kind} cannot be used: {error.strip()}")
        with self._lock:
            self._cache[key] = matcher
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return matcher

    def state(self, spec: StructuredOutputsParams) -> GrammarState:
        """A new sequence's place at the start of `spec`'s grammar (a copy of the compiled one)."""
        return GrammarState(self.compile(spec).deep_copy())

    def fill(self, states: Sequence[GrammarState]) -> torch.Tensor:
        """The next-token bitmask of each state (int32 [len(states), words]), one after the
        other on the calling thread (the engine's mask worker, or its own where no core is
        free for one; llguidance drops the GIL while it computes). Not llguidance's parallel fill: its pool's idle threads spin,
        taking cores the model's threads need (~20 us a mask: 64 take ~1.3 ms)."""
        import llguidance.torch as lt

        mask = lt.allocate_token_bitmask(len(states), self.vocab_size)
        for i, s in enumerate(states):
            lt.fill_next_token_bitmask(s.matcher, mask, i)
        return mask


def _grammar(spec: StructuredOutputsParams) -> str:
    """The llguidance grammar (its JSON form) of a spec."""
    import llguidance

    LL = llguidance.LLMatcher
    options = {"whitespace_flexible": False}
    try:
        if spec.kind == "json":
            schema = spec.json if isinstance(spec.json, dict) else {} if spec.json else {"not": {}}
            return LL.grammar_from_json_schema(schema, defaults=options)
        if spec.kind == "json_object":
            return LL.grammar_from_json_schema({"type": "object"}, defaults=options)
        if spec.kind == "regex":
            return LL.grammar_from_regex(spec.regex)
        if spec.kind == "choice":
            return LL.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in spec.choice))
        return LL.grammar_from_lark(_lark(spec.grammar))
    except Exception as e:  # the engine's parsers raise ValueError, its GBNF converter a bare Exception
        raise InputError(f"{spec.kind} cannot be used: {e}") from None


def _lark(grammar: str) -> str:
    """A grammar in Lark as it is, or GBNF (rules written `name ::= ...`, root `root`)
    converted to Lark."""
    if "::=" in grammar:
        from llguidance.gbnf_to_lark import gbnf_to_lark

        return gbnf_to_lark(grammar)
    return grammar
