"""The shared argument validators: messages name the argument and the value."""

import json

import numpy as np
import pytest

from mistral_hub.utils import validation


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), np.uint8(3)])
def test_ints_and_numpy_ints_are_accepted_as_python_ints(value):
    result = validation.check_positive_int("num_layers", value)
    assert result == 3 and type(result) is int
    assert type(validation.check_int("seed", value, low=0)) is int
    json.dumps(result)


@pytest.mark.parametrize(
    "value", [0, -2, 2.0, np.float32(2), "2", True, np.bool_(True), None, [2]]
)
def test_positive_int_refuses_everything_else(value):
    with pytest.raises(ValueError, match=r"`num_layers` must be a positive int") as info:
        validation.check_positive_int("num_layers", value)
    assert f"num_layers={value!r}" in str(info.value)


def test_optional_positive_int():
    assert validation.check_positive_int("sliding_window", None, allow_none=True) is None
    with pytest.raises(ValueError, match="positive int or None"):
        validation.check_positive_int("sliding_window", 0, allow_none=True)


def test_int_bounds_are_named():
    with pytest.raises(ValueError, match=r"`top_k` must be an int in \[1, 10\]"):
        validation.check_int("top_k", 11, low=1, high=10)
    with pytest.raises(ValueError, match=r"`seed` must be an int >= 0"):
        validation.check_int("seed", -1, low=0)


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), -float("inf"), np.float32("nan"), 0, -1e-6, "1e-6", True]
)
def test_positive_float_refuses_nan_infinities_and_non_numbers(value):
    with pytest.raises(ValueError, match=r"`layer_norm_epsilon` must be a finite number > 0"):
        validation.check_positive_float("layer_norm_epsilon", value)


def test_finite_float_keeps_ints_and_converts_numpy():
    assert validation.check_positive_float("rope_max_wavelength", 10000) == 10000
    assert type(validation.check_positive_float("rope_max_wavelength", 10000)) is int
    value = validation.check_positive_float("layer_norm_epsilon", np.float32(1e-5))
    assert type(value) is float
    # Huge ints are finite (and too large for `math.isfinite`).
    assert validation.check_positive_float("rope_max_wavelength", 10**400) == 10**400


def test_finite_float_bounds():
    assert validation.check_finite_float("dropout", 0, 0, 1, include_high=False) == 0
    with pytest.raises(ValueError, match=r"`dropout` must be a finite number in \[0, 1\)"):
        validation.check_finite_float("dropout", 1.0, 0, 1, include_high=False)
    with pytest.raises(ValueError, match=r"`temperature` must be a finite number > 0"):
        validation.check_finite_float("temperature", 0.0, low=0, include_low=False)


@pytest.mark.parametrize("value", ["no", "false", 0, 1, None])
def test_bool_refuses_strings_and_numbers(value):
    with pytest.raises(ValueError, match=r"`tie_word_embeddings` must be a bool") as info:
        validation.check_bool("tie_word_embeddings", value)
    assert repr(value) in str(info.value)


def test_bool_accepts_numpy_bools():
    assert validation.check_bool("strict", np.bool_(False)) is False


def test_unknown_kwargs_are_type_errors_with_suggestions():
    allowed = ["sliding_window", "num_layers", "name"]
    validation.check_known_kwargs("MistralBackbone", {"name": "x"}, allowed)
    with pytest.raises(TypeError) as info:
        validation.check_known_kwargs("MistralBackbone", {"sliding_windw": 2}, allowed)
    assert str(info.value) == (
        "MistralBackbone() got an unexpected keyword argument 'sliding_windw'. "
        "Did you mean 'sliding_window'?"
    )
    with pytest.raises(TypeError, match=r"'foo'.*'num_layer' \(did you mean 'num_layers'\?\)"):
        validation.check_known_kwargs("f", {"foo": 1, "num_layer": 2}, allowed)
    # Without a close match, the accepted names are listed.
    with pytest.raises(TypeError, match=r"'zzz'\. Accepted: name, num_layers, sliding_window\."):
        validation.check_known_kwargs("f", {"zzz": 1}, allowed)

