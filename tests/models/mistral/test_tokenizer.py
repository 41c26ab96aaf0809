import io

import keras
import numpy as np
import pytest
import sentencepiece

from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from tests.test_data import V1_MODEL
from tests.test_data import V3_MODEL
from tests.test_data import V7_MODEL
from tests.test_data import mistral_test_proto

# Shared with the Tekken tests.
CORPUS = [
    "The quick brown fox jumped.",
    "def f(x):\n    if x:\n        return x  # done\n\treturn None\n",
    "日本語のテキストと中文文本，한국어",
    "emoji 😀🎉👍🏽 and a family 👨\u200d👩\u200d👧",
    "Crème brûlée, naïve café, Ångström, ß, Œuvre",
    "many    spaces   and\n\n\nnewlines\n",
    "  leading and trailing  ",
    "tabs\tand\t\ttabs",
    "rare: \x07 \u2028 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ \U0001fae8",
    "",
    " ",
    "\n",
    "[INST] hi [/INST] <s> </s> [TOOL_CALLS] [SYSTEM_PROMPT]",
    "numbers 1234567890 3.14159 -42",
    "mixed: Привет мир, مرحبا, שלום, नमस्ते",
]



def random_texts(count=200, seed=0):
    """Random strings mixing scripts, emoji, digits and whitespace runs."""
    rng = np.random.default_rng(seed)
    pool = list(
        "abcXYZ019 .,;:!?'\"()[]{}<>/_-+=*#@&%$\\|~`^"
        "  \n\t\réèßøÅçñ日本語中文한국어Привет"
    ) + ["😀", "👍🏽", "\u200d", "\u00a0", "\u2028", "\U0001fae8", "ꙮ", "\x07"]
    return [
        "".join(rng.choice(pool, size=rng.integers(0, 40)))
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def tokenizers():
    return {
        "v1": MistralTokenizer(V1_MODEL),
        "v3": MistralTokenizer(V3_MODEL),
    }


@pytest.fixture(scope="module")
def mistral_common_tokenizers():
    mistral = pytest.importorskip("mistral_common.tokens.tokenizers.mistral")
    return {
        "v1": mistral.MistralTokenizer.v1().instruct_tokenizer.tokenizer,
        "v3": mistral.MistralTokenizer.v3().instruct_tokenizer.tokenizer,
    }


# --- keras_hub compatibility -------------------------------------------------


def test_tokenizer_basics():
    tokenizer = MistralTokenizer(proto=mistral_test_proto())
    assert tokenizer(["the quick brown fox", "the earth is round"]) == [
        [3, 8, 4, 6],
        [3, 5, 7, 9],
    ]
    assert tokenizer.special_tokens == ["<s>", "</s>"]
    assert tokenizer.special_token_ids == [1, 2]
    assert tokenizer.start_token == "<s>" and tokenizer.start_token_id == 1
    assert tokenizer.end_token == "</s>" and tokenizer.end_token_id == 2
    assert tokenizer.pad_token_id == 0


def test_matches_keras_hub_on_test_vocabulary():
    keras_hub = pytest.importorskip("keras_hub")
    theirs = keras_hub.models.MistralTokenizer(proto=mistral_test_proto())
    ours = MistralTokenizer(proto=mistral_test_proto())
    strings = [
        "the quick brown fox",
        "the earth is round",
        "The Quick fox",
        "round round   earth",
        "unknown words here",
        "",
    ]
    for text in strings:
        assert ours(text) == np.asarray(theirs(text)).tolist()
    assert ours(strings) == [list(ids) for ids in theirs(strings)]
    ids = [[3, 8, 4, 6], [0, 9], [1, 3, 2]]
    assert ours.detokenize(ids) == list(theirs.detokenize(ids))
    assert ours.special_token_ids == sorted(theirs.special_token_ids)
    assert ours.pad_token_id == theirs.pad_token_id


def test_padding_uses_pad_token_id():
    tokenizer = MistralTokenizer(mistral_test_proto(), sequence_length=6)
    np.testing.assert_array_equal(tokenizer("the fox"), [3, 6, 0, 0, 0, 0])


def test_missing_special_tokens_raise():
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["abc"]),
        model_writer=model,
        vocab_size=5,
        pad_id=-1,
        eos_id=-1,
        bos_id=-1,
        minloglevel=2,
    )
    with pytest.raises(ValueError, match="Cannot find special token '<s>'"):
        MistralTokenizer(model.getvalue())


# --- parity on the real vocabularies ----------------------------------------


@pytest.mark.parametrize("version", ["v1", "v3"])
def test_ids_match_sentencepiece_and_mistral_common(
    tokenizers, mistral_common_tokenizers, version
):
    tokenizer = tokenizers[version]
    processor = sentencepiece.SentencePieceProcessor(
        model_file={"v1": V1_MODEL, "v3": V3_MODEL}[version]
    )
    reference = mistral_common_tokenizers[version]
    ours = tokenizer(CORPUS)
    assert ours == processor.encode(CORPUS)
    assert ours == [reference.encode(t, bos=False, eos=False) for t in CORPUS]
    assert [tokenizer(t) for t in CORPUS] == ours


@pytest.mark.parametrize("version", ["v1", "v3"])
def test_random_texts_match_sentencepiece(tokenizers, version):
    processor = sentencepiece.SentencePieceProcessor(
        model_file={"v1": V1_MODEL, "v3": V3_MODEL}[version]
    )
    texts = random_texts()
    ids = tokenizers[version](texts)
    assert ids == processor.encode(texts)
    assert tokenizers[version].detokenize(ids) == processor.decode(ids)


@pytest.mark.parametrize("version", ["v1", "v3"])
def test_round_trip_where_sentencepiece_round_trips(tokenizers, version):
    tokenizer = tokenizers[version]
    processor = sentencepiece.SentencePieceProcessor(
        model_file={"v1": V1_MODEL, "v3": V3_MODEL}[version]
    )
    round_trips = [t for t in CORPUS if processor.decode(processor.encode(t)) == t]
    assert len(round_trips) >= 10
    assert tokenizer.detokenize(tokenizer(round_trips)) == round_trips
    # Where it does not (leading spaces are eaten), we decode the same way.
    assert tokenizer.detokenize(tokenizer(CORPUS)) == processor.decode(
        processor.encode(CORPUS)
    )


def test_known_ids(tokenizers):
    # keras_hub's `test_smallest_preset` expectation for mistral_7b_en.
    assert tokenizers["v1"]("The quick brown fox.") == [
        415, 2936, 9060, 285, 1142, 28723,
    ]  # fmt: skip


@pytest.mark.parametrize("version", ["v1", "v3"])
def test_byte_fallback(tokenizers, version):
    tokenizer = tokenizers[version]
    text = "\U0001fae8 is new"
    ids = tokenizer(text)
    pieces = [tokenizer.id_to_token(i) for i in ids]
    assert pieces[1:5] == ["<0xF0>", "<0x9F>", "<0xAB>", "<0xA8>"]
    assert tokenizer.detokenize(ids) == text


def test_control_tokens_are_never_produced_from_text(
    tokenizers, mistral_common_tokenizers
):
    tokenizer = tokenizers["v3"]
    control_ids = {tokenizer.token_to_id(t) for t in ("[INST]", "[/INST]")}
    assert control_ids == {3, 4}
    for text in ["[INST] hi", "[INST]", "a[/INST]b", "[TOOL_CALLS][INST]"]:
        ids = tokenizer(text)
        assert not set(ids) & set(range(14))
        assert ids == mistral_common_tokenizers["v3"].encode(
            text, bos=False, eos=False
        )
        assert tokenizer.detokenize(ids) == text
    # Decoding a control id yields no text, as in SentencePiece.
    assert tokenizer.detokenize([3, 23325, 4]) == "Hello"


def test_v3_vocabulary_metadata(tokenizers):
    tokenizer = tokenizers["v3"]
    assert tokenizer.vocabulary_size() == 32768
    assert tokenizer.get_vocabulary()[3:5] == ["[INST]", "[/INST]"]
    assert tokenizer.id_to_token(10) == "[IMG]"
    assert tokenizer.special_token_ids == [1, 2]
    with pytest.raises(ValueError, match="32767"):
        tokenizer.id_to_token(32768)
    with pytest.raises(ValueError, match="Token id 32768 is out of range"):
        tokenizer.detokenize([1, 32768])


def test_tf_data_map_matches_eager(tokenizers):
    tf = pytest.importorskip("tensorflow")
    tokenizer = tokenizers["v3"]
    expected = tokenizer(CORPUS)
    dataset = tf.data.Dataset.from_tensor_slices(CORPUS)
    assert [t.numpy().tolist() for t in dataset.map(tokenizer)] == expected
    batched = [t.to_list() for t in dataset.batch(4).map(tokenizer)]
    assert [row for batch in batched for row in batch] == expected


# --- chat template argument and serialization -------------------------------


def test_chat_template_validation():
    with pytest.raises(ValueError, match=r"\['v1', 'v3', 'v7', 'tekken'\]"):
        MistralTokenizer(mistral_test_proto(), chat_template="v2")


def test_config_round_trip_keeps_chat_template():
    tokenizer = MistralTokenizer(
        mistral_test_proto(), chat_template="v7", sequence_length=8
    )
    config = tokenizer.get_config()
    assert config["chat_template"] == "v7" and config["proto"] is None
    restored = MistralTokenizer.from_config(config)
    assert restored.chat_template == "v7"
    assert restored.get_config() == config
    assert restored.start_token_id is None
    restored.set_proto(mistral_test_proto())
    assert restored.special_token_ids == [1, 2]


def test_keras_serialization_and_assets(tmp_path):
    tokenizer = MistralTokenizer(V7_MODEL, chat_template="v3")
    tokenizer.save_assets(str(tmp_path))
    with open(V7_MODEL, "rb") as f:
        assert (tmp_path / "vocabulary.spm").read_bytes() == f.read()
    serialized = keras.saving.serialize_keras_object(tokenizer)
    assert serialized["registered_name"] == "mistral_hub>MistralTokenizer"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is MistralTokenizer
    restored.load_assets(str(tmp_path))
    assert restored.chat_template == "v3"
    assert restored(CORPUS) == tokenizer(CORPUS)
    messages = [{"role": "user", "content": "Hi"}]
    assert restored.apply_chat_template(messages) == tokenizer.apply_chat_template(
        messages
    )
