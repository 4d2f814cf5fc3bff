"""One sequence's text, token by token, with its stop strings.

    detok = IncrementalDetokenizer(tokenizer, prompt_token_ids, params)
    delta = detok.update(token_id)     # the text to show now (maybe "")
    detok.stop_reason                  # the stop string that ended the text, or None
    rest = detok.flush()               # when the request ends otherwise: what was held back

`tokenizer` is a Hugging Face `tokenizers.Tokenizer`, or a transformers fast tokenizer
(its `backend_tokenizer` is used, so the text is the backend's plain decode, without
transformers' clean-up of spaces). Anything else with `decode(ids, skip_special_tokens=)`
works as well.

Notes:

1. Each token decodes a short window, not the sequence (vLLM's prefix_offset /
   read_offset): the text of ids[prefix_offset:] less that of ids[prefix_offset:
   read_offset] is the new text. Decoding from a few tokens back keeps what depends on
   the left context right (a leading space that a decoder strips at the start of a
   text, a character whose bytes began in an earlier token); the window starts in the
   prompt's last tokens so the first output token is decoded in context. The offsets
   move up only when the new text is complete, so the window stays a few tokens long.
2. A UTF-8 character split across tokens decodes to U+FFFD until its last byte comes;
   text that ends with U+FFFD is held back, and the window grows, until then. `flush`
   gives up and shows it (the full decode shows the same U+FFFD), so the deltas and the
   flush add up to the full decode of the output tokens.
3. Stop strings are searched for only where a new one could end: in the new text and
   the longest stop string's length before it; the earliest match wins. The text ends
   before it (or after it, with include_stop_str_in_output). As vLLM's, stop strings
   are not looked for until a request has more than min_tokens output tokens.
4. Streaming never shows text that a stop string later cuts off: as vLLM v1 does when a
   request has stop strings and excludes them, the last len(longest stop string) - 1
   characters are held back until more text rules them out, or the text stops, or
   `flush`. With include_stop_str_in_output nothing is held back (a stop string ends in
   the newest text, so nothing before it is ever cut).
5. `update(token, stop_terminated=True)`: this token (eos or a stop token id) ended the
   request; as vLLM, its text is left out unless include_stop_str_in_output, and
   everything held back is shown.
"""

from __future__ import annotations

from collections.abc import Sequence

from .request import SamplingParams

_PROMPT_CONTEXT = 5  # prompt tokens the first window starts with (vLLM's initial offset)


class IncrementalDetokenizer:
    """The output text of one request, token by token (see the module doc)."""

    def __init__(self, tokenizer, prompt_token_ids: Sequence[int], params: SamplingParams):
        self.tokenizer = getattr(tokenizer, "backend_tokenizer", tokenizer)
        self.params = params
        self.stop_reason: str | None = None
        self.num_output_tokens = 0
        self._ids = list(prompt_token_ids[-_PROMPT_CONTEXT:])
        self._prefix_offset, self._read_offset = 0, len(self._ids)
        self._text = ""
        self._shown = 0  # characters of _text given out
        excluded_stops = params.stop and not params.include_stop_str_in_output
        self._hold = max(map(len, params.stop)) - 1 if excluded_stops else 0

    @property
    def text(self) -> str:
        """The output text so far (held-back characters included, stop string cut off)."""
        return self._text

    @property
    def shown(self) -> str:
        """The text given out so far by `update` and `flush` (what a stream has shown)."""
        return self._text[:self._shown]

    def update(self, token_id: int, *, stop_terminated: bool = False) -> str:
        """Add an output token; the text that can be shown now."""
        if self.stop_reason is not None:
            return ""
        if not stop_terminated or self.params.include_stop_str_in_output:
            self._ids.append(token_id)
            self.num_output_tokens += 1
        self._read(final=stop_terminated)
        return self._show(final=stop_terminated)

    def flush(self) -> str:
        """The request ended (not at a stop string): the text still held back."""
        if self.stop_reason is None:
            self._read(final=True)
        return self._show(final=True)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.params.skip_special_tokens)

    def _read(self, final: bool) -> None:
        """Move the tokens' new text into _text: all of it, unless it ends inside a character."""
        prefix = self._decode(self._ids[self._prefix_offset:self._read_offset])
        text = self._decode(self._ids[self._prefix_offset:])
        if len(text) <= len(prefix) or (text.endswith("\ufffd") and not final):
            return
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        old = len(self._text)
        self._text += text[len(prefix):]
        if self.params.stop and self.num_output_tokens > self.params.min_tokens:
            self._stop_at_earliest_match(old)

    def _stop_at_earliest_match(self, old: int) -> None:
        """Cut _text at the first stop string that ends after its first `old` characters."""
        matches = [(at, stop) for stop in self.params.stop
                   if (at := self._text.find(stop, max(0, old - len(stop) + 1))) >= 0]
        if matches:
            at, stop = min(matches, key=lambda m: m[0])
            self.stop_reason = stop
            self._text = self._text[:at + len(stop) if self.params.include_stop_str_in_output else at]

    def _show(self, final: bool) -> str:
        end = len(self._text) if final or self.stop_reason is not None else len(self._text) - self._hold
        if end <= self._shown:
            return ""
        delta, self._shown = self._text[self._shown:end], end
        return delta
