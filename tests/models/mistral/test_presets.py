"""Preset compatibility with keras_hub, both directions.

A preset keras_hub saves loads into mistral_hub with the same logits and
tokenization, and a preset mistral_hub saves loads into keras_hub.
"""

import json
import os

import numpy as np
import pytest
from keras import ops

from mistral_hub.models.backbone import Backbone
from mistral_hub.models.causal_lm import CausalLM
from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from mistral_hub.models.mistral.mistral_causal_lm_preprocessor import (
    MistralCausalLMPreprocessor,
)
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from mistral_hub.tokenizers.tokenizer import Tokenizer
from tests.test_data import mistral_test_proto
from tests.utils.preset_helpers import PADDING_MASK
from tests.utils.preset_helpers import TINY
from tests.utils.preset_helpers import TOKEN_IDS
from tests.utils.preset_helpers import backbone_logits
from tests.utils.preset_helpers import randomize
from tests.utils.preset_helpers import tiny_causal_lm

keras_hub = pytest.importorskip("keras_hub")

TEXTS = ["the quick brown fox", "the earth is round"]


def _logits(causal_lm):
    return ops.convert_to_numpy(
        causal_lm({"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK})
    )


@pytest.fixture(scope="module")
def keras_hub_preset(tmp_path_factory):
    tokenizer = keras_hub.models.MistralTokenizer(proto=mistral_test_proto())
    preprocessor = keras_hub.models.MistralCausalLMPreprocessor(tokenizer, sequence_length=8)
    backbone = randomize(keras_hub.models.MistralBackbone(**TINY), seed=5)
    causal_lm = keras_hub.models.MistralCausalLM(backbone, preprocessor)
    preset = str(tmp_path_factory.mktemp("keras_hub") / "preset")
    causal_lm.save_to_preset(preset)
    return causal_lm, preset


@pytest.fixture(scope="module")
def mistral_hub_preset(tmp_path_factory):
    causal_lm = tiny_causal_lm(seed=6)
    preset = str(tmp_path_factory.mktemp("mistral_hub") / "preset")
    causal_lm.save_to_preset(preset)
    return causal_lm, preset


def test_keras_hub_preset_loads_into_mistral_hub(keras_hub_preset):
    reference, preset = keras_hub_preset
    causal_lm = CausalLM.from_preset(preset)
    assert type(causal_lm) is MistralCausalLM
    np.testing.assert_allclose(_logits(causal_lm), _logits(reference), rtol=1e-5, atol=1e-5)
    assert causal_lm.preprocessor.sequence_length == 8
    tokenizer = causal_lm.preprocessor.tokenizer
    expected = reference.preprocessor.tokenizer(TEXTS)
    assert tokenizer(TEXTS) == [list(map(int, ids)) for ids in expected]
    x, y, w = causal_lm.preprocessor(TEXTS)
    x_ref, y_ref, w_ref = reference.preprocessor(TEXTS)
    np.testing.assert_array_equal(np.asarray(x["token_ids"]), np.asarray(x_ref["token_ids"]))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))


def test_keras_hub_preset_parts_load_into_mistral_hub(keras_hub_preset):
    reference, preset = keras_hub_preset
    backbone = Backbone.from_preset(preset)
    assert type(backbone) is MistralBackbone
    np.testing.assert_allclose(
        backbone_logits(backbone), backbone_logits(reference.backbone), rtol=1e-5, atol=1e-5
    )
    assert type(Tokenizer.from_preset(preset)) is MistralTokenizer
    assert type(MistralCausalLMPreprocessor.from_preset(preset)) is MistralCausalLMPreprocessor


def test_mistral_hub_preset_loads_into_keras_hub(mistral_hub_preset):
    reference, preset = mistral_hub_preset
    causal_lm = keras_hub.models.CausalLM.from_preset(preset)
    assert type(causal_lm) is keras_hub.models.MistralCausalLM
    np.testing.assert_allclose(_logits(causal_lm), _logits(reference), rtol=1e-5, atol=1e-5)
    assert causal_lm.preprocessor.sequence_length == 8
    ids = causal_lm.preprocessor.tokenizer(TEXTS)
    assert [list(map(int, row)) for row in ids] == reference.preprocessor.tokenizer(TEXTS)
    backbone = keras_hub.models.Backbone.from_preset(preset)
    assert type(backbone) is keras_hub.models.MistralBackbone
    tokenizer = keras_hub.models.Tokenizer.from_preset(preset)
    assert type(tokenizer) is keras_hub.models.MistralTokenizer


def test_keras_hub_ignores_mistral_hub_extras(tmp_path):
    causal_lm = tiny_causal_lm(seed=7)
    causal_lm.preprocessor.tokenizer.chat_template = "v3"
    causal_lm.default_stop_token_ids = (2,)
    causal_lm.save_to_preset(tmp_path / "extras")
    with open(tmp_path / "extras" / "task.json") as f:
        task = json.load(f)
    assert task["mistral_hub"]["attributes"] == {"default_stop_token_ids": [2]}
    loaded = keras_hub.models.MistralCausalLM.from_preset(str(tmp_path / "extras"))
    np.testing.assert_allclose(_logits(loaded), _logits(causal_lm), rtol=1e-5, atol=1e-5)
    ours = MistralCausalLM.from_preset(tmp_path / "extras")
    assert ours.preprocessor.tokenizer.chat_template == "v3"
    assert ours.default_stop_token_ids == (2,)


def test_round_trip_through_both_libraries(keras_hub_preset, tmp_path):
    reference, preset = keras_hub_preset
    CausalLM.from_preset(preset).save_to_preset(tmp_path / "ours")
    again = keras_hub.models.CausalLM.from_preset(str(tmp_path / "ours"))
    again.save_to_preset(str(tmp_path / "theirs"))
    final = CausalLM.from_preset(tmp_path / "theirs")
    np.testing.assert_allclose(_logits(final), _logits(reference), rtol=1e-5, atol=1e-5)
    for name in ("config.json", "tokenizer.json", "preprocessor.json"):
        with open(os.path.join(preset, name)) as a, open(tmp_path / "ours" / name) as b:
            original, ours = json.load(a), json.load(b)
        ours.pop("mistral_hub", None)
        if name == "preprocessor.json":
            ours["config"]["tokenizer"].pop("mistral_hub", None)
        assert ours == original, name
