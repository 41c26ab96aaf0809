"""Tokenizer vocabularies read from presets by `Tokenizer.load_preset_assets`."""

import json

import pytest

from mistral_hub.models.mistral.mistral_tekken_tokenizer import MistralTekkenTokenizer
from tests.test_data import TEKKEN_MODEL

SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
MERGES = ["t h", "th e", "Ġ t", "i n", "Ġt in"]
TEXTS = ["the tin", "then the thin tint", "  the\n\nin tin"]


@pytest.fixture(scope="module")
def keras_hub_tekken_preset(tmp_path_factory):
    """A tokenizer preset written by keras_hub's Tekken tokenizer.

    keras_hub stores the vocabulary as `vocabulary.json` + `merges.txt`
    instead of `tekken.json`.
    """
    keras_hub = pytest.importorskip("keras_hub")
    single_bytes = MistralTekkenTokenizer(TEKKEN_MODEL).get_vocabulary()[1000:1256]
    tokens = SPECIALS + single_bytes + ["th", "the", "Ġt", "in", "Ġtin"]
    with open(TEKKEN_MODEL, "rb") as f:
        split_pattern = json.load(f)["config"]["pattern"]
    theirs = keras_hub.models.MistralTekkenTokenizer(
        vocabulary={token: i for i, token in enumerate(tokens)},
        merges=MERGES,
        split_pattern=split_pattern,
    )
    preset = tmp_path_factory.mktemp("keras_hub_tekken")
    theirs.save_to_preset(str(preset))
    assert (preset / "assets" / "tokenizer" / "merges.txt").exists()
    assert not (preset / "assets" / "tokenizer" / "tekken.json").exists()
    expected = [[int(i) for i in theirs(text)] for text in TEXTS]
    return str(preset), split_pattern, expected


def test_load_preset_assets_reads_keras_hub_tekken_files(keras_hub_tekken_preset):
    preset, split_pattern, expected = keras_hub_tekken_preset
    tokenizer = MistralTekkenTokenizer(split_pattern=split_pattern)
    tokenizer.load_preset_assets(preset)
    assert tokenizer(TEXTS) == expected
    assert tokenizer.detokenize(tokenizer(TEXTS)) == TEXTS


def test_from_preset_reads_keras_hub_tekken_files(keras_hub_tekken_preset):
    preset, _, expected = keras_hub_tekken_preset
    assert MistralTekkenTokenizer.from_preset(preset)(TEXTS) == expected
