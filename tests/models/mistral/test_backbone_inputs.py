"""Token id and padding mask checks of a direct `MistralBackbone` call."""

import keras
import numpy as np
import pytest

from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.utils import validation


@pytest.fixture(scope="module")
def backbone():
    return MistralBackbone(
        vocabulary_size=10,
        num_layers=1,
        num_query_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        num_key_value_heads=1,
    )


@pytest.mark.parametrize(
    "token_ids, padding_mask, match",
    [
        ([[1, 10]], [[1, 1]], r"`token_ids` must hold token ids in \[0, 9\] \(the vocabulary size is 10\)\. Received token_ids\[0, 1\]=10"),
        ([[1, -1]], [[1, 1]], r"`token_ids` must hold token ids in \[0, 9\].*token_ids\[0, 1\]=-1"),
        ([[1.0, 2.0]], [[1, 1]], r"`token_ids` must hold integer token ids.*float"),
        ([[0, 1]], [[0, 1]], r"`padding_mask` must be right padded.*row 0"),
        ([[1, 2, 3], [1, 2, 3]], [[1, 1, 1], [1, 0, 1]], r"`padding_mask` must be right padded.*row 1"),
        ([[1, 2]], [[1, 2]], r"`padding_mask` must be a bool or 0/1 integer mask"),
        ([[1, 2]], [[1, 1, 1]], r"`padding_mask` must have the shape of the token ids"),
    ],
)
def test_bad_inputs_are_refused(backbone, token_ids, padding_mask, match):
    inputs = {"token_ids": np.array(token_ids), "padding_mask": np.array(padding_mask)}
    with pytest.raises(ValueError, match=match):
        backbone(inputs)


def test_eager_backend_tensors_are_checked(backbone):
    inputs = {
        "token_ids": keras.ops.convert_to_tensor(np.array([[1, 12]], "int32")),
        "padding_mask": keras.ops.convert_to_tensor(np.array([[1, 1]], "int32")),
    }
    with pytest.raises(ValueError, match=r"token_ids\[0, 1\]=12"):
        backbone(inputs)


def test_valid_right_padded_inputs_run(backbone):
    inputs = {
        "token_ids": np.array([[1, 9, 0], [1, 2, 3]], "int32"),
        "padding_mask": np.array([[1, 1, 0], [1, 1, 1]], bool),
    }
    outputs = keras.ops.convert_to_numpy(backbone(inputs))
    assert outputs.shape == (2, 3, 8) and np.isfinite(outputs).all()


def test_symbolic_values_are_not_checked():
    assert validation.concrete_array(keras.KerasTensor((None, 4), "int32")) is None
    assert validation.check_token_ids("token_ids", keras.KerasTensor((None, 4), "int32"), 10) is None


def test_shared_validators_return_numpy():
    ids = validation.check_token_ids("ids", [[1, 2]], 3)
    mask = validation.check_padding_mask("mask", [[1, 0]], ids.shape)
    assert ids.tolist() == [[1, 2]] and mask.dtype == bool
    with pytest.raises(ValueError, match=r"`ids` must hold token ids in \[0, 2\]"):
        validation.check_token_ids("ids", [3], 3)
