"""`MistralBackbone` validates its config before building anything."""

import json

import numpy as np
import pytest

from mistral_hub.models.mistral.mistral_backbone import MistralBackbone

SMALL = dict(
    vocabulary_size=10,
    num_layers=1,
    num_query_heads=2,
    hidden_dim=8,
    intermediate_dim=16,
    num_key_value_heads=1,
)

# Values the previous checks let through (NaN, infinities) or failed on
# with a raw error; wrong types in general are covered by the validators'
# own tests.
BAD_VALUES = [
    ("layer_norm_epsilon", float("nan")),
    ("layer_norm_epsilon", float("inf")),
    ("rope_max_wavelength", float("inf")),
    ("rope_max_wavelength", float("nan")),
    ("rope_scaling_factor", float("nan")),
    ("dropout", "0.1"),
    ("dropout", None),
]


@pytest.mark.parametrize("field,value", BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_invalid_values_raise_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}` must be") as info:
        MistralBackbone(**{**SMALL, field: value})
    assert f"{field}={value!r}" in str(info.value)


def test_numpy_scalars_are_accepted_and_stored_as_python_numbers():
    backbone = MistralBackbone(
        **{
            **SMALL,
            "vocabulary_size": np.int64(10),
            "num_layers": np.int32(1),
            "sliding_window": np.int64(4),
            "layer_norm_epsilon": np.float32(1e-5),
        }
    )
    config = backbone.get_config()
    assert type(config["vocabulary_size"]) is int and config["vocabulary_size"] == 10
    assert type(config["sliding_window"]) is int
    assert type(config["layer_norm_epsilon"]) is float
    json.dumps(config)  # A numpy scalar would not serialize.


def test_misspelled_keyword_argument_is_a_type_error_with_a_suggestion():
    with pytest.raises(TypeError) as info:
        MistralBackbone(**SMALL, sliding_windw=2)
    assert "'sliding_windw'" in str(info.value)
    assert "Did you mean 'sliding_window'?" in str(info.value)


def test_several_unknown_keyword_arguments_are_all_named():
    expected = r"'rope_theta'.*'num_layer' \(did you mean 'num_layers'\?\)"
    with pytest.raises(TypeError, match=expected):
        MistralBackbone(**SMALL, rope_theta=1e6, num_layer=2)


def test_from_config_refuses_unknown_keys():
    config = {**SMALL, "name": "backbone", "trainable": True, "layer_norm_eps": 1e-5}
    with pytest.raises(TypeError, match="'layer_norm_eps'.*'layer_norm_epsilon'"):
        MistralBackbone.from_config(config)
