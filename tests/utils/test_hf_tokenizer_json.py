"""transformers checkpoints whose tokenizer is only a `tokenizer.json`.

The tokenizer directories are written by transformers itself: its tokenizer
is built from the Mistral vocabularies shipped with mistral-common and saved
with `save_pretrained`, which writes `tokenizer.json` and
`tokenizer_config.json` only. Ids are compared with transformers' tokenizer
loaded from the same directory.
"""

import json
import os
import shutil

import numpy as np
import pytest

from mistral_hub.models.causal_lm import CausalLM
from mistral_hub.models.mistral.mistral_hf_tokenizer import MistralHFTokenizer
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from tests.models.mistral.test_chat_template import CONVERSATIONS
from tests.models.mistral.test_chat_template import mistral_common  # noqa: F401 (fixture)
from tests.test_data import TEKKEN_MODEL
from tests.test_data import V1_MODEL
from tests.test_data import V3_MODEL

transformers = pytest.importorskip("transformers")

VOCABULARIES = {"v1": V1_MODEL, "v3": V3_MODEL, "tekken": TEKKEN_MODEL}

TEXTS = [
    "Hello world",
    "Hello  world",  # Repeated space.
    " leading space",
    "trailing spaces  ",
    "   three\t\ttabs\n\nnew lines\r\n",
    "Digits 1234567890 and 3.14159, -42",
    "Unicode: é ü ß ñ 日本語 한국어 Ελληνικά",
    "Emoji 😀🇫🇷 and rare 𝔘𝔫𝔦 (byte fallback)",
    "\u200b zero width \u00a0 nbsp",
    "[INST] looks like a control token [/INST] </s>",
    "x",
    "",
]


def _special_free(text):
    return not any(token in text for token in ("[INST]", "[/INST]", "</s>", "<s>"))


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    """`{name: directory}` of tokenizers saved by transformers."""
    dirs = {}
    for name, path in VOCABULARIES.items():
        source = tmp_path_factory.mktemp(f"{name}_source")
        if name == "tekken":
            shutil.copy(path, source / "tekken.json")
        else:
            shutil.copy(path, source / "tokenizer.model")
            with open(source / "tokenizer_config.json", "w") as f:
                json.dump({"tokenizer_class": "LlamaTokenizer", "legacy": False}, f)
        saved = tmp_path_factory.mktemp(f"{name}_saved")
        transformers.AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(saved))
        dirs[name] = str(saved)
    return dirs


@pytest.fixture(scope="module")
def pairs(tokenizer_dirs):
    """`{name: (ours, transformers' tokenizer)}` from the same directory."""
    # A tokenizer.json does not say which Tekken version it came from, and
    # NeMo's vocabulary reserves `[SYSTEM_PROMPT]` without using it: its
    # convention is given explicitly (it would be inferred as "v7").
    chat_templates = {"tekken": "tekken"}
    return {
        name: (
            MistralHFTokenizer(
                os.path.join(directory, "tokenizer.json"),
                chat_template=chat_templates.get(name),
            ),
            transformers.AutoTokenizer.from_pretrained(directory),
        )
        for name, directory in tokenizer_dirs.items()
    }


def test_transformers_saves_only_tokenizer_json(tokenizer_dirs):
    for directory in tokenizer_dirs.values():
        assert sorted(os.listdir(directory)) == ["tokenizer.json", "tokenizer_config.json"]


@pytest.mark.parametrize("name", list(VOCABULARIES))
def test_ids_and_text_match_transformers(pairs, name):
    ours, theirs = pairs[name]
    expected = [theirs(text, add_special_tokens=False)["input_ids"] for text in TEXTS]
    assert ours.tokenize(TEXTS) == expected
    assert ours.tokenize(TEXTS[0]) == expected[0]
    # The cases the test is about are covered: multi-byte UTF-8 split into
    # single-byte tokens, and a special token spelled in the text.
    table = ours.token_bytes()
    rare = expected[TEXTS.index("Emoji 😀🇫🇷 and rare 𝔘𝔫𝔦 (byte fallback)")]
    assert any(len(table[i]) == 1 and table[i][0] >= 0x80 for i in rare)
    spelled = expected[TEXTS.index("[INST] looks like a control token [/INST] </s>")]
    assert ours.token_to_id("</s>") in spelled

    with_specials = [[ours.start_token_id] + ids + [ours.end_token_id] for ids in expected]
    decoded = [theirs.decode(ids, skip_special_tokens=True) for ids in with_specials]
    assert ours.detokenize(with_specials) == decoded

    # Token bytes rebuild the text, after the space a SentencePiece-style
    # pipeline prepends unless there is one (used to match stop strings).
    for text, ids in zip(TEXTS, expected):
        if text and _special_free(text):
            full = text if text.startswith(" ") else ours._text_prefix + text
            assert b"".join(table[i] for i in ids) == full.encode(), text
    assert ours.vocabulary_size() == len(theirs)


def test_start_and_end_tokens(pairs):
    for name, (ours, theirs) in pairs.items():
        assert (ours.start_token_id, ours.end_token_id) == (1, 2), name
        # transformers names them for the SentencePiece conversions only.
        if name != "tekken":
            assert (theirs.bos_token_id, theirs.eos_token_id) == (1, 2), name
        assert ours.special_token_ids == [1, 2]


# Runs of spaces aside (transformers' conversion of SentencePiece
# vocabularies merges them differently from SentencePiece, in transformers
# as here), prompts equal mistral-common's.
REPEATED_SPACES = {"spaces", "newlines_and_code", "empty_user"}
CHAT_CASES = [
    (name, conversation)
    for name in VOCABULARIES
    for conversation in CONVERSATIONS
    if name == "tekken" or conversation not in REPEATED_SPACES
]


@pytest.mark.parametrize("name, conversation", CHAT_CASES)
def test_chat_template_matches_mistral_common(
    pairs, mistral_common, name, conversation  # noqa: F811
):
    ours, _ = pairs[name]
    messages = CONVERSATIONS[conversation]
    assert ours.apply_chat_template(messages) == mistral_common(name, messages).tokens


def test_jinja_template_without_system_prompt_selects_the_tekken_convention(
    tokenizer_dirs, tmp_path, mistral_common  # noqa: F811
):
    from tests.models.mistral.hf_reference import make_hf_model

    make_hf_model(vocab_size=131072).config.save_pretrained(tmp_path)
    shutil.copy(os.path.join(tokenizer_dirs["tekken"], "tokenizer.json"), tmp_path)
    messages = CONVERSATIONS["system"]
    # Without a template: inferred from the reserved `[SYSTEM_PROMPT]`.
    assert MistralTokenizer.from_preset(str(tmp_path)).chat_template is None
    # Mistral NeMo's Jinja template (abridged): `[INST]`, no `[SYSTEM_PROMPT]`.
    template = "{{ bos_token }}{% for m in messages %}[INST]{{ m['content'] }}[/INST]{% endfor %}"
    with open(tmp_path / "tokenizer_config.json", "w") as f:
        json.dump({"tokenizer_class": "TokenizersBackend", "chat_template": template}, f)
    tokenizer = MistralTokenizer.from_preset(str(tmp_path))
    assert tokenizer.chat_template == "tekken"
    assert tokenizer.apply_chat_template(messages) == mistral_common("tekken", messages).tokens


def test_chat_template_string_matches_sentencepiece_tokenizer(pairs):
    ours, _ = pairs["v3"]
    reference = MistralTokenizer(V3_MODEL)
    messages = CONVERSATIONS["system"]
    assert ours.apply_chat_template(messages, tokenize=False) == reference.apply_chat_template(
        messages, tokenize=False
    )


@pytest.fixture(scope="module")
def checkpoint(tokenizer_dirs, tmp_path_factory):
    """A transformers checkpoint directory with a `tokenizer.json` only."""
    from tests.models.mistral.hf_reference import make_hf_model

    directory = str(tmp_path_factory.mktemp("checkpoint"))
    model = make_hf_model(
        vocab_size=32768, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )
    model.save_pretrained(directory)
    transformers.AutoTokenizer.from_pretrained(tokenizer_dirs["v3"]).save_pretrained(directory)
    assert not {"tokenizer.model", "tekken.json"} & set(os.listdir(directory))
    return directory


def test_checkpoint_loads_and_round_trips_through_a_keras_preset(checkpoint, tmp_path):
    causal_lm = CausalLM.from_preset(checkpoint, dtype="float32")
    tokenizer = causal_lm.preprocessor.tokenizer
    assert isinstance(tokenizer, MistralHFTokenizer)
    theirs = transformers.AutoTokenizer.from_pretrained(checkpoint)
    packed = causal_lm.preprocessor.generate_preprocess(["Hello  world 123"], sequence_length=16)
    expected = [theirs.bos_token_id] + theirs("Hello  world 123")["input_ids"]
    np.testing.assert_array_equal(packed["token_ids"][0, : len(expected)], expected)
    generated = causal_lm.generate("Hello", max_length=8, sampler="greedy")

    # Stored as our layer config plus the unchanged tokenizer.json asset.
    preset = str(tmp_path / "preset")
    causal_lm.save_to_preset(preset)
    with open(os.path.join(preset, "tokenizer.json"), encoding="utf-8") as f:
        assert json.load(f)["registered_name"] == "mistral_hub>MistralHFTokenizer"
    with open(os.path.join(preset, "assets", "tokenizer", "tokenizer.json"), "rb") as f:
        stored = f.read()
    with open(os.path.join(checkpoint, "tokenizer.json"), "rb") as f:
        assert stored == f.read()

    reloaded = CausalLM.from_preset(preset)
    assert isinstance(reloaded.preprocessor.tokenizer, MistralHFTokenizer)
    assert reloaded.preprocessor.tokenizer.tokenize(TEXTS) == tokenizer.tokenize(TEXTS)
    assert reloaded.generate("Hello", max_length=8, sampler="greedy") == generated
    assert MistralTokenizer.from_preset(preset).tokenize(TEXTS) == tokenizer.tokenize(TEXTS)


def test_bad_inputs(tmp_path, tokenizer_dirs):
    with pytest.raises(ValueError, match="No file found"):
        MistralHFTokenizer(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="not a valid Hugging Face tokenizer.json"):
        MistralHFTokenizer(b"{not json")
    with pytest.raises(ValueError, match="not a valid Hugging Face tokenizer.json"):
        MistralHFTokenizer(b'{"version": "1.0"}')
    path = os.path.join(tokenizer_dirs["v1"], "tokenizer.json")
    with pytest.raises(ValueError, match="`start_token` '<bos>' is not in the vocabulary"):
        MistralHFTokenizer(path, start_token="<bos>")
    tokenizer = MistralHFTokenizer(path)
    with pytest.raises(ValueError, match=r"\[0, 31999\]"):
        tokenizer.id_to_token(32000)
    with pytest.raises(ValueError, match="No vocabulary"):
        MistralHFTokenizer().tokenize("x")
