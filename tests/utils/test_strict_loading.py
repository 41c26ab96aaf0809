"""Strict checkpoint loading, config validation and paths inside presets.

Every inconsistency between a config and its weights is an error naming
the tensors (first few, plus a count), before anything is loaded;
`strict=False` loads what matches and warns. Paths named inside a preset
may not lead out of it.
"""

import json
import os
import shutil

import h5py
import keras
import numpy as np
import pytest
import safetensors.numpy

from mistral_hub.models.backbone import Backbone
from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from tests.models.mistral.hf_reference import make_hf_model
from tests.test_data import mistral_test_proto
from tests.utils.preset_helpers import populate_hf_cache
from tests.utils.preset_helpers import tiny_backbone
from tests.utils.preset_helpers import tiny_causal_lm
from tests.utils.test_transformers_presets import _mistral_dir


def _numpy(variable):
    return keras.ops.convert_to_numpy(keras.ops.cast(variable, "float32"))


# --- fixtures: one saved copy per module, edited copies per test -------------


@pytest.fixture(scope="module")
def hf_saved(tmp_path_factory):
    """A 2-layer untied transformers checkpoint with tokenizer and stop ids."""
    path = tmp_path_factory.mktemp("hf") / "checkpoint"
    model = make_hf_model()
    model.save_pretrained(path)
    (path / "tokenizer.model").write_bytes(mistral_test_proto())
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    return model, path


@pytest.fixture
def hf_dir(hf_saved, tmp_path):
    model, path = hf_saved
    copy = tmp_path / "hf"
    shutil.copytree(path, copy)
    return model, copy


@pytest.fixture(scope="module")
def keras_saved(tmp_path_factory):
    """A 2-layer Keras task preset (backbone, preprocessor, tokenizer)."""
    causal_lm = tiny_causal_lm(seed=3)
    path = tmp_path_factory.mktemp("keras") / "preset"
    causal_lm.save_to_preset(path)
    return causal_lm, path


@pytest.fixture
def keras_dir(keras_saved, tmp_path):
    causal_lm, path = keras_saved
    copy = tmp_path / "keras"
    shutil.copytree(path, copy)
    return causal_lm, copy


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _edit_config(directory, **values):
    def edit(config):
        for key, value in values.items():
            if value is _DELETE:
                config.pop(key, None)
            else:
                config[key] = value

    _edit_json(directory / "config.json", edit)


_DELETE = object()


def _edit_tensors(directory, edit, file="model.safetensors"):
    path = str(directory / file)
    tensors = safetensors.numpy.load_file(path)
    edit(tensors)
    safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})


# --- transformers checkpoints ------------------------------------------------


def test_config_with_fewer_layers_than_the_weights(hf_dir):
    model, path = hf_dir
    _edit_config(path, num_hidden_layers=1)
    with pytest.raises(ValueError) as info:
        MistralBackbone.from_preset(str(path))
    message = str(info.value)
    assert "9 in the checkpoint but not used by the model" in message
    assert "`model.layers.1.input_layernorm.weight`" in message
    assert "and 4 more" in message  # The first five names, then a count.
    assert "holds 2 decoder layers, the model 1" in message
    assert "`num_hidden_layers` in `config.json`" in message

    # strict=False loads the first layer and says what it skipped.
    with pytest.warns(UserWarning, match=r"model\.layers\.1\.") as record:
        backbone = MistralBackbone.from_preset(str(path), strict=False)
    assert "strict=False" in str(record[0].message)
    assert backbone.num_layers == 1
    np.testing.assert_array_equal(
        _numpy(backbone.transformer_layers[0]._feedforward_layernorm.scale),
        model.model.layers[0].post_attention_layernorm.weight.detach().numpy(),
    )


def test_unexpected_tensor_is_named(hf_dir):
    _, path = hf_dir
    _edit_tensors(path, lambda t: t.update({"model.extra_bias": np.zeros(3, "float32")}))
    expected = r"1 in the checkpoint but not used by the model: `model\.extra_bias`"
    with pytest.raises(ValueError, match=expected):
        MistralBackbone.from_preset(str(path))


def test_untied_checkpoint_without_lm_head_is_not_silently_tied(hf_dir):
    _, path = hf_dir
    _edit_tensors(path, lambda t: t.pop("lm_head.weight"))
    expected = r"1 missing from the checkpoint: `lm_head\.weight`"
    with pytest.raises(ValueError, match=expected) as info:
        MistralBackbone.from_preset(str(path))
    assert "tie_word_embeddings" in str(info.value)

    with pytest.warns(UserWarning, match=r"lm_head\.weight"):
        backbone = MistralBackbone.from_preset(str(path), strict=False)
    # The projection keeps its random initial value, not the embeddings.
    embeddings = _numpy(backbone.token_embedding.embeddings)
    reverse = _numpy(backbone.token_embedding.reverse_embeddings)
    assert not np.allclose(reverse, embeddings.T)
    assert np.abs(reverse).max() > 0


@pytest.mark.parametrize("value", ["no", "false", 0, None])
def test_tie_word_embeddings_must_be_a_bool(hf_dir, value):
    _, path = hf_dir
    _edit_config(path, tie_word_embeddings=value)
    with pytest.raises(ValueError, match="`tie_word_embeddings` must be a bool") as info:
        MistralBackbone.from_preset(str(path))
    assert "config.json" in str(info.value) and repr(value) in str(info.value)


def test_integer_tensors_are_refused_not_cast(hf_dir):
    _, path = hf_dir
    _edit_tensors(path, lambda t: t.update({"model.norm.weight": np.ones(32, "int32")}))
    expected = r"`model\.norm\.weight` is int32, but `sequence_output_layernorm/scale` holds floats"
    with pytest.raises(ValueError, match=expected):
        MistralBackbone.from_preset(str(path))


def test_headless_mistral_model_checkpoint_warns(tmp_path):
    make_hf_model().model.save_pretrained(tmp_path)  # `MistralModel`: no head.
    with pytest.warns(UserWarning, match="MistralModel.*initialized from the token embeddings"):
        MistralBackbone.from_preset(str(tmp_path))


CONFIG_ERRORS = [
    ({"vocab_size": _DELETE}, "the required key `vocab_size` is missing"),
    ({"rms_norm_eps": float("nan")}, "`rms_norm_eps` must be a finite number > 0"),
    (
        {"rope_parameters": {"rope_type": "default", "rope_theta": -1.0}},
        "`rope_theta` must be a finite number > 0",
    ),
    ({"hidden_size": 32.0}, "`hidden_size` must be a positive int"),
    ({"num_key_value_heads": "2"}, "`num_key_value_heads` must be a positive int"),
    ({"attention_dropout": 1.0}, r"`attention_dropout` must be a finite number in \[0, 1\)"),
    ({"sliding_window": 0}, "`sliding_window` must be a positive int or None"),
    # Valid values that do not fit together: the config key is named.
    ({"num_key_value_heads": 3}, "`num_query_heads` is `num_attention_heads` there"),
]


@pytest.mark.parametrize("values,message", CONFIG_ERRORS, ids=[m[:30] for _, m in CONFIG_ERRORS])
def test_invalid_config_json_values_name_the_key(hf_dir, values, message):
    _, path = hf_dir
    _edit_config(path, **values)
    with pytest.raises(ValueError, match=message) as info:
        MistralBackbone.from_preset(str(path), load_weights=False)
    assert "`config.json` of preset" in str(info.value)


def test_stop_ids_out_of_range(hf_dir):
    _, path = hf_dir
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 97]}))
    expected = r"`eos_token_id` in `generation_config.json` of preset .* \[0, 97\)"
    with pytest.raises(ValueError, match=expected) as info:
        MistralCausalLM.from_preset(str(path), load_weights=False)
    assert "eos_token_id=[2, 97]" in str(info.value)

    # strict=False drops the invalid id and keeps the valid one.
    with pytest.warns(UserWarning, match="eos_token_id"):
        causal_lm = MistralCausalLM.from_preset(str(path), load_weights=False, strict=False)
    assert causal_lm.default_stop_token_ids == (2,)


@pytest.mark.parametrize("value", [-1, True, "2", 2.0])
def test_stop_ids_must_be_ints(hf_dir, value):
    _, path = hf_dir
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": value}))
    with pytest.raises(ValueError, match="`eos_token_id` in `generation_config.json`"):
        MistralCausalLM.from_preset(str(path), load_weights=False)


def test_misspelled_from_preset_arguments(hf_dir, keras_dir):
    _, hf_path = hf_dir
    _, keras_path = keras_dir
    for preset in (str(hf_path), keras_path):
        with pytest.raises(TypeError, match="'sliding_windw'. Did you mean 'sliding_window'"):
            MistralBackbone.from_preset(preset, sliding_windw=2, load_weights=False)
        with pytest.raises(TypeError, match="'sequence_lenght'. Did you mean 'sequence_length'"):
            MistralCausalLM.from_preset(preset, sequence_lenght=16, load_weights=False)
    with pytest.raises(TypeError, match="MistralTokenizer.from_preset.*'add_boss'"):
        MistralTokenizer.from_preset(keras_path, add_boss=True)


def test_strict_must_be_a_bool(keras_dir):
    _, path = keras_dir
    with pytest.raises(ValueError, match="`strict` must be a bool"):
        MistralBackbone.from_preset(path, strict="no")


# --- mistral-inference checkpoints -------------------------------------------


def test_mistral_params_are_validated_and_output_weight_required(tmp_path):
    model = make_hf_model()
    _mistral_dir(tmp_path, model, norm_eps=float("nan"))
    expected = r"`params.json` of preset .*`norm_eps` must be a finite number > 0"
    with pytest.raises(ValueError, match=expected):
        MistralBackbone.from_preset(str(tmp_path))

    _edit_json(tmp_path / "params.json", lambda p: p.update(norm_eps=1e-5))
    _edit_tensors(tmp_path, lambda t: t.pop("output.weight"), "consolidated.safetensors")
    # Names are those of the files (`output.weight`, not `lm_head.weight`).
    with pytest.raises(ValueError, match=r"missing from the checkpoint: `output\.weight`") as info:
        MistralBackbone.from_preset(str(tmp_path))
    assert "`tied_embeddings` in `params.json`" in str(info.value)

    # A tied model needs no output projection of its own.
    _edit_json(tmp_path / "params.json", lambda p: p.update(tied_embeddings=True))
    backbone = MistralBackbone.from_preset(str(tmp_path))
    np.testing.assert_array_equal(
        _numpy(backbone.token_embedding.reverse_embeddings),
        _numpy(backbone.token_embedding.embeddings).T,
    )
    _edit_json(tmp_path / "params.json", lambda p: p.update(tied_embeddings="yes"))
    with pytest.raises(ValueError, match="`tied_embeddings` must be a bool"):
        MistralBackbone.from_preset(str(tmp_path))


# --- Keras presets -----------------------------------------------------------


def test_keras_weights_of_two_layers_into_a_one_layer_config(keras_dir):
    causal_lm, path = keras_dir
    _edit_json(path / "config.json", lambda c: c["config"].update(num_layers=1))
    with pytest.raises(ValueError) as info:
        MistralBackbone.from_preset(path)
    message = str(info.value)
    assert "`model.weights.h5` of preset" in message
    assert "9 in the file but not used by the model" in message
    first = "`layers/mistral_transformer_decoder_1/_feedforward_gate_dense/vars/0` (16, 32)"
    assert first in message
    assert "the file holds 2 `mistral_transformer_decoder` layers, the model 1" in message

    with pytest.warns(UserWarning, match="mistral_transformer_decoder_1"):
        backbone = MistralBackbone.from_preset(path, strict=False)
    reference = causal_lm.backbone
    for ours, theirs in zip(backbone.weights, reference.weights[: len(backbone.weights)]):
        if ours.path.startswith(("token_embedding", "transformer_layer_0")):
            np.testing.assert_array_equal(_numpy(ours), _numpy(theirs), err_msg=ours.path)


def test_keras_weights_missing_for_the_config_are_listed_with_shapes(keras_dir):
    _, path = keras_dir
    expected = (
        r"9 missing from the file: `transformer_layer_2/feedforward_gate_dense/kernel` "
        r"\(16, 32\)"
    )
    with pytest.raises(ValueError, match=expected) as info:
        MistralBackbone.from_preset(path, num_layers=3)
    assert "the file holds 2 `mistral_transformer_decoder` layers, the model 3" in str(info.value)


def test_quantized_keras_presets_are_checked_like_others(tmp_path):
    backbone = tiny_backbone(num_layers=1)
    backbone.quantize("int8")
    backbone.save_to_preset(tmp_path / "int8")
    # Kernels and scales are compared too (int8 kernels against int8 data).
    loaded = MistralBackbone.from_preset(tmp_path / "int8")
    assert [v.path for v in loaded.weights] == [v.path for v in backbone.weights]
    for ours, theirs in zip(loaded.weights, backbone.weights):
        np.testing.assert_array_equal(_numpy(ours), _numpy(theirs), err_msg=ours.path)
    scale = "layers/mistral_transformer_decoder/_feedforward_gate_dense/vars/1"
    with h5py.File(tmp_path / "int8" / "model.weights.h5", "r+") as f:
        del f[scale]
        f[scale] = np.ones(31, "float32")
    expected = (
        r"1 with another shape in the file: variable "
        r"`transformer_layer_0/feedforward_gate_dense/kernel_scale` has shape \(32,\), but "
        r"the file stores \(31,\)"
    )
    with pytest.raises(ValueError, match=expected):
        MistralBackbone.from_preset(tmp_path / "int8")


def test_keras_integer_weights_are_refused(keras_dir):
    _, path = keras_dir
    name = "layers/mistral_layer_normalization/vars/0"
    with h5py.File(path / "model.weights.h5", "r+") as f:
        shape = f[name].shape
        del f[name]
        f[name] = np.ones(shape, "int32")
    expected = r"variable `sequence_output_layernorm/scale` is float32, but the file stores int32"
    with pytest.raises(ValueError, match=expected):
        MistralCausalLM.from_preset(path)


def test_keras_stop_ids_out_of_range(keras_dir):
    _, path = keras_dir

    def edit(task):
        task["mistral_hub"] = {"attributes": {"default_stop_token_ids": [2, 10]}}

    _edit_json(path / "task.json", edit)
    expected = r"`default_stop_token_ids` in `task.json` of preset .* \[0, 10\)"
    with pytest.raises(ValueError, match=expected):
        MistralCausalLM.from_preset(path, load_weights=False)


def test_keras_unexpected_weights_are_refused_but_optimizer_state_is_ignored(tmp_path):
    backbone = tiny_backbone(num_layers=1)
    backbone.save_to_preset(tmp_path / "bb")
    weights = tmp_path / "bb" / "model.weights.h5"
    with h5py.File(weights, "r+") as f:
        f["layers/reversible_embedding/vars/2"] = np.zeros(3, "float32")
    expected = (
        r"1 in the file but not used by the model: `layers/reversible_embedding/vars/2` "
        r"\(3,\)"
    )
    with pytest.raises(ValueError, match=expected):
        MistralBackbone.from_preset(tmp_path / "bb")
    # `save_weights` of a compiled model also writes the optimizer's state,
    # which is not part of the model.
    with h5py.File(weights, "r+") as f:
        del f["layers/reversible_embedding/vars/2"]
        f["optimizer/vars/0"] = np.zeros(3, "float32")
    loaded = MistralBackbone.from_preset(tmp_path / "bb")
    np.testing.assert_array_equal(
        _numpy(loaded.token_embedding.embeddings), _numpy(backbone.token_embedding.embeddings)
    )


# --- paths named inside a preset ---------------------------------------------


def _set_tokenizer_proto(path, proto):
    def edit(task):
        task["config"]["preprocessor"]["config"]["tokenizer"]["config"]["proto"] = proto

    _edit_json(path / "task.json", edit)
    _edit_json(path / "tokenizer.json", lambda t: t["config"].update(proto=proto))


PROTO_PATHS = {
    "absolute": "`proto` must be a relative path inside the preset",
    "parent": r"`proto` must not contain empty, `\.` or `\.\.` segments",
}


@pytest.mark.parametrize("where", PROTO_PATHS)
def test_tokenizer_proto_outside_the_preset_is_refused(keras_dir, tmp_path, monkeypatch, where):
    _, path = keras_dir
    outside = tmp_path / "outside.model"
    outside.write_bytes(mistral_test_proto())  # A valid model: only the path is wrong.
    # From inside the preset, `../outside.model` names a real file.
    monkeypatch.chdir(path)
    _set_tokenizer_proto(path, str(outside) if where == "absolute" else "../outside.model")
    with pytest.raises(ValueError, match=PROTO_PATHS[where]) as info:
        MistralCausalLM.from_preset(path, load_weights=False)
    assert "task.json" in str(info.value)
    with pytest.raises(ValueError, match=PROTO_PATHS[where]) as info:
        MistralTokenizer.from_preset(path)
    assert "tokenizer.json" in str(info.value)


def test_tokenizer_proto_inside_the_preset_resolves_there(keras_dir):
    causal_lm, path = keras_dir
    _set_tokenizer_proto(path, "assets/tokenizer/vocabulary.spm")
    tokenizer = MistralTokenizer.from_preset(path)
    text = "the quick brown fox"
    assert tokenizer(text) == causal_lm.preprocessor.tokenizer(text)


def test_symlinks_leaving_the_preset_are_refused(keras_saved, keras_dir, tmp_path):
    causal_lm, path = keras_dir
    # huggingface_hub's cache snapshots link into their `blobs` folder: fine.
    snapshot = populate_hf_cache(str(tmp_path / "cache"), "owner/repo", str(keras_saved[1]))
    assert os.path.islink(os.path.join(snapshot, "model.weights.h5"))
    loaded = MistralCausalLM.from_preset(snapshot)
    np.testing.assert_array_equal(
        _numpy(loaded.backbone.token_embedding.embeddings),
        _numpy(causal_lm.backbone.token_embedding.embeddings),
    )

    outside = tmp_path / "secret.spm"
    outside.write_bytes(mistral_test_proto())
    vocabulary = path / "assets" / "tokenizer" / "vocabulary.spm"
    vocabulary.unlink()
    vocabulary.symlink_to(outside)
    expected = r"`assets/tokenizer/vocabulary.spm` of preset .* outside the preset directory"
    with pytest.raises(ValueError, match=expected):
        MistralTokenizer.from_preset(path)
    weights = path / "model.weights.h5"
    shutil.move(weights, tmp_path / "elsewhere.weights.h5")
    weights.symlink_to(tmp_path / "elsewhere.weights.h5")
    expected = r"`model.weights.h5` of preset .* outside the preset directory"
    with pytest.raises(ValueError, match=expected):
        Backbone.from_preset(path)


def test_safetensors_shard_links_leaving_the_preset_are_refused(hf_dir, tmp_path):
    _, path = hf_dir
    shutil.move(path / "model.safetensors", tmp_path / "elsewhere.safetensors")
    (path / "model.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(ValueError, match="outside the preset directory"):
        MistralBackbone.from_preset(str(path))
