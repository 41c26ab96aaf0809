"""Fuzz tests of the Mistral tokenizers on random Unicode text.

Random text (control characters, emoji, combining marks, lone surrogates,
special token strings) goes through `MistralTokenizer` (SentencePiece v1
and v3) and `MistralTekkenTokenizer`: only the library's `ValueError` may
escape, text round-trips wherever mistral-common's own tokenizer
round-trips it, and user text never yields a control token id.
"""

import functools

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from mistral_common.tokens.tokenizers.sentencepiece import (
    SentencePieceTokenizer as ReferenceSentencePiece,
)
from mistral_common.tokens.tokenizers.tekken import Tekkenizer

from mistral_hub.models.mistral.mistral_tekken_tokenizer import MistralTekkenTokenizer
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from tests.test_data import TEKKEN_MODEL
from tests.test_data import V1_MODEL
from tests.test_data import V3_MODEL

TOKENIZERS = ["v1", "v3", "tekken"]

_SPECIAL_STRINGS = ["<s>", "</s>", "<unk>", "[INST]", "[/INST]", "[TOOL_CALLS]", "<pad>", "\u2581"]

# All code points, plus lone surrogates (which `st.characters()` never
# draws unless asked), special token strings, emoji and combining marks.
TEXT = st.lists(
    st.one_of(
        st.text(st.characters(exclude_categories=()), max_size=8),
        st.characters(categories=["Cs"]),
        st.sampled_from(_SPECIAL_STRINGS),
        st.sampled_from(["\x00", "\x1b", "\r\n", "\t", "\u0301", "e\u0301", "\U0001F44D\U0001F3FD", "\u200d", "\ufeff"]),
    ),
    max_size=6,
).map("".join)

FUZZ = settings(max_examples=50, deadline=None)


@functools.lru_cache(maxsize=None)
def _tokenizers(name):
    """Ours and mistral-common's tokenizer, and our control token ids."""
    if name == "tekken":
        ours = MistralTekkenTokenizer(TEKKEN_MODEL)
        reference = Tekkenizer.from_file(TEKKEN_MODEL)
        control = set(range(ours.num_special_tokens))
    else:
        path = V1_MODEL if name == "v1" else V3_MODEL
        ours = MistralTokenizer(path)
        reference = ReferenceSentencePiece(path)
        processor = ours._processor
        control = {i for i in range(processor.get_piece_size()) if processor.IsControl(i)}
    return ours, reference, control


def _is_valid_text(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@pytest.mark.parametrize("name", TOKENIZERS)
@FUZZ
@given(text=TEXT)
def test_only_library_errors_escape(name, text):
    ours, _, _ = _tokenizers(name)
    if _is_valid_text(text):
        assert all(isinstance(i, int) for i in ours.tokenize(text))
        assert all(isinstance(i, int) for row in ours.tokenize([text, "x"]) for i in row)
    else:
        with pytest.raises(ValueError, match="`inputs` must be valid Unicode text.*surrogate"):
            ours.tokenize(["x", text])


@pytest.mark.parametrize("name", TOKENIZERS)
@FUZZ
@given(text=TEXT.filter(_is_valid_text))
def test_round_trips_where_mistral_common_does(name, text):
    ours, reference, _ = _tokenizers(name)
    reference_round_trip = reference.decode(reference.encode(text, bos=False, eos=False))
    if reference_round_trip == text:
        assert ours.detokenize(ours.tokenize(text)) == text


@pytest.mark.parametrize("name", TOKENIZERS)
@FUZZ
@given(text=TEXT.filter(_is_valid_text))
def test_user_text_yields_no_control_ids(name, text):
    ours, _, control = _tokenizers(name)
    assert not control & set(ours.tokenize(text))


@pytest.mark.parametrize("name", TOKENIZERS)
def test_chat_content_with_a_surrogate_is_refused(name):
    ours, _, _ = _tokenizers(name)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok \udc80"}]
    with pytest.raises(ValueError, match=r"`messages\[1\]\['content'\]`.*surrogate.*position 3"):
        ours.apply_chat_template(messages)
