"""Saving presets: what may be written into what, through links, with sizes."""

import os

import numpy as np
import pytest

from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from tests.utils.preset_helpers import backbone_logits
from tests.utils.preset_helpers import tiny_backbone
from tests.utils.preset_helpers import tiny_causal_lm
from tests.utils.preset_helpers import tiny_tokenizer


def _listing(directory):
    return sorted(
        os.path.relpath(os.path.join(root, name), directory)
        for root, _, names in os.walk(directory)
        for name in names
    )


def test_a_backbone_does_not_go_into_a_task_preset_without_overwrite(tmp_path):
    preset = tmp_path / "task"
    tiny_causal_lm(seed=1).save_to_preset(preset)
    before = _listing(preset)
    other = tiny_backbone(seed=2, num_layers=1)
    with pytest.raises(ValueError, match="overwrite=True") as error:
        other.save_to_preset(preset)
    assert "task preset" in str(error.value) and "backbone" in str(error.value)
    with pytest.raises(ValueError, match="overwrite=True"):
        tiny_tokenizer().save_to_preset(preset)
    assert _listing(preset) == before
    MistralCausalLM.from_preset(preset)  # Still whole.

    other.save_to_preset(preset, overwrite=True)
    assert "task.json" not in _listing(preset)
    np.testing.assert_array_equal(
        backbone_logits(MistralBackbone.from_preset(preset)), backbone_logits(other)
    )


def test_keras_hub_piecewise_saving_still_builds_one_preset(tmp_path):
    # keras_hub users save a backbone, then its tokenizer, into one directory.
    preset = tmp_path / "pieces"
    backbone = tiny_backbone(seed=3)
    backbone.save_to_preset(preset)
    tiny_tokenizer().save_to_preset(preset)
    backbone.save_to_preset(preset)  # Re-saving a part of the same kind.
    assert MistralTokenizer.from_preset(preset).vocabulary_size() == 10
    # A whole task may replace the parts.
    tiny_causal_lm(seed=4).save_to_preset(preset)
    MistralCausalLM.from_preset(preset)


def test_a_task_without_preprocessor_drops_the_previous_one(tmp_path):
    preset = tmp_path / "task"
    tiny_causal_lm(seed=5).save_to_preset(preset)
    bare = tiny_causal_lm(seed=5)
    bare.preprocessor = None
    bare.save_to_preset(preset)
    assert not any(name.startswith(("tokenizer", "preprocessor", "assets")) for name in _listing(preset))
    assert MistralCausalLM.from_preset(preset).preprocessor is None


def test_saving_through_a_symlink_replaces_its_target(tmp_path):
    target = tmp_path / "versions" / "v1"
    tiny_backbone(seed=6).save_to_preset(target)
    link = tmp_path / "current"
    os.symlink(target, link)
    newer = tiny_backbone(seed=7)
    newer.save_to_preset(link)
    assert os.path.islink(link) and os.path.realpath(link) == str(target)
    assert sorted(os.listdir(tmp_path)) == ["current", "versions"]
    assert os.listdir(tmp_path / "versions") == ["v1"]  # No temporary left.
    np.testing.assert_array_equal(
        backbone_logits(MistralBackbone.from_preset(link)), backbone_logits(newer)
    )


@pytest.mark.parametrize("max_shard_size", ["5GB", 0.00001, "8KB"])
def test_max_shard_size_takes_numbers_and_strings(tmp_path, max_shard_size):
    backbone = tiny_backbone(seed=8)
    backbone.save_to_preset(tmp_path / "p", max_shard_size=max_shard_size)
    files = _listing(tmp_path / "p")
    sharded = max_shard_size != "5GB"
    assert ("model.weights.json" in files) == sharded
    np.testing.assert_array_equal(
        backbone_logits(MistralBackbone.from_preset(tmp_path / "p")), backbone_logits(backbone)
    )


@pytest.mark.parametrize("max_shard_size", [0, -1, float("nan"), True, "five", "5 parsecs"])
def test_bad_max_shard_size_is_named(tmp_path, max_shard_size):
    with pytest.raises(ValueError, match="max_shard_size"):
        tiny_backbone().save_to_preset(tmp_path / "p", max_shard_size=max_shard_size)
    assert not os.path.exists(tmp_path / "p")


def test_bad_overwrite_is_named(tmp_path):
    with pytest.raises(ValueError, match="overwrite"):
        tiny_backbone().save_to_preset(tmp_path / "p", overwrite="yes")


def test_exporting_a_part_into_a_task_export_needs_overwrite(tmp_path):
    directory = tmp_path / "hf"
    tiny_causal_lm(seed=9).export_to_transformers(str(directory))
    before = _listing(directory)
    with pytest.raises(ValueError, match="overwrite=True"):
        tiny_backbone(seed=10, num_layers=1).export_to_transformers(str(directory))
    assert _listing(directory) == before
    tiny_backbone(seed=10, num_layers=1).export_to_transformers(str(directory), overwrite=True)
    assert "generation_config.json" not in _listing(directory)
