"""Keras-format presets: round trips, schema, atomic saves, safety checks."""

import json
import os
import sys

import keras
import numpy as np
import pytest

from mistral_hub.models.backbone import Backbone
from mistral_hub.models.causal_lm import CausalLM
from mistral_hub.models.causal_lm_preprocessor import CausalLMPreprocessor
from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from mistral_hub.models.mistral.mistral_causal_lm_preprocessor import (
    MistralCausalLMPreprocessor,
)
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from mistral_hub.models.preprocessor import Preprocessor
from mistral_hub.models.task import Task
from mistral_hub.tokenizers.tokenizer import Tokenizer
from mistral_hub.utils import preset_utils
from tests.utils.preset_helpers import TINY
from tests.utils.preset_helpers import backbone_logits
from tests.utils.preset_helpers import tiny_backbone
from tests.utils.preset_helpers import tiny_causal_lm
from tests.utils.preset_helpers import tiny_tokenizer

BUILTIN = {
    "mistral_7b_en": (7241732096, "kaggle://keras/mistral/keras/mistral_7b_en/8"),
    "mistral_0.3_7b_en": (7248023552, "kaggle://keras/mistral/keras/mistral_0.3_7b_en/1"),
    "mistral_instruct_7b_en": (7241732096, "kaggle://keras/mistral/keras/mistral_instruct_7b_en/8"),
    "mistral_0.2_instruct_7b_en": (
        7241732096,
        "kaggle://keras/mistral/keras/mistral_0.2_instruct_7b_en/3",
    ),
    "mistral_0.3_instruct_7b_en": (
        7248023552,
        "kaggle://keras/mistral/keras/mistral_0.3_instruct_7b_en/1",
    ),
    "magistral_small_2506_en": (
        23572403200,
        "kaggle://keras/magistral/keras/magistral_small_2506_en/1",
    ),
    "magistral_small_2507_en": (
        23572403200,
        "kaggle://keras/magistral/keras/magistral_small_2507_en/1",
    ),
}


@pytest.fixture(scope="module")
def task_preset(tmp_path_factory):
    causal_lm = tiny_causal_lm()
    preset = str(tmp_path_factory.mktemp("presets") / "task")
    causal_lm.save_to_preset(preset)
    return causal_lm, preset


def _read(preset, name):
    with open(os.path.join(preset, name)) as f:
        return json.load(f)


def _write(preset, name, data):
    with open(os.path.join(preset, name), "w") as f:
        json.dump(data, f)


# --- built-in presets -------------------------------------------------------


def test_builtin_presets_match_keras_hub():
    for cls in (MistralBackbone, Backbone, MistralCausalLM, CausalLM, Task,
                MistralCausalLMPreprocessor, Preprocessor, MistralTokenizer, Tokenizer):
        presets = cls.presets
        # keras_hub's presets, plus the demo preset shipped in the package.
        assert set(presets) == set(BUILTIN) | {"mistral_hub_demo"}, cls
        assert presets["mistral_hub_demo"]["package_path"] == "presets/mistral_hub_demo"
        for name, (params, handle) in BUILTIN.items():
            assert presets[name]["metadata"]["params"] == params
            assert presets[name]["kaggle_handle"] == handle
            assert presets[name]["metadata"]["path"] == "mistral"
    assert MistralBackbone.presets["mistral_7b_en"]["metadata"]["description"] == (
        "Mistral 7B base model"
    )


def test_unknown_preset_name_lists_builtin_names():
    with pytest.raises(ValueError, match="mistral_7b_en") as info:
        MistralBackbone.from_preset("mistral_8b_en")
    assert "magistral_small_2507_en" in str(info.value)


# --- round trips ------------------------------------------------------------


def test_backbone_round_trip_keeps_weights_config_and_dtype(tmp_path):
    backbone = tiny_backbone(head_dim=6, rope_max_wavelength=1e6, sliding_window=None)
    backbone.save_to_preset(tmp_path / "bb")
    assert sorted(os.listdir(tmp_path / "bb")) == [
        "config.json", "metadata.json", "model.weights.h5"
    ]
    loaded = Backbone.from_preset(str(tmp_path / "bb"))
    assert type(loaded) is MistralBackbone
    assert loaded.get_config() == backbone.get_config()
    np.testing.assert_array_equal(backbone_logits(loaded), backbone_logits(backbone))

    metadata = _read(tmp_path / "bb", "metadata.json")
    assert metadata["parameter_count"] == backbone.count_params()
    assert metadata["tasks"] == ["CausalLM"]
    assert metadata["keras_version"] == keras.version()


def test_dtype_is_kept_unless_overridden(tmp_path):
    backbone = tiny_backbone(dtype="bfloat16")
    backbone.save_to_preset(tmp_path / "bf16")
    assert MistralBackbone.from_preset(tmp_path / "bf16").dtype_policy.name == "bfloat16"
    loaded = MistralBackbone.from_preset(tmp_path / "bf16", dtype="float32")
    assert loaded.dtype_policy.name == "float32"
    assert keras.backend.standardize_dtype(loaded.weights[0].dtype) == "float32"
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(keras.ops.cast(backbone.weights[0].value, "float32")),
        keras.ops.convert_to_numpy(loaded.weights[0].value),
    )


def test_config_overrides_and_load_weights_false(tmp_path):
    backbone = tiny_backbone()
    backbone.save_to_preset(tmp_path / "bb")
    loaded = MistralBackbone.from_preset(tmp_path / "bb", sliding_window=2)
    assert loaded.sliding_window == 2
    fresh = MistralBackbone.from_preset(tmp_path / "bb", load_weights=False)
    assert not np.allclose(backbone_logits(fresh), backbone_logits(backbone))


def test_task_round_trip_picks_class_and_routes_kwargs(task_preset):
    causal_lm, preset = task_preset
    assert sorted(os.listdir(preset)) == [
        "assets", "config.json", "metadata.json", "model.weights.h5",
        "preprocessor.json", "task.json", "tokenizer.json",
    ]
    assert os.listdir(os.path.join(preset, "assets", "tokenizer")) == ["vocabulary.spm"]
    assert not CausalLM.from_preset(preset, compile=False).compiled
    loaded = CausalLM.from_preset(preset, sequence_length=6)
    assert type(loaded) is MistralCausalLM
    assert loaded.preprocessor.sequence_length == 6
    np.testing.assert_array_equal(
        backbone_logits(loaded.backbone), backbone_logits(causal_lm.backbone)
    )
    assert loaded.preprocessor.tokenizer("the quick brown fox") == [3, 8, 4, 6]
    greedy = dict(max_length=8, sampler="greedy", stop_token_ids=None)
    assert loaded.generate("the quick", **greedy) == causal_lm.generate("the quick", **greedy)


def test_task_without_task_json_is_assembled(task_preset, tmp_path):
    causal_lm, preset = task_preset
    import shutil

    partial = str(tmp_path / "partial")
    shutil.copytree(preset, partial)
    os.remove(os.path.join(partial, "task.json"))
    os.remove(os.path.join(partial, "preprocessor.json"))
    loaded = MistralCausalLM.from_preset(partial)
    # Default preprocessor around the saved tokenizer (keras_hub does the same).
    assert loaded.preprocessor.sequence_length == 1024
    np.testing.assert_array_equal(
        backbone_logits(loaded.backbone), backbone_logits(causal_lm.backbone)
    )


def test_preprocessor_and_tokenizer_round_trip(task_preset):
    _, preset = task_preset
    preprocessor = CausalLMPreprocessor.from_preset(preset, sequence_length=5)
    assert type(preprocessor) is MistralCausalLMPreprocessor
    assert preprocessor.sequence_length == 5
    tokenizer = Tokenizer.from_preset(preset)
    assert type(tokenizer) is MistralTokenizer
    assert tokenizer.detokenize([3, 5, 7, 9]) == "the earth is round"
    assert MistralTokenizer.from_preset(preset, sequence_length=3)("the fox").tolist() == [3, 6, 0]


def test_mistral_only_settings_survive_in_extras(tmp_path):
    tokenizer = tiny_tokenizer(chat_template="v1")
    tokenizer.save_to_preset(tmp_path / "tok")
    saved = _read(tmp_path / "tok", "tokenizer.json")
    assert "chat_template" not in saved["config"]
    assert saved["mistral_hub"]["config"]["chat_template"] == "v1"
    assert MistralTokenizer.from_preset(tmp_path / "tok").chat_template == "v1"


def test_saved_json_uses_keras_hub_schema(task_preset):
    _, preset = task_preset
    expected = {
        "config.json": ("keras_hub.src.models.mistral.mistral_backbone", "MistralBackbone"),
        "task.json": ("keras_hub.src.models.mistral.mistral_causal_lm", "MistralCausalLM"),
        "preprocessor.json": (
            "keras_hub.src.models.mistral.mistral_causal_lm_preprocessor",
            "MistralCausalLMPreprocessor",
        ),
        "tokenizer.json": ("keras_hub.src.models.mistral.mistral_tokenizer", "MistralTokenizer"),
    }
    for name, (module, class_name) in expected.items():
        data = _read(preset, name)
        assert list(data)[:4] == ["module", "class_name", "config", "registered_name"]
        assert data["module"] == module
        assert data["class_name"] == class_name
        assert data["registered_name"] == f"keras_hub>{class_name}"
        text = json.dumps(data)
        assert "build_config" not in text and "compile_config" not in text
    task = _read(preset, "task.json")
    assert set(task["config"]) == {"backbone", "preprocessor", "name"}
    assert task["config"]["backbone"]["registered_name"] == "keras_hub>MistralBackbone"
    backbone = _read(preset, "config.json")["config"]
    assert backbone["dtype"]["class_name"] == "DTypePolicy"
    assert backbone["vocabulary_size"] == TINY["vocabulary_size"]


@pytest.mark.parametrize("package", ["keras_nlp", "mistral_hub"])
def test_other_registered_packages_load(task_preset, tmp_path, package):
    import shutil

    causal_lm, preset = task_preset
    copy = str(tmp_path / "copy")
    shutil.copytree(preset, copy)
    for name in ("config.json", "task.json", "preprocessor.json", "tokenizer.json"):
        text = open(os.path.join(copy, name)).read().replace('"keras_hub>', f'"{package}>')
        open(os.path.join(copy, name), "w").write(text)
    loaded = CausalLM.from_preset(copy)
    np.testing.assert_array_equal(
        backbone_logits(loaded.backbone), backbone_logits(causal_lm.backbone)
    )


def test_sharded_weights_round_trip(tmp_path):
    backbone = tiny_backbone()
    # ~20 KB of weights, 8 KB shards.
    backbone.save_to_preset(tmp_path / "sharded", max_shard_size=8e-6)
    files = sorted(os.listdir(tmp_path / "sharded"))
    assert "model.weights.json" in files and "model.weights.h5" not in files
    assert sum(f.startswith("model_") and f.endswith(".weights.h5") for f in files) > 1
    loaded = MistralBackbone.from_preset(tmp_path / "sharded")
    np.testing.assert_array_equal(backbone_logits(loaded), backbone_logits(backbone))
    # Saving again unsharded replaces the shards.
    backbone.save_to_preset(tmp_path / "sharded")
    assert sorted(os.listdir(tmp_path / "sharded")) == [
        "config.json", "metadata.json", "model.weights.h5"
    ]


# --- saving semantics --------------------------------------------------------


def test_incremental_saves_build_one_preset(tmp_path):
    backbone = tiny_backbone()
    preset = tmp_path / "incremental"
    backbone.save_to_preset(preset)
    tiny_tokenizer().save_to_preset(preset)
    causal_lm = MistralCausalLM.from_preset(preset)
    np.testing.assert_array_equal(backbone_logits(causal_lm.backbone), backbone_logits(backbone))
    assert causal_lm.preprocessor.tokenizer("the fox") == [3, 6]


def test_save_refuses_foreign_directory_unless_overwrite(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    backbone = tiny_backbone()
    with pytest.raises(ValueError, match="overwrite=True"):
        backbone.save_to_preset(foreign)
    assert os.listdir(foreign) == ["notes.txt"]
    backbone.save_to_preset(foreign, overwrite=True)
    assert sorted(os.listdir(foreign)) == ["config.json", "metadata.json", "model.weights.h5"]
    with pytest.raises(ValueError, match="is a file"):
        backbone.save_to_preset(foreign / "config.json")


def test_failed_save_leaves_previous_preset_intact(tmp_path):
    preset = tmp_path / "preset"
    tiny_tokenizer().save_to_preset(preset)
    before = {
        name: open(os.path.join(preset, name), "rb").read()
        for name in ("tokenizer.json", "assets/tokenizer/vocabulary.spm")
    }
    tokenizer = tiny_tokenizer(chat_template="v3")

    def broken_save_assets(dir_path):
        with open(os.path.join(dir_path, "vocabulary.spm"), "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    tokenizer.save_assets = broken_save_assets
    with pytest.raises(OSError, match="disk full"):
        tokenizer.save_to_preset(preset)
    for name, content in before.items():
        assert open(os.path.join(preset, name), "rb").read() == content
    assert os.listdir(tmp_path) == ["preset"]  # No temporary directory left.
    assert MistralTokenizer.from_preset(preset).chat_template is None


def test_hard_linked_files_of_previous_version_are_not_modified(tmp_path):
    preset = tmp_path / "preset"
    first = tiny_backbone(seed=0)
    first.save_to_preset(preset)
    old_weights = os.path.join(tmp_path, "old.weights.h5")
    os.link(os.path.join(preset, "model.weights.h5"), old_weights)
    before = open(old_weights, "rb").read()
    tiny_backbone(seed=1).save_to_preset(preset)
    assert open(old_weights, "rb").read() == before


# --- errors and safety -------------------------------------------------------


def test_task_from_preset_on_task_base_class_raises(task_preset):
    with pytest.raises(ValueError, match="Task.from_preset"):
        Task.from_preset(task_preset[1])


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MistralBackbone.from_preset(str(tmp_path / "nowhere" / "preset"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        MistralBackbone.from_preset(tmp_path)
    tiny_backbone().save_to_preset(tmp_path / "bb")
    os.remove(tmp_path / "bb" / "model.weights.h5")
    with pytest.raises(FileNotFoundError, match="no weights"):
        MistralBackbone.from_preset(tmp_path / "bb")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        MistralTokenizer.from_preset(tmp_path / "bb")


@pytest.mark.parametrize(
    "registered_name",
    ["keras>Dense", "keras_hub>GemmaBackbone", "builtins>eval", "mistral_hub>Backbone"],
)
def test_classes_outside_the_allowlist_are_refused(tmp_path, registered_name):
    tiny_backbone().save_to_preset(tmp_path / "bb")
    config = _read(tmp_path / "bb", "config.json")
    config["registered_name"] = registered_name
    config["module"] = "evil_module_never_imported"
    config["class_name"] = registered_name.partition(">")[2]
    _write(tmp_path / "bb", "config.json", config)
    with pytest.raises(ValueError, match="does not load"):
        Backbone.from_preset(tmp_path / "bb")
    assert "evil_module_never_imported" not in sys.modules


def test_dtype_entries_must_be_keras_dtype_policies(tmp_path):
    tiny_backbone().save_to_preset(tmp_path / "bb")
    config = _read(tmp_path / "bb", "config.json")
    config["config"]["dtype"] = {
        "module": "os", "class_name": "system", "config": {"command": "true"},
        "registered_name": None,
    }
    _write(tmp_path / "bb", "config.json", config)
    with pytest.raises(ValueError, match="dtype policy"):
        MistralBackbone.from_preset(tmp_path / "bb")


def test_registered_subclasses_are_allowed(tmp_path):
    @keras.saving.register_keras_serializable(package="preset_test")
    class CustomBackbone(MistralBackbone):
        pass

    CustomBackbone(**TINY).save_to_preset(tmp_path / "custom")
    assert _read(tmp_path / "custom", "config.json")["registered_name"] == (
        "preset_test>CustomBackbone"
    )
    assert type(Backbone.from_preset(tmp_path / "custom")) is CustomBackbone


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_weight_files_raise_value_error(tmp_path, damage):
    tiny_backbone().save_to_preset(tmp_path / "bb")
    path = tmp_path / "bb" / "model.weights.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else os.urandom(len(data)))
    with pytest.raises(ValueError, match="model.weights.h5"):
        MistralBackbone.from_preset(tmp_path / "bb")


def test_shape_mismatch_names_variable_and_shapes(tmp_path):
    tiny_backbone().save_to_preset(tmp_path / "bb")
    with pytest.raises(ValueError, match=r"\(16, 24\).*\(16, 32\)") as info:
        MistralBackbone.from_preset(tmp_path / "bb", intermediate_dim=24)
    assert "feedforward" in str(info.value) and "kernel" in str(info.value)


def test_malformed_json_and_unknown_config(tmp_path):
    tiny_backbone().save_to_preset(tmp_path / "bb")
    (tmp_path / "bb" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        MistralBackbone.from_preset(tmp_path / "bb")
    _write(tmp_path / "bb", "config.json", {"hello": "world"})
    with pytest.raises(ValueError, match="Unrecognized"):
        MistralBackbone.from_preset(tmp_path / "bb")


def test_config_of_another_architecture_is_refused(tmp_path):
    _write(tmp_path, "config.json", {"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    with pytest.raises(ValueError, match="llama"):
        Backbone.from_preset(tmp_path)


def test_shard_index_cannot_escape_the_preset(tmp_path):
    tiny_backbone().save_to_preset(tmp_path / "bb", max_shard_size=8e-6)
    index = _read(tmp_path / "bb", "model.weights.json")
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../outside.weights.h5"
    _write(tmp_path / "bb", "model.weights.json", index)
    with pytest.raises(ValueError, match=r"\.\."):
        MistralBackbone.from_preset(tmp_path / "bb")


def test_preset_utils_serialize_deserialize_round_trip():
    tokenizer = tiny_tokenizer(add_bos=True)
    data = preset_utils.serialize(tokenizer)
    clone = preset_utils.deserialize(data)
    assert type(clone) is MistralTokenizer and clone.add_bos
