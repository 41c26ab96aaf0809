"""Checks of `fit`/`evaluate`/`predict`/`score` inputs and the constructor.

Every case asserts the error type and that the message names the argument;
a failed training call must leave the model usable on every backend.
"""

import keras
import numpy as np
import pytest

from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from mistral_hub.models.mistral.mistral_causal_lm_preprocessor import (
    MistralCausalLMPreprocessor,
)
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from tests.test_data import mistral_test_proto

TEXTS = ["the quick brown fox", "the earth is round"]


def _backbone(vocabulary_size=10):
    return MistralBackbone(
        vocabulary_size=vocabulary_size,
        num_layers=1,
        num_query_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        num_key_value_heads=1,
    )


def _preprocessor():
    return MistralCausalLMPreprocessor(MistralTokenizer(mistral_test_proto()), sequence_length=8)


@pytest.fixture
def causal_lm():
    keras.utils.set_random_seed(0)
    return MistralCausalLM(_backbone(), _preprocessor())


def _weights(model):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights]


def _assert_usable(causal_lm, expected_weights, tmp_path):
    for got, expected in zip(_weights(causal_lm), expected_weights):
        np.testing.assert_array_equal(got, expected)
    assert isinstance(causal_lm.generate("the quick", max_length=6), str)
    causal_lm.save_to_preset(tmp_path / "preset")
    causal_lm.fit(TEXTS, batch_size=2, verbose=0)


# --- item 1: no lost work -------------------------------------------------


def test_fit_single_string_is_refused_before_training(causal_lm, tmp_path):
    causal_lm.fit(TEXTS, batch_size=2, verbose=0)
    trained = _weights(causal_lm)
    with pytest.raises(ValueError, match="`x` must be a batch.*single string"):
        causal_lm.fit("one string")
    _assert_usable(causal_lm, trained, tmp_path)


class _Boom(Exception):
    pass


class _LossFailingInStep:
    """A loss that fails in the training step, not in Keras' symbolic build.

    Keras calls the loss once to build the model symbolically, then in the
    step (traced on JAX/TensorFlow, eager on torch): on JAX, after the
    trainer has detached the variables' values.
    """

    def __init__(self):
        self.calls = 0
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def __call__(self, y_true, y_pred):
        self.calls += 1
        if self.calls == 2:
            raise _Boom("loss failed")
        return self.loss(y_true, y_pred)


class _RaiseAt(keras.callbacks.Callback):
    def __init__(self, hook):
        super().__init__()
        setattr(self, hook, self._raise)

    def _raise(self, *args, **kwargs):
        raise _Boom("callback failed")


def test_failed_fit_keeps_weights_from_before(causal_lm, tmp_path):
    # A step that fails before completing leaves the weights as before the
    # call (on JAX, Keras had detached them all).
    causal_lm.fit(TEXTS, batch_size=2, verbose=0)
    trained = _weights(causal_lm)
    causal_lm.compile(loss=_LossFailingInStep())
    with pytest.raises(_Boom):
        causal_lm.fit(TEXTS, batch_size=1, verbose=0)
    causal_lm.compile()
    _assert_usable(causal_lm, trained, tmp_path)


def test_failed_fit_keeps_last_completed_step(causal_lm, tmp_path):
    twin = MistralCausalLM(_backbone(), _preprocessor())
    twin.set_weights(causal_lm.get_weights())
    twin.fit(TEXTS[:1], batch_size=1, verbose=0)
    with pytest.raises(_Boom):
        causal_lm.fit(
            TEXTS, batch_size=1, callbacks=[_RaiseAt("on_train_batch_end")], verbose=0
        )
    _assert_usable(causal_lm, _weights(twin), tmp_path)


def test_failed_evaluate_and_predict_keep_weights(causal_lm, tmp_path):
    before = _weights(causal_lm)
    with pytest.raises(_Boom):
        causal_lm.evaluate(TEXTS, callbacks=[_RaiseAt("on_test_batch_end")], verbose=0)
    with pytest.raises(_Boom):
        causal_lm.predict(TEXTS, callbacks=[_RaiseAt("on_predict_batch_begin")], verbose=0)
    _assert_usable(causal_lm, before, tmp_path)


# --- zero rows ------------------------------------------------------------


@pytest.mark.parametrize("method", ["fit", "evaluate", "predict"])
@pytest.mark.parametrize("x", [[], np.array([], dtype=str)])
def test_empty_batch_is_refused(causal_lm, method, x):
    with pytest.raises(ValueError, match="`x` must hold at least one example"):
        getattr(causal_lm, method)(x, verbose=0)


def test_empty_token_batch_is_refused(causal_lm):
    causal_lm.preprocessor = None
    x = {"token_ids": np.zeros((0, 4), "int32"), "padding_mask": np.zeros((0, 4), "int32")}
    with pytest.raises(ValueError, match=r"`x\['token_ids'\]` must hold at least one"):
        causal_lm.predict(x, verbose=0)


# --- item 2: y and sample_weight -------------------------------------------


def test_y_with_raw_text_is_refused(causal_lm):
    with pytest.raises(ValueError, match="`y` must be None.*shifted by one"):
        causal_lm.fit(TEXTS, y=np.array([1, 2]), verbose=0)
    with pytest.raises(ValueError, match="`y` must be None"):
        causal_lm.evaluate(TEXTS, y=np.array([1, 2]), verbose=0)


def test_tf_data_pairs_are_refused(causal_lm):
    tf = pytest.importorskip("tensorflow")
    dataset = tf.data.Dataset.from_tensor_slices((TEXTS, [1, 2])).batch(2)
    with pytest.raises(ValueError, match="`y` must be None"):
        causal_lm.fit(dataset, verbose=0)


def test_sample_weight_of_wrong_length_is_refused(causal_lm):
    with pytest.raises(ValueError, match=r"`sample_weight` must hold one weight per example.*\(2,\).*\(3,\)"):
        causal_lm.fit(TEXTS, sample_weight=np.ones(3), verbose=0)
    with pytest.raises(ValueError, match="`sample_weight` must hold finite weights"):
        causal_lm.fit(TEXTS, sample_weight=np.array([1.0, np.nan]), verbose=0)


def test_sample_weight_weighs_examples(causal_lm):
    weighted = causal_lm.evaluate(TEXTS, sample_weight=np.array([1.0, 0.0]), verbose=0)
    alone = causal_lm.evaluate(TEXTS[:1], verbose=0)
    both = causal_lm.evaluate(TEXTS, verbose=0)
    np.testing.assert_allclose(weighted, alone, rtol=1e-5)
    assert not np.allclose(weighted[0], both[0])


def test_all_zero_sample_weight_is_refused(causal_lm):
    for method in ("fit", "evaluate"):
        with pytest.raises(ValueError, match="`sample_weight` is 0 for every example"):
            getattr(causal_lm, method)(TEXTS, sample_weight=np.zeros(2), verbose=0)


def test_token_inputs_keep_keras_semantics_for_y(causal_lm):
    causal_lm.preprocessor = None
    x = {"token_ids": np.array([[1, 3, 8, 4]]), "padding_mask": np.ones((1, 4), "int32")}
    loss_a = causal_lm.evaluate(x, np.array([[3, 8, 4, 6]]), verbose=0)[0]
    loss_b = causal_lm.evaluate(x, np.array([[9, 9, 9, 9]]), verbose=0)[0]
    assert loss_a != loss_b


# --- item 4: token ids with preprocessor=None, score() -----------------------


@pytest.mark.parametrize(
    "token_ids, padding_mask, match",
    [
        ([[1, 10, 3]], [[1, 1, 1]], r"`x\['token_ids'\]` must hold token ids in \[0, 9\].*size is 10"),
        ([[1, -1, 3]], [[1, 1, 1]], r"`x\['token_ids'\]` must hold token ids in \[0, 9\]"),
        ([[1.0, 2.0, 3.0]], [[1, 1, 1]], r"`x\['token_ids'\]` must hold integer token ids"),
        ([[1, 2, 3]], [[0, 1, 1]], r"`x\['padding_mask'\]` must be right padded"),
        ([[1, 2, 3]], [[1, 0, 1]], r"`x\['padding_mask'\]` must be right padded"),
    ],
)
def test_bad_token_inputs_are_refused_by_fit(causal_lm, token_ids, padding_mask, match):
    causal_lm.preprocessor = None
    x = {"token_ids": np.array(token_ids), "padding_mask": np.array(padding_mask)}
    with pytest.raises(ValueError, match=match):
        causal_lm.fit(x, np.array([[2, 3, 4]]), verbose=0)


def test_labels_out_of_range_are_refused(causal_lm):
    causal_lm.preprocessor = None
    x = {"token_ids": np.array([[1, 2, 3]]), "padding_mask": np.ones((1, 3), "int32")}
    with pytest.raises(ValueError, match=r"`y` must hold token ids in \[0, 9\].*y\[0, 2\]=12"):
        causal_lm.evaluate(x, np.array([[2, 3, 12]]), verbose=0)


def test_score_checks_ids_and_mask(causal_lm):
    with pytest.raises(ValueError, match=r"`token_ids` must hold token ids in \[0, 9\]"):
        causal_lm.score(np.array([[1, 10]]))
    with pytest.raises(ValueError, match="`padding_mask` must be right padded"):
        causal_lm.score(np.array([[1, 3, 4]]), padding_mask=np.array([[1, 0, 1]]))
    with pytest.raises(ValueError, match="`target_ids` must hold token ids"):
        causal_lm.score(np.array([[1, 3]]), scoring_mode="loss", target_ids=np.array([[3, -2]]))


# --- constructor -----------------------------------------------------------


def test_constructor_refuses_wrong_types():
    with pytest.raises(TypeError, match="`backbone` must be a `MistralBackbone`.*'nope'"):
        MistralCausalLM(backbone="nope")
    with pytest.raises(TypeError, match="`preprocessor` must be a `MistralCausalLMPreprocessor` or None"):
        MistralCausalLM(_backbone(), preprocessor=MistralTokenizer(mistral_test_proto()))


def test_constructor_refuses_tokenizer_larger_than_embedding():
    with pytest.raises(ValueError, match=r"tokenizer's vocabulary \(10 ids\).*`vocabulary_size` \(8\)"):
        MistralCausalLM(_backbone(vocabulary_size=8), _preprocessor())
    # A padded embedding (larger than the tokenizer), as checkpoints have, is fine.
    MistralCausalLM(_backbone(vocabulary_size=16), _preprocessor(), compile=False)
