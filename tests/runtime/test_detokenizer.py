"""Incremental detokenisation: the deltas add up to the full decode (random token ids,
random text with characters split across byte tokens, a decoder that strips the first
space), never show half a character, decode a short window per token, and cut the text
at stop strings, also those that span tokens, without ever showing text past one."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ember.runtime.detokenizer import IncrementalDetokenizer
from ember.runtime.request import SamplingParams

CORPUS = ["héllo wörld, café crème", "日本語のテキスト 日本 東京", "fire 🔥 emoji ✓ naïve", "the quick brown fox"] * 5
ALPHABET = "ab é日本🔥✓€\n"   # 1- to 4-byte characters; € and ✓ appear nowhere in the corpus


def train(pre_tokenizer, decoder, vocab_size: int, special: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizer, decoder
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if isinstance(decoder, decoders.ByteLevel) else []))
    return tokenizer


# GPT-2's kind: every byte is a token, so a character can be split across tokens
BYTES = train(pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel(), 290, ["<eos>"])
# SentencePiece's kind: "▁" for a space, and the text's first space is stripped
METASPACE = train(pre_tokenizers.Metaspace(), decoders.Metaspace(), 150, ["<unk>", "<eos>"])


def stream(tokenizer, prompt, output, **params) -> tuple[list[str], str, IncrementalDetokenizer]:
    """The deltas of `output` token by token, and the flush at the end."""
    detok = IncrementalDetokenizer(tokenizer, prompt, SamplingParams(**params))
    deltas = [detok.update(t) for t in output]
    return deltas, detok.flush(), detok


def expected_text(tokenizer, prompt, output, skip=True) -> str:
    whole, before = (tokenizer.decode(ids, skip_special_tokens=skip) for ids in (prompt + output, prompt))
    assert whole.startswith(before)
    return whole[len(before):]


def test_the_tokenizers_split_characters_and_strip_the_first_space():
    assert any("\ufffd" in BYTES.decode([t]) for t in BYTES.encode("日本 🔥 €").ids)
    ids = METASPACE.encode("the quick fox").ids
    assert METASPACE.decode(ids[1:]) == "quick fox" and METASPACE.decode(ids) == "the quick fox"


@settings(max_examples=60, deadline=None)
@given(st.text(ALPHABET, max_size=30), st.text(ALPHABET, max_size=40))
def test_deltas_add_up_to_the_text_and_never_split_a_character(prompt_text, text):
    prompt, output = BYTES.encode(prompt_text).ids, BYTES.encode(text).ids
    deltas, rest, detok = stream(BYTES, prompt, output)
    assert "".join(deltas) == text == detok.text and rest == ""
    assert not any("\ufffd" in d for d in deltas)


@settings(max_examples=60, deadline=None)
@given(st.data(), st.sampled_from([BYTES, METASPACE]), st.booleans())
def test_random_tokens_add_up_to_the_full_decode(data, tokenizer, skip):
    ids = st.lists(st.integers(0, tokenizer.get_vocab_size() - 1), max_size=30)
    prompt = data.draw(ids if tokenizer is METASPACE else st.just([]))  # a byte prompt may end mid-character
    output = data.draw(ids)
    deltas, rest, _ = stream(tokenizer, prompt, output, skip_special_tokens=skip)
    assert "".join(deltas) + rest == expected_text(tokenizer, prompt, output, skip)
    assert not any(d.endswith("\ufffd") for d in deltas)   # an unfinished character is held back


def test_the_first_output_token_is_decoded_after_the_prompt():
    prompt, output = METASPACE.encode("the quick").ids, METASPACE.encode("the fox").ids
    deltas, _, _ = stream(METASPACE, prompt, output)
    assert deltas[0] == " the" and "".join(deltas) == " the fox"


def test_special_tokens_are_skipped_or_shown():
    eos = BYTES.token_to_id("<eos>")
    ids = BYTES.encode("ab").ids + [eos] + BYTES.encode("é").ids
    assert "".join(stream(BYTES, [], ids)[0]) == "abé"
    assert "".join(stream(BYTES, [], ids, skip_special_tokens=False)[0]) == "ab<eos>é"


def test_each_token_decodes_a_short_window():
    class Counting:
        def __init__(self):
            self.longest = 0

        def decode(self, ids, skip_special_tokens):
            self.longest = max(self.longest, len(ids))
            return BYTES.decode(ids, skip_special_tokens=skip_special_tokens)

    tokenizer = Counting()
    text = "日本 🔥 € naïve ✓ " * 40
    deltas, _, _ = stream(tokenizer, BYTES.encode("prompt " * 50).ids, BYTES.encode(text).ids)
    assert "".join(deltas) == text and tokenizer.longest <= 10


def test_a_transformers_tokenizer_is_decoded_by_its_backend():
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(tokenizer_object=BYTES, eos_token="<eos>")
    ids = BYTES.encode("café 🔥").ids
    assert "".join(stream(wrapped, [], ids)[0]) == "café 🔥"


# -- stop strings ------------------------------------------------------------------------------
def tokens_of(*pieces: str) -> list[int]:
    """Tokens whose text is exactly `pieces`, one or more tokens each."""
    return [t for p in pieces for t in BYTES.encode(p).ids]


def test_a_stop_string_spanning_two_tokens_cuts_the_text_before_it():
    ids = tokens_of("the qu", "ick brown", " fox")
    detok = IncrementalDetokenizer(BYTES, [], SamplingParams(stop=["quick"]))
    shown = ""
    for token in ids:
        shown += detok.update(token)
        assert "the ".startswith(shown)   # never past the stop
        if detok.stop_reason:
            break
    assert detok.stop_reason == "quick" and shown == detok.text == "the "
    assert detok.update(ids[-1]) == "" and detok.flush() == ""


def test_include_stop_str_in_output_keeps_the_stop_string():
    deltas, _, detok = stream(BYTES, [], tokens_of("the qu", "ick brown"), stop="quick", include_stop_str_in_output=True)
    assert detok.stop_reason == "quick" and "".join(deltas) == detok.text == "the quick"


def test_the_earliest_stop_string_wins():
    _, _, detok = stream(BYTES, [], tokens_of("ab", " cd"), stop=["cd", " c", "b c"])   # both end in " c"
    assert detok.stop_reason == "b c" and detok.text == "a"


def test_stop_strings_wait_for_min_tokens():
    ids = tokens_of("ab", " ab", " ab")
    _, _, detok = stream(BYTES, [], ids, stop="ab", min_tokens=len(tokens_of("ab")))
    assert detok.text == "ab " and detok.stop_reason == "ab"


def test_text_that_may_begin_a_stop_string_is_held_back_until_the_end():
    ids = tokens_of("hello wor", "ld")
    detok = IncrementalDetokenizer(BYTES, [], SamplingParams(stop=["xyz1"]))
    deltas = [detok.update(t) for t in ids]
    assert "".join(deltas) == "hello wo" and detok.text == "hello world"   # 3 characters held back
    assert detok.flush() == "rld" and detok.stop_reason is None


def test_a_stop_token_ends_the_text_without_its_own():
    for include, expected in [(False, "ab"), (True, "ab<eos>")]:
        detok = IncrementalDetokenizer(BYTES, [], SamplingParams(stop=["zzz"], skip_special_tokens=False,
                                                                 include_stop_str_in_output=include))
        shown = "".join(detok.update(t) for t in tokens_of("ab"))
        shown += detok.update(BYTES.token_to_id("<eos>"), stop_terminated=True)
        assert shown == detok.text == expected


@settings(max_examples=80, deadline=None)
@given(st.text("abé本 ", max_size=40), st.text("abé本 ", min_size=1, max_size=4), st.booleans())
def test_streaming_with_a_stop_string_matches_cutting_the_whole_text(text, stop, include):
    detok = IncrementalDetokenizer(BYTES, [], SamplingParams(stop=[stop], include_stop_str_in_output=include))
    at = text.find(stop)
    expected = text if at < 0 else text[:at + len(stop) if include else at]
    shown = ""
    for token in BYTES.encode(text).ids:
        shown += detok.update(token)
        assert expected.startswith(shown)
        if detok.stop_reason:
            break
    shown += detok.flush()
    assert shown == detok.text == expected and detok.stop_reason == (stop if at >= 0 else None)


# -- the built-in model's tokenizer --------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_tokenizer_streams_its_text():
    from ember import _builtin
    from ember.frontends.hf import load_pretrained

    tokenizer = load_pretrained(_builtin.default_llm(), progress=False).tokenizer()   # ~5 s
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                           tokenize=False)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    text = "Paris est la capitale 日本 🔥, naïve ✓"
    output = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    deltas, rest, _ = stream(tokenizer, prompt_ids, output)
    assert "".join(deltas) == text and rest == "" and not any("\ufffd" in d for d in deltas)
    _, _, detok = stream(tokenizer, prompt_ids, output, stop=["capitale 日"])
    assert detok.stop_reason == "capitale 日" and detok.text == "Paris est la "
