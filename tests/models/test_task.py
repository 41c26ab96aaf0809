"""`Task.fit()` / `evaluate()` on raw inputs through the attached preprocessor."""

import math

import numpy as np
import pytest

from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM

TRAIN = ["the quick brown fox", "jumps over the lazy dog", "hello world", "a b c d"]
VALIDATION = ["some validation text", "more text to check", "é ü 123", "x"]


@pytest.fixture(scope="module")
def causal_lm():
    # float32: the test is about the data path, not about training in the
    # preset's bfloat16.
    causal_lm = MistralCausalLM.from_preset("mistral_hub_demo", dtype="float32")
    causal_lm.preprocessor.sequence_length = 12
    return causal_lm


def _as_list(texts):
    return list(texts)


def _as_numpy(texts):
    return np.array(texts)


def _as_tuple(texts):
    return (list(texts),)


def _as_tf_dataset(texts):
    tf = pytest.importorskip("tensorflow")
    return tf.data.Dataset.from_tensor_slices(list(texts)).batch(2)


@pytest.mark.parametrize(
    "make", [_as_list, _as_numpy, _as_tuple, _as_tf_dataset],
    ids=["list", "numpy", "tuple", "tf_data"],
)
def test_fit_reports_validation_loss_equal_to_evaluate(causal_lm, make):
    train = make(TRAIN)
    validation = make(VALIDATION)
    batch_size = None if make is _as_tf_dataset else 2
    if make is _as_tuple:
        train = train[0]
    history = causal_lm.fit(
        train, validation_data=validation, epochs=1, batch_size=batch_size, verbose=0
    )
    val_loss = history.history["val_loss"][-1]
    assert math.isfinite(val_loss)
    # Validation runs after the epoch's last update, so `evaluate()` on the
    # same data (same batches) with the trained weights gives the same loss.
    if make is _as_tuple:
        validation = validation[0]
    evaluated = causal_lm.evaluate(validation, batch_size=batch_size, verbose=0, return_dict=True)
    np.testing.assert_allclose(val_loss, evaluated["loss"], rtol=1e-5)
    np.testing.assert_allclose(
        history.history["val_sparse_categorical_accuracy"][-1],
        evaluated["sparse_categorical_accuracy"],
        rtol=1e-5,
    )
