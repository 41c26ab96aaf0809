import json

import keras
import numpy as np
import pytest

from mistral_hub.models.mistral.mistral_tekken_tokenizer import (
    MistralTekkenTokenizer,
)
from tests.models.mistral.test_tokenizer import CORPUS
from tests.models.mistral.test_tokenizer import random_texts
from tests.test_data import TEKKEN_240911_MODEL
from tests.test_data import TEKKEN_MODEL

FILES = {"240718": TEKKEN_MODEL, "240911": TEKKEN_240911_MODEL}


@pytest.fixture(scope="module")
def tokenizers():
    return {name: MistralTekkenTokenizer(path) for name, path in FILES.items()}


@pytest.fixture(scope="module")
def tekkenizers():
    tekken = pytest.importorskip("mistral_common.tokens.tokenizers.tekken")
    return {name: tekken.Tekkenizer.from_file(path) for name, path in FILES.items()}


@pytest.fixture(scope="module")
def split_pattern():
    with open(TEKKEN_MODEL, "rb") as f:
        return json.load(f)["config"]["pattern"]


# --- parity with mistral-common ---------------------------------------------


@pytest.mark.parametrize("name", list(FILES))
def test_ids_match_mistral_common(tokenizers, tekkenizers, name):
    ours = tokenizers[name](CORPUS)
    reference = tekkenizers[name]
    assert ours == [reference.encode(t, bos=False, eos=False) for t in CORPUS]
    assert [tokenizers[name](t) for t in CORPUS] == ours


@pytest.mark.parametrize("name", list(FILES))
def test_random_texts_match_mistral_common(tokenizers, tekkenizers, name):
    texts = random_texts()
    ids = tokenizers[name](texts)
    reference = tekkenizers[name]
    assert ids == [reference.encode(t, bos=False, eos=False) for t in texts]
    assert tokenizers[name].detokenize(ids) == texts


@pytest.mark.parametrize("name", list(FILES))
def test_round_trip(tokenizers, tekkenizers, name):
    tokenizer = tokenizers[name]
    ids = tokenizer(CORPUS)
    # Byte-level BPE is lossless.
    assert tokenizer.detokenize(ids) == CORPUS
    assert tokenizer.detokenize(ids) == [tekkenizers[name].decode(i) for i in ids]


def test_decode_skips_special_tokens_like_mistral_common(tokenizers, tekkenizers):
    tokenizer = tokenizers["240911"]
    # A special token between the bytes of one character: each run of
    # regular tokens is decoded on its own.
    split_character = [tokenizer.num_special_tokens + b for b in "é".encode()]
    with_specials = [1, 3, split_character[0], 4, split_character[1], 2]
    assert tokenizer.detokenize(with_specials) == tekkenizers["240911"].decode(
        with_specials
    )
    assert tokenizer.detokenize([1, 3, 22177, 4]) == "Hello"


def test_known_ids(tokenizers):
    assert tokenizers["240911"]("Hello world") == [22177, 4304]


def test_control_tokens_are_never_produced_from_text(tokenizers, tekkenizers):
    tokenizer = tokenizers["240911"]
    for text in ["[INST] hi", "[INST]", "<s>a</s>", "[SYSTEM_PROMPT][/INST]"]:
        ids = tokenizer(text)
        assert min(ids) >= tokenizer.num_special_tokens
        assert ids == tekkenizers["240911"].encode(text, bos=False, eos=False)


# --- vocabulary -------------------------------------------------------------


def test_vocabulary_and_special_tokens(tokenizers):
    tokenizer = tokenizers["240911"]
    assert tokenizer.vocabulary_size() == 131072
    assert tokenizer.num_special_tokens == 1000
    assert tokenizer.special_tokens == ["<s>", "</s>"]
    assert tokenizer.special_token_ids == [1, 2]
    assert (tokenizer.start_token_id, tokenizer.end_token_id) == (1, 2)
    assert tokenizer.pad_token_id == 0
    vocabulary = tokenizer.get_vocabulary()
    assert len(vocabulary) == 131072
    assert vocabulary[:5] == ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
    assert vocabulary[17] == "[SYSTEM_PROMPT]"
    assert vocabulary[999] == "<SPECIAL_999>"
    assert vocabulary[1000] == "Ā"  # byte 0 in GPT-2's byte alphabet
    assert vocabulary[1032] == "Ġ"  # byte 32, the space
    assert tokenizer.id_to_token(22177) == "Hello"
    assert tokenizer.token_to_id("Hello") == 22177
    space_the = tokenizer(" the")
    assert len(space_the) == 1
    assert tokenizer.id_to_token(space_the[0]) == "Ġthe"
    assert tokenizer.token_to_id("Ġthe") == space_the[0]
    assert tokenizer.token_to_id("[INST]") == 3


def test_vocabulary_errors(tokenizers):
    tokenizer = tokenizers["240911"]
    with pytest.raises(ValueError, match=r"\[0, 131071\]"):
        tokenizer.id_to_token(131072)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tokenizer.token_to_id("no such token here")
    with pytest.raises(ValueError, match="Token id 131072 is out of range"):
        tokenizer.detokenize([1, 131072])
    with pytest.raises(ValueError, match="Received"):
        tokenizer(None)


def test_bos_eos_and_padding():
    tokenizer = MistralTekkenTokenizer(
        TEKKEN_MODEL, add_bos=True, add_eos=True, sequence_length=5
    )
    np.testing.assert_array_equal(
        tokenizer(["Hello world", "Hello world, world world"]),
        [[1, 22177, 4304, 2, 0], [1, 22177, 4304, 1044, 4304]],
    )


def test_tf_data_map_matches_eager(tokenizers):
    tf = pytest.importorskip("tensorflow")
    tokenizer = tokenizers["240718"]
    expected = tokenizer(CORPUS)
    dataset = tf.data.Dataset.from_tensor_slices(CORPUS)
    assert [t.numpy().tolist() for t in dataset.map(tokenizer)] == expected
    batched = [t.to_list() for t in dataset.batch(4).map(tokenizer)]
    assert [row for batch in batched for row in batch] == expected


# --- construction errors ----------------------------------------------------


def test_construction_errors(tmp_path):
    with pytest.raises(ValueError, match="No file found"):
        MistralTekkenTokenizer(str(tmp_path / "tekken.json"))
    with pytest.raises(ValueError, match="not valid JSON"):
        MistralTekkenTokenizer(b"\x00 not json")
    with pytest.raises(ValueError, match="not a valid tekken.json"):
        MistralTekkenTokenizer(b'{"vocab": []}')
    with pytest.raises(ValueError, match="`vocabulary` must be a path"):
        MistralTekkenTokenizer(12)
    with pytest.raises(ValueError, match="chat_template"):
        MistralTekkenTokenizer(chat_template="v5")
    with pytest.raises(ValueError, match="No vocabulary has been set"):
        MistralTekkenTokenizer()("text")


def test_missing_special_tokens_raise():
    with open(TEKKEN_MODEL, "rb") as f:
        data = json.load(f)
    data["special_tokens"] = [
        {"rank": i, "token_str": f"<X{i}>", "is_control": True} for i in range(3)
    ]
    with pytest.raises(ValueError, match="Cannot find special token '<s>'"):
        MistralTekkenTokenizer(json.dumps(data).encode())


# --- serialization ----------------------------------------------------------


def test_config_and_assets_round_trip(tmp_path):
    tokenizer = MistralTekkenTokenizer(
        TEKKEN_240911_MODEL, sequence_length=7, add_bos=True, chat_template="v7"
    )
    config = tokenizer.get_config()
    assert config["vocabulary"] is None and config["chat_template"] == "v7"
    tokenizer.save_assets(str(tmp_path))
    with open(TEKKEN_240911_MODEL, "rb") as f:
        assert (tmp_path / "tekken.json").read_bytes() == f.read()
    assert tokenizer.file_assets == ("tekken.json",)

    serialized = keras.saving.serialize_keras_object(tokenizer)
    assert serialized["registered_name"] == "mistral_hub>MistralTekkenTokenizer"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is MistralTekkenTokenizer
    assert restored.get_config() == config
    restored.load_assets(str(tmp_path))
    np.testing.assert_array_equal(restored(CORPUS[:4]), tokenizer(CORPUS[:4]))


# --- keras_hub style vocabulary / merges -------------------------------------

SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
MERGES = ["t h", "th e", "Ġ t", "i n", "Ġt in"]


def _synthetic_vocabulary():
    tokenizer_bytes = MistralTekkenTokenizer(TEKKEN_MODEL).get_vocabulary()
    single_bytes = tokenizer_bytes[1000:1256]
    tokens = SPECIALS + single_bytes + ["th", "the", "Ġt", "in", "Ġtin"]
    return {token: i for i, token in enumerate(tokens)}


def test_keras_hub_style_vocabulary_matches_keras_hub(split_pattern):
    keras_hub = pytest.importorskip("keras_hub")
    vocabulary = _synthetic_vocabulary()
    ours = MistralTekkenTokenizer(
        vocabulary=vocabulary, merges=MERGES, split_pattern=split_pattern
    )
    theirs = keras_hub.models.MistralTekkenTokenizer(
        vocabulary=vocabulary, merges=MERGES, split_pattern=split_pattern
    )
    texts = ["the tin", "then the thin tint", "  the\n\nin tin", ""]
    for text in texts:
        assert ours(text) == np.asarray(theirs(text)).tolist()
    assert ours("the tin") == [262, 265]
    config = ours.get_config()
    assert config["split_pattern"] == split_pattern
    config.update(vocabulary=vocabulary, merges=MERGES)
    assert MistralTekkenTokenizer.from_config(config)("the tin") == [262, 265]
    assert ours.detokenize(ours(texts)) == texts
    assert ours.special_token_ids == [1, 2]
    assert ours.apply_chat_template([{"role": "user", "content": "the"}]) == [
        1, 3, 262, 4,
    ]  # fmt: skip


def test_keras_hub_style_vocabulary_of_a_real_file(tokenizers, split_pattern):
    tokenizer = tokenizers["240911"]
    vocabulary = {t: i for i, t in enumerate(tokenizer.get_vocabulary())}
    rebuilt = MistralTekkenTokenizer(vocabulary, split_pattern=split_pattern)
    assert rebuilt(CORPUS) == tokenizer(CORPUS)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]
    # A vocabulary dict has no version: the convention is inferred from the
    # special tokens, and this file's defaults include [SYSTEM_PROMPT].
    assert rebuilt.apply_chat_template(messages)[:2] == [1, 17]
    rebuilt = MistralTekkenTokenizer(
        vocabulary, split_pattern=split_pattern, chat_template="tekken"
    )
    assert rebuilt.apply_chat_template(messages) == tokenizer.apply_chat_template(
        messages
    )


def test_keras_hub_style_vocabulary_saves_a_tekken_file(tmp_path, split_pattern):
    tekken = pytest.importorskip("mistral_common.tokens.tokenizers.tekken")
    tokenizer = MistralTekkenTokenizer(
        _synthetic_vocabulary(), split_pattern=split_pattern
    )
    tokenizer.save_assets(str(tmp_path))
    path = str(tmp_path / "tekken.json")
    reference = tekken.Tekkenizer.from_file(path)
    text = "the tin then"
    assert reference.encode(text, bos=False, eos=False) == tokenizer(text)
    assert MistralTekkenTokenizer(path)(text) == tokenizer(text)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda v, m: (v, m, None), "split_pattern"),
        (lambda v, m: ({**v, "x": 999}, m, "p"), "ids must be exactly"),
        (
            lambda v, m: ({k: i for i, k in enumerate(list(v)[:5] + ["Ā"])}, m, "p"),
            "256 single-byte tokens",
        ),
        (lambda v, m: (v, m + ["q z"], "p"), "Every merge"),
        (lambda v, m: ({**v, "日": len(v)}, m, "p"), "not a byte-level token"),
    ],
)
def test_keras_hub_style_vocabulary_errors(change, match):
    vocabulary, merges, pattern = change(_synthetic_vocabulary(), MERGES)
    with pytest.raises(ValueError, match=match):
        MistralTekkenTokenizer(vocabulary, merges=merges, split_pattern=pattern)
