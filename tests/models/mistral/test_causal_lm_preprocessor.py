import numpy as np
import pytest

from mistral_hub.models.mistral.mistral_causal_lm_preprocessor import (
    MistralCausalLMPreprocessor,
)
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from tests.test_data import V1_MODEL
from tests.test_data import mistral_test_proto

TEXTS = ["the quick brown fox", "the earth is round", "the fox", "round"]


@pytest.fixture(scope="module")
def tokenizer():
    return MistralTokenizer(proto=mistral_test_proto())


@pytest.fixture
def preprocessor(tokenizer):
    return MistralCausalLMPreprocessor(tokenizer, sequence_length=8)


def _keras_hub_preprocessor(sequence_length, proto, **kwargs):
    keras_hub = pytest.importorskip("keras_hub")
    tokenizer = keras_hub.models.MistralTokenizer(proto=proto)
    return keras_hub.models.MistralCausalLMPreprocessor(
        tokenizer, sequence_length=sequence_length, **kwargs
    )


def _numpy(tree):
    if isinstance(tree, dict):
        return {key: np.asarray(value) for key, value in tree.items()}
    return np.asarray(tree)


def test_training_outputs(preprocessor):
    x, y, sample_weight = preprocessor("the quick brown fox")
    assert x["token_ids"].tolist() == [1, 3, 8, 4, 6, 2, 0, 0]
    assert x["padding_mask"].astype(int).tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert y.tolist() == [3, 8, 4, 6, 2, 0, 0, 0]
    assert sample_weight.astype(int).tolist() == [1, 1, 1, 1, 1, 0, 0, 0]


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"add_start_token": False, "add_end_token": False}, {"add_end_token": False}],
)
def test_matches_keras_hub(kwargs):
    ours = MistralCausalLMPreprocessor(
        MistralTokenizer(proto=mistral_test_proto()), sequence_length=8, **kwargs
    )
    theirs = _keras_hub_preprocessor(8, mistral_test_proto(), **kwargs)
    for actual, expected in zip(ours(TEXTS), theirs(TEXTS)):
        if isinstance(actual, dict):
            for key in actual:
                np.testing.assert_array_equal(actual[key], np.asarray(expected[key]))
        else:
            np.testing.assert_array_equal(actual, np.asarray(expected))
    actual = ours.generate_preprocess(TEXTS[:2])
    expected = theirs.generate_preprocess(TEXTS[:2])
    if kwargs.get("add_start_token", True):
        for key in actual:
            np.testing.assert_array_equal(actual[key], np.asarray(expected[key]))


def test_matches_keras_hub_on_real_vocabulary():
    texts = ["Hello, world! How are you?", "def f(x):\n    return x * 2", "Café 東京 🙂"]
    ours = MistralCausalLMPreprocessor(MistralTokenizer(proto=V1_MODEL), sequence_length=32)
    theirs = _keras_hub_preprocessor(32, V1_MODEL)
    actual_x, actual_y, actual_weight = ours(texts)
    expected_x, expected_y, expected_weight = theirs(texts)
    np.testing.assert_array_equal(actual_x["token_ids"], np.asarray(expected_x["token_ids"]))
    np.testing.assert_array_equal(actual_y, np.asarray(expected_y))
    np.testing.assert_array_equal(actual_weight, np.asarray(expected_weight))


def test_truncated_example_gets_no_end_token(preprocessor):
    x, y, _ = preprocessor("the quick brown fox the earth is round")
    assert 2 not in x["token_ids"].tolist() and 2 not in y.tolist()
    assert x["token_ids"].tolist() == [1, 3, 8, 4, 6, 3, 5, 7]


def test_generate_preprocess_and_postprocess(preprocessor):
    x = preprocessor.generate_preprocess("the quick brown fox")
    assert x["token_ids"].tolist() == [1, 3, 8, 4, 6, 0, 0, 0]
    assert x["padding_mask"].astype(int).tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert preprocessor.generate_postprocess(x) == "the quick brown fox"
    batch = preprocessor.generate_preprocess(TEXTS[:2], sequence_length=6)
    assert batch["token_ids"].shape == (2, 6)
    assert preprocessor.generate_postprocess(batch) == TEXTS[:2]


def test_prompt_without_room_to_generate_is_an_error(preprocessor):
    with pytest.raises(ValueError, match="no room to generate"):
        preprocessor.generate_preprocess("the quick brown fox the earth is")


def test_sequence_length_override_and_setter(preprocessor):
    x, _, _ = preprocessor(TEXTS, sequence_length=5)
    assert x["token_ids"].shape == (4, 5)
    preprocessor.sequence_length = 17
    x, _, _ = preprocessor(TEXTS)
    assert x["token_ids"].shape == (4, 17)


def test_tf_data_map_matches_eager(preprocessor):
    tf = pytest.importorskip("tensorflow")
    eager = preprocessor(TEXTS)
    batched = tf.data.Dataset.from_tensor_slices(TEXTS).batch(4).map(preprocessor)
    unbatched = tf.data.Dataset.from_tensor_slices(TEXTS).map(preprocessor).batch(4)
    for dataset in (batched, unbatched):
        x, y, sample_weight = next(iter(dataset))
        np.testing.assert_array_equal(x["token_ids"].numpy(), eager[0]["token_ids"])
        np.testing.assert_array_equal(x["padding_mask"].numpy(), eager[0]["padding_mask"])
        np.testing.assert_array_equal(y.numpy(), eager[1])
        np.testing.assert_array_equal(sample_weight.numpy(), eager[2])


def test_numpy_and_list_inputs(preprocessor):
    from_list = preprocessor(TEXTS)[0]["token_ids"]
    from_numpy = preprocessor(np.array(TEXTS))[0]["token_ids"]
    np.testing.assert_array_equal(from_list, from_numpy)


def test_config_round_trip(preprocessor):
    config = preprocessor.get_config()
    assert config["sequence_length"] == 8
    restored = MistralCausalLMPreprocessor.from_config(config)
    assert restored.get_config() == config


@pytest.mark.parametrize(
    "kwargs,message",
    [({"sequence_length": 0}, "sequence_length"), ({"sequence_length": "8"}, "sequence_length")],
)
def test_bad_arguments(tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        MistralCausalLMPreprocessor(tokenizer, **kwargs)


def test_bad_inputs(preprocessor):
    with pytest.raises(ValueError, match="x"):
        preprocessor([1, 2])
    with pytest.raises(ValueError, match="x"):
        preprocessor([])
