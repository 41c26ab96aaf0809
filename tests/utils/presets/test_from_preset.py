"""A load never mixes the files of two saves of one preset directory."""

import numpy as np
import pytest

from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from mistral_hub.utils import hub
from mistral_hub.utils.presets import from_preset
from tests.utils.preset_helpers import backbone_logits
from tests.utils.preset_helpers import tiny_causal_lm


def _save_during_weight_reads(monkeypatch, preset, new_versions):
    """Saves the next of `new_versions` each time the weights are fetched."""
    original = hub.LocalSource.get_file
    pending = list(new_versions)

    def get_file(self, path):
        result = original(self, path)
        if path == "model.weights.h5" and pending:
            pending.pop(0).save_to_preset(preset)
        return result

    monkeypatch.setattr(hub.LocalSource, "get_file", get_file)


def test_a_save_during_a_load_gives_the_newer_version_whole(tmp_path, monkeypatch):
    preset = tmp_path / "preset"
    old = tiny_causal_lm(seed=1, sequence_length=8)
    new = tiny_causal_lm(seed=2, sequence_length=16)
    old.save_to_preset(preset)
    _save_during_weight_reads(monkeypatch, preset, [new])

    loaded = MistralCausalLM.from_preset(preset)
    # Without the retry: the old task.json (sequence length 8) with the new
    # weights (the read happened after the swap).
    assert loaded.preprocessor.sequence_length == 16
    np.testing.assert_array_equal(
        backbone_logits(loaded.backbone), backbone_logits(new.backbone)
    )


def test_a_preset_that_keeps_changing_is_an_error(tmp_path, monkeypatch):
    preset = tmp_path / "preset"
    tiny_causal_lm(seed=1).save_to_preset(preset)
    versions = [tiny_causal_lm(seed=s) for s in range(2, 2 + from_preset._READ_ATTEMPTS)]
    _save_during_weight_reads(monkeypatch, preset, versions)
    with pytest.raises(RuntimeError, match="replaced by another save"):
        MistralCausalLM.from_preset(preset)
